#!/usr/bin/env bash
# The npm live-mutex@0.2.25 Node client's cycle throughput (benches/node_compare.js: 10,000
# lock/unlock cycles on one key, 25 in flight, one connection) against the npm 0.2.25 Node broker
# and against ours (release build), over TCP and a Unix socket, RUNS times (default 3), in one run.
# Starts both brokers itself (TCP on 127.0.0.1, a free port in 1025..49151, which is all the 0.2.25
# client accepts; Unix sockets in a temp dir) and stops them, by PID, on exit.
#
#   cargo build --release && benches/node_compare.sh [RUNS]
#
# Needs node and live-mutex@0.2.25 in $LMX_NODE_CACHE/node_modules (default
# ~/.cache/live-mutex-tests/node-0.2.25; `cargo test --test node_interop` installs it there).
# Env: LMX_BIN (default $CARGO_TARGET_DIR/release/lmx or target/release/lmx), LMX_BENCH_CYCLES,
# LMX_BENCH_CONCURRENCY (passed on to node_compare.js).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${1:-3}
CACHE=${LMX_NODE_CACHE:-$HOME/.cache/live-mutex-tests/node-0.2.25}
export NODE_PATH=$CACHE/node_modules
LMX_BIN=${LMX_BIN:-${CARGO_TARGET_DIR:-target}/release/lmx}
[ -x "$LMX_BIN" ] || { echo "no $LMX_BIN: run cargo build --release first" >&2; exit 2; }
node -e "require('live-mutex')" 2>/dev/null ||
  { echo "live-mutex not found under NODE_PATH=$NODE_PATH (run cargo test --test node_interop once)" >&2; exit 2; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/lmx-cmp.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  exec 3>&- 4>&- 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

# node_broker.js serves until its stdin closes: give each one a FIFO we hold open.
mkfifo "$TMP/in-tcp" "$TMP/in-uds"
exec 3<>"$TMP/in-tcp" 4<>"$TMP/in-uds"
node tests/node/node_broker.js <"$TMP/in-tcp" >"$TMP/node-tcp.out" 2>/dev/null &
PIDS+=($!)
node tests/node/node_broker.js --uds "$TMP/node.sock" <"$TMP/in-uds" >"$TMP/node-uds.out" 2>/dev/null &
PIDS+=($!)

free_port() {
  node -e '
    const net = require("net");
    const t = () => { const p = 20000 + Math.floor(Math.random() * 29000);
      const s = net.createServer().once("error", t).listen(p, "127.0.0.1", () => s.close(() => console.log(p))); };
    t();'
}
OUR_PORT=$(free_port)
"$LMX_BIN" start --host 127.0.0.1 --port "$OUR_PORT" --uds "$TMP/ours.sock" 2>"$TMP/ours.err" &
PIDS+=($!)

wait_for() { # file-or-pattern check
  for _ in $(seq 1 200); do eval "$1" && return 0; sleep 0.05; done
  echo "timed out waiting for: $1" >&2; exit 1
}
wait_for 'grep -q LISTENING "$TMP/node-tcp.out"'
wait_for 'grep -q LISTENING "$TMP/node-uds.out"'
wait_for '[ -S "$TMP/ours.sock" ] && (exec 5<>/dev/tcp/127.0.0.1/$OUR_PORT) 2>/dev/null'
NODE_PORT=$(sed -n 's/^LISTENING {"port":\([0-9]*\)}$/\1/p' "$TMP/node-tcp.out")

one() { # broker transport -> cycles_per_s
  local env
  case "$1/$2" in
    npm/tcp) env=(LMX_HOST=127.0.0.1 LMX_PORT="$NODE_PORT") ;;
    npm/uds) env=(LMX_UDS="$TMP/node.sock") ;;
    ours/tcp) env=(LMX_HOST=127.0.0.1 LMX_PORT="$OUR_PORT") ;;
    ours/uds) env=(LMX_UDS="$TMP/ours.sock") ;;
  esac
  local out
  out=$(env -u LMX_UDS -u LMX_PORT "${env[@]}" node benches/node_compare.js)
  echo "  $1 $2: $out" >&2
  sed -n 's/.*cycles_per_s=\([0-9]*\).*/\1/p' <<<"$out"
}

echo "node $(node --version), live-mutex $(node -p "require('live-mutex/package.json').version"), ours: $LMX_BIN" >&2
declare -A R
for run in $(seq 1 "$RUNS"); do
  echo "run $run" >&2
  for t in tcp uds; do
    # alternate which broker goes first, so drift on a shared machine does not favour one
    if (( run % 2 )); then order="npm ours"; else order="ours npm"; fi
    for b in $order; do R[$b/$t/$run]=$(one "$b" "$t"); done
  done
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo
echo "| transport | npm 0.2.25 broker (cycles/s) | our broker (cycles/s) | ours / npm, per run | median ratio |"
echo "|---|---|---|---|---|"
for t in tcp uds; do
  npm=() ours=() ratios=()
  for run in $(seq 1 "$RUNS"); do
    npm+=("${R[npm/$t/$run]}")
    ours+=("${R[ours/$t/$run]}")
    ratios+=("$(awk -v a="${R[ours/$t/$run]}" -v b="${R[npm/$t/$run]}" 'BEGIN {printf "%.2f", a / b}')")
  done
  printf '| %s | %s (median of %s) | %s (median of %s) | %s | %s |\n' \
    "$( [ $t = tcp ] && echo TCP || echo 'Unix socket')" \
    "$(median "${npm[@]}")" "$(IFS=,; echo "${npm[*]}" | sed 's/,/, /g')" \
    "$(median "${ours[@]}")" "$(IFS=,; echo "${ours[*]}" | sed 's/,/, /g')" \
    "$(IFS=,; echo "${ratios[*]}" | sed 's/,/, /g')" "$(median "${ratios[@]}")"
done
