'use strict';
// Throughput of the npm live-mutex@0.2.25 Node client against a broker: N lock/unlock cycles on one key,
// C in flight at once, one client connection (the shape of upstream's test/@src/dummy.ts).
//   NODE_PATH=<cache>/node_modules LMX_PORT=6970 [LMX_HOST=127.0.0.1] node benches/node_compare.js
//   NODE_PATH=... LMX_UDS=/path/to.sock node benches/node_compare.js
// Options (env): LMX_BENCH_CYCLES (10000), LMX_BENCH_CONCURRENCY (25), LMX_BENCH_CLIENTS (1),
// LMX_BENCH_KEYS (1: worker w uses key (w + cycles started) mod KEYS).
// Prints one line: `node_compare <endpoint> cycles=N concurrency=C clients=K elapsed_ms=T cycles_per_s=R`.
const { Client } = require('live-mutex');

const CYCLES = Number(process.env.LMX_BENCH_CYCLES) || 10000;
const CONC = Number(process.env.LMX_BENCH_CONCURRENCY) || 25;
const CLIENTS = Number(process.env.LMX_BENCH_CLIENTS) || 1;
const KEYS = Number(process.env.LMX_BENCH_KEYS) || 1;
const ep = process.env.LMX_UDS ? { udsPath: process.env.LMX_UDS }
  : process.env.LMX_PORT ? { port: Number(process.env.LMX_PORT), host: process.env.LMX_HOST || '127.0.0.1' }
    : null;
if (!ep) {
  console.error('set LMX_PORT (and LMX_HOST) or LMX_UDS');
  process.exit(2);
}
const epStr = ep.udsPath ? `uds:${ep.udsPath}` : `tcp:${ep.host}:${ep.port}`;
setTimeout(() => { console.error(`node_compare: still running after 120 s against ${epStr}`); process.exit(2); }, 120000).unref();

(async () => {
  const clients = [];
  for (let i = 0; i < CLIENTS; i++) {
    const c = new Client(Object.assign({ lockRequestTimeout: 20000, lockRetryMax: 1 }, ep));
    c.emitter.on('error', (e) => { console.error('client error event:', e); });
    c.emitter.on('warning', () => {});
    await c.ensure();
    clients.push(c);
  }
  const key = 'bench-' + process.pid;
  let started = 0;
  let done = 0;
  const t0 = process.hrtime.bigint();
  await new Promise((resolve, reject) => {
    const one = (w) => {
      if (started >= CYCLES) return;
      started++;
      const c = clients[w % clients.length];
      c.lock(key + '-' + ((w + started) % KEYS), (err, unlock) => {
        if (err) return reject(new Error('lock failed: ' + (err.message || err)));
        unlock((err2) => {
          if (err2) return reject(new Error('unlock failed: ' + (err2.message || err2)));
          if (++done === CYCLES) return resolve();
          one(w);
        });
      });
    };
    for (let i = 0; i < CONC; i++) one(i);
  });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  console.log(`node_compare ${epStr} cycles=${CYCLES} concurrency=${CONC} clients=${CLIENTS} elapsed_ms=${ms.toFixed(0)} cycles_per_s=${Math.round(CYCLES / (ms / 1000))}`);
  clients.forEach((c) => c.close());
  process.exit(0);
})().catch((e) => { console.error('node_compare FAILED:', e.message || e); process.exit(1); });
