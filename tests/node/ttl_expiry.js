'use strict';
// A TTL'd holder that never unlocks: the next waiter is granted after the TTL; the old holder's late
// unlock does not disturb the new holder (no third party is let in, the new holder's unlock works).
const { makeClient, tryLock, tryUnlock, assert, errStr, main, now, sleep, figure } = require('./lib');

main(async () => {
  const a = await makeClient();
  const b = await makeClient();
  const c = await makeClient();
  const k = 'ttl-' + process.pid;
  const t0 = now();
  const ra = await tryLock(a, k, { ttl: 600 });
  assert(!ra.err, 'A could not lock: ' + errStr(ra.err));
  const rb = await tryLock(b, k, { ttl: 10000, lockRequestTimeout: 5000, retry: false });
  assert(!rb.err, 'B was not granted after A\'s TTL: ' + errStr(rb.err));
  const waited = rb.t - t0;
  figure('b_granted_after_ms', waited.toFixed(0));
  assert(waited >= 550, `B granted after ${waited.toFixed(0)} ms, before A's 600 ms TTL ran out`);
  assert(waited < 3000, `B granted only after ${waited.toFixed(0)} ms (TTL 600 ms)`);

  // C queues behind B
  let cRes = null;
  const pc = tryLock(c, k, { lockRequestTimeout: 8000, retry: false }).then((r) => { cRes = r; return r; });
  await sleep(100);
  assert(cRes === null, 'C answered while B holds the key');

  // A's late unlock by its old id
  const late = await tryUnlock(a, k, ra.unlock.id);
  console.log(`info: A's late unlock -> ${late.err ? 'error: ' + errStr(late.err) : 'ok ' + JSON.stringify(late.val)}`);
  await sleep(300);
  assert(cRes === null, `A's late unlock disturbed B: C was ${cRes && cRes.err ? 'failed' : 'granted'} while B still holds the key`);

  const tUnlock = now();
  const ub = await tryUnlock(b, k, rb.unlock.id);
  assert(!ub.err, 'B (the real holder) could not unlock: ' + errStr(ub.err));
  const rc = await pc;
  assert(!rc.err, 'C not granted after B unlocked: ' + errStr(rc.err));
  assert(rc.t >= tUnlock, 'C granted before B unlocked');
  await c.release(k, rc.unlock.id);
  return `B granted after ${waited.toFixed(0)} ms; late unlock -> ${late.err ? 'error' : 'ok'}; B undisturbed`;
}, 20000);
