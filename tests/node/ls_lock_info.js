'use strict';
// client.ls() and client.requestLockInfo(key) return real data.
const { makeClient, tryLock, assert, errStr, main, sleep } = require('./lib');

const ls = (c) => new Promise((res) => c.ls((err, data) => res({ err, data })));
const info = (c, key) => new Promise((res) => c.requestLockInfo(key, (err, v) => res({ err, data: v && v.data })));

main(async () => {
  const a = await makeClient();
  const b = await makeClient();
  const k1 = 'ls1-' + process.pid;
  const k2 = 'ls2-' + process.pid;
  const r1 = await tryLock(a, k1, { ttl: null });
  const r2 = await tryLock(a, k2, { ttl: null });
  assert(!r1.err && !r2.err, 'locks failed');
  let bRes = null;
  const pb = tryLock(b, k1, { lockRequestTimeout: 5000, retry: false }).then((r) => { bRes = r; return r; });
  await sleep(100);
  assert(bRes === null, 'B answered while k1 is held');

  const l = await ls(a);
  assert(!l.err, 'ls failed: ' + errStr(l.err));
  assert(l.data && Array.isArray(l.data.ls_result), 'ls reply has no ls_result array: ' + JSON.stringify(l.data));
  const keys = l.data.ls_result;
  assert(keys.includes(k1) && keys.includes(k2), `ls_result ${JSON.stringify(keys)} lacks the held keys ${k1}, ${k2}`);

  const i1 = await info(b, k1);
  assert(!i1.err, 'requestLockInfo failed: ' + errStr(i1.err));
  const d = i1.data;
  assert(d && d.lockInfo === true && d.key === k1, 'lock-info reply malformed: ' + JSON.stringify(d));
  assert(d.isLocked === true, `isLocked=${d.isLocked} for a held key`);
  assert(Array.isArray(d.lockholderUUIDs) && d.lockholderUUIDs.length === 1 && d.lockholderUUIDs[0] === r1.unlock.id,
    `lockholderUUIDs=${JSON.stringify(d.lockholderUUIDs)}, expected [${r1.unlock.id}]`);
  assert(d.lockRequestCount === 1, `lockRequestCount=${d.lockRequestCount}, expected 1 waiter`);

  await a.release(k1, r1.unlock.id);
  const rb = await pb;
  assert(!rb.err, 'B not granted: ' + errStr(rb.err));
  await b.release(k1, rb.unlock.id);
  await a.release(k2, r2.unlock.id);
  await sleep(20);
  const i2 = await info(b, k1);
  assert(i2.data && i2.data.isLocked === false, `isLocked=${i2.data && i2.data.isLocked} after every holder released`);
  const l2 = await ls(b);
  assert(!l2.data.ls_result.includes(k1) && !l2.data.ls_result.includes(k2), `ls still lists released keys: ${JSON.stringify(l2.data.ls_result)}`);
  return `ls=${JSON.stringify(keys)}; info isLocked/holders/lockRequestCount correct`;
}, 15000);
