#!/usr/bin/env bash
# Throughput of ruddr against the static hickory-dns server on the same data, same machine,
# same run. 1,000 services x 3 instances; queries half A, half SRV on the service names.
#
#   bench/dnsperf.sh              # DURATION=15 seconds per run, ROUNDS=2 alternating runs each
#
# Needs dnsperf (installed if missing) and the hickory-dns binary (built into
# target/bench-tools on first use; a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

SERVICES=${SERVICES:-1000}
INSTANCES=${INSTANCES:-3}
DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-2}
ETCD_PORT=${ETCD_PORT:-24790}
RUDDR_PORT=${RUDDR_PORT:-5401}
HICKORY_PORT=${HICKORY_PORT:-5402}

WITH_BENCH=1 scripts/deps.sh
HICKORY=target/bench-tools/bin/hickory-dns
if [ ! -x "$HICKORY" ]; then
  echo "building the hickory-dns reference server (once)..."
  cargo install hickory-dns --version 0.26.3 --locked --root target/bench-tools --quiet
fi
cargo build --release --locked --quiet
RUDDR=${CARGO_TARGET_DIR:-target}/release/ruddr

. scripts/lib.sh
new_workdir ruddr-bench

# --- data: etcd for ruddr, an equivalent zone file for hickory-dns ---
ETCD="http://127.0.0.1:${ETCD_PORT}"
start_etcd bench "$ETCD_PORT" "$((ETCD_PORT + 1))"
python3 bench/load_etcd.py "$ETCD" "$SERVICES" "$INSTANCES"

mkdir -p "$WORK/zones"
{
  echo '$ORIGIN svc.internal.'
  echo '$TTL 5'
  echo '@ IN SOA ns.dns hostmaster 1 3600 600 86400 5'
  echo '@ IN NS ns.dns'
  for ((i = 0; i < SERVICES; i++)); do
    for ((j = 0; j < INSTANCES; j++)); do
      ip="10.$((i / 250)).$((i % 250)).$((j + 1))"
      echo "svc$i IN A $ip"
      echo "svc$i IN SRV 0 1 $((8080 + j)) i$j.svc$i"
      echo "i$j.svc$i IN A $ip"
    done
  done
} >"$WORK/zones/svc.internal.zone"
cat >"$WORK/hickory.toml" <<TOML
listen_addrs_ipv4 = ["127.0.0.1"]
listen_port = ${HICKORY_PORT}
# hickory-dns checks these accounts exist even when it does not switch to them.
user = "$(id -un)"
group = "$(id -gn)"
[[zones]]
zone = "svc.internal"
zone_type = "Primary"
file = "svc.internal.zone"
TOML

for ((i = 0; i < SERVICES; i++)); do
  echo "svc$i.svc.internal A"
  echo "svc$i.svc.internal SRV"
done >"$WORK/queries.txt"

# --- runs ---
run_dnsperf() { # port label -> prints QPS
  local out="$WORK/dnsperf-$2.txt"
  dnsperf -s 127.0.0.1 -p "$1" -d "$WORK/queries.txt" -l "$DURATION" -q 200 >"$out" 2>&1
  grep -E "Queries lost|Response codes" "$out" | sed "s/^/    [$2] /" >&2
  awk '/Queries per second/ {print $4}' "$out"
}

wait_answer() { # port name
  for _ in $(seq 300); do
    [ "$(dig @127.0.0.1 -p "$1" +short +time=1 +tries=1 "$2" A | wc -l)" = "$INSTANCES" ] && return 0
    sleep 0.1
  done
  echo "server on port $1 never answered $2" >&2
  return 1
}

ruddr_qps=()
hickory_qps=()
last="svc$((SERVICES - 1)).svc.internal"
for ((round = 1; round <= ROUNDS; round++)); do
  "$RUDDR" -q serve --listen "127.0.0.1:${RUDDR_PORT}" --etcd-endpoints "$ETCD" --admin-listen "" >"$WORK/ruddr.log" 2>&1 &
  pid=$!
  wait_answer "$RUDDR_PORT" "$last"
  echo "round $round: ruddr" >&2
  ruddr_qps+=("$(run_dnsperf "$RUDDR_PORT" ruddr)")
  kill "$pid"; wait "$pid" 2>/dev/null || true

  "$HICKORY" -q -c "$WORK/hickory.toml" -z "$WORK/zones" >"$WORK/hickory.log" 2>&1 &
  pid=$!
  wait_answer "$HICKORY_PORT" "$last"
  echo "round $round: hickory-dns (static zone)" >&2
  hickory_qps+=("$(run_dnsperf "$HICKORY_PORT" hickory)")
  kill "$pid"; wait "$pid" 2>/dev/null || true
done

python3 - "${ruddr_qps[*]}" "${hickory_qps[*]}" "$SERVICES" "$INSTANCES" "$DURATION" <<'PY'
import sys
r = [float(x) for x in sys.argv[1].split()]
h = [float(x) for x in sys.argv[2].split()]
mean = lambda v: sum(v) / len(v)
print(f"data: {sys.argv[3]} services x {sys.argv[4]} instances; queries: 50% A, 50% SRV; {len(r)} x {sys.argv[5]} s each")
print(f"ruddr        QPS per run: {', '.join(f'{x:,.0f}' for x in r)}  mean {mean(r):,.0f}")
print(f"hickory-dns  QPS per run: {', '.join(f'{x:,.0f}' for x in h)}  mean {mean(h):,.0f}")
print(f"ratio ruddr / hickory-dns (static zone): {mean(r) / mean(h):.2f}x")
PY
