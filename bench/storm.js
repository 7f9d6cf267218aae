'use strict';
// Run by bench/coldstorm.sh: fires one request at each of many hosts at the
// same instant and prints, for each, its status and its time to first byte.
//
//   node storm.js ADDRESS PORT < hosts     (one Host header value a line)
//
// It first opens one TCP connection per host (all of them, before any
// request, so that the time measured is the server's and not a handshake
// storm), then, in one synchronous loop, writes
// `GET / HTTP/1.1\r\nHost: H\r\nConnection: close\r\n\r\n` on each. The
// instant just before that loop is the common start; each request's time is
// from it to the first byte of its response (ms, 0.01 ms), read until the
// server closes the connection or TIMEOUT_MS (env, default 30000) pass.
//
// Prints one line per host, in input order, to stdout:
//
//   STATUS MS HOST BODY
//
// STATUS is the HTTP status, or 000 when no response came (MS is then "-");
// BODY is the start of the response body on one line (at most 200 chars,
// control characters as spaces), or, when there is no response, what went
// wrong and when (from the common start): "ECONNRESET (after 1234.56 ms)",
// "timeout (after 30000.12 ms)", "closed without a response (after …)".
// Exit status 0 whatever the answers were; non-zero only when the storm
// itself could not run (bad arguments, connections that could not be
// opened).

const net = require('net');

const [address, portArg] = process.argv.slice(2);
const port = Number(portArg);
const timeoutMs = Number(process.env.TIMEOUT_MS || 30000);
const CONNECT_TIMEOUT_MS = 10000;
const BODY_CHARS = 200;

if (!address || !Number.isInteger(port) || port <= 0 || !(timeoutMs > 0)) {
  process.stderr.write('usage: node storm.js ADDRESS PORT < hosts (TIMEOUT_MS=30000)\n');
  process.exit(2);
}

function fail(message) {
  process.stderr.write(`storm.js: ${message}\n`);
  process.exit(1);
}

const hosts = require('fs')
  .readFileSync(0, 'utf8')
  .split('\n')
  .map((h) => h.trim())
  .filter((h) => h !== '');
if (hosts.length === 0) fail('no hosts on standard input');

// One record per host: its socket, when the first byte came, the bytes.
const requests = hosts.map((host) => ({ host, socket: null, firstByte: null, chunks: [], error: null, ended: null, done: false }));
let start = 0n;
let pending = requests.length;

// parse BUFFER: { status, body } of a complete HTTP/1.1 response (read to
// the connection's close), or null when it is not one.
function parse(buffer) {
  const end = buffer.indexOf('\r\n\r\n');
  if (end < 0) return null;
  const head = buffer.subarray(0, end).toString('latin1').split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(head[0]);
  if (!m) return null;
  let body = buffer.subarray(end + 4);
  const chunked = head.some((l) => /^transfer-encoding:.*chunked/i.test(l));
  if (chunked) {
    // Decode as much as arrived (enough for the start of the body).
    const parts = [];
    let rest = body;
    for (;;) {
      const eol = rest.indexOf('\r\n');
      if (eol < 0) break;
      const size = parseInt(rest.subarray(0, eol).toString('latin1'), 16);
      if (!(size > 0)) break;
      parts.push(rest.subarray(eol + 2, eol + 2 + size));
      rest = rest.subarray(eol + 2 + size + 2);
    }
    body = Buffer.concat(parts);
  }
  return { status: m[1], body };
}

function oneLine(text) {
  // Control characters (newlines too) as spaces, at most BODY_CHARS.
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\x00-\x1f\x7f]+/g, ' ').trim().slice(0, BODY_CHARS) || '(empty)';
}

function finish(r) {
  if (r.done) return;
  r.done = true;
  r.ended = process.hrtime.bigint();
  r.socket.destroy();
  if (--pending === 0) report();
}

function report() {
  const out = [];
  for (const r of requests) {
    const ms = r.firstByte === null ? '-' : (Number(r.firstByte - start) / 1e6).toFixed(2);
    const response = r.chunks.length ? parse(Buffer.concat(r.chunks)) : null;
    if (response) {
      // A response cut short (error or timeout after its first byte) keeps
      // its status; the reason follows the body.
      const body = oneLine(response.body.toString('utf8'));
      out.push(`${response.status} ${ms} ${r.host} ${r.error ? `${body} [then ${r.error}]` : body}`);
    } else {
      const what = r.chunks.length ? `unparsable response: ${oneLine(Buffer.concat(r.chunks).toString('latin1'))}` : r.error || 'closed without a response';
      const at = (Number(r.ended - start) / 1e6).toFixed(2);
      out.push(`000 ${ms} ${r.host} ${what} (after ${at} ms)`);
    }
  }
  process.stdout.write(out.join('\n') + '\n', () => process.exit(0));
}

function fire() {
  const wire = (host) => `GET / HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`;
  const timer = setTimeout(() => {
    for (const r of requests) {
      if (!r.done) {
        r.error = r.error || 'timeout';
        finish(r);
      }
    }
  }, timeoutMs);
  timer.unref();
  start = process.hrtime.bigint();
  for (const r of requests) r.socket.write(wire(r.host));
}

// Open every connection; fire when all are open.
let connected = 0;
const connectTimer = setTimeout(
  () => fail(`only ${connected} of ${requests.length} connections opened within ${CONNECT_TIMEOUT_MS} ms`),
  CONNECT_TIMEOUT_MS,
);
for (const r of requests) {
  const socket = net.connect({ host: address, port, noDelay: true });
  r.socket = socket;
  socket.on('connect', () => {
    if (++connected === requests.length) {
      clearTimeout(connectTimer);
      fire();
    }
  });
  socket.on('data', (chunk) => {
    if (r.firstByte === null) r.firstByte = process.hrtime.bigint();
    r.chunks.push(chunk);
  });
  socket.on('end', () => finish(r));
  socket.on('close', () => finish(r));
  socket.on('error', (err) => {
    if (start === 0n) fail(`connection ${connected + 1} to ${address}:${port}: ${err.message}`);
    r.error = r.error || err.code || err.message;
    finish(r);
  });
}
