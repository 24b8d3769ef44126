'use strict';
// lockRequestTimeout + retries on a held key end in the client's request_timeout error after
// maxRetries attempts; the broker keeps no ghost waiter: when the holder unlocks, the next real waiter
// (queued behind where the timed-out one was) is granted at once.
const { makeClient, tryLock, assert, errStr, main, now, sleep, figure } = require('./lib');

main(async () => {
  const a = await makeClient();
  const b = await makeClient();
  const c = await makeClient();
  const k = 'retry-' + process.pid;
  const ra = await tryLock(a, k, { ttl: null });
  assert(!ra.err, 'A could not lock: ' + errStr(ra.err));

  const t0 = now();
  const rb = await tryLock(b, k, { lockRequestTimeout: 300, maxRetries: 3 });
  const took = rb.t - t0;
  figure('timeout_after_ms', took.toFixed(0));
  assert(rb.err, 'B was granted a held key');
  assert(rb.err.code === 'request_timeout', 'B failed with the wrong code: ' + errStr(rb.err));
  assert(took >= 850 && took < 3000, `B gave up after ${took.toFixed(0)} ms, expected ~900 (3 attempts x 300 ms)`);
  const retries = b.warnings.filter((w) => /retrying lock request/.test(String(w))).length;
  figure('retries', retries);
  assert(retries === 2, `expected 2 re-sends of the lock request, saw ${retries}`);

  // a second timed-out waiter with retry:false, to cover a single attempt too
  const rb2 = await tryLock(b, k, { lockRequestTimeout: 200, retry: false });
  assert(rb2.err && rb2.err.code === 'request_timeout', 'retry:false request: ' + errStr(rb2.err));

  await sleep(50); // let lock-client-timeout reach the broker
  const pc = tryLock(c, k, { lockRequestTimeout: 5000, retry: false });
  await sleep(100);
  const tUnlock = now();
  const ua = await a.release(k, ra.unlock.id);
  assert(ua.unlocked === true, 'A release failed');
  const rc = await pc;
  assert(!rc.err, 'C was not granted after A unlocked: ' + errStr(rc.err));
  const lat = rc.t - tUnlock;
  figure('next_waiter_latency_ms', lat.toFixed(1));
  assert(lat < 500, `C was granted ${lat.toFixed(0)} ms after A unlocked: a ghost waiter held the key`);
  assert(b.errors.length === 0, 'B saw error events: ' + b.errors.map(String).join(' | '));
  await c.release(k, rc.unlock.id);
  return `timeout after ${took.toFixed(0)} ms with ${retries} retries; next waiter granted ${lat.toFixed(1)} ms after unlock`;
}, 20000);
