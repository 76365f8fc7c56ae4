// Parses an AsyncAPI document (JSON or YAML) from stdin with npm's @asyncapi/parser, the
// parser AsyncAPI's own tools (Studio, the generator, the CLI) use, with its default
// ruleset: the 3.0.0 JSON Schema, references, and the spec's rules.
//
// Prints one JSON document on stdout: every diagnostic ({severity, code, message, path};
// severity 0 is an error, 1 a warning, 2 information, 3 a hint) and, when the document
// parsed, what the parser understood of it: servers, channels (address, messages),
// operations (action, channel, messages, reply messages) with references resolved, so the
// Python test can assert on the parsed model as well as on the absence of errors.
// Exits 1 when any diagnostic has severity error, 2 when the parser threw.

import { Parser } from '@asyncapi/parser';

const ERROR = 0;

function read(stream) {
  return new Promise((resolve, reject) => {
    let text = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk) => { text += chunk; });
    stream.on('end', () => resolve(text));
    stream.on('error', reject);
  });
}

function summary(document) {
  const ids = (collection) => collection.all().map((item) => item.id());
  const servers = {};
  for (const server of document.servers().all()) {
    servers[server.id()] = {
      host: server.host(), protocol: server.protocol(), pathname: server.pathname(),
    };
  }
  const channels = {};
  for (const channel of document.channels().all()) {
    channels[channel.id()] = {
      address: channel.address(),
      messages: ids(channel.messages()),
      parameters: ids(channel.parameters()),
    };
  }
  const operations = {};
  for (const operation of document.operations().all()) {
    const reply = operation.reply();
    operations[operation.id()] = {
      action: operation.action(),
      channels: ids(operation.channels()),
      messages: ids(operation.messages()),
      reply: reply ? ids(reply.messages()) : null,
    };
  }
  const payloads = {};
  for (const message of document.components().messages().all()) {
    payloads[message.id()] = message.hasPayload() ? message.payload().json() : null;
  }
  return { servers, channels, operations, payloads };
}

const parser = new Parser();
try {
  const { document, diagnostics } = await parser.parse(await read(process.stdin));
  const found = diagnostics.map((d) => ({
    severity: d.severity, code: d.code, message: d.message, path: d.path,
  }));
  process.stdout.write(JSON.stringify({
    diagnostics: found, document: document ? summary(document) : null,
  }) + '\n');
  process.exitCode = found.some((d) => d.severity === ERROR) || !document ? 1 : 0;
} catch (error) {
  process.stderr.write(`asyncapi parser failed: ${error.stack || error}\n`);
  process.exitCode = 2;
}
