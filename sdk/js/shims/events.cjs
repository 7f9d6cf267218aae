// Minimal `events` / `node:events` (EventEmitter) for Shoal JS services.
// CommonJS on purpose: `require('events')` must return the class itself, as in Node.
'use strict';

class EventEmitter {
  constructor() {
    this._events = null; // a Map, made by the first listener
    this._maxListeners = EventEmitter.defaultMaxListeners;
  }

  _list(name) {
    if (!this._events) this._events = new Map();
    let l = this._events.get(name);
    if (!l) this._events.set(name, (l = []));
    return l;
  }

  on(name, listener) {
    if (typeof listener !== 'function') throw new TypeError('The "listener" argument must be of type function');
    if (this._events && this._events.has('newListener')) this.emit('newListener', name, listener);
    this._list(name).push({ listener, once: false });
    return this;
  }

  addListener(name, listener) {
    return this.on(name, listener);
  }

  prependListener(name, listener) {
    this._list(name).unshift({ listener, once: false });
    return this;
  }

  once(name, listener) {
    this.on(name, listener);
    const l = this._list(name);
    l[l.length - 1].once = true;
    return this;
  }

  prependOnceListener(name, listener) {
    this._list(name).unshift({ listener, once: true });
    return this;
  }

  off(name, listener) {
    const l = this._events && this._events.get(name);
    if (!l) return this;
    const i = l.findIndex((e) => e.listener === listener);
    if (i >= 0) l.splice(i, 1);
    if (l.length === 0) this._events.delete(name);
    return this;
  }

  removeListener(name, listener) {
    return this.off(name, listener);
  }

  removeAllListeners(name) {
    if (!this._events) return this;
    if (name === undefined) this._events.clear();
    else this._events.delete(name);
    return this;
  }

  emit(name, ...args) {
    const l = this._events && this._events.get(name);
    if (!l || l.length === 0) {
      if (name === 'error') {
        const err = args[0] instanceof Error ? args[0] : new Error('Unhandled error. (' + String(args[0]) + ')');
        throw err;
      }
      return false;
    }
    for (const e of [...l]) {
      if (e.once) this.off(name, e.listener);
      e.listener.apply(this, args);
    }
    return true;
  }

  listeners(name) {
    const l = this._events && this._events.get(name);
    return l ? l.map((e) => e.listener) : [];
  }

  rawListeners(name) {
    return this.listeners(name);
  }

  listenerCount(name) {
    const l = this._events && this._events.get(name);
    return l ? l.length : 0;
  }

  eventNames() {
    return this._events ? [...this._events.keys()] : [];
  }

  setMaxListeners(n) {
    this._maxListeners = n;
    return this;
  }

  getMaxListeners() {
    return this._maxListeners;
  }
}

EventEmitter.defaultMaxListeners = 10;
EventEmitter.captureRejections = false;
EventEmitter.errorMonitor = Symbol('events.errorMonitor');

EventEmitter.once = function once(emitter, name) {
  return new Promise((resolve, reject) => {
    const onError = (err) => {
      emitter.off(name, onEvent);
      reject(err);
    };
    const onEvent = (...args) => {
      if (name !== 'error') emitter.off('error', onError);
      resolve(args);
    };
    emitter.once(name, onEvent);
    if (name !== 'error') emitter.once('error', onError);
  });
};

EventEmitter.listenerCount = (emitter, name) => emitter.listenerCount(name);
EventEmitter.EventEmitter = EventEmitter;
EventEmitter.default = EventEmitter;

module.exports = EventEmitter;
