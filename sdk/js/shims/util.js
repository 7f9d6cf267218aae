// Minimal `util` / `node:util` for Shoal JS services: Node-like `format` and
// `inspect` (single-line output: objects never span several lines), plus the
// small helpers Node programs commonly reach for.

const customInspect = Symbol.for('nodejs.util.inspect.custom');
const IDENT = /^[A-Za-z_$][A-Za-z0-9_$]*$/;
const MAX_ARRAY = 100;
const MAX_STRING = 10000;

function quote(s) {
  const q = s.includes("'") && !s.includes('"') ? '"' : "'";
  let r = '';
  for (const ch of s) {
    if (ch === q || ch === '\\') r += '\\' + ch;
    else if (ch === '\n') r += '\\n';
    else if (ch === '\r') r += '\\r';
    else if (ch === '\t') r += '\\t';
    else if (ch < ' ') r += '\\x' + ch.charCodeAt(0).toString(16).padStart(2, '0');
    else r += ch;
  }
  return q + r + q;
}

function fnName(f) {
  return typeof f.name === 'string' && f.name ? f.name : '';
}

function isClass(f) {
  try {
    return /^class[\s{]/.test(Function.prototype.toString.call(f));
  } catch {
    return false;
  }
}

function ctorName(v) {
  const proto = Object.getPrototypeOf(v);
  if (proto === null) return null;
  const c = proto.constructor;
  return typeof c === 'function' && c.name ? c.name : 'Object';
}

function formatKey(k) {
  if (typeof k === 'symbol') return '[' + k.toString() + ']';
  return IDENT.test(k) ? k : quote(k);
}

/** Node-style `name: message` plus the engine's stack as `    at ...` lines. */
function formatError(err, nested) {
  let head;
  try {
    head = String(err.name ?? 'Error') + (err.message ? ': ' + err.message : '');
  } catch {
    head = 'Error';
  }
  if (nested) return '[' + head + ']';
  let stack = typeof err.stack === 'string' ? err.stack.trim() : '';
  if (stack.startsWith(head)) return stack; // already Node/V8 shaped
  const lines = stack ? stack.split('\n').filter(Boolean).map((l) => '    at ' + l.trim()) : [];
  return [head, ...lines].join('\n');
}

function inspectValue(v, opts, depth, seen) {
  switch (typeof v) {
    case 'string':
      return quote(v.length > MAX_STRING ? v.slice(0, MAX_STRING) + '...' : v);
    case 'number':
      return Object.is(v, -0) ? '-0' : String(v);
    case 'bigint':
      return v + 'n';
    case 'boolean':
    case 'undefined':
      return String(v);
    case 'symbol':
      return v.toString();
    case 'function': {
      if (isClass(v)) return '[class ' + (fnName(v) || '(anonymous)') + ']';
      return '[Function: ' + (fnName(v) || '(anonymous)') + ']';
    }
  }
  if (v === null) return 'null';

  if (typeof v[customInspect] === 'function' && v[customInspect] !== inspect) {
    const r = v[customInspect](opts.depth - depth, opts, inspect);
    return typeof r === 'string' ? r : inspectValue(r, opts, depth, seen);
  }

  if (seen.includes(v)) return '[Circular *1]';

  if (v instanceof Error) {
    let s = formatError(v, depth > 0);
    const extra = Object.keys(v).filter((k) => k !== 'stack' && k !== 'message');
    if (extra.length && depth <= opts.depth) {
      seen.push(v);
      s += ' { ' + extra.map((k) => formatKey(k) + ': ' + inspectValue(v[k], opts, depth + 1, seen)).join(', ') + ' }';
      seen.pop();
    }
    return s;
  }
  if (v instanceof Date) return isNaN(v.getTime()) ? 'Invalid Date' : v.toISOString();
  if (v instanceof RegExp) return String(v);
  if (v instanceof Promise) return 'Promise { <unknown> }';
  if (typeof WeakMap !== 'undefined' && v instanceof WeakMap) return 'WeakMap { <items unknown> }';
  if (typeof WeakSet !== 'undefined' && v instanceof WeakSet) return 'WeakSet { <items unknown> }';
  if (v instanceof ArrayBuffer) return 'ArrayBuffer { byteLength: ' + v.byteLength + ' }';
  if (typeof URL !== 'undefined' && v instanceof URL) return "URL '" + v.href + "'";

  const name = ctorName(v);
  if (ArrayBuffer.isView(v) && !(v instanceof DataView)) {
    if (name === 'Buffer') {
      const n = Math.min(v.length, 50);
      let hex = '';
      for (let i = 0; i < n; i++) hex += ' ' + v[i].toString(16).padStart(2, '0');
      return '<Buffer' + hex + (v.length > n ? ' ... ' + (v.length - n) + ' more bytes' : '') + '>';
    }
    if (depth > opts.depth) return '[' + name + ']';
    const n = Math.min(v.length, MAX_ARRAY);
    const items = [];
    for (let i = 0; i < n; i++) items.push(inspectValue(v[i], opts, depth + 1, seen));
    if (v.length > n) items.push('... ' + (v.length - n) + ' more items');
    return name + '(' + v.length + ') ' + (items.length ? '[ ' + items.join(', ') + ' ]' : '[]');
  }

  if (depth > opts.depth) {
    if (Array.isArray(v)) return '[Array]';
    return '[' + (name ?? 'Object: null prototype') + ']';
  }

  seen.push(v);
  try {
    if (Array.isArray(v)) {
      const n = Math.min(v.length, MAX_ARRAY);
      const items = [];
      for (let i = 0; i < n; i++) items.push(i in v ? inspectValue(v[i], opts, depth + 1, seen) : '<empty item>');
      if (v.length > n) items.push('... ' + (v.length - n) + ' more items');
      const prefix = name === 'Array' ? '' : name + '(' + v.length + ') ';
      return prefix + (items.length ? '[ ' + items.join(', ') + ' ]' : '[]');
    }
    if (v instanceof Map) {
      const items = [...v].map(([k, val]) => inspectValue(k, opts, depth + 1, seen) + ' => ' + inspectValue(val, opts, depth + 1, seen));
      return 'Map(' + v.size + ') ' + (items.length ? '{ ' + items.join(', ') + ' }' : '{}');
    }
    if (v instanceof Set) {
      const items = [...v].map((x) => inspectValue(x, opts, depth + 1, seen));
      return 'Set(' + v.size + ') ' + (items.length ? '{ ' + items.join(', ') + ' }' : '{}');
    }
    const keys = [...Object.keys(v), ...Object.getOwnPropertySymbols(v).filter((s) => Object.prototype.propertyIsEnumerable.call(v, s))];
    const items = keys.map((k) => {
      const d = Object.getOwnPropertyDescriptor(v, k);
      let val;
      if (d && (d.get || d.set)) val = d.get && d.set ? '[Getter/Setter]' : d.get ? '[Getter]' : '[Setter]';
      else val = inspectValue(v[k], opts, depth + 1, seen);
      return formatKey(k) + ': ' + val;
    });
    const body = items.length ? '{ ' + items.join(', ') + ' }' : '{}';
    if (name === null) return '[Object: null prototype] ' + body;
    if (name === 'Object') return body;
    return name + ' ' + body;
  } finally {
    seen.pop();
  }
}

/** `util.inspect(value, [options])`; options: `depth` (default 2). Output is one line. */
export function inspect(value, options) {
  const opts = { depth: 2, ...(typeof options === 'object' && options !== null ? options : {}) };
  if (opts.depth === null) opts.depth = Infinity;
  try {
    return inspectValue(value, opts, 0, []);
  } catch (e) {
    return '[inspect failed: ' + (e && e.message) + ']';
  }
}
inspect.custom = customInspect;
inspect.defaultOptions = { depth: 2 };

function hasOwnToString(v) {
  for (let o = v; o && o !== Object.prototype && o !== Error.prototype; o = Object.getPrototypeOf(o)) {
    if (Object.prototype.hasOwnProperty.call(o, 'toString')) return true;
  }
  return false;
}

function formatNumber(n) {
  return Object.is(n, -0) ? '-0' : String(n);
}

/** `util.format(fmt, ...args)`: %s %d %i %f %j %o %O %c %% like Node. */
export function format(...args) {
  return formatWithOptions({}, ...args);
}

export function formatWithOptions(inspectOptions, ...args) {
  if (args.length === 0) return '';
  const first = args[0];
  let out = '';
  let a = 1;
  if (typeof first === 'string') {
    if (args.length === 1) return first;
    let last = 0;
    for (let i = 0; i < first.length - 1; i++) {
      if (first.charCodeAt(i) !== 37) continue; // '%'
      const c = first[i + 1];
      if (c === '%') {
        out += first.slice(last, i) + '%';
        last = i + 2;
        i++;
        continue;
      }
      if (a >= args.length || !'sdifjoOc'.includes(c)) continue;
      const arg = args[a];
      let rep;
      switch (c) {
        case 's':
          if (typeof arg === 'bigint') rep = arg + 'n';
          else if (typeof arg === 'number') rep = formatNumber(arg);
          else if (typeof arg === 'symbol') rep = arg.toString();
          else if (typeof arg === 'object' && arg !== null && !hasOwnToString(arg)) rep = inspect(arg, { ...inspectOptions, depth: 0 });
          else rep = String(arg);
          break;
        case 'd':
          rep = typeof arg === 'bigint' ? arg + 'n' : typeof arg === 'symbol' ? 'NaN' : formatNumber(Number(arg));
          break;
        case 'i':
          rep = typeof arg === 'bigint' ? arg + 'n' : typeof arg === 'symbol' ? 'NaN' : formatNumber(parseInt(arg));
          break;
        case 'f':
          rep = typeof arg === 'symbol' ? 'NaN' : formatNumber(parseFloat(arg));
          break;
        case 'j':
          try {
            rep = JSON.stringify(arg);
          } catch {
            rep = '[Circular]';
          }
          break;
        case 'o':
          rep = inspect(arg, { ...inspectOptions, depth: 4 });
          break;
        case 'O':
          rep = inspect(arg, inspectOptions);
          break;
        case 'c':
          rep = '';
          break;
      }
      out += first.slice(last, i) + rep;
      last = i + 2;
      i++;
      a++;
    }
    out += first.slice(last);
  } else {
    out = inspect(first, inspectOptions);
  }
  for (; a < args.length; a++) {
    const v = args[a];
    out += ' ' + (typeof v === 'string' ? v : inspect(v, inspectOptions));
  }
  return out;
}

export function inherits(ctor, superCtor) {
  Object.defineProperty(ctor, 'super_', { value: superCtor, writable: true, configurable: true });
  Object.setPrototypeOf(ctor.prototype, superCtor.prototype);
}

const promisifyCustom = Symbol.for('nodejs.util.promisify.custom');
export function promisify(fn) {
  if (typeof fn !== 'function') throw new TypeError('The "original" argument must be of type function');
  if (fn[promisifyCustom]) return fn[promisifyCustom];
  return function (...args) {
    return new Promise((resolve, reject) => {
      fn.call(this, ...args, (err, ...values) => (err ? reject(err) : resolve(values.length > 1 ? values : values[0])));
    });
  };
}
promisify.custom = promisifyCustom;

export function callbackify(fn) {
  return function (...args) {
    const cb = args.pop();
    fn.apply(this, args).then((v) => cb(null, v), (e) => cb(e || new Error('Promise was rejected with a falsy value')));
  };
}

const deprecated = new Set();
export function deprecate(fn, msg) {
  return function (...args) {
    if (!deprecated.has(msg)) {
      deprecated.add(msg);
      console.error('DeprecationWarning: ' + msg);
    }
    return fn.apply(this, args);
  };
}

export function debuglog() {
  const f = () => {};
  f.enabled = false;
  return f;
}

export const types = {
  isDate: (v) => v instanceof Date,
  isRegExp: (v) => v instanceof RegExp,
  isPromise: (v) => v instanceof Promise,
  isMap: (v) => v instanceof Map,
  isSet: (v) => v instanceof Set,
  isNativeError: (v) => v instanceof Error,
  isUint8Array: (v) => v instanceof Uint8Array,
  isTypedArray: (v) => ArrayBuffer.isView(v) && !(v instanceof DataView),
  isArrayBuffer: (v) => v instanceof ArrayBuffer,
  isAsyncFunction: (v) => typeof v === 'function' && v.constructor && v.constructor.name === 'AsyncFunction',
};

export const isArray = Array.isArray;
export const isDeepStrictEqual = (a, b) => {
  try {
    return JSON.stringify(a) === JSON.stringify(b);
  } catch {
    return false;
  }
};

const _TextEncoder = globalThis.TextEncoder;
const _TextDecoder = globalThis.TextDecoder;
export { _TextEncoder as TextEncoder, _TextDecoder as TextDecoder };

export default {
  format,
  formatWithOptions,
  inspect,
  inherits,
  promisify,
  callbackify,
  deprecate,
  debuglog,
  types,
  isArray,
  isDeepStrictEqual,
  TextEncoder: _TextEncoder,
  TextDecoder: _TextDecoder,
};
