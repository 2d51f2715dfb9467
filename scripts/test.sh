#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, Rust unit and integration tests, and the
# infrastructure checks. Installs what it needs itself (idempotently); safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/datashare-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

bash scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
# The worker's integration tests start the local stack (fake-gcp/stack.py): Java, the Pub/Sub
# emulator and fake-gcs-server must be installed.
bash fake-gcp/setup.sh >/dev/null
cargo test --locked --all-targets
echo "== python tests of the products (pyarrow, duckdb)"
bash scripts/py-tests.sh
echo "== fake-gcp local stack (Pub/Sub emulator, fake-gcs-server)"
bash scripts/fake-gcp-tests.sh
if [ -f scripts/check-infra.sh ]; then
  echo "== infrastructure checks"
  bash scripts/check-infra.sh
fi
echo "== all tests passed"
