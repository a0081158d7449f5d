#!/usr/bin/env bash
# Runs the whole test suite: unit tests (no Docker, seconds), then integration tests (real containers).
#
#   tests/run.sh                 everything
#   tests/run.sh -m unit         only the unit tests
#   tests/run.sh -k replication  any pytest arguments
#
# Installs what it needs first: a virtualenv in .venv with the project and its test dependencies,
# and the Docker Compose v2 plugin if `docker compose` is missing. The integration tests build the
# image from the Dockerfile with BASE_IMAGE (default python:3.12-slim); on a host with no registry,
# first run: export BASE_IMAGE=$(deploy/build-base-image.sh | tail -n 1)
set -euo pipefail
cd "$(dirname "$0")/.."

tests/venv.sh

if ! docker compose version >/dev/null 2>&1; then
    deploy/install-compose-plugin.sh
fi

# The reaper (Ryuk) image cannot be pulled without a registry; fixtures clean up instead.
export TESTCONTAINERS_RYUK_DISABLED=true
exec .venv/bin/python -m pytest "$@"
