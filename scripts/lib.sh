# Shared by scripts/demo.sh and bench/dnsperf.sh (sourced, not run): a work dir whose processes
# are killed on exit, and a throwaway single-member etcd on loopback.

# new_workdir PREFIX: sets WORK to a fresh temp dir and PIDS to (); both go on exit.
new_workdir() {
  WORK=$(mktemp -d "/tmp/$1.XXXXXX")
  PIDS=()
  trap cleanup EXIT
}

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}

# start_etcd NAME CLIENT_PORT PEER_PORT: etcd on 127.0.0.1 with data and log in $WORK, waits
# until it answers, and fails with its log if it does not.
start_etcd() {
  local name=$1 client="http://127.0.0.1:$2" peer="http://127.0.0.1:$3"
  etcd --name "$name" --data-dir "$WORK/etcd" \
    --listen-client-urls "$client" --advertise-client-urls "$client" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "$name=$peer" --initial-cluster-state new >"$WORK/etcd.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do
    ETCDCTL_API=3 etcdctl --endpoints "$client" endpoint health >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "etcd did not start:"; tail "$WORK/etcd.log"; return 1
}
