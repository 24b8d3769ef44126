'use strict';
// The npm live-mutex@0.2.25 Node broker, for benches/compare.sh.
//   NODE_PATH=<cache>/node_modules node benches/node_broker.js --port P    (127.0.0.1; P <= 49151)
//   NODE_PATH=<cache>/node_modules node benches/node_broker.js --uds PATH
// Prints `LISTENING` on stdout once it accepts connections; serves until killed.
const { Broker } = require('live-mutex');

const arg = (name) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : undefined; };
const opts = arg('--uds') ? { udsPath: arg('--uds') } : { port: Number(arg('--port')), host: '127.0.0.1' };
const b = new Broker(opts);
// Without an 'error' listener the 0.2.25 broker throws instead of answering.
b.emitter.on('error', () => {});
b.emitter.on('warning', () => {});
b.ensure().then(() => process.stdout.write('LISTENING\n'), (e) => {
  console.error('node broker failed to start:', e);
  process.exit(1);
});
