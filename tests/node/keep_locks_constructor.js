'use strict';
// The CONSTRUCTOR option `new Client({keepLocksAfterDeath: true})` is honoured. The 0.2.25 client
// puts it only on messages without their own field (`version`, `lock-received`, `unlock`, ...),
// never on `lock` (which always carries the per-lock option, false here), so the broker takes it
// from the connection's `version` message as the default for that connection's locks.
// A: constructor keepLocksAfterDeath:true, locks k1 (ttl 1500 ms, no per-lock option).
// C: a plain client, locks k2. B waits on both. A and C disconnect: k2 goes to B at once (C's lock
// is released), k1 only after its TTL (A's lock outlived A). Fails against 0.2.25, which ignored it.
const { makeClient, tryLock, assert, errStr, main, now, sleep, figure } = require('./lib');

main(async () => {
  const a = await makeClient({ keepLocksAfterDeath: true });
  const b = await makeClient();
  const c = await makeClient();
  const p = process.pid;
  const [k1, k2] = ['klc1-', 'klc2-'].map((s) => s + p);
  const ra = await tryLock(a, k1, { ttl: 1500 });
  assert(!ra.err, 'A could not lock k1: ' + errStr(ra.err));
  const rc = await tryLock(c, k2, { ttl: null });
  assert(!rc.err, 'C could not lock k2: ' + errStr(rc.err));

  const tQueued = now();
  let k1res = null;
  const waitK1 = tryLock(b, k1, { lockRequestTimeout: 5000, retry: false }).then((r) => { k1res = r; return r; });
  const waitK2 = tryLock(b, k2, { lockRequestTimeout: 5000, retry: false });
  await sleep(100);
  a.close();
  c.close();

  const r2 = await waitK2;
  assert(!r2.err, 'B was not granted k2 after its plain holder disconnected: ' + errStr(r2.err));
  figure('plain_lock_granted_after_disconnect_ms', (r2.t - tQueued - 100).toFixed(1));
  assert(r2.t - tQueued < 1100, `k2 took ${(r2.t - tQueued).toFixed(0)} ms to reach B`);
  await sleep(300);
  assert(k1res === null, 'A\'s lock was released when A disconnected: the constructor keepLocksAfterDeath was ignored');
  const r1 = await waitK1;
  assert(!r1.err, 'B never got k1 after its TTL: ' + errStr(r1.err));
  const keptFor = r1.t - tQueued;
  figure('kept_lock_granted_after_ms', keptFor.toFixed(0));
  assert(keptFor >= 1300, `A's lock was released after ${keptFor.toFixed(0)} ms, before its 1500 ms TTL`);
  await b.release(k1, r1.unlock.id);
  await b.release(k2, r2.unlock.id);
  return 'a client constructed with keepLocksAfterDeath:true keeps its locks after disconnecting, until their TTL';
}, 15000);
