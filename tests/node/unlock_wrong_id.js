'use strict';
// unlock with a wrong id (and with no id, no force) fails with an error and leaves the holder in
// place; {force:true} releases, after which another client gets the key at once.
const { makeClient, tryLock, tryUnlock, assert, errStr, main, now, sleep } = require('./lib');

main(async () => {
  const a = await makeClient();
  const b = await makeClient();
  const k = 'wrongid-' + process.pid;
  const ra = await tryLock(a, k, { ttl: null });
  assert(!ra.err, 'A could not lock: ' + errStr(ra.err));

  const w1 = await tryUnlock(b, k, 'not-the-lock-id');
  assert(w1.err, 'unlock with a wrong id succeeded; it must fail');
  const w2 = await tryUnlock(b, k, { id: ra.unlock.id + 'x' });
  assert(w2.err, 'unlock with a wrong {id} succeeded; it must fail');
  const w3 = await tryUnlock(b, k, {});
  assert(w3.err, 'unlock with neither id nor force succeeded; it must fail');
  assert(b.errors.length >= 3, `expected an 'error' event per failed unlock, got ${b.errors.length}`);

  // still held: B cannot get it
  const probe = await tryLock(b, k, { lockRequestTimeout: 300, retry: false });
  assert(probe.err && probe.err.code === 'request_timeout',
    'after failed unlocks the key should still be held, but B got: ' + (probe.err ? errStr(probe.err) : 'the lock'));

  // force releases
  const f = await tryUnlock(b, k, { force: true });
  assert(!f.err, 'force unlock failed: ' + errStr(f.err));
  assert(f.val.unlocked === true, 'force unlock: unlocked !== true');
  const t0 = now();
  const rb = await tryLock(b, k, { lockRequestTimeout: 1000, retry: false });
  assert(!rb.err, 'B could not lock after force unlock: ' + errStr(rb.err));
  assert(rb.t - t0 < 500, 'B waited too long after force unlock');
  // also the boolean shorthand: unlock(key, true)
  const f2 = await tryUnlock(a, k, true);
  assert(!f2.err, 'unlock(key, true) failed: ' + errStr(f2.err));
  const again = await tryLock(a, k, { lockRequestTimeout: 1000, retry: false });
  assert(!again.err, 'A could not relock after unlock(key, true): ' + errStr(again.err));
  await a.release(k, again.unlock.id);
  await sleep(10);
  return `wrong id -> ${errStr(w1.err)}`;
}, 15000);
