// Minimal `Buffer` (global, `buffer`, `node:buffer`) for Shoal JS services:
// a Uint8Array subclass with the pieces HTTP code commonly uses
// (from/alloc/concat/byteLength/isBuffer, toString(encoding), equals, ...).
// Encodings: utf8/utf-8, hex, base64, base64url, latin1/binary, ascii.

const encoder = new TextEncoder();

function normEnc(enc) {
  const e = String(enc ?? 'utf8').toLowerCase();
  switch (e) {
    case 'utf8':
    case 'utf-8':
      return 'utf8';
    case 'hex':
    case 'base64':
    case 'base64url':
    case 'ascii':
      return e;
    case 'latin1':
    case 'binary':
      return 'latin1';
    default:
      throw new TypeError('Unknown encoding: ' + enc);
  }
}

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
const B64_LOOKUP = new Int16Array(128).fill(-1);
for (let i = 0; i < 64; i++) B64_LOOKUP[B64.charCodeAt(i)] = i;
B64_LOOKUP['-'.charCodeAt(0)] = 62;
B64_LOOKUP['_'.charCodeAt(0)] = 63;

function base64Encode(bytes, url) {
  let out = '';
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    out += B64[n >> 18] + B64[(n >> 12) & 63] + B64[(n >> 6) & 63] + B64[n & 63];
  }
  if (i < bytes.length) {
    const n = (bytes[i] << 16) | ((i + 1 < bytes.length ? bytes[i + 1] : 0) << 8);
    out += B64[n >> 18] + B64[(n >> 12) & 63];
    out += i + 1 < bytes.length ? B64[(n >> 6) & 63] : url ? '' : '=';
    out += url ? '' : '=';
  }
  return url ? out.replace(/\+/g, '-').replace(/\//g, '_') : out;
}

function base64Decode(str) {
  const out = [];
  let acc = 0;
  let bits = 0;
  for (let i = 0; i < str.length; i++) {
    const c = str.charCodeAt(i);
    const v = c < 128 ? B64_LOOKUP[c] : -1;
    if (v < 0) {
      if (str[i] === '=') break;
      continue; // skip whitespace / invalid characters like Node
    }
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push((acc >> bits) & 255);
    }
  }
  return out;
}

function encodeString(str, enc) {
  switch (normEnc(enc)) {
    case 'utf8':
      return encoder.encode(str);
    case 'hex': {
      const n = str.length >> 1;
      const out = new Uint8Array(n);
      for (let i = 0; i < n; i++) {
        const b = parseInt(str.substr(i * 2, 2), 16);
        if (Number.isNaN(b)) return out.subarray(0, i);
        out[i] = b;
      }
      return out;
    }
    case 'base64':
    case 'base64url':
      return Uint8Array.from(base64Decode(str));
    case 'ascii':
    case 'latin1': {
      const out = new Uint8Array(str.length);
      for (let i = 0; i < str.length; i++) out[i] = str.charCodeAt(i) & 255;
      return out;
    }
  }
}

export class Buffer extends Uint8Array {
  static from(value, encodingOrOffset, length) {
    if (typeof value === 'string') {
      const bytes = encodeString(value, encodingOrOffset);
      return new Buffer(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    }
    if (value instanceof ArrayBuffer || (typeof SharedArrayBuffer !== 'undefined' && value instanceof SharedArrayBuffer)) {
      const off = encodingOrOffset >>> 0;
      return new Buffer(value, off, length === undefined ? value.byteLength - off : length);
    }
    if (ArrayBuffer.isView(value)) {
      const b = new Buffer(value.byteLength);
      b.set(new Uint8Array(value.buffer, value.byteOffset, value.byteLength));
      return b;
    }
    if (value && value.type === 'Buffer' && Array.isArray(value.data)) return Buffer.from(value.data);
    if (Array.isArray(value) || (value && typeof value.length === 'number')) {
      const b = new Buffer(value.length);
      for (let i = 0; i < value.length; i++) b[i] = Number(value[i]) & 255;
      return b;
    }
    throw new TypeError('The first argument must be of type string, Buffer, ArrayBuffer, Array, or Array-like Object');
  }

  static alloc(size, fill, encoding) {
    const b = new Buffer(size);
    if (fill !== undefined && fill !== 0) b.fill(fill, 0, b.length, encoding);
    return b;
  }

  static allocUnsafe(size) {
    return new Buffer(size);
  }

  static allocUnsafeSlow(size) {
    return new Buffer(size);
  }

  static isBuffer(v) {
    return v instanceof Buffer;
  }

  static isEncoding(enc) {
    try {
      normEnc(enc);
      return true;
    } catch {
      return false;
    }
  }

  static byteLength(v, enc) {
    if (typeof v === 'string') return encodeString(v, enc).byteLength;
    return v.byteLength;
  }

  static concat(list, totalLength) {
    if (totalLength === undefined) totalLength = list.reduce((n, b) => n + b.length, 0);
    const out = Buffer.alloc(totalLength);
    let off = 0;
    for (const b of list) {
      if (off >= totalLength) break;
      const part = b.length > totalLength - off ? b.subarray(0, totalLength - off) : b;
      out.set(part, off);
      off += part.length;
    }
    return out;
  }

  static compare(a, b) {
    const n = Math.min(a.length, b.length);
    for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
    return a.length === b.length ? 0 : a.length < b.length ? -1 : 1;
  }

  toString(encoding, start = 0, end = this.length) {
    const bytes = this.subarray(start, end);
    switch (normEnc(encoding)) {
      case 'utf8':
        return new TextDecoder().decode(bytes);
      case 'hex': {
        let s = '';
        for (const b of bytes) s += b.toString(16).padStart(2, '0');
        return s;
      }
      case 'base64':
        return base64Encode(bytes, false);
      case 'base64url':
        return base64Encode(bytes, true);
      case 'ascii': {
        let s = '';
        for (const b of bytes) s += String.fromCharCode(b & 127);
        return s;
      }
      case 'latin1': {
        let s = '';
        for (const b of bytes) s += String.fromCharCode(b);
        return s;
      }
    }
  }

  toJSON() {
    return { type: 'Buffer', data: Array.from(this) };
  }

  equals(other) {
    return Buffer.compare(this, other) === 0;
  }

  compare(other) {
    return Buffer.compare(this, other);
  }

  // Node's slice() shares memory, like subarray().
  slice(start, end) {
    return this.subarray(start, end);
  }

  copy(target, targetStart = 0, sourceStart = 0, sourceEnd = this.length) {
    const part = this.subarray(sourceStart, Math.min(sourceEnd, sourceStart + target.length - targetStart));
    target.set(part, targetStart);
    return part.length;
  }

  fill(value, offset = 0, end = this.length, encoding) {
    if (typeof value === 'string') {
      const bytes = encodeString(value, encoding);
      if (bytes.length === 0) return super.fill(0, offset, end);
      for (let i = offset, j = 0; i < end; i++, j = (j + 1) % bytes.length) this[i] = bytes[j];
      return this;
    }
    return super.fill(value, offset, end);
  }

  write(string, offset = 0, length, encoding) {
    if (typeof offset === 'string') [encoding, offset] = [offset, 0];
    if (typeof length === 'string') [encoding, length] = [length, undefined];
    const bytes = encodeString(string, encoding);
    const n = Math.min(bytes.length, this.length - offset, length ?? Infinity);
    this.set(bytes.subarray(0, n), offset);
    return n;
  }

  includes(value, byteOffset, encoding) {
    return this.indexOf(value, byteOffset, encoding) !== -1;
  }

  indexOf(value, byteOffset = 0, encoding) {
    if (typeof value === 'number') return super.indexOf(value, byteOffset);
    const needle = typeof value === 'string' ? encodeString(value, encoding) : value;
    if (needle.length === 0) return byteOffset <= this.length ? byteOffset : this.length;
    outer: for (let i = byteOffset; i <= this.length - needle.length; i++) {
      for (let j = 0; j < needle.length; j++) if (this[i + j] !== needle[j]) continue outer;
      return i;
    }
    return -1;
  }

  readUInt8(o = 0) {
    return this[o];
  }
  readUInt16BE(o = 0) {
    return (this[o] << 8) | this[o + 1];
  }
  readUInt16LE(o = 0) {
    return this[o] | (this[o + 1] << 8);
  }
  readUInt32BE(o = 0) {
    return new DataView(this.buffer, this.byteOffset).getUint32(o, false);
  }
  readUInt32LE(o = 0) {
    return new DataView(this.buffer, this.byteOffset).getUint32(o, true);
  }
}

// Keep the public name even if the bundler renames the class binding.
Object.defineProperty(Buffer, 'name', { value: 'Buffer' });

export const constants = { MAX_LENGTH: 2 ** 31 - 1, MAX_STRING_LENGTH: 2 ** 29 - 24 };
export const kMaxLength = constants.MAX_LENGTH;

/** Wraps bytes (no copy) as a Buffer. */
export function toBuffer(u8) {
  return u8 instanceof Buffer ? u8 : new Buffer(u8.buffer, u8.byteOffset, u8.byteLength);
}

export default { Buffer, constants, kMaxLength };
