#!/usr/bin/env bash
# Overhead of being watched: `lmx bench` W1-W4 against one release broker, each workload run
# both plain and with the status page open in headless Chromium plus a scraper polling
# /metrics every second, interleaved (plain/watched, then watched/plain) over ROUNDS rounds
# (default 3). Prints each run, then per workload the medians and watched/plain ratios of
# throughput and of the broker's own CPU time per cycle (from /proc: what watching costs the
# broker, apart from what Chromium costs the machine).
# Needs chromium and curl. Not run in CI (timings on shared machines are noise).
# Usage: scripts/observe-overhead.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
cargo build --release --bin lmx >/dev/null
lmx=target/release/lmx
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
profile=$(mktemp -d)
out=$(mktemp)
$lmx start --host 127.0.0.1 --port "$port" --log-level warn 2>/tmp/lmx-overhead-broker.log &
broker=$!
chrome=""
scraper=""
stop_watchers() {
  [ -n "$scraper" ] && kill "$scraper" 2>/dev/null && wait "$scraper" 2>/dev/null || true
  [ -n "$chrome" ] && kill "$chrome" 2>/dev/null && wait "$chrome" 2>/dev/null || true
  scraper=""; chrome=""
}
cleanup() { stop_watchers; kill "$broker" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$profile" "$out" "$out.idle"; }
trap cleanup EXIT
sleep 0.5
watchers() { curl -s "http://127.0.0.1:$port/metrics" | awk '$1=="lmx_watchers" {print $2}'; }
start_watchers() {
  chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --disable-background-networking --disable-component-update --disable-sync --no-first-run \
    --user-data-dir="$profile" --remote-debugging-port=0 "http://127.0.0.1:$port/" \
    >/dev/null 2>&1 &
  chrome=$!
  (while :; do curl -s -o /dev/null "http://127.0.0.1:$port/metrics"; sleep 1; done) &
  scraper=$!
  for _ in $(seq 100); do [ "$(watchers)" = 1 ] && return; sleep 0.1; done
  echo "the status page did not connect" >&2; exit 1
}
declare -A W=([W1]="--clients 1 --keys 1 --ops 20000" [W2]="--clients 8 --keys 1 --ops 20000"
              [W3]="--clients 8 --keys 8 --ops 40000" [W4]="--clients 64 --keys 1 --ops 20000")
# The broker's CPU time in ns, all its threads (schedstat: ns resolution, unlike stat's ticks).
cpu_ns() { cat /proc/"$broker"/task/*/schedstat | awk '{s += $1} END {print s}'; }
run() { # workload condition
  local r t0 t1
  t0=$(cpu_ns)
  r=$($lmx bench --url "tcp://127.0.0.1:$port" ${W[$1]} --json)
  t1=$(cpu_ns)
  local ops p99 cyc
  ops=$(echo "$r" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ops_per_s"])')
  p99=$(echo "$r" | python3 -c 'import json,sys; print(json.load(sys.stdin)["lock_wait_us"]["p99"])')
  cyc=$(echo "$r" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cycles"])')
  local us_per
  us_per=$(python3 -c "print(round(($t1 - $t0) / 1e3 / $cyc, 2))")
  echo "$1 $2 $ops $p99 $us_per" | tee -a "$out"
}
echo "workload condition cycles/s lock-wait-p99-us broker-cpu-us/cycle"
for round in $(seq "$rounds"); do
  for w in W1 W2 W3 W4; do
    if [ $((round % 2)) = 1 ]; then
      run "$w" plain; start_watchers; run "$w" watched; stop_watchers
    else
      start_watchers; run "$w" watched; stop_watchers; run "$w" plain
    fi
  done
done
# What watching costs the broker by itself: its CPU over IDLE_S seconds with 64 connections
# holding 64 keys (a W4-sized snapshot), unwatched and then watched. CPU time, not wall time,
# so the neighbours' load matters far less.
idle_s=${IDLE_S:-20}
python3 - "$port" "$idle_s" <<'PY' &
import socket, sys, time, json
port, secs = int(sys.argv[1]), int(sys.argv[2])
conns = []
for i in range(64):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall((json.dumps({"type": "hello", "name": f"holder-{i}"}) + "\n" +
               json.dumps({"type": "lock", "uuid": f"h{i}", "key": f"idle-{i}", "ttl": None}) + "\n").encode())
    conns.append(s)
time.sleep(2 * secs + 10)
PY
holders=$!
sleep 2
c0=$(cpu_ns); sleep "$idle_s"; c1=$(cpu_ns)
start_watchers
sleep 2
c2=$(cpu_ns); sleep "$idle_s"; c3=$(cpu_ns)
stop_watchers
kill "$holders" 2>/dev/null; wait "$holders" 2>/dev/null || true
echo
python3 -c "
plain = ($c1 - $c0) / 1e3 / $idle_s
watched = ($c3 - $c2) / 1e3 / $idle_s
print(f'idle, 64 holders: broker CPU {plain:.0f} us/s unwatched, {watched:.0f} us/s watched '
      f'(page + /metrics every second): watching costs {watched - plain:.0f} us of broker CPU per second')
" | tee -a "$out.idle"
echo
python3 - "$out" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
idle = open(sys.argv[1] + ".idle").read()
import re
cost = float(re.search(r"costs (-?\d+) us", idle).group(1))
print(f"{'':4} {'plain c/s':>10} {'watched c/s':>12} {'ratio':>6}   {'plain p99 us':>12} {'watched':>8}"
      f"   {'plain cpu us/cyc':>16} {'watched':>8} {'ratio':>6}  (medians of {len(rows)//8})")
for w in ["W1", "W2", "W3", "W4"]:
    med = lambda c, i: statistics.median(float(r[i]) for r in rows if r[0] == w and r[1] == c)
    p, q = med("plain", 2), med("watched", 2)
    cp, cq = med("plain", 4), med("watched", 4)
    print(f"{w:4} {p:>10.0f} {q:>12.0f} {q/p:>6.3f}   {med('plain',3):>12.0f} {med('watched',3):>8.0f}"
          f"   {cp:>16.2f} {cq:>8.2f} {cq/cp:>6.3f}")
print()
print("watching's own broker CPU as a share of the broker's CPU under each workload (plain medians):")
for w in ["W1", "W2", "W3", "W4"]:
    med = lambda c, i: statistics.median(float(r[i]) for r in rows if r[0] == w and r[1] == c)
    busy = med("plain", 2) * med("plain", 4)  # us of broker CPU per second
    print(f"{w}: {cost:.0f} us/s of {busy:.0f} us/s = {100 * cost / busy:.3f} %")
PY
