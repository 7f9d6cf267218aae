'use strict';
// Preloaded by bench/kubia.sh with `node -r bench/listen-port.js app.js`.
//
// samples/hello-node/app.js hard-codes `listen(8080)`. This makes every
// http.Server#listen use $PORT (and $HOST, when set) instead, so the app
// runs unchanged on a free port. Without $PORT it changes nothing.

const http = require('http');

const port = process.env.PORT;
const host = process.env.HOST;

if (port) {
  const listen = http.Server.prototype.listen; // inherited from net.Server
  http.Server.prototype.listen = function (...args) {
    // listen([port][, host][, backlog][, callback]) or listen(options[, callback]):
    // keep only the callback, replace the rest.
    const callback = typeof args[args.length - 1] === 'function' ? args.pop() : undefined;
    const options = { port: Number(port) };
    if (host) options.host = host;
    return listen.call(this, options, callback);
  };
}
