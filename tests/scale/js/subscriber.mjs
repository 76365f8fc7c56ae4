// One centrifuge-js client (the npm package, unmodified) under Node with `ws`, subscribed to
// one recoverable channel, reporting what the SDK tells it as JSON lines on stdout:
//
//   {"event":"connected","client":ID}   {"event":"disconnected"|"connecting","code":N}
//   {"event":"subscribing","code":N}    {"event":"subscribed","recovered":B,"wasRecovering":B,
//                                         "offset":N,"epoch":E}
//   {"event":"publication","offset":N,"data":..}
//
// Usage: node subscriber.mjs URL TOKEN CHANNEL. Reconnect and resubscribe delays are short so
// a test sees the failover quickly. The process exits when stdin closes or it is killed.

import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

const [url, token, channel] = process.argv.slice(2);

function emit(document) {
  process.stdout.write(JSON.stringify(document) + '\n');
}

const client = new Centrifuge(url, {
  websocket: WebSocket,
  token,
  minReconnectDelay: 50,
  maxReconnectDelay: 500,
  timeout: 5000,
});
client.on('connecting', (ctx) => emit({ event: 'connecting', code: ctx.code }));
client.on('connected', (ctx) => emit({ event: 'connected', client: ctx.client }));
client.on('disconnected', (ctx) => emit({ event: 'disconnected', code: ctx.code }));

const sub = client.newSubscription(channel, {
  recoverable: true,
  minResubscribeDelay: 50,
  maxResubscribeDelay: 500,
});
sub.on('subscribing', (ctx) => emit({ event: 'subscribing', code: ctx.code }));
sub.on('subscribed', (ctx) =>
  emit({
    event: 'subscribed',
    recovered: ctx.recovered,
    wasRecovering: ctx.wasRecovering,
    offset: Number(ctx.streamPosition?.offset ?? 0),
    epoch: ctx.streamPosition?.epoch ?? '',
  }),
);
sub.on('publication', (ctx) => emit({ event: 'publication', offset: Number(ctx.offset), data: ctx.data }));
sub.on('error', (ctx) => emit({ event: 'error', message: String(ctx.error?.message ?? ctx) }));

sub.subscribe();
client.connect();
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
