#!/usr/bin/env bash
# Build what docker-compose.yaml runs, on a machine that cannot pull from Docker Hub (CI, air-gapped
# hosts): the local Debian base, the stand-ins for the official images (this folder) and the two images
# the compose file builds itself (include/docker/airflow, include/docker/server) on top of them. The tags
# are the ones in images.env. BuildKit caches every step, so a second run takes seconds.
#
#   include/docker/ci/build.sh            # from anywhere; needs root (debootstrap) the first time
#
# pip inside the builds trusts the host's CA bundle (a BuildKit secret, never stored in a layer).
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$root"
DOCKER="${DOCKER:-/usr/bin/docker}"
export DOCKER_BUILDKIT=1
# shellcheck source=images.env
source include/docker/ci/images.env
ca=(--secret "id=ca,src=${MLOPS_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}")
build() { echo "==> $1"; shift; "$DOCKER" build --quiet "$@" >/dev/null; }

include/docker/base/build.sh "$SERVER_BASE_IMAGE"
airflow_version=$(sed -n 's/^apache-airflow==//p' requirements.txt)
build "stand-in $AIRFLOW_IMAGE (apache-airflow $airflow_version)" "${ca[@]}" \
  --build-arg BASE_IMAGE="$SERVER_BASE_IMAGE" --build-arg AIRFLOW_VERSION="$airflow_version" \
  -f include/docker/ci/airflow/Dockerfile -t "$AIRFLOW_IMAGE" .
build "stand-in $POSTGRES_IMAGE" --build-arg BASE_IMAGE="$SERVER_BASE_IMAGE" \
  -t "$POSTGRES_IMAGE" include/docker/ci/postgres
for target in prometheus pushgateway; do
  tag_var="${target^^}_IMAGE"
  build "stand-in ${!tag_var}" --build-arg BASE_IMAGE="$SERVER_BASE_IMAGE" --target "$target" \
    -t "${!tag_var}" include/docker/ci/prometheus
done
build "$MLOPS_AIRFLOW_IMAGE_TAG (the project on $AIRFLOW_IMAGE)" "${ca[@]}" --build-arg AIRFLOW_IMAGE="$AIRFLOW_IMAGE" \
  -f include/docker/airflow/Dockerfile -t "$MLOPS_AIRFLOW_IMAGE_TAG" .
build "$MLOPS_SERVER_IMAGE_TAG" "${ca[@]}" --build-arg BASE_IMAGE="$SERVER_BASE_IMAGE" \
  -f include/docker/server/Dockerfile -t "$MLOPS_SERVER_IMAGE_TAG" .
echo "compose images built (tags in include/docker/ci/images.env)"
