#!/usr/bin/env bash
# ruddr demo: starts etcd on loopback, starts ruddr, registers sample services, shows dig answers,
# then waits for Ctrl-C and cleans up. `--check` exits after verifying the answers (used by tests).
set -euo pipefail
cd "$(dirname "$0")/.."

CHECK=0
[ "${1:-}" = "--check" ] && CHECK=1
ETCD_PORT=${ETCD_PORT:-23790}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-23800}
DNS_PORT=${DNS_PORT:-5300}
ADMIN_PORT=${ADMIN_PORT:-9301}
ETCD="http://127.0.0.1:${ETCD_PORT}"

scripts/deps.sh
echo "building ruddr (release)..."
cargo build --release --locked --quiet
RUDDR=${CARGO_TARGET_DIR:-target}/release/ruddr

. scripts/lib.sh
new_workdir ruddr-demo
trap 'echo; echo "stopping demo"; exit 0' INT TERM

echo "starting etcd on ${ETCD} (data in ${WORK})"
start_etcd demo "$ETCD_PORT" "$ETCD_PEER_PORT"
export ETCDCTL_API=3 ETCDCTL_ENDPOINTS="$ETCD"

echo "registering sample instances under /ruddr/services/"
reg() { etcdctl put "/ruddr/services/$1" "$2" >/dev/null; echo "  $1 = $2"; }
reg web/web-1 '{"address":"10.0.0.5","port":8080,"ports":{"http":8080,"grpc":9090},"tags":["v2"],"weight":10,"meta":{"az":"a"}}'
reg web/web-2 '{"address":"10.0.0.6","port":8080,"ports":{"http":8080},"tags":["v1"],"weight":1}'
reg web/web-3 '{"address":"fd00::7","port":8080,"health":"warning"}'
reg web/web-4 '{"address":"10.0.0.8","port":8080,"health":"critical"}'
reg db/db-1 '{"address":"10.0.1.10","port":5432}'

echo "and as frameworks write them: Kratos under /microservices, CoreDNS/SkyDNS under /skydns"
fw() { etcdctl put "$1" "$2" >/dev/null; echo "  $1 = $2"; }
fw /microservices/helloworld/5b1e7c1a '{"id":"5b1e7c1a","name":"helloworld","version":"v1","metadata":{"weight":"10"},"endpoints":["grpc://10.0.2.5:9000","http://10.0.2.5:8000"]}'
fw /skydns/local/skydns/east/rails/1 '{"host":"10.0.3.1","port":8080,"ttl":60}'
fw /skydns/local/skydns/east/rails/2 '{"host":"10.0.3.2","port":8080}'
cat >"$WORK/ruddr.toml" <<TOML
[[sources]]
format = "kratos"
prefix = "/microservices"

[[sources]]
format = "skydns"
prefix = "/skydns/"
zones = ["skydns.local."]
TOML

echo "starting ruddr on 127.0.0.1:${DNS_PORT}"
RUST_LOG=${RUST_LOG:-info} "$RUDDR" serve --config "$WORK/ruddr.toml" --listen "127.0.0.1:${DNS_PORT}" --etcd-endpoints "$ETCD" \
  --admin-listen "127.0.0.1:${ADMIN_PORT}" --zones-dir "$PWD/zones" \
  >"$WORK/ruddr.log" 2>&1 &
PIDS+=($!)
D="dig @127.0.0.1 -p ${DNS_PORT}"
for _ in $(seq 100); do
  [ -n "$($D +short db.svc.internal A 2>/dev/null)" ] && break
  if ! kill -0 "${PIDS[-1]}" 2>/dev/null; then
    echo "ruddr exited; its log:"; cat "$WORK/ruddr.log"; exit 1
  fi
  sleep 0.1
done

show() { echo; echo "\$ $D $*"; $D "$@"; }
show +short web.svc.internal A
show +short web.svc.internal AAAA
show +short web.svc.internal SRV
show +noall +answer +additional _grpc._tcp.web.svc.internal SRV
show +short v2._tag.web.svc.internal A
show +short -x 10.0.0.5
show +short www.example.internal A      # static zone from zones/example.internal.zone
show +short _grpc._tcp.helloworld.svc.internal SRV   # a Kratos service
show +noall +answer rails.east.skydns.local A        # a SkyDNS name, as CoreDNS answers it
echo; echo "\$ $D nope.svc.internal A    # unknown name: NXDOMAIN with the SOA"
$D +noall +comments +authority nope.svc.internal A | grep -E "status|SOA"

if [ "$CHECK" = 1 ]; then
  a=$($D +short web.svc.internal A | sort | tr '\n' ' ')
  srv=$($D +short _web._tcp.svc.internal SRV | wc -l)
  static=$($D +short www.example.internal A)
  kratos=$($D +short _grpc._tcp.helloworld.svc.internal SRV)
  sky=$($D +short rails.east.skydns.local A | sort | tr '\n' ' ')
  if [ "$a" != "10.0.0.5 10.0.0.6 " ] || [ "$srv" != 3 ] || [ "$static" != 192.0.2.10 ] ||
     [ "$kratos" != "0 10 9000 5b1e7c1a.helloworld.svc.internal." ] || [ "$sky" != "10.0.3.1 10.0.3.2 " ]; then
    echo "demo check FAILED: A='$a' SRV count=$srv static='$static' kratos='$kratos' skydns='$sky'"
    cat "$WORK/ruddr.log"; exit 1
  fi
  echo; echo "demo check passed"
  exit 0
fi

cat <<MSG

ruddr is serving. Try, in another terminal:
  export ETCDCTL_API=3 ETCDCTL_ENDPOINTS=$ETCD
  etcdctl put /ruddr/services/web/web-5 '{"address":"10.0.0.9","port":8080}'
  $D +short web.svc.internal A               # web-5 is there at once
  etcdctl del /ruddr/services/web/web-1
  $D +short _web._tcp.svc.internal SRV       # RFC 2782 form
  $D web-1.web.svc.internal TXT              # instance meta and tags
  kill -STOP \$(pgrep -x etcd)                # etcd hung: answers keep coming
  curl -s 127.0.0.1:${ADMIN_PORT}/ready          # readiness and staleness
  curl -s 127.0.0.1:${ADMIN_PORT}/metrics | grep ^ruddr_
Logs: $WORK/ruddr.log  $WORK/etcd.log
Press Ctrl-C to stop etcd and ruddr and clean up.
MSG
wait
