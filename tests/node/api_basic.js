'use strict';
// API surface of the 0.2.25 client: ensure(), lock(key, cb) + bound unlock, unlock by id (string, {id},
// {_uuid}), acquire/release promises, run/execUnlock, ttl-number shorthand.
const { makeClient, tryLock, tryUnlock, assert, errStr, main, now } = require('./lib');

main(async () => {
  const c = await makeClient();
  const k = 'api-' + process.pid;

  // 1. callback lock + bound unlock (callback form)
  let r = await tryLock(c, k);
  assert(!r.err, 'lock(key, cb) failed: ' + errStr(r.err));
  const u1 = r.unlock;
  assert(typeof u1 === 'function' && u1.acquired === true && u1.key === k, 'lock callback did not give a bound unlock function with acquired/key');
  assert(typeof u1.id === 'string' && u1.id === u1.lockUuid && u1.id.length > 10, 'unlock.id / lockUuid missing');
  assert(u1.readersCount === 0, `unlock.readersCount should be the integer 0, got ${u1.readersCount}`);
  const v1 = await new Promise((res) => u1((err, val) => res({ err, val })));
  assert(!v1.err, 'bound unlock failed: ' + errStr(v1.err));
  assert(v1.val && v1.val.unlocked === true && v1.val.key === k, 'bound unlock result should be {unlocked:true,key}');

  // 2. unlock by id: string shorthand, {id}, {_uuid}
  for (const form of ['string', 'id', '_uuid']) {
    r = await tryLock(c, k);
    assert(!r.err, `lock before unlock-by-${form} failed: ` + errStr(r.err));
    const id = r.unlock.id;
    const arg = form === 'string' ? id : { [form]: id };
    const u = await tryUnlock(c, k, arg);
    assert(!u.err, `unlock by ${form} failed: ` + errStr(u.err));
    assert(u.val.unlocked === true, `unlock by ${form}: unlocked !== true`);
  }

  // 3. the key is really free after all that: a second client gets it at once
  const c2 = await makeClient();
  const t0 = now();
  r = await tryLock(c2, k, { lockRequestTimeout: 1000, maxRetries: 1 });
  assert(!r.err, 'second client could not lock a released key: ' + errStr(r.err));
  assert(r.t - t0 < 500, `second client waited ${Math.round(r.t - t0)} ms for a free key`);
  await c2.release(k, r.unlock.id);

  // 4. promise forms
  const u4 = await c.acquire(k);
  assert(u4 && u4.acquired === true, 'acquire() did not resolve to an unlock function');
  const rel = await c.release(k, u4.id);
  assert(rel.unlocked === true && rel.key === k, 'release() did not resolve {unlocked:true}');
  const u5 = await c.acquireLock(k, 2000); // number = ttl shorthand
  const rel5 = await c.releaseLock(k, { id: u5.id });
  assert(rel5.unlocked === true, 'releaseLock({id}) failed');

  // 5. run / execUnlock / runUnlock take a callback-style unlock and return a promise
  const u6 = await c.acquire(k);
  const v6 = await c.run(u6);
  assert(v6.unlocked === true, 'run(unlock) did not resolve {unlocked:true}');
  const u7 = await c.acquire(k);
  const v7 = await c.execUnlock(u7);
  assert(v7.unlocked === true, 'execUnlock(unlock) did not resolve {unlocked:true}');
  const u8 = await c.acquire(k);
  await c.runUnlock(u8.unlock);

  // 6. release of an already released id must fail (it is no longer a holder) -- but keep the client usable
  const again = await tryUnlock(c, k, u8.id);
  const after = await tryLock(c, k, { lockRequestTimeout: 1000, maxRetries: 1 });
  assert(!after.err, 'client unusable after a stale unlock: ' + errStr(after.err));
  await c.release(k, after.unlock.id);

  const errs = c.errors.length + c2.errors.length;
  return `all forms ok; stale unlock of a released id -> ${again.err ? 'error: ' + errStr(again.err) : 'ok'}; error events=${errs}`;
}, 15000);
