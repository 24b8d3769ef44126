#!/usr/bin/env bash
# Starts or stops a 3-member etcd cluster on 127.0.0.1 for the etcd store's tests.
#
#   .ci/etcd.sh start [STATE]   start it; STATE (default /tmp/lmx-etcd.env) gets
#                               LMX_ETCD_ENDPOINTS, LMX_ETCD_PIDS, LMX_ETCD_PEERS,
#                               LMX_ETCD_METRICS, LMX_ETCD_DIR
#   .ci/etcd.sh stop [STATE]    kill exactly the pids in STATE, remove its data dirs
#
# Fresh data dirs under a temp dir, free ports, --unsafe-no-fsync when this etcd takes it
# (3.4.23 does, without listing it in --help), everything bound to 127.0.0.1 only.
#
# With LMX_ETCD_SECURE=1 the cluster is secured: TLS on the client and peer URLs, with a CA
# and a certificate for 127.0.0.1 made here by openssl, and authentication enabled (user
# root, a random password). STATE then also gets LMX_ETCD_SECURE=1, LMX_ETCD_CA (the CA's
# PEM file), LMX_ETCD_USER and LMX_ETCD_PASSWORD, which the etcd tests apply.
set -euo pipefail
cmd=${1:-}
state=${2:-${LMX_ETCD_STATE:-/tmp/lmx-etcd.env}}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_ports() {
  ports=()
  while [ "${#ports[@]}" -lt 9 ]; do
    # Below Linux's ephemeral range (32768+), so no outgoing connection holds one.
    p=$((20000 + RANDOM % 12000))
    if port_free "$p" && [[ " ${ports[*]-} " != *" $p "* ]]; then ports+=("$p"); fi
  done
}

start() {
  local attempt
  for attempt in 1 2 3; do
    if start_once; then return 0; fi
    echo "etcd.sh: attempt $attempt failed; retrying with other ports" >&2
  done
  exit 1
}

start_once() {
  command -v etcd >/dev/null && command -v etcdctl >/dev/null || {
    echo "etcd.sh: etcd and etcdctl are needed (apt-get install etcd-server etcd-client)" >&2
    exit 1
  }
  if [ -e "$state" ]; then
    echo "etcd.sh: $state exists: a cluster may be running (stop it first)" >&2
    exit 1
  fi
  local nofsync=""
  if etcd --unsafe-no-fsync --version >/dev/null 2>&1; then nofsync="--unsafe-no-fsync"; fi
  local dir
  dir=$(mktemp -d "${TMPDIR:-/tmp}/lmx-etcd.XXXXXX")
  pick_ports
  local cluster="" eps="" peers="" metrics="" pids="" token="lmx-$$-$RANDOM" scheme=http
  local -a tls=() ctl=()
  if [ "${LMX_ETCD_SECURE:-}" = 1 ]; then
    scheme=https
    make_certs "$dir"
    # (No --trusted-ca-file for clients: this etcd then demands client certificates; clients
    # authenticate with a user and password instead.)
    tls=(--cert-file "$dir/member.pem" --key-file "$dir/member-key.pem"
      --peer-cert-file "$dir/member.pem" --peer-key-file "$dir/member-key.pem"
      --peer-trusted-ca-file "$dir/ca.pem" --peer-client-cert-auth)
    ctl=(--cacert "$dir/ca.pem")
  fi
  for i in 0 1 2; do
    cluster+="${cluster:+,}m$i=$scheme://127.0.0.1:${ports[$((2 * i + 1))]}"
  done
  for i in 0 1 2; do
    local c=${ports[$((2 * i))]} p=${ports[$((2 * i + 1))]} m=${ports[$((6 + i))]}
    etcd --name "m$i" --data-dir "$dir/m$i" --logger zap --log-level warn \
      --listen-client-urls "$scheme://127.0.0.1:$c" --advertise-client-urls "$scheme://127.0.0.1:$c" \
      --listen-peer-urls "$scheme://127.0.0.1:$p" --initial-advertise-peer-urls "$scheme://127.0.0.1:$p" \
      --initial-cluster "$cluster" --initial-cluster-token "$token" \
      --listen-metrics-urls "http://127.0.0.1:$m" \
      --initial-cluster-state new $nofsync "${tls[@]}" >"$dir/m$i.log" 2>&1 &
    pids+="${pids:+,}$!"
    eps+="${eps:+,}127.0.0.1:$c"
    peers+="${peers:+,}127.0.0.1:$p"
    metrics+="${metrics:+,}127.0.0.1:$m"
  done
  {
    echo "LMX_ETCD_ENDPOINTS=$eps"
    echo "LMX_ETCD_PIDS=$pids"
    echo "LMX_ETCD_PEERS=$peers"
    # Plain HTTP /metrics of each member, also when the client port speaks TLS.
    echo "LMX_ETCD_METRICS=$metrics"
    echo "LMX_ETCD_DIR=$dir"
  } >"$state"
  local deadline=$((SECONDS + 30)) pid
  while [ "$SECONDS" -lt "$deadline" ]; do
    if ETCDCTL_API=3 etcdctl --endpoints "$eps" "${ctl[@]}" --dial-timeout 1s \
      --command-timeout 2s endpoint health >/dev/null 2>&1; then
      if [ "$scheme" = https ]; then
        enable_auth "$eps" "$dir" || { stop; return 1; }
      fi
      echo "etcd.sh: 3 members healthy at $eps (pids $pids${nofsync:+, $nofsync}${ctl:+, TLS and auth})"
      return 0
    fi
    for pid in ${pids//,/ }; do
      kill -0 "$pid" 2>/dev/null || { deadline=0; break; }
    done
    sleep 0.2
  done
  echo "etcd.sh: the cluster did not become healthy; logs:" >&2
  tail -n 5 "$dir"/m*.log >&2 || true
  stop
  return 1
}

# A CA and one certificate (127.0.0.1, localhost) that every member serves and presents to its
# peers, made with the openssl command line (Debian ships it with ca-certificates).
make_certs() {
  local d=$1
  command -v openssl >/dev/null || { echo "etcd.sh: LMX_ETCD_SECURE=1 needs openssl" >&2; exit 1; }
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=lmx etcd test CA" -keyout "$d/ca-key.pem" -out "$d/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=lmx etcd member" \
    -keyout "$d/member-key.pem" -out "$d/member.csr" 2>/dev/null
  printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    "extendedKeyUsage=serverAuth,clientAuth" >"$d/member.ext"
  openssl x509 -req -in "$d/member.csr" -CA "$d/ca.pem" -CAkey "$d/ca-key.pem" \
    -CAcreateserial -days 2 -extfile "$d/member.ext" -out "$d/member.pem" 2>/dev/null
}

# User root (with its role) and a random password, then `auth enable`.
enable_auth() {
  local eps=$1 d=$2 pw
  pw=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
  local ctl=(env ETCDCTL_API=3 etcdctl --endpoints "$eps" --cacert "$d/ca.pem" --command-timeout 5s)
  "${ctl[@]}" user add "root:$pw" >/dev/null &&
    "${ctl[@]}" user grant-role root root >/dev/null &&
    "${ctl[@]}" auth enable >/dev/null || { echo "etcd.sh: enabling auth failed" >&2; return 1; }
  {
    echo "LMX_ETCD_SECURE=1"
    echo "LMX_ETCD_CA=$d/ca.pem"
    echo "LMX_ETCD_USER=root"
    echo "LMX_ETCD_PASSWORD=$pw"
  } >>"$state"
}

stop() {
  [ -e "$state" ] || { echo "etcd.sh: no $state: nothing to stop"; return 0; }
  # shellcheck disable=SC1090
  . "$state"
  IFS=, read -r -a pids <<<"$LMX_ETCD_PIDS"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  case "$LMX_ETCD_DIR" in "${TMPDIR:-/tmp}"/lmx-etcd.*) rm -rf "$LMX_ETCD_DIR" ;; esac
  rm -f "$state"
  echo "etcd.sh: stopped pids $LMX_ETCD_PIDS"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop [STATE]" >&2; exit 2 ;;
esac
