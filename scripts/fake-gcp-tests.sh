#!/usr/bin/env bash
# Tests the local stack (fake-gcp/): installs what it needs (fake-gcp/setup.sh,
# idempotent), then runs pytest on tests/fakegcp. Each test session starts its
# own stacks on free ports and stops them, even on failure. Extra arguments go
# to pytest (e.g. -k dead_letter). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

start=$SECONDS
PYTHON=$(bash fake-gcp/setup.sh | tail -n 1)
echo "fake-gcp tests: setup $((SECONDS - start)) s"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export PYTHONDONTWRITEBYTECODE=1
# A developer's own stack (fake-gcp/.state) is never touched by the tests.
unset FAKE_GCP_STATE PUBSUB_EMULATOR_HOST STORAGE_EMULATOR_HOST

status=0
"$PYTHON" -m pytest -q -p no:cacheprovider --basetemp="$TMP/pytest" -rfE \
    tests/fakegcp "$@" || status=$?
echo "fake-gcp tests: $((SECONDS - start)) s"
exit "$status"
