#!/usr/bin/env bash
# ruddr against knotd, nsd and the static hickory-dns server on the same data, in the same run,
# interleaved, in the shared and pinned setups and both query mixes (see bench/compare.py).
#
#   bench/compare.sh                      # 3 rounds x 10 s, with p50/p99 latency at 5,000 QPS
#   bench/compare.sh --rounds 5 --ruddr old=/path/to/an/older/ruddr ...   # more compare.py flags
#   bench/compare.sh --dnstap             # also ruddr-tap and knotd-tap: what dnstap costs each
#
# Installs dnsperf, knot and nsd (and fstrm-bin and knot-module-dnstap, for --dnstap) if missing,
# builds ruddr (release) and, once, the hickory-dns reference server into target/bench-tools (a few
# minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_BENCH=1 scripts/deps.sh
HICKORY=target/bench-tools/bin/hickory-dns
if [ ! -x "$HICKORY" ]; then
  echo "building the hickory-dns reference server (once)..."
  cargo install hickory-dns --version 0.26.3 --locked --root target/bench-tools --quiet
fi
cargo build --release --locked --quiet
RUDDR=${CARGO_TARGET_DIR:-target}/release/ruddr
exec python3 bench/compare.py --ruddr "ruddr=$RUDDR" --hickory "$HICKORY" --latency "$@"
