#!/usr/bin/env bash
# Build a local Debian 12 (bookworm) base image with Python 3.11, for machines that cannot pull
# from Docker Hub (CI, air-gapped hosts).  The trainer and server Dockerfiles take it as BASE_IMAGE;
# everywhere else they default to the official python:3.11-slim.
#
#   include/docker/base/build.sh [IMAGE_TAG]        # default tag: mlops-base:bookworm
#
# Needs root, debootstrap and a running Docker engine.  Idempotent: an existing tag is kept unless
# FORCE=1.  The mirror is read from the host's apt sources (override with DEBIAN_MIRROR).
set -euo pipefail

TAG="${1:-mlops-base:bookworm}"
DOCKER="${DOCKER:-/usr/bin/docker}"

if [[ "${FORCE:-0}" != 1 ]] && "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG already exists (FORCE=1 rebuilds it)"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "error: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }

mirror="${DEBIAN_MIRROR:-}"
if [[ -z "$mirror" ]]; then
  # deb822 sources (URIs: ...) first, then the classic one-line format.
  mirror=$(grep -hoE '^URIs:\s*\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -1 | awk '{print $2}' || true)
  [[ -n "$mirror" ]] || mirror=$(grep -hoE '^deb\s+\S+' /etc/apt/sources.list 2>/dev/null | grep -v security | head -1 | awk '{print $2}' || true)
  mirror="${mirror:-http://deb.debian.org/debian}"
fi

rootfs=$(mktemp -d /tmp/mlops-base-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "==> debootstrap bookworm from $mirror"
# python3-venv gives a private interpreter environment like the official image's;
# ca-certificates lets pip verify PyPI without the host bundle when there is no proxy.
debootstrap --variant=minbase \
  --include=python3,python3-venv,ca-certificates,tini \
  bookworm "$rootfs" "$mirror" >/tmp/mlops-base-debootstrap.log 2>&1 \
  || { tail -20 /tmp/mlops-base-debootstrap.log >&2; exit 1; }
# Slim it down: apt lists and docs are not needed at run time.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/var/cache/apt/*.bin
echo "==> docker import $TAG"
tar -C "$rootfs" -c . | "$DOCKER" import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  - "$TAG" >/dev/null
echo "base image $TAG built"
