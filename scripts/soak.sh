#!/usr/bin/env bash
# Soak: a broker process under a mix of lockers, churn, garbage, hogs and killed holders for
# MINUTES minutes (default 30); prints the broker's RSS and open descriptors once a minute.
# Not run in CI. Usage: scripts/soak.sh [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
cargo build --release --bin lmx --example soak >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/release/lmx start --host 127.0.0.1 --port "$port" 2>/tmp/lmx-soak-broker.log &
broker=$!
load=""
cleanup() { [ -n "$load" ] && kill "$load" 2>/dev/null; kill "$broker" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
sleep 0.5
sample() {
  local rss fds
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$broker/status")
  fds=$(ls "/proc/$broker/fd" | wc -l)
  echo "$(date +%H:%M:%S) minute $1: broker RSS ${rss} KiB, open descriptors ${fds}"
}
sample 0
target/release/examples/soak "127.0.0.1:$port" $((minutes * 60)) &
load=$!
for m in $(seq 1 "$minutes"); do
  sleep 60
  sample "$m"
done
wait "$load"; rc=$?
load=""
sleep 1
sample end
exit $rc
