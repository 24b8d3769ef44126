#!/usr/bin/env bash
# Our broker against the npm live-mutex@0.2.25 Node broker, side by side in one run, on loopback.
#
#   benches/compare.sh [--runs N] [--no-memory] [--no-build] [--clients-only]
#
# --clients-only runs only the client comparison (clients_compare below) and draws its chart.
#
# Starts `lmx start` (TCP + a Unix socket) and the Node broker (TCP), then, N times (default 3),
# alternating which broker goes first:
#   * W1..W4 with `lmx bench --json` (the same Rust client) against each broker, recording the
#     broker's CPU time (utime+stime from /proc/PID/stat) around each workload;
#   * the npm Node client (benches/node_compare.js: 10,000 cycles, 25 in flight, one
#     connection) against the Node broker and against ours (TCP and Unix socket);
#   * our client on our broker with the same shape (25 clients, 1 key, 10,000 cycles) over
#     NDJSON/TCP, WebSocket and the Unix socket.
# Prints one table of medians over the runs with ratios; raw results (JSON lines) are kept in
# $LMX_BENCH_OUT (default: a temp file, path printed). Then, unless --no-memory, measures the
# RSS of our broker with 10,000 idle connections and 100,000 held keys
# (target/release/examples/broker_memory). Everything started here is stopped on exit.
#
# Needs: cargo, node + npm (live-mutex@0.2.25 is installed once into
# $LMX_NODE_CACHE, default ~/.cache/live-mutex-tests/node-0.2.25, the interop tests' cache).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=3
MEMORY=1
BUILD=1
CLIENTS_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --no-memory) MEMORY=0; shift ;;
    --no-build) BUILD=0; shift ;;
    --clients-only) CLIENTS_ONLY=1; shift ;;
    *) echo "usage: $0 [--runs N] [--no-memory] [--no-build] [--clients-only]" >&2; exit 2 ;;
  esac
done

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
LMX=$TARGET/release/lmx
if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && cargo build --release --bins --examples --features tokio --quiet)
fi
[ -x "$LMX" ] || { echo "no $LMX (build with cargo build --release)" >&2; exit 1; }

# --- the npm package, installed once outside the source tree (as tests/node_interop.rs does)
NODE_CACHE=${LMX_NODE_CACHE:-$HOME/.cache/live-mutex-tests/node-0.2.25}
if ! [ -f "$NODE_CACHE/.lmx-install-complete" ]; then
  echo "== installing live-mutex@0.2.25 into $NODE_CACHE" >&2
  mkdir -p "$(dirname "$NODE_CACHE")"
  tmp_install=$(mktemp -d "$(dirname "$NODE_CACHE")/.install-XXXXXX")
  npm_config_update_notifier=false npm install --prefix "$tmp_install" --no-audit --no-fund \
    --ignore-scripts --loglevel=error live-mutex@0.2.25 </dev/null
  echo 0.2.25 > "$tmp_install/.lmx-install-complete"
  mv -T "$tmp_install" "$NODE_CACHE" 2>/dev/null || rm -rf "$tmp_install"
fi
export NODE_PATH=$NODE_CACHE/node_modules

TMP=$(mktemp -d /tmp/lmx-compare.XXXXXX)
OUT=${LMX_BENCH_OUT:-$TMP/results.jsonl}
[ -n "${LMX_BENCH_OUT:-}" ] && : > "$OUT"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do
    wait "$p" 2>/dev/null || true
  done
  if [ -z "${LMX_BENCH_OUT:-}" ]; then rm -rf "$TMP"; else rm -rf "${TMP:?}"/*.sock "$TMP"/*.log; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free TCP port that the Node client accepts (it refuses ports above 49151).
free_port() {
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 29000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  echo "no free port" >&2
  exit 1
}

wait_port() {
  for _ in $(seq 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listening on port $1" >&2
  exit 1
}

CLK_TCK=$(getconf CLK_TCK)
# utime+stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat, after the comm).
cpu_ticks() {
  local s
  s=$(cat "/proc/$1/stat")
  s=${s##*) }
  # shellcheck disable=SC2086
  set -- $s
  echo $((${12} + ${13}))
}

OUR_PORT=$(free_port)
"$LMX" start --host 127.0.0.1 --port "$OUR_PORT" --uds "$TMP/lmx.sock" 2>"$TMP/lmx.log" &
OUR_PID=$!
PIDS+=("$OUR_PID")
NODE_PORT=$(free_port)
node "$ROOT/benches/node_broker.js" --port "$NODE_PORT" >"$TMP/node.log" 2>&1 &
NODE_PID=$!
PIDS+=("$NODE_PID")
wait_port "$OUR_PORT"
wait_port "$NODE_PORT"
for _ in $(seq 100); do [ -S "$TMP/lmx.sock" ] && break; sleep 0.05; done

declare -A URL=([ours]="tcp://127.0.0.1:$OUR_PORT" [node]="tcp://127.0.0.1:$NODE_PORT")
declare -A BPID=([ours]=$OUR_PID [node]=$NODE_PID)
WORKLOADS=("W1 1 1 20000" "W2 8 1 20000" "W3 8 8 40000" "W4 64 1 20000")

# record RUN NAME BROKER CYCLES JSON-FROM-THE-TOOL TICKS
record() {
  local cpu_us
  cpu_us=$(awk -v t="$6" -v hz="$CLK_TCK" -v n="$4" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
  printf '{"run":%s,"name":"%s","broker":"%s","cpu_us_per_cycle":%s,"result":%s}\n' \
    "$1" "$2" "$3" "$cpu_us" "$5" >>"$OUT"
}

# bench RUN NAME BROKER URL CLIENTS KEYS OPS
bench() {
  local t0 t1 json
  t0=$(cpu_ticks "${BPID[$3]}")
  json=$("$LMX" --url "$4" bench --json --clients "$5" --keys "$6" --ops "$7" --prefix "$2-r$1") || {
    echo "lmx bench $2 against $3 FAILED: $json" >&2
    exit 1
  }
  t1=$(cpu_ticks "${BPID[$3]}")
  record "$1" "$2" "$3" "$7" "$json" $((t1 - t0))
}

# node_client RUN NAME BROKER ENV...
node_client() {
  local t0 t1 line
  t0=$(cpu_ticks "${BPID[$3]}")
  line=$(env "${@:4}" node "$ROOT/benches/node_compare.js")
  t1=$(cpu_ticks "${BPID[$3]}")
  # node_compare ... cycles=N ... cycles_per_s=R
  local cycles rate
  cycles=$(sed -E 's/.* cycles=([0-9]+).*/\1/' <<<"$line")
  rate=$(sed -E 's/.*cycles_per_s=([0-9]+).*/\1/' <<<"$line")
  record "$1" "$2" "$3" "$cycles" "{\"ops_per_s\":$rate,\"overlaps\":0,\"errors\":0}" $((t1 - t0))
}

# --- Clients side by side, W1..W4, medians of $RUNS in one run: our client on our broker over
# the Unix socket (blocking with pipelined release, blocking waiting for each unlock's reply,
# async), the npm client on the npm broker (TCP; node_compare.js with one connection and one
# cycle in flight per client, as lmx bench), and flock(2) lock files. Draws $CHART_OUT
# (default benches/results/clients.svg) and prints a table.
clients_compare() {
  local cout=$TMP/clients.jsonl
  : >"$cout"
  local chart=${CHART_OUT:-$ROOT/benches/results/clients.svg}
  mkdir -p "$TMP/lockfiles"
  local run w name c k n mode j line rate
  for run in $(seq "$RUNS"); do
    for w in "${WORKLOADS[@]}"; do
      read -r name c k n <<<"$w"
      for mode in blocking blocking-wait async; do
        local extra=()
        [ "$mode" = blocking-wait ] && extra=(--wait-unlock)
        [ "$mode" = async ] && extra=(--async)
        j=$("$LMX" --url "unix://$TMP/lmx.sock" bench --json --clients "$c" --keys "$k" --ops "$n" \
          --prefix "c-$name-$mode-r$run" "${extra[@]}") || { echo "bench $mode $name FAILED: $j" >&2; exit 1; }
        printf '{"run":%s,"workload":"%s","series":"ours %s (unix)","ops_per_s":%s,"overlaps":%s}\n' \
          "$run" "$name" "$mode" "$(node -pe 'JSON.parse(process.argv[1]).ops_per_s' "$j")" \
          "$(node -pe 'const r=JSON.parse(process.argv[1]); r.overlaps+r.errors' "$j")" >>"$cout"
      done
      line=$(env LMX_PORT="$NODE_PORT" LMX_BENCH_CLIENTS="$c" LMX_BENCH_CONCURRENCY="$c" \
        LMX_BENCH_KEYS="$k" LMX_BENCH_CYCLES="$n" node "$ROOT/benches/node_compare.js")
      rate=$(sed -E 's/.*cycles_per_s=([0-9]+).*/\1/' <<<"$line")
      printf '{"run":%s,"workload":"%s","series":"npm client, npm broker (tcp)","ops_per_s":%s,"overlaps":0}\n' \
        "$run" "$name" "$rate" >>"$cout"
      j=$("$TARGET/release/examples/compare_chart" lockfile --clients "$c" --keys "$k" --ops "$n" --dir "$TMP/lockfiles")
      printf '{"run":%s,"workload":"%s","series":"flock(2) lock files","ops_per_s":%s,"overlaps":%s}\n' "$run" "$name" \
        "$(node -pe 'JSON.parse(process.argv[1]).ops_per_s' "$j")" "$(node -pe 'JSON.parse(process.argv[1]).overlaps' "$j")" >>"$cout"
    done
    echo "== clients run $run/$RUNS done" >&2
  done
  "$TARGET/release/examples/compare_chart" chart "$cout" "$chart"
  node - "$cout" <<'EOF'
const fs = require('fs');
const rows = fs.readFileSync(process.argv[2], 'utf8').trim().split('\n').map(JSON.parse);
const med = (xs) => { const s = xs.slice().sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
const series = [...new Set(rows.map((r) => r.series))];
const W = ['W1', 'W2', 'W3', 'W4'];
const g = (w, s) => med(rows.filter((r) => r.workload === w && r.series === s).map((r) => r.ops_per_s));
const npm = 'npm client, npm broker (tcp)';
console.log(`\nMedians of ${new Set(rows.map((r) => r.run)).size} run(s), cycles/s (ratio to the npm client on the npm broker):\n`);
console.log('| series | ' + W.join(' | ') + ' | overlaps+errors |');
console.log('|---|' + W.map(() => '---').join('|') + '|---|');
for (const s of series) {
  const ov = rows.filter((r) => r.series === s).reduce((a, r) => a + r.overlaps, 0);
  console.log(`| ${s} | ` + W.map((w) => `${Math.round(g(w, s))} (${(g(w, s) / g(w, npm)).toFixed(2)}x)`).join(' | ') + ` | ${ov} |`);
}
const a = 'ours async (unix)', b = 'ours blocking (unix)';
console.log('\nasync / blocking: ' + W.map((w) => `${w} ${(g(w, a) / g(w, b)).toFixed(2)}`).join(', '));
EOF
  cp "$cout" "$ROOT/benches/results/clients.jsonl"
  echo "chart: $chart; raw: $ROOT/benches/results/clients.jsonl" >&2
}
if [ "$CLIENTS_ONLY" = 1 ]; then
  clients_compare
  exit 0
fi

echo "== ours: pid $OUR_PID ${URL[ours]} + unix://$TMP/lmx.sock; node 0.2.25: pid $NODE_PID ${URL[node]}; $RUNS runs" >&2
for run in $(seq "$RUNS"); do
  if [ $((run % 2)) = 1 ]; then order=(ours node); else order=(node ours); fi
  for w in "${WORKLOADS[@]}"; do
    read -r name c k n <<<"$w"
    for b in "${order[@]}"; do
      bench "$run" "$name" "$b" "${URL[$b]}" "$c" "$k" "$n"
    done
  done
  for b in "${order[@]}"; do
    if [ "$b" = node ]; then
      node_client "$run" "nodeclient-tcp" node LMX_PORT="$NODE_PORT"
    else
      node_client "$run" "nodeclient-tcp" ours LMX_PORT="$OUR_PORT"
      node_client "$run" "nodeclient-uds" ours LMX_UDS="$TMP/lmx.sock"
    fi
  done
  bench "$run" "ourclient-tcp" ours "${URL[ours]}" 25 1 10000
  bench "$run" "ourclient-ws" ours "ws://127.0.0.1:$OUR_PORT" 25 1 10000
  bench "$run" "ourclient-uds" ours "unix://$TMP/lmx.sock" 25 1 10000
  echo "== run $run/$RUNS done" >&2
done

node - "$OUT" <<'EOF'
const fs = require('fs');
const rows = fs.readFileSync(process.argv[2], 'utf8').trim().split('\n').map(JSON.parse);
const med = (xs) => { const s = xs.slice().sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
const get = (name, broker, f) => med(rows.filter((r) => r.name === name && r.broker === broker).map(f));
const ops = (r) => r.result.ops_per_s;
const cpu = (r) => r.cpu_us_per_cycle;
const p99 = (r) => r.result.lock_wait_us.p99;
const fair = (r) => r.result.fairness;
const overl = (name, broker) => rows.filter((r) => r.name === name && r.broker === broker).reduce((a, r) => a + r.result.overlaps + r.result.errors, 0);
const runs = new Set(rows.map((r) => r.run)).size;
const f0 = (x) => Math.round(x).toString();
const f1 = (x) => x.toFixed(1);
const f2 = (x) => x.toFixed(2);
const line = (cells) => console.log('| ' + cells.join(' | ') + ' |');
console.log(`\nMedians of ${runs} run(s). Same Rust client (lmx bench) against both brokers, over TCP NDJSON.\n`);
line(['workload', 'ours cycles/s', 'node cycles/s', 'ratio', 'ours p99 wait µs', 'node p99 wait µs', 'fairness ours / node', 'overlaps+errors ours / node', 'ours CPU µs/cycle', 'node CPU µs/cycle', 'CPU ratio node/ours']);
line(Array(11).fill('---'));
const W = { W1: '1 client, 1 key, 20,000', W2: '8 clients, 1 key, 20,000', W3: '8 clients, 8 keys, 40,000', W4: '64 clients, 1 key, 20,000' };
for (const [w, d] of Object.entries(W)) {
  const [oo, no] = [get(w, 'ours', ops), get(w, 'node', ops)];
  const [oc, nc] = [get(w, 'ours', cpu), get(w, 'node', cpu)];
  line([`${w}: ${d}`, f0(oo), f0(no), f2(oo / no) + 'x', f0(get(w, 'ours', p99)), f0(get(w, 'node', p99)),
    `${f2(get(w, 'ours', fair))} / ${f2(get(w, 'node', fair))}`, `${overl(w, 'ours')} / ${overl(w, 'node')}`, f1(oc), f1(nc), f2(nc / oc) + 'x']);
}
const base = get('nodeclient-tcp', 'node', ops);
console.log('\nThe npm client (node_compare.js: 10,000 cycles, 25 in flight, one connection) and our client (25 clients, 1 key, 10,000 cycles).\n');
line(['client → broker', 'cycles/s', 'ratio to npm client → npm broker', 'broker CPU µs/cycle']);
line(Array(4).fill('---'));
const rowsN = [['npm client → npm broker (tcp)', 'nodeclient-tcp', 'node'], ['npm client → ours (tcp)', 'nodeclient-tcp', 'ours'], ['npm client → ours (unix)', 'nodeclient-uds', 'ours'],
  ['our client → ours (tcp)', 'ourclient-tcp', 'ours'], ['our client → ours (ws)', 'ourclient-ws', 'ours'], ['our client → ours (unix)', 'ourclient-uds', 'ours']];
for (const [label, name, b] of rowsN) {
  const o = get(name, b, ops);
  line([label, f0(o), f2(o / base) + 'x', f1(get(name, b, cpu))]);
}
EOF
echo "raw results: $OUT" >&2
clients_compare

if [ "$MEMORY" = 1 ]; then
  echo >&2
  echo "== memory: RSS of lmx start with 10,000 idle connections and 100,000 held keys" >&2
  ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  "$TARGET/release/examples/broker_memory" --lmx "$LMX" --conns 10000 --keys 100000
fi
