// Minimal `os` / `node:os` for Shoal JS services.
//
// hostname() reads $HOSTNAME from wasi:cli/environment each time it is called
// while serving a request (Shoal sets it to the replica name). Called from
// top-level code it runs at build time, inside the snapshot, where the
// environment is not available: it then returns 'localhost' and prints a
// warning in the build output.

import { buildWarning, envVar, isServing, startedAt } from './runtime.js';

export const EOL = '\n';
export const devNull = '/dev/null';

export function hostname() {
  if (!isServing()) {
    buildWarning(
      'os.hostname',
      "os.hostname() was called by top-level code, which runs at build time; it returned 'localhost'. Call it inside the request handler to get the replica's HOSTNAME.",
    );
    return 'localhost';
  }
  return envVar('HOSTNAME') || 'localhost';
}

export const platform = () => 'wasi';
export const type = () => 'WASI';
export const arch = () => 'wasm32';
export const machine = () => 'wasm32';
export const release = () => '0.2';
export const version = () => 'WASI 0.2';
export const endianness = () => 'LE';
export const cpus = () => [];
export const availableParallelism = () => 1;
export const loadavg = () => [0, 0, 0];
// A wasm32 instance can address at most 4 GiB; the real limit is set by the host.
export const totalmem = () => 4294967296;
export const freemem = () => 4294967296;
export const uptime = () => (startedAt() ? Math.floor((Date.now() - startedAt()) / 1000) : 0);
export const tmpdir = () => '/tmp';
export const homedir = () => '/';
export const networkInterfaces = () => ({});
export const userInfo = () => ({ uid: -1, gid: -1, username: 'shoal', homedir: '/', shell: null });
export const getPriority = () => 0;
export const setPriority = () => {};
export const constants = { signals: {}, errno: {}, priority: {} };

export default {
  EOL,
  devNull,
  hostname,
  platform,
  type,
  arch,
  machine,
  release,
  version,
  endianness,
  cpus,
  availableParallelism,
  loadavg,
  totalmem,
  freemem,
  uptime,
  tmpdir,
  homedir,
  networkInterfaces,
  userInfo,
  getPriority,
  setPriority,
  constants,
};
