// Shared state of the Shoal JS shims.
//
// The app's top-level code runs at BUILD time, inside the Wizer snapshot taken
// by componentize-js. There, calling any imported WASI function (environment,
// stdout, ...) traps and fails the build. So the shims only touch WASI imports
// once the component is serving, i.e. once the first request has reached
// the http shim (`markServing`). Before that, they fall back and print a warning into the build
// output.

import { getEnvironment } from 'wasi:cli/environment@0.2.10';
import { getStdout } from 'wasi:cli/stdout@0.2.10';
import { getStderr } from 'wasi:cli/stderr@0.2.10';

let serving = false;
let servingSince = 0;

// For apps that handle StarlingMonkey's fetch event themselves (they do not
// import http): registered first (this module is injected ahead of the app),
// so it runs before their listener. It never calls respondWith.
addEventListener('fetch', () => markServing());

/** Called by the http shim as each request starts: the snapshot is over. */
export function markServing() {
  if (!serving) {
    serving = true;
    servingSince = Date.now();
  }
}

/** True once the component handles a request (false during the build snapshot). */
export function isServing() {
  return serving;
}

/** Milliseconds-since-epoch of the first request of this instance (0 at build time). */
export function startedAt() {
  return servingSince;
}

// The engine's own console, captured before shims/console.js patches it.
const engineLog = console.log.bind(console);
const warned = new Set();

/** Prints a build-time warning once per key (goes to the build's stdout). */
export function buildWarning(key, message) {
  if (warned.has(key)) return;
  warned.add(key);
  engineLog('[shoal-sdk-js] warning: ' + message);
}

let envCache = null;

/** The instance's environment as `[name, value][]`; `null` at build time. */
export function environment() {
  if (!serving) return null;
  if (envCache === null) envCache = getEnvironment();
  return envCache;
}

/** Value of one environment variable, or undefined (also at build time). */
export function envVar(name) {
  const env = environment();
  if (env === null) return undefined;
  for (const [k, v] of env) if (k === name) return v;
  return undefined;
}

const encoder = new TextEncoder();
let stdoutStream = null;
let stderrStream = null;

/** Writes raw text/bytes to wasi:cli stdout (fd 1) or stderr (fd 2). */
export function writeFd(fd, data) {
  const bytes = typeof data === 'string' ? encoder.encode(data) : data;
  if (!serving) {
    // Imports are unavailable inside the snapshot; use the engine console.
    const text = typeof data === 'string' ? data : new TextDecoder().decode(bytes);
    engineLog(text.endsWith('\n') ? text.slice(0, -1) : text);
    return;
  }
  let stream;
  if (fd === 2) stream = stderrStream ??= getStderr();
  else stream = stdoutStream ??= getStdout();
  // blocking-write-and-flush accepts at most 4096 bytes per call.
  for (let off = 0; off < bytes.length; off += 4096) {
    stream.blockingWriteAndFlush(bytes.subarray(off, off + 4096));
  }
}
