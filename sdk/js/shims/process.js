// Minimal `process` (global, `process`, `node:process`) for Shoal JS services.
//
// process.env is a live view of wasi:cli/environment: a property read while
// serving a request returns the instance's value. Reads from top-level code
// happen at build time, inside the snapshot, where there is no environment:
// they return undefined (or a value assigned earlier) and print a warning in
// the build output. Assignments are kept in an overlay.

import EventEmitter from './events.cjs';
import { buildWarning, environment, isServing, startedAt, writeFd } from './runtime.js';

const overlay = new Map(); // name -> value, or undefined when deleted

function liveEnv() {
  const env = environment();
  const m = new Map(env || []);
  for (const [k, v] of overlay) {
    if (v === undefined) m.delete(k);
    else m.set(k, v);
  }
  return m;
}

function warnBuild(what) {
  if (!isServing()) {
    buildWarning(
      'process.env:' + what,
      `process.env${what} was read by top-level code, which runs at build time where the environment is empty; read it inside the request handler instead.`,
    );
  }
}

export const env = new Proxy(Object.create(null), {
  get(_t, key) {
    if (typeof key !== 'string') return undefined;
    warnBuild('.' + key);
    return liveEnv().get(key);
  },
  set(_t, key, value) {
    if (typeof key === 'string') overlay.set(key, String(value));
    return true;
  },
  deleteProperty(_t, key) {
    if (typeof key === 'string') overlay.set(key, undefined);
    return true;
  },
  has(_t, key) {
    if (typeof key !== 'string') return false;
    warnBuild(' (in)');
    return liveEnv().has(key);
  },
  ownKeys() {
    warnBuild(' (keys)');
    return [...liveEnv().keys()];
  },
  getOwnPropertyDescriptor(_t, key) {
    if (typeof key !== 'string') return undefined;
    const m = liveEnv();
    if (!m.has(key)) return undefined;
    return { value: m.get(key), writable: true, enumerable: true, configurable: true };
  },
  defineProperty(_t, key, desc) {
    if (typeof key === 'string') overlay.set(key, String(desc.value));
    return true;
  },
});

export const argv = ['/usr/local/bin/node', '/app.js'];
export const argv0 = 'node';
export const execArgv = [];
export const execPath = '/usr/local/bin/node';
export const platform = 'wasi';
export const arch = 'wasm32';
export const pid = 1;
export const ppid = 0;
export const title = 'shoal';
// Deliberately not claiming to be Node: libraries that see `versions.node`
// assume fs, net, child_process, ... which do not exist here.
export const version = '';
export const versions = {};
export const release = { name: 'shoal' };
export const config = {};
export const features = {};

export const cwd = () => '/';
export const chdir = () => {
  throw new Error('process.chdir() is not supported in Shoal JS services');
};
export const umask = () => 0o022;
export const uptime = () => (startedAt() ? (Date.now() - startedAt()) / 1000 : 0);
export const memoryUsage = Object.assign(() => ({ rss: 0, heapTotal: 0, heapUsed: 0, external: 0, arrayBuffers: 0 }), { rss: () => 0 });
export const cpuUsage = () => ({ user: 0, system: 0 });
export const nextTick = (fn, ...args) => queueMicrotask(() => fn(...args));
export const emitWarning = (warning) => console.error(typeof warning === 'string' ? 'Warning: ' + warning : warning);
export const exit = (code) => {
  throw new Error('process.exit(' + (code ?? '') + ') is not supported in Shoal JS services');
};
export const abort = () => {
  throw new Error('process.abort() is not supported in Shoal JS services');
};
export const kill = () => {
  throw new Error('process.kill() is not supported in Shoal JS services');
};

const nowNs = () => BigInt(Math.round((typeof performance !== 'undefined' ? performance.now() : Date.now()) * 1e6));
export const hrtime = Object.assign(
  (prev) => {
    const t = nowNs();
    let s = Number(t / 1000000000n);
    let ns = Number(t % 1000000000n);
    if (prev) {
      s -= prev[0];
      ns -= prev[1];
      if (ns < 0) {
        s--;
        ns += 1e9;
      }
    }
    return [s, ns];
  },
  { bigint: nowNs },
);

function makeStream(fd) {
  return {
    fd,
    isTTY: false,
    writable: true,
    write(chunk, encoding, cb) {
      if (typeof encoding === 'function') cb = encoding;
      writeFd(fd, typeof chunk === 'string' ? chunk : new Uint8Array(chunk.buffer ?? chunk, chunk.byteOffset ?? 0, chunk.byteLength));
      if (typeof cb === 'function') queueMicrotask(cb);
      return true;
    },
    end(chunk, encoding, cb) {
      if (chunk !== undefined && typeof chunk !== 'function') this.write(chunk, encoding, cb);
    },
    on() {
      return this;
    },
    once() {
      return this;
    },
  };
}
export const stdout = makeStream(1);
export const stderr = makeStream(2);
export const stdin = { fd: 0, isTTY: false, on() { return this; }, once() { return this; } };

const emitter = new EventEmitter();
export const process = Object.assign(emitter, {
  env,
  argv,
  argv0,
  execArgv,
  execPath,
  platform,
  arch,
  pid,
  ppid,
  title,
  version,
  versions,
  release,
  config,
  features,
  exitCode: undefined,
  cwd,
  chdir,
  umask,
  uptime,
  memoryUsage,
  cpuUsage,
  nextTick,
  emitWarning,
  exit,
  abort,
  kill,
  hrtime,
  stdout,
  stderr,
  stdin,
});

export default process;
