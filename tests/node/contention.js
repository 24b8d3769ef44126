'use strict';
// Two clients contend for one key: the second is granted only after the first unlocks, and the grant
// is pushed (no retry needed). Also a third waiter is served in FIFO order after the second.
const { makeClient, tryLock, assert, errStr, main, now, sleep, figure } = require('./lib');

main(async () => {
  const a = await makeClient();
  const b = await makeClient();
  const c = await makeClient();
  const k = 'contend-' + process.pid;

  const ra = await tryLock(a, k);
  assert(!ra.err, 'A could not lock: ' + errStr(ra.err));

  // retries off, long per-attempt timeout: a grant must be a push from the broker
  const pb = tryLock(b, k, { lockRequestTimeout: 8000, retry: false });
  await sleep(50);
  const pc = tryLock(c, k, { lockRequestTimeout: 8000, retry: false });
  let bDone = null;
  pb.then((r) => { bDone = r; });
  await sleep(400);
  assert(bDone === null, 'B was answered while A still held the key: ' + (bDone && (bDone.err ? errStr(bDone.err) : 'granted')));

  const tUnlock = now();
  const ua = await new Promise((res) => ra.unlock((err, v) => res({ err, v })));
  assert(!ua.err, 'A unlock failed: ' + errStr(ua.err));
  const rb = await pb;
  assert(!rb.err, 'B failed instead of being granted: ' + errStr(rb.err));
  assert(rb.t >= tUnlock, 'B granted before A unlocked');
  figure('grant_latency_ms', (rb.t - tUnlock).toFixed(2));

  let cDone = null;
  pc.then((r) => { cDone = r; });
  await sleep(200);
  assert(cDone === null, 'C was answered while B held the key');
  const tUnlockB = now();
  await b.release(k, rb.unlock.id);
  const rc = await pc;
  assert(!rc.err, 'C failed instead of being granted: ' + errStr(rc.err));
  assert(rc.t >= tUnlockB, 'C granted before B unlocked');
  await c.release(k, rc.unlock.id);
  return `B granted ${(rb.t - tUnlock).toFixed(1)} ms after A's unlock, C after B`;
}, 15000);
