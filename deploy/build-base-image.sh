#!/usr/bin/env bash
# Builds a Debian bookworm base image with Python 3 for hosts that cannot reach a container registry.
#
# Why: `FROM python:3.12-slim` needs a registry. This script makes an equivalent image from Debian's
# packages with debootstrap and imports it into the local engine, so
#   BASE_IMAGE=$(deploy/build-base-image.sh | tail -n 1) docker compose up -d --build --wait
# works offline. The image trusts the host's CA bundle, because `pip install` during a build goes
# through a TLS-intercepting proxy on some hosts.
#
# Usage: deploy/build-base-image.sh [--force] [IMAGE_NAME]
#   IMAGE_NAME defaults to kv-base:bookworm. An existing image is reused unless --force is given.
# The last line printed is the image name.
set -euo pipefail

force=0
if [[ "${1:-}" == "--force" ]]; then force=1; shift; fi
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
image="${1:-kv-base:bookworm}"
suite=bookworm

log() { echo "build-base-image: $*" >&2; }

if [[ $force -eq 0 ]] && docker image inspect "$image" >/dev/null 2>&1; then
    log "$image already exists; pass --force to rebuild"
    echo "$image"
    exit 0
fi

sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    "${sudo_cmd[@]}" apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq debootstrap >&2
fi

ca_bundle="${PIP_CERT:-$(python3 -c 'import ssl; print(ssl.get_default_verify_paths().cafile or "")')}"
if [[ -z "$ca_bundle" || ! -f "$ca_bundle" ]]; then
    ca_bundle=/etc/ssl/certs/ca-certificates.crt
fi

rootfs=$(mktemp -d /tmp/kv-rootfs.XXXXXX)
trap '"${sudo_cmd[@]}" rm -rf "$rootfs"' EXIT

log "debootstrap $suite into $rootfs (about a minute)"
"${sudo_cmd[@]}" debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$rootfs" http://deb.debian.org/debian >&2

if [[ -f "$ca_bundle" ]]; then
    log "trusting the host CA bundle $ca_bundle"
    "${sudo_cmd[@]}" cp "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
fi
# apt lists and caches only make the image bigger.
"${sudo_cmd[@]}" rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

log "importing as $image"
"${sudo_cmd[@]}" tar -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$image" >&2
echo "$image"
