'use strict';
// npm 0.2.25 clients whose event loop stalls during a handoff must never share a key.
// A holds K; B (another process) queues for K, then blocks its event loop for 1.5 s and, in a
// second round, 3 s; A releases while B is blocked; C queues. B must end up holding K (it reads
// the grant late and takes it), and C only after B released: both take a marker file with
// O_EXCL inside their critical section, so two holders at once fail the scenario. C holds long
// enough (block + 1 s) that a grant handed to C while B was blocked would overlap B's.
const { spawn } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { makeClient, tryLock, assert, errStr, main, now, sleep, figure } = require('./lib');

function child(key, blockMs, marker) {
  const k = spawn(process.execPath, [path.join(__dirname, 'fixtures', 'stall_child.js'), key, String(blockMs), marker, '300'],
    { stdio: ['ignore', 'pipe', 'inherit'], env: process.env });
  k.lines = [];
  k.waiters = [];
  let buf = '';
  k.stdout.setEncoding('utf8');
  k.stdout.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      k.lines.push({ line: buf.slice(0, i), t: now() });
      buf = buf.slice(i + 1);
    }
    k.waiters.splice(0).forEach((w) => w());
  });
  k.exited = new Promise((resolve) => k.once('exit', (code) => { k.code = code; k.waiters.splice(0).forEach((w) => w()); resolve(code); }));
  k.waitFor = (word, ms) => new Promise((resolve, reject) => {
    const deadline = now() + ms;
    const check = () => {
      const hit = k.lines.find((l) => l.line.startsWith(word));
      if (hit) return resolve(hit);
      const bad = k.lines.find((l) => l.line.startsWith('ERROR') || l.line.startsWith('OVERLAP'));
      if (bad) return reject(new Error('B: ' + bad.line));
      if (k.code !== undefined) return reject(new Error(`B exited (${k.code}) before ${word}`));
      if (now() > deadline) return reject(new Error(`B never said ${word} within ${ms} ms`));
      k.waiters.push(check);
      setTimeout(check, 50);
    };
    check();
  });
  return k;
}

async function round(a, c, blockMs, dir) {
  const key = `stall-${blockMs}-${process.pid}`;
  const marker = path.join(dir, `marker-${blockMs}-${process.pid}`);
  const take = (who) => {
    try { fs.writeFileSync(marker, who, { flag: 'wx' }); } catch (e) {
      throw new Error(`two holders: ${who} was granted while ${fs.readFileSync(marker, 'utf8')} held ${key}`);
    }
  };
  const ra = await tryLock(a, key, {});
  assert(!ra.err, 'A could not lock: ' + errStr(ra.err));
  take('A');
  const b = child(key, blockMs, marker);
  await b.waitFor('BLOCKING', 10000);
  await sleep(50); // B is inside its synchronous block now
  fs.unlinkSync(marker);
  await a.release(key, ra.unlock.id);
  const tRelease = now();
  const pc = tryLock(c, key, {}); // C queues behind B (the client's default timeouts)
  const rc = await pc;
  assert(!rc.err, 'C was never granted: ' + errStr(rc.err));
  take('C');
  const bHolding = b.lines.find((l) => l.line === 'HOLDING');
  await sleep(blockMs + 1000);
  fs.unlinkSync(marker);
  await c.release(key, rc.unlock.id);
  await b.exited;
  const bad = b.lines.find((l) => l.line.startsWith('ERROR') || l.line.startsWith('OVERLAP'));
  assert(!bad, 'B: ' + (bad && bad.line));
  assert(b.code === 0, `B exited with ${b.code}`);
  assert(bHolding, 'B never held the key: C got it first (the grant B was going to read was handed on)');
  figure(`b_holding_after_release_ms_${blockMs}`, (bHolding.t - tRelease).toFixed(0));
  figure(`c_granted_after_release_ms_${blockMs}`, (rc.t - tRelease).toFixed(0));
  assert(bHolding.t < rc.t, 'C was granted before B held the key');
  return `block ${blockMs} ms: B held ${(bHolding.t - tRelease).toFixed(0)} ms after A's release, C ${(rc.t - tRelease).toFixed(0)} ms after`;
}

main(async () => {
  const dir = process.env.LMX_TMPDIR || fs.mkdtempSync(path.join(os.tmpdir(), 'lmx-stall-'));
  const a = await makeClient();
  const c = await makeClient();
  const r1 = await round(a, c, 1500, dir);
  const r2 = await round(a, c, 3000, dir);
  return `${r1}; ${r2}; never two holders`;
}, 40000);
