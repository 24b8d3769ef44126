'use strict';
// A holder that disconnects releases ONLY its own locks (its waiters are granted promptly); another
// client's lock on another key stays held; a lock taken with keepLocksAfterDeath:true survives its
// client's disconnect and is released by its TTL.
const { makeClient, tryLock, assert, errStr, main, now, sleep, figure } = require('./lib');

main(async () => {
  const a = await makeClient();
  const b = await makeClient();
  const c = await makeClient();
  const p = process.pid;
  const [k1, k2, k3, k4] = ['hd1-', 'hd2-', 'hd3-', 'hd4-'].map((s) => s + p);
  for (const k of [k1, k2]) {
    const r = await tryLock(a, k, { ttl: null });
    assert(!r.err, `A could not lock ${k}: ` + errStr(r.err));
  }
  const kept = await tryLock(a, k4, { ttl: 1500, keepLocksAfterDeath: true });
  assert(!kept.err, 'A could not lock with keepLocksAfterDeath: ' + errStr(kept.err));
  const rb = await tryLock(b, k3, { ttl: null });
  assert(!rb.err, 'B could not lock: ' + errStr(rb.err));

  const waitK1 = tryLock(c, k1, { lockRequestTimeout: 5000, retry: false });
  let k3res = null;
  const waitK3 = tryLock(c, k3, { lockRequestTimeout: 1500, retry: false }).then((r) => { k3res = r; return r; });
  let k4res = null;
  const tQueued = now();
  const waitK4 = tryLock(c, k4, { lockRequestTimeout: 5000, retry: false }).then((r) => { k4res = r; return r; });
  await sleep(100);
  a.close();

  const r1 = await waitK1;
  assert(!r1.err, 'C was not granted k1 after its holder disconnected: ' + errStr(r1.err));
  figure('grant_after_disconnect_ms', (r1.t - tQueued - 100).toFixed(1));
  const r2 = await tryLock(c, k2, { lockRequestTimeout: 1000, retry: false });
  assert(!r2.err, 'k2 still held after its holder disconnected: ' + errStr(r2.err));

  await sleep(400);
  assert(k4res === null, 'the keepLocksAfterDeath lock was released when its client disconnected');
  const r3 = await waitK3;
  assert(r3.err && r3.err.code === 'request_timeout',
    'an unrelated client\'s disconnect released B\'s lock on k3: ' + (r3.err ? errStr(r3.err) : 'C got it'));
  const r4 = await waitK4;
  assert(!r4.err, 'C never got the kept lock after its TTL: ' + errStr(r4.err));
  const keptFor = r4.t - tQueued;
  figure('kept_lock_granted_after_ms', keptFor.toFixed(0));
  assert(keptFor >= 1300, `the kept lock was released after ${keptFor.toFixed(0)} ms, before its 1500 ms TTL`);
  assert(k3res && k3res.err, 'k3 state changed');
  await b.release(k3, rb.unlock.id);
  return 'only the departed holder\'s locks were released; keepLocksAfterDeath kept until TTL';
}, 15000);
