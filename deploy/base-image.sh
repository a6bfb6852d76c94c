#!/bin/sh
# Build the base image kith-base:bookworm without a registry: a minimal Debian bookworm root made by
# mmdebstrap from Debian's own mirror, imported with `docker import`. Idempotent: does nothing when
# the tag exists (KITH_BASE_REBUILD=1 rebuilds it).
#
# Contents: python3.11 + python3-venv (the venv the Dockerfile builds), ca-certificates, tini (PID 1:
# reaps children, forwards SIGTERM), curl (the HEALTHCHECK). Needs root, mmdebstrap and docker
# (apt-get install mmdebstrap docker.io). Env: KITH_BASE_TAG (kith-base:bookworm), KITH_BASE_MIRROR
# (http://deb.debian.org/debian).
set -eu
TAG=${KITH_BASE_TAG:-kith-base:bookworm}
MIRROR=${KITH_BASE_MIRROR:-http://deb.debian.org/debian}

if [ "${KITH_BASE_REBUILD:-0}" != 1 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
	echo "base image $TAG exists: skipped (KITH_BASE_REBUILD=1 to rebuild)"
	exit 0
fi
command -v mmdebstrap >/dev/null || { echo "mmdebstrap is missing: apt-get install mmdebstrap" >&2; exit 1; }

echo "building $TAG with mmdebstrap from $MIRROR"
# --variant=minbase: Essential + apt only; docs, man pages and locales other than C are dropped
# (dpkg path-exclude) to keep the image small; apt's lists are removed after the install.
mmdebstrap --variant=minbase --format=tar \
	--include=python3.11,python3-venv,ca-certificates,tini,curl \
	--dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	--dpkgopt='path-exclude=/usr/share/info/*' \
	--customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
	bookworm - "$MIRROR" \
	| docker import \
		--change 'ENV LANG=C.UTF-8' \
		--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		--change 'CMD ["/bin/bash"]' \
		--message "mmdebstrap --variant=minbase bookworm" \
		- "$TAG"
docker image ls "$TAG"
