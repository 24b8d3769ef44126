'use strict';
// Semaphore: 100 requests, 13 concurrent, max:4. A shared counter never exceeds 4 and ends at 0.
const { makeClient, tryLock, assert, errStr, main, sleep, figure } = require('./lib');

main(async () => {
  const clients = [];
  for (let i = 0; i < 4; i++) clients.push(await makeClient());
  const k = 'sem-' + process.pid;
  let inside = 0;
  let peak = 0;
  let done = 0;
  let next = 0;
  const errors = [];
  const worker = async (w) => {
    while (next < 100) {
      next++;
      const c = clients[w % clients.length];
      const r = await tryLock(c, k, { max: 4, lockRequestTimeout: 8000, retry: false });
      if (r.err) { errors.push(errStr(r.err)); continue; }
      inside++;
      peak = Math.max(peak, inside);
      if (inside > 4) errors.push(`counter reached ${inside} > max 4`);
      await sleep(1 + (done % 5));
      inside--;
      const u = await new Promise((res) => r.unlock((err) => res(err)));
      if (u) errors.push('unlock failed: ' + errStr(u));
      done++;
    }
  };
  await Promise.all(Array.from({ length: 13 }, (_, i) => worker(i)));
  figure('peak', peak);
  figure('completed', done);
  assert(errors.length === 0, `errors: ${errors.slice(0, 5).join(' | ')} (${errors.length} total)`);
  assert(done === 100, `only ${done} of 100 critical sections completed`);
  assert(inside === 0, `counter ended at ${inside}`);
  assert(peak <= 4, `peak ${peak} > 4`);
  assert(peak >= 2, `peak ${peak}: max:4 never let two holders in, not a semaphore`);
  return `peak=${peak}, 100 done, counter ends 0`;
}, 30000);
