// Drives one centrifuge-js client (the npm package, unmodified) under Node with `ws`.
//
// The Python test is the script: it writes one JSON command per line on stdin, and this
// process answers on stdout with one JSON document per line:
//
//   {"type":"result","id":N,"ok":true,"value":...}          answer to command N
//   {"type":"result","id":N,"ok":false,"error":{code,message}}
//   {"type":"event","source":"client"|"sub","channel":..,"event":..,"ctx":{..}}
//   {"type":"token_request","request":N,"kind":"connection"|"subscription","channel":..}
//
// A token request is answered by the command {"op":"token_reply","request":N,"token":".."}.
// Nothing here sleeps: every step waits on an SDK promise or event, and the SDK's own
// timeouts bound each wait. The process exits when stdin closes (the test is over or died).
//
// Protobuf: "create" with {protobuf: true} uses the package's Protobuf build
// (`centrifuge/build/protobuf`). Data then travels as bytes: commands may pass
// {"__bytes__": <base64>} for exact bytes (anything else is sent as its JSON text), and
// every Uint8Array the SDK reports comes back as {"__bytes__": <base64>}.

import { Centrifuge } from 'centrifuge';
import { Centrifuge as CentrifugeProtobuf } from 'centrifuge/build/protobuf';
import { EventSource } from 'eventsource';
import WebSocket from 'ws';
import readline from 'node:readline';

// Bytes of the documents the server sent (WebSocket message payloads, SSE event data):
// what delta compression saves. Frame headers and SSE field names are left out.
let bytesReceived = 0;

class CountingWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    this.on('message', (data) => { bytesReceived += data.byteLength ?? data.length; });
  }
}

class CountingEventSource extends EventSource {
  constructor(...args) {
    super(...args);
    this.addEventListener('message', (event) => { bytesReceived += Buffer.byteLength(event.data); });
  }
}

function emit(document) {
  process.stdout.write(JSON.stringify(document, replacer) + '\n');
}

function replacer(key, value) {
  const original = this[key];  // before toJSON: Node's Buffer would become {type, data}
  if (original instanceof Uint8Array) {
    return { __bytes__: Buffer.from(original).toString('base64') };
  }
  if (value instanceof Error) {
    return { name: value.name, message: value.message, code: value.code };
  }
  if (typeof value === 'bigint') {
    return Number(value);
  }
  return value;
}

function describeError(error) {
  if (error && typeof error === 'object') {
    return { code: error.code ?? null, message: String(error.message ?? error) };
  }
  return { code: null, message: String(error) };
}

let client = null;
let protobuf = false;
const subscriptions = new Map();

// A payload as this client sends it: JSON as is, or bytes in Protobuf mode.
function payload(data) {
  if (!protobuf) return data;
  if (data && typeof data === 'object' && typeof data.__bytes__ === 'string') {
    return new Uint8Array(Buffer.from(data.__bytes__, 'base64'));
  }
  return new TextEncoder().encode(JSON.stringify(data));
}
const pendingTokens = new Map();
let nextTokenRequest = 0;

function requestToken(kind, channel) {
  nextTokenRequest += 1;
  const request = nextTokenRequest;
  emit({ type: 'token_request', request, kind, channel: channel ?? null });
  return new Promise((resolve, reject) => pendingTokens.set(request, { resolve, reject }));
}

const CLIENT_EVENTS = [
  'connecting', 'connected', 'disconnected', 'error', 'message',
  'subscribing', 'subscribed', 'unsubscribed', 'publication', 'join', 'leave',
];
const SUBSCRIPTION_EVENTS = [
  'subscribing', 'subscribed', 'unsubscribed', 'publication', 'join', 'leave', 'error',
];
const MAP_EVENTS = ['subscribing', 'subscribed', 'unsubscribed', 'error', 'sync', 'update'];

// What an application does with a map subscription's events: the current state by key.
const mapStates = new Map();

function applyMapEvent(channel, name, ctx) {
  const state = mapStates.get(channel);
  if (name === 'sync') {
    state.clear();
    for (const entry of ctx.entries) state.set(entry.key, entry.data ?? null);
  } else if (name === 'update') {
    if (ctx.removed) state.delete(ctx.key);
    else state.set(ctx.key, ctx.data ?? null);
  }
}

function requireClient() {
  if (client === null) {
    throw new Error('no client: send "create" first');
  }
  return client;
}

function requireSubscription(channel) {
  const sub = subscriptions.get(channel);
  if (sub === undefined) {
    throw new Error(`no subscription to ${channel}: send "new_subscription" first`);
  }
  return sub;
}

const operations = {
  create({ url, token, getToken, options, protobuf: useProtobuf }) {
    // url: a WebSocket URL, or centrifuge-js' list of {transport, endpoint} (emulation).
    const config = { websocket: CountingWebSocket, eventsource: CountingEventSource, ...(options ?? {}) };
    if (token) config.token = token;
    if (getToken) config.getToken = () => requestToken('connection', null);
    protobuf = Boolean(useProtobuf);
    client = protobuf ? new CentrifugeProtobuf(url, config) : new Centrifuge(url, config);
    for (const name of CLIENT_EVENTS) {
      client.on(name, (ctx) => emit({ type: 'event', source: 'client', event: name, ctx }));
    }
    return null;
  },
  connect() {
    requireClient().connect();
    return null;
  },
  async ready({ timeout }) {
    await requireClient().ready(timeout);
    return { state: client.state };
  },
  disconnect() {
    requireClient().disconnect();
    return { state: client.state };
  },
  state() {
    const subs = {};
    for (const [channel, sub] of subscriptions) subs[channel] = sub.state;
    return { client: requireClient().state, subs };
  },
  new_subscription({ channel, options, getToken }) {
    const config = { ...(options ?? {}) };
    if (getToken) config.getToken = (ctx) => requestToken('subscription', ctx.channel);
    const sub = requireClient().newSubscription(channel, config);
    for (const name of SUBSCRIPTION_EVENTS) {
      sub.on(name, (ctx) => emit({ type: 'event', source: 'sub', channel, event: name, ctx }));
    }
    subscriptions.set(channel, sub);
    return null;
  },
  new_map_subscription({ channel, kind, options, getToken }) {
    // kind: 'map' (newMapSubscription), 'clients' or 'users' (map presence).
    const config = { ...(options ?? {}) };
    if (getToken) config.getToken = (ctx) => requestToken('subscription', ctx.channel);
    const c = requireClient();
    const sub = kind === 'clients'
      ? c.newMapClientsSubscription(channel, config)
      : kind === 'users'
        ? c.newMapUsersSubscription(channel, config)
        : c.newMapSubscription(channel, config);
    mapStates.set(channel, new Map());
    for (const name of MAP_EVENTS) {
      sub.on(name, (ctx) => {
        applyMapEvent(channel, name, ctx);
        // A sync of thousands of keys is summarised: the test reads the state with map_state.
        let shown = ctx;
        if (name === 'sync') shown = { count: ctx.entries.length };
        if (name === 'subscribed') shown = { ...ctx, state: (ctx.state ?? []).length };
        emit({ type: 'event', source: 'sub', channel, event: name, ctx: shown });
      });
    }
    subscriptions.set(channel, sub);
    return null;
  },
  map_state({ channel }) {
    return Object.fromEntries(mapStates.get(channel) ?? []);
  },
  async map_publish({ channel, key, data }) {
    return await requireSubscription(channel).publish(key, data);
  },
  async map_remove({ channel, key }) {
    return await requireSubscription(channel).remove(key);
  },
  subscribe({ channel }) {
    requireSubscription(channel).subscribe();
    return null;
  },
  async sub_ready({ channel, timeout }) {
    const sub = requireSubscription(channel);
    await sub.ready(timeout);
    return { state: sub.state };
  },
  unsubscribe({ channel }) {
    const sub = requireSubscription(channel);
    sub.unsubscribe();
    return { state: sub.state };
  },
  async publish({ channel, data }) {
    const sub = subscriptions.get(channel);
    const bytes = payload(data);
    return sub ? await sub.publish(bytes) : await requireClient().publish(channel, bytes);
  },
  async presence({ channel }) {
    const sub = subscriptions.get(channel);
    return sub ? await sub.presence() : await requireClient().presence(channel);
  },
  async presence_stats({ channel }) {
    const sub = subscriptions.get(channel);
    return sub ? await sub.presenceStats() : await requireClient().presenceStats(channel);
  },
  async history({ channel, options }) {
    const sub = subscriptions.get(channel);
    return sub ? await sub.history(options ?? {}) : await requireClient().history(channel, options ?? {});
  },
  async rpc({ method, data }) {
    return await requireClient().rpc(method, payload(data));
  },
  async send({ data }) {
    await requireClient().send(payload(data));
    return null;
  },
  bytes_received() {
    const value = bytesReceived;
    bytesReceived = 0;
    return value;
  },
  delta_stats({ channel }) {
    return requireSubscription(channel).deltaStats();
  },
  token_reply({ request, token, error }) {
    const pending = pendingTokens.get(request);
    if (pending === undefined) throw new Error(`no token request ${request}`);
    pendingTokens.delete(request);
    if (error) pending.reject(new Error(error));
    else pending.resolve(token);
    return null;
  },
  exit() {
    if (client !== null) client.disconnect();
    setImmediate(() => process.exit(0));
    return null;
  },
};

async function run(command) {
  const { id, op, ...args } = command;
  const operation = operations[op];
  try {
    if (operation === undefined) throw new Error(`unknown op ${op}`);
    const value = await operation(args);
    emit({ type: 'result', id, ok: true, value: value ?? null });
  } catch (error) {
    emit({ type: 'result', id, ok: false, error: describeError(error) });
  }
}

const input = readline.createInterface({ input: process.stdin });
input.on('line', (line) => {
  if (!line.trim()) return;
  let command;
  try {
    command = JSON.parse(line);
  } catch (error) {
    emit({ type: 'fatal', message: `bad command line: ${line}` });
    return;
  }
  // Commands run concurrently: a pending ready() must not block a token reply.
  run(command);
});
input.on('close', () => process.exit(0));
emit({ type: 'started', node: process.version });
