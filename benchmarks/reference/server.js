'use strict';
// Reference server for `tidings bench`: the classic express + http + ws broadcast
// server. Every message received from any client is sent, as it came (text stays
// text), to every open client, the sender included. No rooms, no protocol, no
// history: this is the baseline the tidings numbers are compared against.
//
// Port: the PORT environment variable, else the first argument, else 8080.
// Upgrade path: any (clients use "/").

const express = require('express');
const http = require('http');
const WebSocket = require('ws');

const port = Number(process.env.PORT || process.argv[2] || 8080);
const host = process.env.HOST || '127.0.0.1';

const app = express();
app.get('/', (req, res) => res.send('reference broadcast server'));

const server = http.createServer(app);
const wss = new WebSocket.Server({ server });

wss.on('connection', (ws) => {
  ws.on('message', (message, isBinary) => {
    wss.clients.forEach((client) => {
      if (client.readyState === WebSocket.OPEN) {
        client.send(message, { binary: isBinary });
      }
    });
  });
});

server.listen(port, host, () => {
  console.log(`reference server listening on ${host}:${port}`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => process.exit(0));
}
