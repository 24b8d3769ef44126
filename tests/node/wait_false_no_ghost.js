'use strict';
// wait:false on a held key fails at once and never leaves a ghost grant. The 0.2.25 client does NOT
// send `wait` on the wire: it gives up locally and silently drops a later grant (no lock-received).
// The broker finds such a dropped grant with an ack probe (docs/protocol.md, Compatibility) and
// releases it; it never releases a grant the client may still take. Pass criterion: after the holder
// unlocks, the next real waiter is granted within LMX_GHOST_BUDGET_MS (default 2000 ms).
const { makeClient, tryLock, assert, errStr, main, now, sleep, figure } = require('./lib');
const BUDGET = Number(process.env.LMX_GHOST_BUDGET_MS) || 2000;

main(async () => {
  const a = await makeClient();
  const b = await makeClient();
  const c = await makeClient();
  const k = 'trylock-' + process.pid;
  const ra = await tryLock(a, k, { ttl: null });
  assert(!ra.err, 'A could not lock: ' + errStr(ra.err));

  const t0 = now();
  const rb = await tryLock(b, k, { wait: false, lockRequestTimeout: 5000 });
  const took = rb.t - t0;
  figure('trylock_fail_ms', took.toFixed(1));
  assert(rb.err, 'wait:false on a held key was granted');
  assert(rb.err.code === 'wait_option_is_false', 'wait:false failed with the wrong code: ' + errStr(rb.err));
  assert(took < 300, `wait:false took ${took.toFixed(0)} ms to fail, expected at once`);

  const pc = tryLock(c, k, { lockRequestTimeout: 8000, retry: false });
  await sleep(100);
  const tUnlock = now();
  await a.release(k, ra.unlock.id);
  const rc = await Promise.race([pc, sleep(BUDGET + 6000).then(() => null)]);
  assert(rc && !rc.err, 'C never got the key after the holder unlocked: ' + (rc ? errStr(rc.err) : 'still waiting'));
  const lat = rc.t - tUnlock;
  figure('next_waiter_latency_ms', lat.toFixed(0));
  assert(lat < BUDGET, `C was granted only ${lat.toFixed(0)} ms after the holder unlocked (budget ${BUDGET} ms): a ghost grant to the abandoned wait:false request held the key`);
  await c.release(k, rc.unlock.id);
  return `wait:false failed in ${took.toFixed(1)} ms; next waiter granted ${lat.toFixed(0)} ms after unlock`;
}, 20000);
