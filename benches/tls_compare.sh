#!/usr/bin/env bash
# TLS against plain TCP on one broker, side by side in one run, on loopback (issue 25).
#
#   benches/tls_compare.sh [--runs N] [--no-build]
#
# Makes a CA and a certificate for 127.0.0.1 with openssl, starts one `lmx start --tls-cert`
# (plain TCP and TLS on the same port), then, N times (default 3), alternating which goes
# first, runs W1..W4 with `lmx bench --json` over tcp:// and over tls:// (NDJSON inside TLS).
# Prints the medians and the ratio tls/tcp per workload; connection set-up time is
# `cargo bench --bench connect` (in-process, criterion). Stops what it started.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=3
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    *) echo "usage: $0 [--runs N] [--no-build]" >&2; exit 2 ;;
  esac
done
LMX=${CARGO_TARGET_DIR:-$ROOT/target}/release/lmx
[ "$BUILD" = 1 ] && cargo build --release --bin lmx --manifest-path "$ROOT/Cargo.toml"

TMP=$(mktemp -d)
BROKER=""
trap '[ -n "$BROKER" ] && kill "$BROKER" 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"' EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj "/CN=lmx bench CA" -keyout "$TMP/ca-key.pem" -out "$TMP/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=lmx bench" \
  -keyout "$TMP/key.pem" -out "$TMP/req.csr" 2>/dev/null
echo "subjectAltName=IP:127.0.0.1" >"$TMP/ext"
openssl x509 -req -in "$TMP/req.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca-key.pem" \
  -CAcreateserial -days 1 -extfile "$TMP/ext" -out "$TMP/cert.pem" 2>/dev/null

"$LMX" start --port 0 --tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem" --log-level warn \
  2>"$TMP/broker.log" &
BROKER=$!
ADDR=""
for _ in $(seq 100); do
  ADDR=$(ss -ltnp 2>/dev/null | awk -v p="pid=$BROKER," '$0 ~ p {print $4; exit}')
  [ -n "$ADDR" ] && break
  sleep 0.05
done
[ -n "$ADDR" ] || { echo "the broker did not start: $(cat "$TMP/broker.log")" >&2; exit 1; }
export LMX_TLS_CA=$TMP/ca.pem

WORKLOADS=("W1 1 1 20000" "W2 8 1 20000" "W3 8 8 40000" "W4 64 1 20000")
OUT=$TMP/results.jsonl
for run in $(seq "$RUNS"); do
  order=(tcp tls)
  [ $((run % 2)) = 0 ] && order=(tls tcp)
  for w in "${WORKLOADS[@]}"; do
    read -r name c k n <<<"$w"
    for scheme in "${order[@]}"; do
      j=$("$LMX" --url "$scheme://$ADDR" bench --json --clients "$c" --keys "$k" --ops "$n" \
        --prefix "$name-$scheme-r$run")
      printf '{"run":%s,"w":"%s","scheme":"%s","r":%s}\n' "$run" "$name" "$scheme" "$j" >>"$OUT"
    done
  done
  echo "== run $run/$RUNS done" >&2
done

python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(w, s, f):
    get = (lambda r: r["r"]["lock_wait_us"]["p50"]) if f == "p50" else (lambda r: r["r"][f])
    return statistics.median(get(r) for r in rows if r["w"] == w and r["scheme"] == s)
bad = sum(r["r"]["overlaps"] + r["r"]["errors"] for r in rows)
print(f"lmx bench, medians of {len({r['run'] for r in rows})} runs (cycles/s; lock-wait p50 us)")
print(f"{'workload':<8} {'tcp://':>10} {'tls://':>10} {'tls/tcp':>8} {'p50 tcp':>8} {'p50 tls':>8}")
for w in ["W1", "W2", "W3", "W4"]:
    a, b = med(w, "tcp", "ops_per_s"), med(w, "tls", "ops_per_s")
    pa, pb = med(w, "tcp", "p50"), med(w, "tls", "p50")
    print(f"{w:<8} {a:>10.0f} {b:>10.0f} {b / a:>7.2f}x {pa:>8.0f} {pb:>8.0f}")
print(f"overlaps + errors over all runs: {bad}")
PY
