#!/usr/bin/env bash
# The check command: lint, format, types, then the unit tests. The pre-commit hook
# (.githooks/pre-commit) runs it before every commit; CI runs its static part, then the test command.
#
#   tests/check.sh                 everything
#   tests/check.sh --fix           let ruff fix and format what it can first
#   tests/check.sh --static        lint, format and types only (CI: the test command runs the tests)
#   tests/check.sh --install-hook  make git run this before each commit in this checkout
#
# Uses the virtualenv in .venv (tests/venv.sh creates it).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
    --install-hook)
        git config core.hooksPath .githooks
        echo "check: git now runs tests/check.sh before each commit (undo: git config --unset core.hooksPath)"
        exit 0 ;;
    -h|--help)
        sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
        exit 0 ;;
esac

tests/venv.sh
bin=.venv/bin

step() { printf '\n== %s\n' "$*" >&2; }
if [[ "${1:-}" == "--fix" ]]; then
    "$bin/ruff" check --fix --quiet . || true
    "$bin/ruff" format --quiet .
fi
step "ruff check"
"$bin/ruff" check .
step "ruff format --check"
"$bin/ruff" format --check .
step "mypy"
"$bin/mypy"
if [[ "${1:-}" == "--static" ]]; then
    exit 0
fi
step "unit tests"
"$bin/python" -m pytest -m unit -q
