'use strict';
// Run by bench/handover.sh: GETs a URL from CLIENTS loops until SIGTERM (or
// DURATION_S seconds), then prints what it saw as one JSON line to stdout.
//
//   node steady.js URL          (CLIENTS=4, DURATION_S=600)
//
// Even clients keep their connection alive between requests (one agent
// each, one socket); odd ones open a connection per request, so that a
// connection refused is seen as a client would see it. A request fails on
// an error (refused, reset, closed without a response), on a status other
// than 200, or when no answer comes within 10 s.
//
// Output: {"ok":N,"failed":N,"refused":N,"longestGapMs":X,"p50Ms":X,
// "p99Ms":X,"maxMs":X,"errors":{"ECONNRESET":N,…}}; longestGapMs is the
// longest time, over the whole run, between two successive 200 answers
// (of any client).

const http = require('http');

const url = process.argv[2];
const clients = Number(process.env.CLIENTS || 4);
const durationS = Number(process.env.DURATION_S || 600);
if (!url || !(clients > 0) || !(durationS > 0)) {
  process.stderr.write('usage: node steady.js URL (CLIENTS=4, DURATION_S=600)\n');
  process.exit(2);
}

let stopping = false;
const seen = { ok: 0, failed: 0, refused: 0, errors: {} };
const latencies = [];
let lastOk = null;
let longestGap = 0;

function once(agent) {
  return new Promise((resolve) => {
    const started = process.hrtime.bigint();
    const done = (good, why) => {
      const now = process.hrtime.bigint();
      if (good) {
        seen.ok++;
        latencies.push(Number(now - started) / 1e6);
        if (lastOk !== null) longestGap = Math.max(longestGap, Number(now - lastOk) / 1e6);
        lastOk = now;
      } else {
        seen.failed++;
        seen.errors[why] = (seen.errors[why] || 0) + 1;
        if (why === 'ECONNREFUSED') seen.refused++;
      }
      resolve();
    };
    const req = http.get(url, { agent, timeout: 10000 }, (res) => {
      res.resume();
      res.on('end', () => done(res.statusCode === 200, `status ${res.statusCode}`));
      res.on('error', (e) => done(false, e.code || e.message));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (e) => done(false, e.code || e.message));
  });
}

async function client(n) {
  const keep = n % 2 === 0;
  const agent = keep ? new http.Agent({ keepAlive: true, maxSockets: 1 }) : new http.Agent({ keepAlive: false });
  while (!stopping) await once(agent);
  agent.destroy();
}

function report() {
  latencies.sort((a, b) => a - b);
  const at = (q) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] : 0);
  const round = (x) => Math.round(x * 100) / 100;
  const out = {
    ok: seen.ok,
    failed: seen.failed,
    refused: seen.refused,
    longestGapMs: round(longestGap),
    p50Ms: round(at(0.5)),
    p99Ms: round(at(0.99)),
    maxMs: round(latencies.length ? latencies[latencies.length - 1] : 0),
    errors: seen.errors,
  };
  process.stdout.write(JSON.stringify(out) + '\n');
}

const loops = Array.from({ length: clients }, (_, n) => client(n));
const stop = () => { stopping = true; };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
setTimeout(stop, durationS * 1000);
Promise.all(loops).then(() => { report(); process.exit(0); });
