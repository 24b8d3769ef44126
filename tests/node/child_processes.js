'use strict';
// Five child processes each append runs of their letter to one file under one lock: no interleaving.
const { spawn } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { assert, main, figure } = require('./lib');

main(async () => {
  const dir = process.env.LMX_TMPDIR || fs.mkdtempSync(path.join(os.tmpdir(), 'lmx-child-'));
  const file = path.join(dir, `alphabet-${process.pid}.txt`);
  fs.writeFileSync(file, '');
  const key = 'alpha-' + process.pid;
  const RUNS = 4;
  const letters = ['a', 'b', 'c', 'd', 'e'];
  const kids = letters.map((l) => spawn(process.execPath, [path.join(__dirname, 'fixtures', 'append_child.js'), l, file, key, String(RUNS)],
    { stdio: ['pipe', 'pipe', 'inherit'], env: process.env }));
  const done = kids.map((k, i) => new Promise((resolve, reject) => {
    let out = '';
    k.stdout.on('data', (d) => { out += d; if (out.includes('DONE')) resolve(); });
    k.once('exit', (code) => reject(new Error(`child ${letters[i]} exited with ${code} before finishing`)));
  }));
  try {
    await Promise.all(done);
  } finally {
    kids.forEach((k) => k.stdin.end());
  }
  const text = fs.readFileSync(file, 'utf8');
  figure('chars', text.length);
  assert(text.length === letters.length * RUNS * 50, `file has ${text.length} chars, expected ${letters.length * RUNS * 50}`);
  const runs = text.match(/(.)\1*/g);
  const bad = runs.filter((r) => r.length % 50 !== 0);
  figure('interleavings', bad.length);
  assert(bad.length === 0, `interleaved writes: ${bad.length} runs not a multiple of 50, e.g. ${bad.slice(0, 3).map((r) => r[0] + 'x' + r.length).join(', ')}`);
  for (const l of letters) {
    const n = (text.match(new RegExp(l, 'g')) || []).length;
    assert(n === RUNS * 50, `letter ${l} appears ${n} times`);
  }
  return `${runs.length} uniform runs, no interleaving`;
}, 45000);
