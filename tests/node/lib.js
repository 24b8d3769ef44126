'use strict';
// Shared helpers for the live-mutex 0.2.25 Node-client interop scenarios.
// The broker endpoint comes from the environment:
//   LMX_UDS=/abs/path.sock            (Unix socket), or
//   LMX_PORT=NNNN [LMX_HOST=127.0.0.1] (TCP; the 0.2.25 client only accepts ports 1025..49151).
// live-mutex@0.2.25 is found through NODE_PATH (the Rust harness points it at its npm cache).

const net = require('net');

let lmx;
try {
  lmx = require('live-mutex');
} catch (e) {
  console.error('FAIL: cannot require("live-mutex") (set NODE_PATH to a node_modules holding live-mutex@0.2.25): ' + e.message);
  process.exit(3);
}
{
  const v = require('live-mutex/package.json').version;
  if (v !== '0.2.25') {
    console.error(`FAIL: expected live-mutex 0.2.25 on NODE_PATH, found ${v}`);
    process.exit(3);
  }
}

const NAME = require('path').basename(require.main ? require.main.filename : 'scenario', '.js');

function endpoint() {
  if (process.env.LMX_UDS) {
    return { udsPath: process.env.LMX_UDS };
  }
  if (process.env.LMX_PORT) {
    const port = Number.parseInt(process.env.LMX_PORT, 10);
    if (!(port > 1024 && port < 49152)) {
      fatal(`LMX_PORT=${process.env.LMX_PORT} is outside 1025..49151, the 0.2.25 client refuses it`);
    }
    return { port, host: process.env.LMX_HOST || '127.0.0.1' };
  }
  return fatal('no broker endpoint: set LMX_PORT (and LMX_HOST) or LMX_UDS');
}

function endpointStr() {
  const e = endpoint();
  return e.udsPath ? `uds:${e.udsPath}` : `tcp:${e.host}:${e.port}`;
}

function fatal(msg) {
  console.error(`FAIL ${NAME}: ${msg}`);
  process.exit(1);
}

// Every client gets 'error' and 'warning' listeners (without an 'error' listener the 0.2.25 client
// throws inside its socket handler on the first reply carrying `error`).
const allClients = [];
async function makeClient(extra, ClientClass) {
  const C = ClientClass || lmx.Client;
  const c = new C(Object.assign({}, endpoint(), extra || {}));
  c.errors = [];
  c.warnings = [];
  c.emitter.on('error', (e) => c.errors.push(e));
  c.emitter.on('warning', (w) => c.warnings.push(w));
  allClients.push(c);
  await withTimeout(c.ensure(), 5000, 'client.ensure()');
  return c;
}

function closeAll() {
  for (const c of allClients) {
    try { c.close(); } catch (e) { /* ignore */ }
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => Number(process.hrtime.bigint() / 1000n) / 1000; // ms, fractional

function withTimeout(p, ms, what) {
  let t;
  return Promise.race([
    p,
    new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`${what} did not complete within ${ms} ms`)), ms); }),
  ]).finally(() => clearTimeout(t));
}

// lock(key, opts) as a promise that never rejects: resolves {err, unlock, t} (t = ms when settled).
function tryLock(client, key, opts) {
  return new Promise((resolve) => {
    client.lock(key, opts || {}, (err, unlock) => resolve({ err, unlock, t: now() }));
  });
}

function tryUnlock(client, key, opts) {
  return new Promise((resolve) => {
    client.unlock(key, opts, (err, val) => resolve({ err, val, t: now() }));
  });
}

function assert(cond, msg) {
  if (!cond) {
    throw new Error(msg);
  }
}

function errStr(e) {
  if (!e) return String(e);
  if (typeof e === 'string') return e;
  return `${e.code || ''} ${e.message || require('util').inspect(e, { breakLength: Infinity })}`.trim();
}

function figure(name, value) {
  console.log(`figure ${NAME} ${name}=${value}`);
}

// Runs the scenario with a hard timeout; exit 0 on pass, 1 on failure (clear message), 2 on timeout.
function main(fn, hardTimeoutMs) {
  const limit = Number(process.env.LMX_SCRIPT_TIMEOUT_MS) || hardTimeoutMs || 20000;
  const t = setTimeout(() => {
    console.error(`FAIL ${NAME}: hard timeout, scenario still running after ${limit} ms (${endpointStr()})`);
    process.exit(2);
  }, limit);
  t.unref();
  Promise.resolve()
    .then(() => fn())
    .then((detail) => {
      console.log(`PASS ${NAME} (${endpointStr()})${detail ? ': ' + detail : ''}`);
      closeAll();
      process.exit(0);
    }, (err) => {
      console.error(`FAIL ${NAME} (${endpointStr()}): ${err && err.message ? err.message : errStr(err)}`);
      closeAll();
      process.exit(1);
    });
}

// A raw NDJSON connection to the broker (no live-mutex client involved).
function rawConnect() {
  const e = endpoint();
  return new Promise((resolve, reject) => {
    const s = e.udsPath ? net.createConnection(e.udsPath) : net.createConnection(e.port, e.host);
    s.setEncoding('utf8');
    s.lines = [];
    s.waiters = [];
    let buf = '';
    s.on('data', (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (!line.trim()) continue;
        let msg;
        try { msg = JSON.parse(line); } catch (err) { msg = { unparseable: line }; }
        s.lines.push(msg);
        s.waiters.splice(0).forEach((w) => w());
      }
    });
    s._lmxClosed = false;
    s.on('close', () => { s._lmxClosed = true; s.waiters.splice(0).forEach((w) => w()); });
    s.on('error', () => {});
    s.once('connect', () => resolve(s));
    s.once('error', reject);
    s.send = (obj) => s.write(JSON.stringify(obj) + '\n');
    // Wait for the next message matching pred (or null after ms).
    s.next = (pred, ms) => new Promise((res) => {
      const deadline = Date.now() + ms;
      let done = false;
      const check = () => {
        if (done) return;
        const idx = s.lines.findIndex(pred);
        if (idx >= 0) { done = true; const [m] = s.lines.splice(idx, 1); return res(m); }
        if (Date.now() >= deadline || s._lmxClosed) { done = true; return res(null); }
        s.waiters.push(check);
        setTimeout(check, Math.max(1, deadline - Date.now()));
      };
      check();
    });
  });
}

module.exports = {
  lmx, NAME, endpoint, endpointStr, makeClient, closeAll, sleep, now, withTimeout,
  tryLock, tryUnlock, assert, errStr, figure, main, rawConnect, fatal,
};
