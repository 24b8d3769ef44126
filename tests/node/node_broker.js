'use strict';
// Starts the npm live-mutex@0.2.25 *Node* broker (reference implementation) for validating the
// scenarios. Usage: node node_broker.js [--uds /abs/path]   (TCP on 127.0.0.1, a free port in 1025..49151)
// Prints one line `LISTENING {"port":N}` or `LISTENING {"udsPath":"..."}` on stdout, then serves until killed
// or until stdin closes.
const net = require('net');
const { Broker } = require('live-mutex');

function freePortInRange() {
  // The 0.2.25 client and broker accept only ports 1025..49151; the OS ephemeral range goes above.
  return new Promise((resolve, reject) => {
    let tries = 0;
    const attempt = () => {
      const port = 20000 + Math.floor(Math.random() * 29000);
      const srv = net.createServer();
      srv.once('error', () => (++tries > 50 ? reject(new Error('no free port')) : attempt()));
      srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(port)));
    };
    attempt();
  });
}

(async () => {
  const i = process.argv.indexOf('--uds');
  const opts = i > 0 ? { udsPath: process.argv[i + 1] } : { port: await freePortInRange(), host: '127.0.0.1' };
  const b = new Broker(opts);
  // An 'error' listener is needed or the 0.2.25 broker throws instead of sending version-mismatch.
  b.emitter.on('error', () => {});
  b.emitter.on('warning', () => {});
  await b.ensure();
  process.stdout.write('LISTENING ' + JSON.stringify(opts.udsPath ? { udsPath: opts.udsPath } : { port: opts.port }) + '\n');
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
})().catch((e) => {
  console.error('node broker failed to start:', e);
  process.exit(1);
});
