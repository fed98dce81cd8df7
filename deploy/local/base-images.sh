#!/usr/bin/env bash
# Stand-in base images for a Docker host that reaches no container registry (this project's CI
# machine): Debian bookworm from debootstrap, with Debian's Python 3.11 (3.11.2, where the
# official python:3.11.13-slim-bookworm has 3.11.13) and Debian's redis-server (7.0, where the
# compose file names redis:7.4.5). A host that can pull the official images does not need this.
#
#   sudo deploy/local/base-images.sh        # builds the two tags below unless they exist
#   docker build --network host --build-arg PYTHON_IMAGE=vineppo-local/python:3.11-bookworm ...
#
# The images carry the host's CA bundle as PIP_CERT, so pip inside a build reaches the package
# index the way the host does (behind a TLS-intercepting proxy, say). They are local build
# inputs: never push them.
set -euo pipefail

PYTHON_TAG=${PYTHON_TAG:-vineppo-local/python:3.11-bookworm}
REDIS_TAG=${REDIS_TAG:-vineppo-local/redis:7-bookworm}
SUITE=bookworm
HOST_CA=${HOST_CA:-/etc/ssl/certs/ca-certificates.crt}

if docker image inspect "$PYTHON_TAG" "$REDIS_TAG" >/dev/null 2>&1; then
  echo "base images present: $PYTHON_TAG $REDIS_TAG"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "base-images.sh: debootstrap needs root" >&2; exit 1; }
if ! command -v debootstrap >/dev/null; then
  apt-get update -q >/dev/null && apt-get install -y -q debootstrap >/dev/null
fi

# The mirror the host's apt uses (deb822 or one-line sources), else Debian's own.
mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}

rootfs=$(mktemp -d /var/tmp/vineppo-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
start=$(date +%s)
echo "debootstrap $SUITE from $mirror"
debootstrap --variant=minbase \
  --include=python3,python3-venv,python-is-python3,ca-certificates,redis-server \
  "$SUITE" "$rootfs" "$mirror" >/dev/null
# a separate file: Debian's ca-certificates trigger rewrites ca-certificates.crt, not this one
cp "$HOST_CA" "$rootfs/etc/ssl/certs/host-ca-bundle.crt"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb

tar -C "$rootfs" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt' \
  --change 'CMD ["python3"]' - "$PYTHON_TAG" >/dev/null
tar -C "$rootfs" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'WORKDIR /data' \
  --change 'CMD ["redis-server"]' - "$REDIS_TAG" >/dev/null
echo "base images built in $(( $(date +%s) - start )) s: $PYTHON_TAG $REDIS_TAG"
