'use strict';
// RWLockWritePrefClient: readers overlap each other, a writer never overlaps a reader or a writer.
const { makeClient, assert, errStr, main, sleep, figure, lmx } = require('./lib');

main(async () => {
  const k = 'rw-' + process.pid;
  const mk = () => makeClient({ lockRequestTimeout: 15000, lockRetryMax: 1 }, lmx.RWLockWritePrefClient);
  const readers = [];
  const writers = [];
  for (let i = 0; i < 4; i++) readers.push(await mk());
  for (let i = 0; i < 2; i++) writers.push(await mk());
  let r = 0;
  let w = 0;
  let peakReaders = 0;
  let violations = 0;
  let reads = 0;
  let writes = 0;
  const errors = [];
  const ITER = 8;
  const DEADLINE = Date.now() + (Number(process.env.LMX_RW_BUDGET_MS) || 20000);
  const timedOut = () => Date.now() > DEADLINE;

  const reader = async (c, idx) => {
    await sleep(idx * 3);
    for (let i = 0; i < ITER && !timedOut(); i++) {
      try {
        await c.acquireReadLockp(k);
      } catch (e) { errors.push('acquireReadLock: ' + errStr(e)); return; }
      r++;
      peakReaders = Math.max(peakReaders, r);
      if (w > 0) violations++;
      await sleep(15);
      if (w > 0) violations++;
      r--;
      reads++;
      try {
        await c.releaseReadLockp(k);
      } catch (e) { errors.push('releaseReadLock: ' + errStr(e)); return; }
      await sleep(2);
    }
  };
  const writer = async (c, idx) => {
    await sleep(10 + idx * 7);
    for (let i = 0; i < ITER / 2 && !timedOut(); i++) {
      try {
        await c.acquireWriteLockp(k);
      } catch (e) { errors.push('acquireWriteLock: ' + errStr(e)); return; }
      w++;
      if (r > 0 || w > 1) violations++;
      await sleep(10);
      if (r > 0 || w > 1) violations++;
      w--;
      writes++;
      try {
        await c.releaseWriteLockp(k);
      } catch (e) { errors.push('releaseWriteLock: ' + errStr(e)); return; }
      await sleep(5);
    }
  };
  const t0 = Date.now();
  await Promise.race([
    Promise.all(readers.map(reader).concat(writers.map(writer))),
    // a stuck acquire/release (deadlock) is reported below as incomplete
    new Promise((res) => { const t = setInterval(() => { if (timedOut()) { clearInterval(t); res(); } }, 100); }),
  ]);
  figure('elapsed_ms', Date.now() - t0);
  figure('violations', violations);
  figure('peak_readers', peakReaders);
  figure('reads', reads);
  figure('writes', writes);
  assert(violations === 0, `${violations} writer/reader overlaps (peak readers ${peakReaders}, ${reads} reads, ${writes} writes)`);
  assert(errors.length === 0, 'errors: ' + errors.slice(0, 3).join(' | '));
  assert(reads === 4 * ITER && writes === 2 * (ITER / 2), `incomplete: ${reads} reads, ${writes} writes`);
  assert(peakReaders >= 2, `readers never overlapped (peak ${peakReaders}): not a shared lock`);
  return `${reads} reads (peak ${peakReaders} together), ${writes} writes, no overlap`;
}, 35000);
