'use strict';
// Version handshake: a 0.2.x client is accepted silently (no reply at all), a mismatched one gets
// {"type":"version-mismatch","versions":{"clientVersion":V,"brokerVersion":"0.2.x"}}.
const { makeClient, rawConnect, tryLock, assert, errStr, main, sleep } = require('./lib');

main(async () => {
  // 1. the real 0.2.25 client: no error/warning events, locks work
  const c = await makeClient();
  const r = await tryLock(c, 'ver-' + process.pid, { lockRequestTimeout: 2000, retry: false });
  assert(!r.err, 'lock after handshake failed: ' + errStr(r.err));
  await c.release('ver-' + process.pid, r.unlock.id);
  await sleep(50);
  assert(c.errors.length === 0, 'error events: ' + c.errors.map(String).join(' | '));
  const odd = c.warnings.filter((w) => !/stream "(close|end)"/.test(String(w)));
  assert(odd.length === 0, 'warning events: ' + odd.map(String).join(' | '));

  // 2. raw sockets with 0.2.x versions: nothing comes back, and the connection keeps working
  for (const v of ['0.2.25', '0.2.0', '0.2.99']) {
    const s = await rawConnect();
    s.send({ type: 'version', value: v, max: null, pid: process.pid, keepLocksAfterDeath: false });
    const got = await s.next(() => true, 300);
    assert(got === null, `version ${v}: broker replied ${JSON.stringify(got)} (must be silent)`);
    s.send({ type: 'lock', uuid: 'u-' + v, key: 'ver-raw-' + v + process.pid, ttl: 1000, max: null, retryCount: 0 });
    const lk = await s.next((m) => m.uuid === 'u-' + v, 2000);
    assert(lk && lk.type === 'lock' && lk.acquired === true, `version ${v}: lock after handshake got ${JSON.stringify(lk)}`);
    s.destroy();
  }

  // 3. mismatches
  for (const v of ['1.0.0', '0.3.0']) {
    const s = await rawConnect();
    s.send({ type: 'version', value: v });
    const m = await s.next(() => true, 2000);
    assert(m, `version ${v}: no reply (expected version-mismatch)`);
    assert(m.type === 'version-mismatch', `version ${v}: got ${JSON.stringify(m)} instead of version-mismatch`);
    assert(m.versions && m.versions.clientVersion === v && /^0\.2\./.test(String(m.versions.brokerVersion)),
      `version ${v}: bad versions field ${JSON.stringify(m.versions)}`);
    s.destroy();
  }
  return 'silent for 0.2.x, version-mismatch for 1.0.0 and 0.3.0';
}, 15000);
