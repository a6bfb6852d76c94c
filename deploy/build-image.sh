#!/bin/sh
# `make image`: the base image when missing (deploy/base-image.sh), then the Dockerfile, tagged
# ${KITH_IMAGE:-kith:latest}. Stages deploy/extras/ (git-ignored) for the build stage only:
#   wheels/  the local torch CPU wheel when $PIP_FIND_LINKS (e.g. /opt/wheels) has one (else the
#            Dockerfile installs torch from download.pytorch.org/whl/cpu);
#   ca/      extra CA certificates of this machine (/usr/local/share/ca-certificates/*.crt), for a
#            network whose HTTPS goes through a TLS-inspecting proxy. They do not reach the final image.
# The build runs with --network host (the engine's bridge is not needed for it).
set -eu
cd "$(dirname "$0")/.."
IMAGE=${KITH_IMAGE:-kith:latest}
deploy/base-image.sh
rm -rf deploy/extras && mkdir -p deploy/extras/wheels deploy/extras/ca
for dir in $(echo "${PIP_FIND_LINKS:-}" | tr ' ' '\n'); do
	for whl in "$dir"/torch-*.whl; do
		[ -f "$whl" ] && { ln "$whl" deploy/extras/wheels/ 2>/dev/null || cp "$whl" deploy/extras/wheels/; }
	done
done
for crt in /usr/local/share/ca-certificates/*.crt; do [ -f "$crt" ] && cp "$crt" deploy/extras/ca/; done
start=$(date +%s)
docker build --network host -t "$IMAGE" .
echo "built $IMAGE in $(( $(date +%s) - start )) s; size: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
