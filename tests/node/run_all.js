'use strict';
// Manual driver: runs scenario scripts, each against a FRESH broker, and prints a summary.
//   NODE_PATH=<cache>/node_modules node tests/node/run_all.js [--uds] [--broker-cmd 'CMD'] [scenario ...]
// Default broker: the npm live-mutex@0.2.25 Node broker (tests/node/node_broker.js).
// --broker-cmd: a shell command starting another broker; `{port}` and `{uds}` are substituted, and the
// driver waits until the port / socket accepts connections (e.g. 'lmx start --host 127.0.0.1 --port {port}').
// (The Rust test tests/node_interop.rs is the real harness; this is for validating against other brokers.)
const { spawn, spawnSync } = require('child_process');
const fs = require('fs');
const net = require('net');
const os = require('os');
const path = require('path');

const args = process.argv.slice(2);
const useUds = args.includes('--uds');
let brokerCmd = null;
const bi = args.indexOf('--broker-cmd');
if (bi >= 0) { brokerCmd = args[bi + 1]; args.splice(bi, 2); }
const names = args.filter((a) => !a.startsWith('--'));
const dir = __dirname;
const SCENARIOS = names.length ? names : fs.readdirSync(dir)
  .filter((f) => f.endsWith('.js') && !['lib.js', 'node_broker.js', 'run_all.js'].includes(f))
  .map((f) => f.replace(/\.js$/, ''));

function freePort() {
  return new Promise((resolve) => {
    const port = 20000 + Math.floor(Math.random() * 29000);
    const s = net.createServer().once('error', () => resolve(freePort())).listen(port, '127.0.0.1', () => s.close(() => resolve(port)));
  });
}

function waitConnectable(ep, ms) {
  const deadline = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const tryOnce = () => {
      const s = ep.udsPath ? net.createConnection(ep.udsPath) : net.createConnection(ep.port, '127.0.0.1');
      s.once('connect', () => { s.destroy(); resolve(); });
      s.once('error', () => (Date.now() > deadline ? reject(new Error('broker not reachable')) : setTimeout(tryOnce, 50)));
    };
    tryOnce();
  });
}

async function startBroker(tmp) {
  const uds = path.join(tmp, 'b.sock');
  if (brokerCmd) {
    const port = await freePort();
    const cmd = brokerCmd.replace(/\{port\}/g, String(port)).replace(/\{uds\}/g, uds);
    const p = spawn('sh', ['-c', 'exec ' + cmd], { stdio: ['pipe', 'ignore', 'inherit'] });
    const ep = useUds ? { udsPath: uds } : { port };
    await waitConnectable(ep, 10000);
    return { p, ep };
  }
  const p = spawn(process.execPath, [path.join(dir, 'node_broker.js')].concat(useUds ? ['--uds', uds] : []),
    { stdio: ['pipe', 'pipe', 'inherit'] });
  const ep = await new Promise((resolve, reject) => {
    let out = '';
    p.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/LISTENING (.*)\n/);
      if (m) resolve(JSON.parse(m[1]));
    });
    p.once('exit', (code) => reject(new Error('node broker exited ' + code)));
  });
  return { p, ep };
}

(async () => {
  const results = [];
  for (const name of SCENARIOS) {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lmx-node-'));
    const { p, ep } = await startBroker(tmp);
    const env = Object.assign({}, process.env, { LMX_TMPDIR: tmp });
    delete env.LMX_PORT; delete env.LMX_UDS; delete env.LMX_HOST;
    if (ep.udsPath) env.LMX_UDS = ep.udsPath; else { env.LMX_PORT = String(ep.port); env.LMX_HOST = '127.0.0.1'; }
    const t0 = Date.now();
    const r = spawnSync(process.execPath, [path.join(dir, name + '.js')], { env, encoding: 'utf8', timeout: 120000 });
    const ms = Date.now() - t0;
    p.kill('SIGKILL');
    fs.rmSync(tmp, { recursive: true, force: true });
    const out = (r.stdout || '') + (r.stderr || '');
    const lines = out.split('\n').filter((l) => /^(PASS|FAIL|figure) /.test(l));
    results.push({ name, code: r.status, ms, lines });
    console.log(`${r.status === 0 ? 'pass' : 'FAIL'} ${name} (exit ${r.status}, ${ms} ms)`);
    lines.forEach((l) => console.log('    ' + l));
  }
  const failed = results.filter((r) => r.code !== 0).length;
  console.log(`${results.length - failed} passed, ${failed} failed`);
})();
