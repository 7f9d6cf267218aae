// Injected by build.mjs: esbuild replaces free references to these globals in
// the app (and its dependencies) with the exports below. `global` is mapped to
// `globalThis` with a define.
import { Buffer } from './buffer.js';
import { process } from './process.js';
import { isServing } from './runtime.js';

const immediates = new Map();
let nextImmediate = 1;

function setImmediate(fn, ...args) {
  const id = nextImmediate++;
  immediates.set(id, true);
  const run = () => {
    if (immediates.delete(id)) fn(...args);
  };
  // Timers only exist while serving; in the build snapshot use a microtask.
  if (isServing()) setTimeout(run, 0);
  else queueMicrotask(run);
  return id;
}

function clearImmediate(id) {
  immediates.delete(id);
}

export { Buffer, process, setImmediate, clearImmediate };
