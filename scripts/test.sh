#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then format check, lints, unit and
# integration tests (real etcd, real ruddr binary, real DNS clients), and the demo in check mode.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets --features test-hooks -- -D warnings
cargo test --locked --features test-hooks
scripts/demo.sh --check
