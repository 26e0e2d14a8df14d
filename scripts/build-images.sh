#!/usr/bin/env bash
# Build (and with --push, push) every image the pipeline references:
#   bash scripts/build-images.sh REGISTRY TAG [--push]
# then compile the pipeline against them:
#   invmon compile --registry REGISTRY --tag TAG
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: bash scripts/build-images.sh REGISTRY TAG [--push]" >&2; exit 2; }
[ $# -ge 2 ] || usage
registry=${1%/}
tag=$2
push=${3:-}
[ -z "$push" ] || [ "$push" = "--push" ] || usage
command -v docker >/dev/null || { echo "build-images: docker is not installed" >&2; exit 1; }

for name in data train serve engine; do
  image="$registry/invmon-$name:$tag"
  echo "build-images: building $image"
  docker build --file "images/$name/Dockerfile" --tag "$image" .
  if [ "$push" = "--push" ]; then
    echo "build-images: pushing $image"
    docker push "$image"
  fi
done
echo "build-images: done; now run: invmon compile --registry $registry --tag $tag"
