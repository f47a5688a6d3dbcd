#!/usr/bin/env bash
# ruddr at registry scale: load time, cold start, dnsperf throughput, churn (1,000 updates/s)
# with put-to-DNS latency and a control name, snapshot size and rewrites, and a warm start from
# the snapshot with etcd frozen. Everything on loopback, in a temp dir. See bench/scale.py.
#
#   bench/scale.sh                                   # 100,000 instances, 10 s per dnsperf run
#   bench/scale.sh --instances 1000000 --duration 20
#   bench/scale.sh --instances 3000 --duration 3 --skip-churn --keep
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_BENCH=1 scripts/deps.sh
cargo build --release --locked --quiet
exec python3 bench/scale.py --ruddr "${CARGO_TARGET_DIR:-target}/release/ruddr" "$@"
