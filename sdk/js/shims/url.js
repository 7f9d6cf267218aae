// Minimal `url` / `node:url` for Shoal JS services: the WHATWG URL classes plus
// the legacy url.parse()/format()/resolve() that older Node HTTP code uses
// (e.g. `url.parse(req.url, true).query`).

const _URL = globalThis.URL;
const _URLSearchParams = globalThis.URLSearchParams;
export { _URL as URL, _URLSearchParams as URLSearchParams };

export function parse(urlStr, parseQueryString = false) {
  const s = String(urlStr);
  const absolute = /^[A-Za-z][A-Za-z0-9+.-]*:/.test(s);
  let u;
  try {
    u = new _URL(s, absolute ? undefined : 'http://relative.invalid');
  } catch {
    u = new _URL('http://relative.invalid/');
  }
  const search = u.search || null;
  let query = search ? search.slice(1) : null;
  if (parseQueryString) {
    query = Object.create(null);
    for (const [k, v] of new _URLSearchParams(u.search)) {
      query[k] = k in query ? [].concat(query[k], v) : v;
    }
  }
  const pathname = u.pathname || null;
  return {
    protocol: absolute ? u.protocol : null,
    slashes: absolute ? s.slice(u.protocol.length).startsWith('//') : null,
    auth: absolute && u.username ? decodeURIComponent(u.username) + (u.password ? ':' + decodeURIComponent(u.password) : '') : null,
    host: absolute ? u.host || null : null,
    port: absolute ? u.port || null : null,
    hostname: absolute ? u.hostname || null : null,
    hash: u.hash || null,
    search: parseQueryString ? search || '' : search,
    query,
    pathname,
    path: (pathname || '') + (search || '') || null,
    href: absolute ? u.href : s,
  };
}

export function format(obj) {
  if (obj instanceof _URL) return obj.href;
  if (typeof obj === 'string') return obj;
  let out = '';
  if (obj.protocol) out += obj.protocol.endsWith(':') ? obj.protocol : obj.protocol + ':';
  if (obj.host || obj.hostname) {
    out += '//' + (obj.auth ? obj.auth + '@' : '');
    out += obj.host || obj.hostname + (obj.port ? ':' + obj.port : '');
  }
  out += obj.pathname || '';
  if (obj.search) out += obj.search.startsWith('?') ? obj.search : '?' + obj.search;
  else if (obj.query && typeof obj.query === 'object') {
    const q = new _URLSearchParams(obj.query).toString();
    if (q) out += '?' + q;
  }
  if (obj.hash) out += obj.hash.startsWith('#') ? obj.hash : '#' + obj.hash;
  return out;
}

export function resolve(from, to) {
  const base = new _URL(from, 'resolve://');
  const r = new _URL(to, base);
  return r.protocol === 'resolve:' ? r.pathname + r.search + r.hash : r.href;
}

export function fileURLToPath(u) {
  return decodeURIComponent(new _URL(u).pathname);
}

export function pathToFileURL(p) {
  return new _URL('file://' + encodeURI(p));
}

export default { URL: _URL, URLSearchParams: _URLSearchParams, parse, format, resolve, fileURLToPath, pathToFileURL };
