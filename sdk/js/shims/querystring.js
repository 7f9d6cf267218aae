// Minimal `querystring` / `node:querystring` for Shoal JS services.

export function parse(str, sep = '&', eq = '=') {
  const out = Object.create(null);
  if (typeof str !== 'string' || str === '') return out;
  for (const part of str.split(sep)) {
    if (!part) continue;
    const i = part.indexOf(eq);
    const k = unescape(i >= 0 ? part.slice(0, i) : part);
    const v = i >= 0 ? unescape(part.slice(i + eq.length)) : '';
    out[k] = k in out ? [].concat(out[k], v) : v;
  }
  return out;
}

export function stringify(obj, sep = '&', eq = '=') {
  if (!obj || typeof obj !== 'object') return '';
  const parts = [];
  for (const k of Object.keys(obj)) {
    const v = obj[k];
    for (const x of Array.isArray(v) ? v : [v]) {
      const s = typeof x === 'string' || typeof x === 'number' || typeof x === 'boolean' || typeof x === 'bigint' ? String(x) : '';
      parts.push(escape(k) + eq + escape(s));
    }
  }
  return parts.join(sep);
}

export function escape(s) {
  return encodeURIComponent(s);
}

export function unescape(s) {
  try {
    return decodeURIComponent(s.replace(/\+/g, ' '));
  } catch {
    return s;
  }
}

export const decode = parse;
export const encode = stringify;

export default { parse, stringify, escape, unescape, decode, encode };
