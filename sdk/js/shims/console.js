// Node-like console for Shoal JS services (injected ahead of the app by build.mjs).
//
// The StarlingMonkey console already writes one line per call (log/info to
// wasi:cli stdout, warn/error/debug to stderr), but it ignores format strings
// (%s, %d, ...), prints Errors as `(new Error("boom", "app.js", 6))` and sends
// console.debug to stderr. This shim formats every call with util.format (one
// string, objects on a single line) and hands that single string to the engine
// console, so each call is still exactly one write:
//   log, info, debug, dir, table, count, time*  -> stdout
//   warn, error, trace, assert                  -> stderr
// A message that itself contains "\n" spans several lines, as in Node.
//
// At build time (top-level code runs inside the Wizer snapshot) the stderr
// side is captured and discarded by componentize-js unless the build fails,
// so everything is sent to the build's stdout instead.

import { format, inspect } from './util.js';
import { isServing } from './runtime.js';

const c = globalThis.console;
const engineOut = c.log.bind(c);
const engineErr = c.error.bind(c);

let indent = '';
function emit(toErr, text) {
  if (indent) text = indent + text.split('\n').join('\n' + indent);
  if (toErr && isServing()) engineErr(text);
  else engineOut(text);
}

const counts = new Map();
const timers = new Map();
const now = () => (typeof performance !== 'undefined' ? performance.now() : Date.now());

const methods = {
  log: (...a) => emit(false, format(...a)),
  info: (...a) => emit(false, format(...a)),
  debug: (...a) => emit(false, format(...a)),
  dirxml: (...a) => emit(false, format(...a)),
  table: (...a) => emit(false, format(...a)),
  warn: (...a) => emit(true, format(...a)),
  error: (...a) => emit(true, format(...a)),
  dir: (obj, options) => emit(false, inspect(obj, options)),
  trace: (...a) => {
    const stack = (new Error().stack || '')
      .split('\n')
      .slice(1)
      .filter(Boolean)
      .map((l) => '    at ' + l.trim());
    emit(true, ['Trace' + (a.length ? ': ' + format(...a) : ''), ...stack].join('\n'));
  },
  assert: (value, ...a) => {
    if (!value) emit(true, 'Assertion failed' + (a.length ? ': ' + format(...a) : ''));
  },
  count: (label = 'default') => {
    const n = (counts.get(label) || 0) + 1;
    counts.set(label, n);
    emit(false, label + ': ' + n);
  },
  countReset: (label = 'default') => counts.delete(label),
  time: (label = 'default') => timers.set(label, now()),
  timeLog: (label = 'default', ...a) => {
    if (!timers.has(label)) return emit(true, "Warning: No such label '" + label + "' for console.timeLog()");
    emit(false, label + ': ' + (now() - timers.get(label)).toFixed(3) + 'ms' + (a.length ? ' ' + format(...a) : ''));
  },
  timeEnd: (label = 'default') => {
    if (!timers.has(label)) return emit(true, "Warning: No such label '" + label + "' for console.timeEnd()");
    emit(false, label + ': ' + (now() - timers.get(label)).toFixed(3) + 'ms');
    timers.delete(label);
  },
  group: (...a) => {
    if (a.length) emit(false, format(...a));
    indent += '  ';
  },
  groupCollapsed: (...a) => methods.group(...a),
  groupEnd: () => {
    indent = indent.slice(0, -2);
  },
};

for (const [name, fn] of Object.entries(methods)) {
  try {
    c[name] = fn;
  } catch {
    // non-writable in some engine build: keep the engine's method
  }
}
