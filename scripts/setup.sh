#!/usr/bin/env bash
# Installs what the build and the tests need, idempotently: nothing is installed twice.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
# ssh2 links the system OpenSSL; the SFTP sink's tests run Debian's OpenSSH server.
dpkg -s libssl-dev >/dev/null 2>&1 || need_apt+=(libssl-dev)
[ -x /usr/sbin/sshd ] || command -v sshd >/dev/null || need_apt+=(openssh-server)
command -v ssh-keygen >/dev/null || need_apt+=(openssh-client)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

# The partner-side stand-ins (fake-gcp/partner/): SMTP (aiosmtpd) and the HTTPS API, with
# throwaway certificates made by `cryptography`; the API streams uploads with `multipart`
# (its PushMultipartParser; 1.2 or later).
venv="${DATASHARE_CACHE:-$HOME/.cache/datashare}/venvs/partner"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import aiosmtpd, cryptography, multipart" 2>/dev/null; then
  echo "setup: installing aiosmtpd, cryptography, multipart"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check aiosmtpd cryptography "multipart>=1.2"
fi

# The tests' OTLP receiver (tests/py/otlp_receiver.py): the OTLP protobuf messages, gRPC.
venv="${DATASHARE_CACHE:-$HOME/.cache/datashare}/venvs/otlp"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import opentelemetry.proto.collector.trace.v1.trace_service_pb2, grpc" 2>/dev/null; then
  echo "setup: installing opentelemetry-proto, grpcio"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check opentelemetry-proto grpcio
fi
