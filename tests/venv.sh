#!/usr/bin/env bash
# Creates .venv with the project and its test tools, or updates it when pyproject.toml changed.
# tests/run.sh and tests/check.sh both call it; it prints nothing unless it installs.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
stamp="$venv/.installed-$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
    echo "tests/venv.sh: installing the project and test dependencies into $venv" >&2
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet -c requirements.lock -e ".[test]"
    touch "$stamp"
fi
