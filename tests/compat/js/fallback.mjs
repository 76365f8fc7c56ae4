// centrifuge-js (the npm package, unmodified) under Node, configured with
// transports [websocket, http_stream, sse], for tests/e2e/test_transport_emulation.py.
//
//   node fallback.mjs <http base URL> <token> <channel> <JSON list of blocked transports>
//
// A blocked transport points at a path the server does not serve, so its WebSocket
// upgrade (or stream request) is refused with 404, as a blocking proxy would refuse it.
// Events go to stdout as JSON lines ({"event": ...}); commands come on stdin as JSON
// lines ({"op": "publish"|"presence"|"history"|"quit", ...}) and are answered with
// {"result": op, "value": ...} or {"result": op, "error": ...}. Nothing here sleeps.

import { Centrifuge } from 'centrifuge';
import { EventSource } from 'eventsource';
import WebSocket from 'ws';
import readline from 'node:readline';

const [base, token, channel, blockedJson] = process.argv.slice(2);
const blocked = new Set(JSON.parse(blockedJson));
const ws = base.replace(/^http/, 'ws');
const path = (name, url) => (blocked.has(name) ? `${url}_blocked` : url);

const emit = (document) => process.stdout.write(JSON.stringify(document) + '\n');

const client = new Centrifuge(
  [
    { transport: 'websocket', endpoint: path('websocket', `${ws}/connection/websocket`) },
    { transport: 'http_stream', endpoint: path('http_stream', `${base}/connection/http_stream`) },
    { transport: 'sse', endpoint: path('sse', `${base}/connection/sse`) },
  ],
  {
    token,
    websocket: WebSocket,
    eventsource: EventSource,
    emulationEndpoint: `${base}/emulation`,
    minReconnectDelay: 50,
    maxReconnectDelay: 500,
  },
);

client.on('connecting', (ctx) => emit({ event: 'connecting', code: ctx.code }));
client.on('connected', (ctx) => emit({ event: 'connected', transport: ctx.transport }));
client.on('disconnected', (ctx) => emit({ event: 'disconnected', code: ctx.code }));

const sub = client.newSubscription(channel, { recoverable: true });
sub.on('subscribed', (ctx) =>
  emit({
    event: 'subscribed',
    recoverable: ctx.recoverable,
    wasRecovering: ctx.wasRecovering,
    recovered: ctx.recovered,
    offset: ctx.streamPosition ? ctx.streamPosition.offset : null,
  }),
);
sub.on('publication', (ctx) => emit({ event: 'publication', offset: ctx.offset, data: ctx.data }));
sub.subscribe();
client.connect();

const operations = {
  publish: async ({ data }) => (await sub.publish(data), null),
  presence: async () => (await sub.presence()).clients,
  history: async () => (await sub.history({ limit: -1 })).publications.map((p) => ({ offset: p.offset, data: p.data })),
  quit: async () => {
    client.disconnect();
    setImmediate(() => process.exit(0));
    return null;
  },
};

readline.createInterface({ input: process.stdin }).on('line', async (line) => {
  const command = JSON.parse(line);
  try {
    emit({ result: command.op, value: await operations[command.op](command) });
  } catch (error) {
    emit({ result: command.op, error: { code: error.code ?? null, message: String(error.message ?? error) } });
  }
});
process.stdin.on('end', () => process.exit(0));
