#!/usr/bin/env bash
# Makes a secured cluster's secrets by hand: a CA, node certificates, a cluster secret and an admin
# password (with its users file), in DIR (default .secrets, which compose reads and git ignores).
# `docker compose up` does the same on its first run through its `secrets` service; this is for
# clusters outside compose. It never overwrites: delete DIR to start again.
#   deploy/make-secrets.sh [DIR] [--nodes node1,node2,node3]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.secrets}
shift || true
python=.venv/bin/python
[[ -x "$python" ]] || python=python3
exec "$python" -m service.make_secrets "$dir" "$@"
