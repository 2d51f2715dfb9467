#!/usr/bin/env bash
# Runs the Python tests (tests/py, pytest) against the built `datashare` binary: external readers
# (pyarrow, DuckDB, Polars) read the product files, and DuckDB recomputes the aggregates from the
# spec. Creates or reuses a venv at ${DATASHARE_CACHE:-$HOME/.cache/datashare}/venvs/data and
# installs pytest, duckdb, pyarrow and polars only when missing (idempotent; offline once installed).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/datashare-target}"
venv="${DATASHARE_CACHE:-$HOME/.cache/datashare}/venvs/data"

if [ ! -x "$venv/bin/python" ]; then
  echo "py-tests: creating $venv"
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import pytest, duckdb, pyarrow, polars" 2>/dev/null; then
  echo "py-tests: installing pytest, duckdb, pyarrow, polars"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check pytest duckdb pyarrow polars
fi

cargo build --locked --quiet --bin datashare
export DATASHARE_BIN="$CARGO_TARGET_DIR/debug/datashare"
export DATASHARE_PARTNERS="$PWD/partners"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/py "$@"
