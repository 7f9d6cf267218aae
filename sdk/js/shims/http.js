// `http` / `node:http` for Shoal JS services.
//
// There are no sockets: the component exports wasi:http/incoming-handler
// itself (`incomingHandler` below, re-exported by build.mjs), so one
// instance serves request after request, as one Node process does.
// createServer() records the handler, listen() only marks the server as
// listening, and each incoming request becomes a Node-like IncomingMessage /
// ServerResponse pair dispatched to the server's 'request' listeners.
//
// Response: end() without earlier write() sends one body with its
// content-length; the first write() sends the head and streams the body
// (chunked) through later write()/end() calls. A handler that throws (or
// whose returned promise rejects) before the response started gets a 500
// and the error is logged with console.error; if the response had already
// started, its body is cut off instead. The same goes for an exception
// thrown by a req 'data'/'end'/... listener (Node would crash the process)
// and for a request-body read error nobody listens 'error' for.

import { Fields, OutgoingBody, OutgoingResponse, ResponseOutparam } from 'wasi:http/types@0.2.10';
import EventEmitter from './events.cjs';
import { Buffer, toBuffer } from './buffer.js';
import { markServing } from './runtime.js';

export const STATUS_CODES = {
  100: 'Continue',
  101: 'Switching Protocols',
  102: 'Processing',
  103: 'Early Hints',
  200: 'OK',
  201: 'Created',
  202: 'Accepted',
  203: 'Non-Authoritative Information',
  204: 'No Content',
  205: 'Reset Content',
  206: 'Partial Content',
  207: 'Multi-Status',
  208: 'Already Reported',
  226: 'IM Used',
  300: 'Multiple Choices',
  301: 'Moved Permanently',
  302: 'Found',
  303: 'See Other',
  304: 'Not Modified',
  305: 'Use Proxy',
  307: 'Temporary Redirect',
  308: 'Permanent Redirect',
  400: 'Bad Request',
  401: 'Unauthorized',
  402: 'Payment Required',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  406: 'Not Acceptable',
  407: 'Proxy Authentication Required',
  408: 'Request Timeout',
  409: 'Conflict',
  410: 'Gone',
  411: 'Length Required',
  412: 'Precondition Failed',
  413: 'Payload Too Large',
  414: 'URI Too Long',
  415: 'Unsupported Media Type',
  416: 'Range Not Satisfiable',
  417: 'Expectation Failed',
  418: "I'm a Teapot",
  421: 'Misdirected Request',
  422: 'Unprocessable Entity',
  423: 'Locked',
  424: 'Failed Dependency',
  425: 'Too Early',
  426: 'Upgrade Required',
  428: 'Precondition Required',
  429: 'Too Many Requests',
  431: 'Request Header Fields Too Large',
  451: 'Unavailable For Legal Reasons',
  500: 'Internal Server Error',
  501: 'Not Implemented',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
  505: 'HTTP Version Not Supported',
  506: 'Variant Also Negotiates',
  507: 'Insufficient Storage',
  508: 'Loop Detected',
  509: 'Bandwidth Limit Exceeded',
  510: 'Not Extended',
  511: 'Network Authentication Required',
};

export const METHODS = [
  'ACL', 'BIND', 'CHECKOUT', 'CONNECT', 'COPY', 'DELETE', 'GET', 'HEAD', 'LINK', 'LOCK',
  'M-SEARCH', 'MERGE', 'MKACTIVITY', 'MKCALENDAR', 'MKCOL', 'MOVE', 'NOTIFY', 'OPTIONS',
  'PATCH', 'POST', 'PROPFIND', 'PROPPATCH', 'PURGE', 'PUT', 'QUERY', 'REBIND', 'REPORT',
  'SEARCH', 'SOURCE', 'SUBSCRIBE', 'TRACE', 'UNBIND', 'UNLINK', 'UNLOCK', 'UNSUBSCRIBE',
];

export const maxHeaderSize = 16384;

function httpError(code, message, Ctor = Error) {
  const e = new Ctor(message);
  e.code = code;
  return e;
}

const TOKEN = /^[\^_`a-zA-Z\-0-9!#$%&'*+.|~]+$/;
const BAD_VALUE = /[^\t\x20-\x7e\x80-\xff]/;

export function validateHeaderName(name) {
  if (typeof name !== 'string' || !TOKEN.test(name)) {
    throw httpError('ERR_INVALID_HTTP_TOKEN', 'Header name must be a valid HTTP token ["' + name + '"]', TypeError);
  }
}

export function validateHeaderValue(name, value) {
  if (value === undefined) throw httpError('ERR_HTTP_INVALID_HEADER_VALUE', 'Invalid value "undefined" for header "' + name + '"', TypeError);
  if (BAD_VALUE.test(String(value))) throw httpError('ERR_INVALID_CHAR', 'Invalid character in header content ["' + name + '"]', TypeError);
}

const utf8 = new TextEncoder();

function toBytes(chunk, encoding) {
  if (typeof chunk === 'string') {
    if (!encoding || encoding === 'utf8' || encoding === 'utf-8') return utf8.encode(chunk);
    return Buffer.from(chunk, encoding);
  }
  if (chunk instanceof Uint8Array) return chunk;
  if (chunk instanceof ArrayBuffer) return new Uint8Array(chunk);
  if (ArrayBuffer.isView(chunk)) return new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  throw httpError(
    'ERR_INVALID_ARG_TYPE',
    'The "chunk" argument must be of type string or an instance of Buffer or Uint8Array. Received ' + (chunk === null ? 'null' : typeof chunk),
    TypeError,
  );
}

// Hop-by-hop headers cannot be set on a wasi:http response (the host rejects them).
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'http2-settings']);

// ---------------------------------------------------------------------------
// Socket stand-in

class Socket extends EventEmitter {
  // `encrypted` is asked for when read (the scheme is one more host call).
  constructor(remoteAddress, encrypted) {
    super();
    this.remoteAddress = remoteAddress;
    this.remoteFamily = remoteAddress === undefined ? undefined : remoteAddress.includes(':') ? 'IPv6' : 'IPv4';
    this.remotePort = undefined;
    this.localAddress = undefined;
    this.localPort = undefined;
    this._encrypted = encrypted;
    this.readable = true;
    this.writable = true;
    this.destroyed = false;
  }
  get encrypted() {
    return this._encrypted() || undefined;
  }
  setTimeout() {
    return this;
  }
  setNoDelay() {
    return this;
  }
  setKeepAlive() {
    return this;
  }
  ref() {
    return this;
  }
  unref() {
    return this;
  }
  address() {
    return {};
  }
  destroy() {
    this.destroyed = true;
    return this;
  }
  end() {
    return this;
  }
}

// ---------------------------------------------------------------------------
// wasi:http plumbing

// How much one blocking-read asks for, and the most one
// blocking-write-and-flush accepts.
const READ_CHUNK = 65536n;
const WRITE_CHUNK = 4096;
// The most response body Shoal's worker sends with the head (MAX_DATA).
const ONE_FRAME = 65536;

// Drops a wasi resource now rather than when the engine collects it: a
// reused instance serves many requests, and the host keeps every handle the
// guest has not dropped.
function dispose(resource) {
  if (resource) {
    try {
      resource[Symbol.dispose]();
    } catch {}
  }
}

// Header values are bytes; Node reads and writes them as latin1.
function latin1(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return s;
}

function latin1Bytes(text) {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

function methodName(method) {
  return method.tag === 'other' ? method.val : method.tag.toUpperCase();
}

// SpiderMonkey's out-of-memory exception (a string, as no Error object can
// be made).
function outOfMemory(err) {
  return err === 'out of memory' || (err instanceof Error && err.message === 'out of memory');
}

// A stream-error or header-error thrown by a wasi:http call, in words.
function wasiError(err) {
  const payload = err && err.payload;
  if (!payload) return err;
  if (payload.tag === 'last-operation-failed' && payload.val) {
    let detail = 'I/O error';
    try {
      detail = payload.val.toDebugString();
    } catch {}
    dispose(payload.val);
    return new Error(detail);
  }
  return new Error(payload.tag);
}

// The last non-empty entry of an X-Forwarded-For value, or undefined.
function lastHop(xff) {
  let end = xff ? xff.length : 0;
  while (end > 0) {
    const start = xff.lastIndexOf(',', end - 1) + 1;
    const hop = xff.slice(start, end).trim();
    if (hop) return hop;
    end = start - 1;
  }
  return undefined;
}

// ---------------------------------------------------------------------------
// IncomingMessage (the `req` argument)

export class IncomingMessage extends EventEmitter {
  // `request` is the wasi:http incoming-request; the message owns it. What
  // it carries is read from the host when the app first asks (each call
  // into the host costs microseconds in the engine's interpreter): kubia
  // reads one header and nothing else.
  constructor(request) {
    super();
    this._request = request;
    // Everything else starts at the prototype's defaults (below the class):
    // fewer stores per request in the engine's interpreter.
  }

  get trailers() {
    if (this._trailers === undefined) this._trailers = {};
    return this._trailers;
  }
  set trailers(value) {
    this._trailers = value;
  }

  get rawTrailers() {
    if (this._rawTrailers === undefined) this._rawTrailers = [];
    return this._rawTrailers;
  }
  set rawTrailers(value) {
    this._rawTrailers = value;
  }

  get method() {
    if (this._method === undefined) this._method = this._request ? methodName(this._request.method()) : 'GET';
    return this._method;
  }
  set method(value) {
    this._method = value;
  }

  get url() {
    if (this._url === undefined) this._url = (this._request && this._request.pathWithQuery()) || '/';
    return this._url;
  }
  set url(value) {
    this._url = value;
  }

  get headers() {
    if (this._headers === undefined) this._loadHeaders();
    return this._headers;
  }
  set headers(value) {
    this._headers = value;
  }

  get rawHeaders() {
    if (this._rawHeaders === undefined) this._loadHeaders();
    return this._rawHeaders;
  }
  set rawHeaders(value) {
    this._rawHeaders = value;
  }

  get socket() {
    if (this._socket === undefined) {
      // The Shoal gateway appends the peer address it saw to
      // X-Forwarded-For, so the last entry is the immediate peer (what Node
      // reports as remoteAddress).
      this._socket = new Socket(lastHop(this._header('x-forwarded-for')), () => this._encrypted());
    }
    return this._socket;
  }
  set socket(value) {
    this._socket = value;
  }

  get connection() {
    return this.socket;
  }
  set connection(value) {
    this._socket = value;
  }

  _encrypted() {
    const scheme = this._request && this._request.scheme();
    return Boolean(scheme && scheme.tag === 'HTTPS');
  }

  _fieldsHandle() {
    if (!this._fields && this._request) this._fields = this._request.headers();
    return this._fields;
  }

  // One header's value (repeated fields joined with ", "), or undefined.
  _header(name) {
    if (this._headers !== undefined) return this._headers[name];
    const fields = this._fieldsHandle();
    const values = fields ? fields.get(name) : [];
    if (values.length === 1) return latin1(values[0]);
    return values.length ? values.map(latin1).join(', ') : undefined;
  }

  _loadHeaders() {
    const fields = this._fieldsHandle();
    const entries = fields ? fields.entries() : [];
    const headers = {};
    const rawHeaders = [];
    // wasi:http carries the Host header as the authority.
    const authority = this._request && this._request.authority();
    if (authority && !entries.some(([name]) => name === 'host')) entries.unshift(['host', latin1Bytes(authority)]);
    for (const [name, bytes] of entries) {
      const value = latin1(bytes);
      rawHeaders.push(name, value);
      if (name === 'set-cookie') (headers[name] ||= []).push(value);
      else headers[name] = name in headers ? headers[name] + ', ' + value : value;
    }
    if (this._headers === undefined) this._headers = headers;
    if (this._rawHeaders === undefined) this._rawHeaders = rawHeaders;
  }

  on(name, listener) {
    super.on(name, listener);
    // Reading starts once someone listens for the body (or its end).
    if ((name === 'data' || name === 'end') && this._flowing === null) this.resume();
    return this;
  }

  addListener(name, listener) {
    return this.on(name, listener);
  }

  once(name, listener) {
    const wrapped = (...args) => {
      this.off(name, wrapped);
      listener.apply(this, args);
    };
    wrapped.listener = listener;
    return this.on(name, wrapped);
  }

  off(name, listener) {
    const l = this.listeners(name).find((f) => f === listener || f.listener === listener);
    return super.off(name, l || listener);
  }

  removeListener(name, listener) {
    return this.off(name, listener);
  }

  setEncoding(encoding) {
    this._encoding = String(encoding || 'utf8').toLowerCase();
    if (this._encoding === 'utf8' || this._encoding === 'utf-8') this._decoder = new TextDecoder();
    return this;
  }

  setTimeout(_ms, cb) {
    if (typeof cb === 'function') this.on('timeout', cb);
    return this;
  }

  isPaused() {
    return this._flowing === false;
  }

  pause() {
    if (this._flowing !== false) this._flowing = false;
    return this;
  }

  resume() {
    this._flowing = true;
    if (this._resumeWaiter) {
      const w = this._resumeWaiter;
      this._resumeWaiter = null;
      w();
    }
    if (!this._started) {
      this._started = true;
      this._pump();
    }
    return this;
  }

  pipe(dest, { end = true } = {}) {
    this.on('data', (chunk) => dest.write(chunk));
    if (end) this.on('end', () => dest.end());
    return dest;
  }

  unpipe() {
    return this;
  }

  destroy(err) {
    this.destroyed = true;
    this._releaseBody();
    // Asynchronously, as in Node: a response ended right after destroy() wins.
    if (err) queueMicrotask(() => this._fail(err));
    return this;
  }

  // Drops the body's stream and the body (children first). Reading stops
  // there if it was under way (the response is over): no 'end', no error.
  _releaseBody() {
    if (this._stream) this._cutOff = true;
    dispose(this._stream);
    dispose(this._body);
    this._stream = this._body = null;
  }

  // Drops everything the message holds from the host. Called when the
  // next request starts, so that what the app did not read is still there
  // for code that runs after the response (a timer, say).
  _release() {
    this._releaseBody();
    dispose(this._fields);
    dispose(this._request);
    this._fields = this._request = null;
  }

  _decode(bytes) {
    if (this._decoder) return this._decoder.decode(bytes, { stream: true });
    const buf = toBuffer(bytes);
    return this._encoding ? buf.toString(this._encoding) : buf;
  }

  // Emits an event to the app's listeners. An exception thrown by a listener
  // is a bug in the app, not a body-read error: it is handled like a throwing
  // request handler (500, or the started response is aborted) and reading
  // stops. Returns false if a listener threw.
  _emitSafe(name, ...args) {
    try {
      this.emit(name, ...args);
      return true;
    } catch (err) {
      this.destroyed = true;
      this._releaseBody();
      if (this._response) this._response._fail500(err);
      else console.error('Uncaught exception in a request listener:', err);
      return false;
    }
  }

  // Reading the request body failed: 'error' for the app if it listens,
  // otherwise (Node would crash) a 500 / aborted response.
  _fail(err) {
    if (this.listenerCount('error')) this._emitSafe('error', err);
    else if (this._response) this._response._fail500(err, 'Error reading request body:');
    else console.error('Error reading request body:', err);
  }

  _finish() {
    if (this._decoder) {
      const rest = this._decoder.decode();
      if (rest && !this._emitSafe('data', rest)) return;
    }
    this.complete = true;
    this.readable = false;
    this.readableEnded = true;
    if (this._emitSafe('end')) this._emitSafe('close');
  }

  // The body's chunks, read from the host as they arrive (a blocking read
  // only blocks this instance, which serves this one request).
  async *_chunks() {
    if (!this._request) return;
    this._body = this._request.consume();
    this._stream = this._body.stream();
    for (;;) {
      let chunk;
      try {
        chunk = this._stream.blockingRead(READ_CHUNK);
      } catch (err) {
        if (err && err.payload && err.payload.tag === 'closed') break;
        throw wasiError(err);
      }
      // The bindings' arrays come from another realm: copy into this one's.
      if (chunk.length) yield chunk instanceof Uint8Array ? chunk : new Uint8Array(chunk);
      // Let the app's listeners (and pause()) run between chunks.
      await undefined;
      if (this.destroyed || this._cutOff) return;
    }
    dispose(this._stream);
    dispose(this._body);
    this._stream = this._body = null;
  }

  async _pump() {
    const chunks = this._chunks();
    for (;;) {
      let next;
      try {
        next = await chunks.next();
      } catch (err) {
        // A read error (listener exceptions never get here: see _emitSafe).
        if (!this.destroyed) this._fail(err);
        return;
      }
      if (next.done) break;
      while (this._flowing === false) await new Promise((r) => (this._resumeWaiter = r));
      if (this.destroyed || this._cutOff) return;
      if (!this._emitSafe('data', this._decode(next.value))) return;
    }
    if (!this.destroyed && !this._cutOff) this._finish();
  }

  // `for await (const chunk of req)` (use it instead of 'data' listeners).
  async *[Symbol.asyncIterator]() {
    if (this._started) throw new Error('The request body is already being consumed');
    this._started = true;
    this._flowing = true;
    for await (const bytes of this._chunks()) yield this._decode(bytes);
    if (!this._cutOff) this._finish();
  }
}

Object.assign(IncomingMessage.prototype, {
  httpVersion: '1.1',
  httpVersionMajor: 1,
  httpVersionMinor: 1,
  complete: false,
  aborted: false,
  readable: true,
  readableEnded: false,
  destroyed: false,
  _fields: null, // the request's header fields, once asked for
  _method: undefined,
  _url: undefined,
  _headers: undefined,
  _rawHeaders: undefined,
  _socket: undefined,
  _trailers: undefined,
  _rawTrailers: undefined,
  _body: null, // incoming-body, once reading starts
  _stream: null, // its input-stream
  _cutOff: false, // the body was dropped while being read
  _encoding: null,
  _decoder: null,
  _flowing: null, // null: not started, true: flowing, false: paused
  _started: false,
  _resumeWaiter: null,
  _response: null, // the ServerResponse for this request (set by its constructor)
});

// ---------------------------------------------------------------------------
// ServerResponse (the `res` argument)

export class ServerResponse extends EventEmitter {
  // `outparam` is the wasi:http response-outparam; `settle` is called once
  // the response is complete (or failed) and the request can end.
  constructor(req, outparam, settle) {
    super();
    this.req = req;
    req._response = this;
    this._headers = new Map(); // lowercased name -> [name, value]
    this._outparam = outparam; // until the head is sent
    this._settle = settle;
    // The rest starts at the prototype's defaults (below the class).
  }

  get socket() {
    return this.req.socket;
  }
  get connection() {
    return this.req.socket;
  }

  _assertHeadersNotSent(what) {
    if (this.headersSent) throw httpError('ERR_HTTP_HEADERS_SENT', 'Cannot ' + what + ' headers after they are sent to the client');
  }

  setHeader(name, value) {
    this._assertHeadersNotSent('set');
    validateHeaderName(name);
    validateHeaderValue(name, value);
    this._headers.set(name.toLowerCase(), [name, Array.isArray(value) ? value.map(String) : value]);
    return this;
  }

  appendHeader(name, value) {
    this._assertHeadersNotSent('append');
    validateHeaderName(name);
    validateHeaderValue(name, value);
    const prev = this._headers.get(name.toLowerCase());
    const v = prev ? [].concat(prev[1], value).map(String) : value;
    this._headers.set(name.toLowerCase(), [prev ? prev[0] : name, v]);
    return this;
  }

  setHeaders(headers) {
    const entries = typeof headers.entries === 'function' ? headers.entries() : Object.entries(headers);
    for (const [k, v] of entries) this.setHeader(k, v);
    return this;
  }

  getHeader(name) {
    const h = this._headers.get(String(name).toLowerCase());
    return h ? h[1] : undefined;
  }

  getHeaders() {
    const out = Object.create(null);
    for (const [k, [, v]] of this._headers) out[k] = v;
    return out;
  }

  getHeaderNames() {
    return [...this._headers.keys()];
  }

  getRawHeaderNames() {
    return [...this._headers.values()].map(([n]) => n);
  }

  hasHeader(name) {
    return this._headers.has(String(name).toLowerCase());
  }

  removeHeader(name) {
    this._assertHeadersNotSent('remove');
    this._headers.delete(String(name).toLowerCase());
  }

  writeHead(statusCode, statusMessage, headers) {
    this._assertHeadersNotSent('write');
    if (typeof statusMessage !== 'string') {
      headers = statusMessage;
      statusMessage = undefined;
    }
    const code = statusCode | 0;
    if (code !== Number(statusCode) || code < 100 || code > 999) {
      throw httpError('ERR_HTTP_INVALID_STATUS_CODE', 'Invalid status code: ' + statusCode, RangeError);
    }
    this.statusCode = code;
    if (statusMessage !== undefined) this.statusMessage = statusMessage;
    if (Array.isArray(headers)) {
      // Either [[name, value], ...] or a flat [name, value, name, value, ...].
      const pairs = headers.length && Array.isArray(headers[0]) ? headers : [];
      if (!pairs.length) {
        if (headers.length % 2 !== 0) throw httpError('ERR_INVALID_ARG_VALUE', 'The argument \'headers\' is invalid', TypeError);
        for (let i = 0; i < headers.length; i += 2) pairs.push([headers[i], headers[i + 1]]);
      }
      for (const [k, v] of pairs) this.appendHeader(k, v);
    } else if (headers && typeof headers === 'object') {
      for (const k of Object.keys(headers)) if (headers[k] !== undefined) this.setHeader(k, headers[k]);
    }
    this._implicitHeader();
    return this;
  }

  _implicitHeader() {
    if (this.headersSent) return;
    if (this.statusMessage === undefined) this.statusMessage = STATUS_CODES[this.statusCode] || 'unknown';
    this.headersSent = true;
  }

  flushHeaders() {
    this._implicitHeader();
    this._sendHead(null);
  }

  writeContinue() {}
  writeProcessing() {}
  writeEarlyHints() {}
  addTrailers() {}
  cork() {}
  uncork() {}

  setTimeout(_ms, cb) {
    if (typeof cb === 'function') this.on('timeout', cb);
    return this;
  }

  _nullBody() {
    const status = this.statusCode;
    return status === 204 || status === 205 || status === 304;
  }

  // The header fields, in one host call (or field by field, dropping the
  // ones the host refuses, if it rejects the list). `length` is the body's
  // size when the whole body is known (end() without write()).
  _fields(length) {
    const list = [];
    for (const [lower, [name, value]] of this._headers) {
      if (HOP_BY_HOP.has(lower)) continue;
      if (lower === 'content-length' && this._nullBody()) continue;
      for (const v of Array.isArray(value) ? value : [value]) list.push([name, latin1Bytes(String(v))]);
    }
    // A body that comes with the head whole gets its content-length from
    // Shoal's gateway; a larger one says it here.
    if (length !== null && length > ONE_FRAME && !this._nullBody() && !this._headers.has('content-length')) {
      list.push(['content-length', latin1Bytes(String(length))]);
    }
    // An empty list is one cheap call (from-list costs ~20 µs here).
    if (list.length === 0) return new Fields();
    try {
      return Fields.fromList(list);
    } catch {
      const fields = new Fields();
      for (const [name, value] of list) {
        try {
          fields.append(name, value);
        } catch (err) {
          console.error('http: dropping response header ' + JSON.stringify(name) + ': ' + wasiError(err).message);
        }
      }
      return fields;
    }
  }

  // Sends the status and headers (once) and opens the body's stream.
  _sendHead(length) {
    if (!this._outparam) return;
    const response = new OutgoingResponse(this._fields(length));
    if (this.statusCode !== 200) response.setStatusCode(this.statusCode);
    this._body = response.body();
    const outparam = this._outparam;
    this._outparam = null;
    ResponseOutparam.set(outparam, { tag: 'ok', val: response });
    this._stream = this._body.write();
    this.chunkedEncoding = length === null && !this._headers.has('content-length');
  }

  // Writes bytes to the body's stream; false if the client is gone.
  _writeBytes(bytes) {
    if (!this._stream || this._nullBody()) return true;
    try {
      if (bytes.byteLength <= WRITE_CHUNK) {
        if (bytes.byteLength) this._stream.blockingWriteAndFlush(bytes);
        return true;
      }
      for (let at = 0; at < bytes.byteLength; at += WRITE_CHUNK) {
        this._stream.blockingWriteAndFlush(bytes.subarray(at, at + WRITE_CHUNK));
      }
      return true;
    } catch (err) {
      // The client went away (or the host refused the body): stop writing.
      this._abort();
      this.emit('close');
      return false;
    }
  }

  // Finishes the body, so the client gets a complete response.
  _finishBody() {
    dispose(this._stream);
    this._stream = null;
    if (this._body) {
      const body = this._body;
      this._body = null;
      try {
        OutgoingBody.finish(body, undefined);
      } catch (err) {
        console.error('http: finishing the response body failed: ' + wasiError(err).message);
      }
    }
  }

  // Drops the body without finishing it: the host cuts the response off
  // (the client sees a truncated body, not a hang).
  _abort(fatal) {
    this.destroyed = true;
    this.writableEnded = this.finished = true;
    this.writable = false;
    dispose(this._stream);
    dispose(this._body);
    this._stream = this._body = null;
    this._done(fatal);
  }

  // The request is over: `fatal` (an error the instance must not outlive)
  // ends the instance with it.
  _done(fatal) {
    const settle = this._settle;
    this._settle = null;
    if (settle) settle(fatal);
  }

  write(chunk, encoding, cb) {
    if (typeof encoding === 'function') [cb, encoding] = [encoding, undefined];
    if (this.destroyed) {
      if (typeof cb === 'function') queueMicrotask(() => cb(httpError('ERR_STREAM_DESTROYED', 'Cannot call write after a stream was destroyed')));
      return false;
    }
    if (this.writableEnded) {
      const err = httpError('ERR_STREAM_WRITE_AFTER_END', 'write after end');
      if (typeof cb === 'function') queueMicrotask(() => cb(err));
      if (this.listenerCount('error')) queueMicrotask(() => this.emit('error', err));
      else console.error('http: res.write() after res.end() ignored');
      return false;
    }
    if (chunk === null) throw httpError('ERR_STREAM_NULL_VALUES', 'May not write null values to stream', TypeError);
    const bytes = toBytes(chunk, encoding);
    this._implicitHeader();
    this._sendHead(null);
    const ok = this._writeBytes(bytes);
    if (typeof cb === 'function') queueMicrotask(cb);
    return ok;
  }

  end(chunk, encoding, cb) {
    if (typeof chunk === 'function') [cb, chunk, encoding] = [chunk, undefined, undefined];
    else if (typeof encoding === 'function') [cb, encoding] = [encoding, undefined];
    if (this.writableEnded) {
      if (typeof cb === 'function') queueMicrotask(cb);
      return this;
    }
    const bytes = chunk === undefined || chunk === null ? null : toBytes(chunk, encoding);
    this._implicitHeader();
    this._sendHead(bytes ? bytes.byteLength : 0);
    if (bytes && bytes.byteLength && !this._writeBytes(bytes)) return this;
    this._finishBody();
    this.writableEnded = true;
    this.finished = true;
    this.writable = false;
    queueMicrotask(() => {
      this.writableFinished = true;
      try {
        this.emit('finish');
        this.emit('close');
        if (typeof cb === 'function') cb();
      } catch (err) {
        console.error('Uncaught exception in a response listener:', err);
      }
      this._done();
    });
    return this;
  }

  destroy(err) {
    if (!this._outparam) {
      if (!this.writableEnded) this._abort();
    } else {
      this._fail500(err || new Error('response destroyed before it was sent'));
    }
    return this;
  }

  // Handler failure: 500 if nothing was sent yet, otherwise the body is cut
  // off (the client sees a truncated response, not a hang).
  _fail500(err, what = 'Error in HTTP request handler:') {
    console.error(what, err);
    // The engine ran out of memory: answer, then let the instance go (the
    // host discards an instance whose call fails) rather than serve on in
    // a heap that could not allocate.
    const fatal = outOfMemory(err) ? err : undefined;
    if (this._outparam) {
      this.headersSent = true;
      this.writableEnded = this.finished = true;
      this.writable = false;
      this.statusCode = 500;
      this._headers = new Map([['content-type', ['content-type', 'text/plain; charset=utf-8']]]);
      const body = latin1Bytes('Internal Server Error\n');
      this._sendHead(body.byteLength);
      this._writeBytes(body);
      this._finishBody();
      this._done(fatal);
    } else if (!this.writableEnded) {
      this._abort(fatal);
    } else {
      this._done(fatal);
    }
  }
}

Object.assign(ServerResponse.prototype, {
  statusCode: 200,
  statusMessage: undefined,
  sendDate: true,
  headersSent: false,
  writableEnded: false,
  writableFinished: false,
  finished: false,
  writable: true,
  destroyed: false,
  chunkedEncoding: false,
  strictContentLength: false,
  _body: null, // outgoing-body, once the head is sent
  _stream: null, // its output-stream
});

// ---------------------------------------------------------------------------
// Server

const servers = [];

export class Server extends EventEmitter {
  constructor(options, requestListener) {
    super();
    if (typeof options === 'function') {
      requestListener = options;
      options = {};
    }
    if (typeof requestListener === 'function') this.on('request', requestListener);
    this.listening = false;
    this.timeout = 0;
    this.keepAliveTimeout = 5000;
    this.headersTimeout = 60000;
    this.requestTimeout = 300000;
    this.maxHeadersCount = null;
    this._port = null;
    servers.push(this);
  }

  // listen([port[, host[, backlog]]][, callback]) / listen(options[, callback]):
  // nothing to bind (the host owns the socket); just record and report.
  listen(...args) {
    const cb = typeof args[args.length - 1] === 'function' ? args.pop() : undefined;
    const first = args[0];
    let port = first && typeof first === 'object' ? first.port : first;
    port = port === undefined || port === null || port === '' ? 0 : Number(port);
    this._port = Number.isFinite(port) ? port : 0;
    this.listening = true;
    if (cb) this.once('listening', cb);
    queueMicrotask(() => this.emit('listening'));
    return this;
  }

  close(cb) {
    this.listening = false;
    queueMicrotask(() => {
      this.emit('close');
      if (typeof cb === 'function') cb();
    });
    return this;
  }

  address() {
    return this.listening ? { address: '::', family: 'IPv6', port: this._port } : null;
  }

  setTimeout(ms, cb) {
    this.timeout = ms;
    if (typeof cb === 'function') this.on('timeout', cb);
    return this;
  }

  closeAllConnections() {}
  closeIdleConnections() {}

  ref() {
    return this;
  }

  unref() {
    return this;
  }
}

export function createServer(options, requestListener) {
  return new Server(options, requestListener);
}

// Outbound HTTP through this module is not implemented; fetch() is.
export class Agent {
  constructor(options) {
    this.options = options || {};
  }
  destroy() {}
}
export const globalAgent = new Agent();

// ---------------------------------------------------------------------------
// Client side: http.request() and http.get() on fetch(), which runs on
// wasi:http's outgoing-handler (under Shoal, a call to another service by
// its name, or out where the manifest's spec.allowOutbound allows it). The
// request body is sent whole when end() is called; the response body comes
// whole too, as one 'data' event and 'end'.

export class IncomingClientMessage extends EventEmitter {
  constructor(answer) {
    super();
    this.statusCode = answer.status;
    this.statusMessage = answer.statusText || STATUS_CODES[answer.status] || '';
    this.httpVersion = '1.1';
    this.headers = {};
    this.rawHeaders = [];
    for (const [name, value] of answer.headers) {
      this.rawHeaders.push(name, value);
      this.headers[name] = name in this.headers ? this.headers[name] + ', ' + value : value;
    }
    this.complete = false;
    this._encoding = null;
  }

  setEncoding(encoding) {
    this._encoding = String(encoding || 'utf8').toLowerCase();
    return this;
  }

  resume() {
    return this;
  }

  pause() {
    return this;
  }

  _deliver(bytes) {
    if (bytes.length > 0) {
      const buf = toBuffer(bytes);
      this.emit('data', this._encoding ? buf.toString(this._encoding) : buf);
    }
    this.complete = true;
    this.emit('end');
    this.emit('close');
  }
}

export class ClientRequest extends EventEmitter {
  constructor(url, options, callback) {
    super();
    this.method = String(options.method || 'GET').toUpperCase();
    this.path = options.path || '/';
    this._url = url;
    this._headers = new Map();
    for (const [name, value] of Object.entries(options.headers || {})) this.setHeader(name, value);
    this._chunks = [];
    this.finished = false;
    this.destroyed = false;
    if (typeof callback === 'function') this.once('response', callback);
  }

  setHeader(name, value) {
    validateHeaderName(name);
    validateHeaderValue(name, value);
    this._headers.set(String(name).toLowerCase(), [name, value]);
    return this;
  }

  getHeader(name) {
    const entry = this._headers.get(String(name).toLowerCase());
    return entry && entry[1];
  }

  removeHeader(name) {
    this._headers.delete(String(name).toLowerCase());
  }

  setTimeout(ms, callback) {
    if (typeof callback === 'function') this.once('timeout', callback);
    this._timer = setTimeout(() => this.emit('timeout'), ms);
    return this;
  }

  write(chunk, encoding, callback) {
    if (typeof encoding === 'function') [callback, encoding] = [encoding, undefined];
    if (chunk !== undefined && chunk !== null) this._chunks.push(toBytes(chunk, encoding));
    if (typeof callback === 'function') queueMicrotask(callback);
    return true;
  }

  end(chunk, encoding, callback) {
    if (typeof chunk === 'function') [callback, chunk] = [chunk, undefined];
    if (typeof encoding === 'function') [callback, encoding] = [encoding, undefined];
    if (this.finished) return this;
    if (chunk !== undefined && chunk !== null) this._chunks.push(toBytes(chunk, encoding));
    this.finished = true;
    if (typeof callback === 'function') this.once('finish', callback);
    this._send();
    return this;
  }

  abort() {
    this.destroy();
  }

  destroy(err) {
    if (this.destroyed) return this;
    this.destroyed = true;
    clearTimeout(this._timer);
    if (err) queueMicrotask(() => this.emit('error', err));
    queueMicrotask(() => this.emit('close'));
    return this;
  }

  _send() {
    const headers = [];
    for (const [name, value] of this._headers.values()) {
      for (const one of Array.isArray(value) ? value : [value]) headers.push([name, String(one)]);
    }
    const init = { method: this.method, headers };
    if (this._chunks.length > 0 && this.method !== 'GET' && this.method !== 'HEAD') {
      init.body = this._chunks.length === 1 ? this._chunks[0] : Buffer.concat(this._chunks);
    }
    this.emit('finish');
    fetch(this._url, init)
      .then((answer) =>
        answer.arrayBuffer().then((body) => {
          clearTimeout(this._timer);
          if (this.destroyed) return;
          const res = new IncomingClientMessage(answer);
          this.emit('response', res);
          // The app's 'data' and 'end' listeners are set in its response
          // callback, which ran just now.
          queueMicrotask(() => res._deliver(new Uint8Array(body)));
        }),
      )
      .catch((err) => {
        clearTimeout(this._timer);
        if (!this.destroyed) this.emit('error', err instanceof Error ? err : new Error(String(err)));
      });
  }
}

// http.request(url[, options][, callback]) or http.request(options[, callback]).
export function request(url, options, callback) {
  if (typeof options === 'function') [callback, options] = [options, undefined];
  if (typeof url === 'object' && url !== null && !(url instanceof URL)) [options, url] = [url, undefined];
  options = { ...(options || {}) };
  let target;
  if (url !== undefined) {
    target = new URL(String(url));
    if (options.path) target = new URL(options.path, target);
  } else {
    const protocol = options.protocol || 'http:';
    const host = options.hostname || (options.host || 'localhost').replace(/:\d+$/, '');
    const port = options.port ? ':' + options.port : '';
    target = new URL(protocol + '//' + host + port + (options.path || '/'));
  }
  options.path = target.pathname + target.search;
  return new ClientRequest(target.href, options, callback);
}

// http.get(): http.request() with GET, ended at once.
export function get(url, options, callback) {
  const req = request(url, options, callback);
  req.end();
  return req;
}

// ---------------------------------------------------------------------------
// Dispatch: one wasi:http/incoming-handler.handle call -> one 'request' on
// the listening server.

function pickServer() {
  // The first server that called listen(); failing that, the last one created.
  return servers.find((s) => s.listening) || servers[servers.length - 1] || null;
}

// The message of the request before this one: the host resources it still
// holds go when the next request starts.
let previous = null;

// Serves one request; resolves once its response is complete (or failed),
// rejects (which fails the call: the host then discards the instance) after
// an error the instance must not outlive.
function dispatch(request, outparam) {
  markServing();
  if (previous) {
    previous._release();
    previous = null;
  }
  return new Promise((resolve, reject) => {
    // Reads nothing from the host yet: it cannot fail.
    const req = new IncomingMessage(request);
    previous = req;
    const res = new ServerResponse(req, outparam, (fatal) => {
      req._releaseBody();
      if (fatal === undefined) resolve();
      else reject(fatal);
    });
    const server = pickServer();
    if (!server) {
      res._fail500(new Error('the app never called http.createServer()'), 'No HTTP server:');
      return;
    }
    const listeners = server.listeners('request');
    if (listeners.length === 0) {
      res._fail500(new Error("the HTTP server has no 'request' handler (pass one to http.createServer())"));
      return;
    }
    const fail = (err) => res._fail500(err);
    for (const listener of listeners) {
      try {
        const ret = listener.call(server, req, res);
        if (ret && typeof ret.then === 'function') ret.then(undefined, fail);
      } catch (err) {
        fail(err);
        return;
      }
    }
  });
}

// The component's wasi:http/incoming-handler export (build.mjs re-exports it
// from the bundle's entry). Returning a promise makes the engine run its
// event loop (timers, promises, the request body's reads) until the
// response is complete, and one instance serves request after request,
// which StarlingMonkey's fetch event cannot (StarlingMonkey issue 247).
export const incomingHandler = {
  handle(request, outparam) {
    return dispatch(request, outparam);
  },
};

export default {
  STATUS_CODES,
  METHODS,
  maxHeaderSize,
  createServer,
  Server,
  IncomingMessage,
  ServerResponse,
  Agent,
  globalAgent,
  ClientRequest,
  request,
  get,
  validateHeaderName,
  validateHeaderValue,
};
