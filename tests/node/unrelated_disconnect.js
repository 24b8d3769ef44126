'use strict';
// An unrelated client connecting and disconnecting repeatedly never releases anyone's lock.
// 8 workers (own connections) loop lock -> ~200 us async critical section -> unlock on one key, while a
// churn client connects and disconnects every 50 ms (alternating the real client's close() and a raw
// socket end()). Overlaps (a worker entering while another is inside) must be 0.
const net = require('net');
const { makeClient, tryLock, assert, errStr, main, now, sleep, figure, endpoint, lmx } = require('./lib');
const DURATION = Number(process.env.LMX_CHURN_MS) || 3000;

function spinAsync(us) {
  // an asynchronous critical section (yields to the event loop so other grants can be observed)
  const end = now() + us / 1000;
  return new Promise((resolve) => {
    const step = () => (now() >= end ? resolve() : setImmediate(step));
    setImmediate(step);
  });
}

main(async () => {
  process.setMaxListeners(0); // every live-mutex Client adds a process 'exit' listener
  const k = 'churn-' + process.pid;
  const workers = [];
  for (let i = 0; i < 8; i++) workers.push(await makeClient({ lockRequestTimeout: 10000, lockRetryMax: 1 }));
  let inside = 0;
  let overlaps = 0;
  let cycles = 0;
  let churns = 0;
  const errors = [];
  let stop = false;

  const work = async (c) => {
    while (!stop) {
      const r = await tryLock(c, k, { ttl: 10000 });
      if (r.err) { errors.push(errStr(r.err)); continue; }
      inside++;
      if (inside > 1) overlaps++;
      await spinAsync(200);
      inside--;
      const u = await new Promise((res) => r.unlock((err) => res(err)));
      if (u) errors.push('unlock: ' + errStr(u));
      cycles++;
    }
  };

  const churn = async () => {
    const ep = endpoint();
    while (!stop) {
      await sleep(50);
      if (churns % 2 === 0) {
        const z = new lmx.Client(Object.assign({}, ep));
        z.emitter.on('error', () => {});
        z.emitter.on('warning', () => {});
        await z.ensure();
        await sleep(1);
        z.close();
      } else {
        await new Promise((resolve) => {
          const s = ep.udsPath ? net.createConnection(ep.udsPath) : net.createConnection(ep.port, ep.host);
          s.on('error', resolve);
          s.on('connect', () => {
            s.write(JSON.stringify({ type: 'version', value: '0.2.25' }) + '\n');
            s.end();
          });
          s.on('close', resolve);
        });
      }
      churns++;
    }
  };

  const running = workers.map(work).concat([churn()]);
  await sleep(DURATION);
  stop = true;
  await Promise.all(running);
  figure('overlaps', overlaps);
  figure('cycles', cycles);
  figure('churn_connections', churns);
  assert(cycles > 50, `only ${cycles} lock cycles completed in ${DURATION} ms`);
  assert(churns >= 10, `only ${churns} churn connections`);
  assert(overlaps === 0, `${overlaps} overlaps in ${cycles} cycles: an unrelated disconnect (${churns} of them) released a held lock`);
  assert(errors.length === 0, `errors: ${errors.slice(0, 3).join(' | ')} (${errors.length})`);
  return `${cycles} cycles, ${churns} unrelated connects/disconnects, 0 overlaps`;
}, 20000);
