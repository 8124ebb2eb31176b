#!/usr/bin/env bash
# `make image`: builds infra/docker/Dockerfile from the repository root, on a machine with or without a registry.
#
#     infra/docker/build-image.sh --tag NAME:TAG [DOCKER BUILD ARGS ...]
#
# - Base: BASE_IMAGE when set; else python:3.11-slim-bookworm when it is present or can be pulled; else the
#   local Debian base of make-base-image.sh (sphere-base:bookworm-python3.11), built first when missing.
# - torch: a wheel of TORCH_VERSION for this Python found in $PIP_FIND_LINKS (a directory or a wheel path, pip's
#   own variable) is copied into the git-ignored .whl/ of the context and installed from there; without one,
#   the Dockerfile's TORCH_INDEX_URL decides (PyPI's CUDA build by default).
# - CA certificates: those pip trusts here beyond Debian's go into the git-ignored .ca/ for the download stage.
# - The build runs on the host's network (Debian's mirror and PyPI, no docker bridge needed) with the legacy
#   builder when buildx is missing; .dockerignore keeps the context to sources.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ ${1:-} != --tag || -z ${2:-} ]]; then
  echo "usage: infra/docker/build-image.sh --tag NAME:TAG [docker build args ...]" >&2
  exit 2
fi
tag=$2
shift 2
default_base=python:3.11-slim-bookworm
local_base=sphere-base:bookworm-python3.11
torch_version=$(sed -n 's/^ARG TORCH_VERSION=//p' infra/docker/Dockerfile)

base=${BASE_IMAGE:-}
if [[ -z $base ]]; then
  if docker image inspect "$default_base" >/dev/null 2>&1 || docker pull -q "$default_base" >/dev/null 2>&1; then
    base=$default_base
  else
    echo "== $default_base cannot be pulled (no registry): using the local Debian base $local_base"
    bash infra/docker/make-base-image.sh "$local_base"
    base=$local_base
  fi
fi

# The wheel travels in the context only when it changed (cp -u), so the layer that installs it stays cached.
mkdir -p .whl
wheel=""
for entry in ${PIP_FIND_LINKS:-}; do
  for candidate in "$entry"/torch-"$torch_version"[+-]*cp311-cp311-*linux*_x86_64.whl "$entry"; do
    if [[ -f $candidate && $(basename "$candidate") == torch-"$torch_version"[+-]*cp311-*.whl ]]; then
      wheel=$candidate
      break 2
    fi
  done
done
find .whl -name 'torch-*.whl' ! -name "$(basename "${wheel:-none}")" -delete
if [[ -n $wheel ]]; then
  echo "== torch from $wheel"
  cp -u "$wheel" .whl/
fi

# CA certificates the host's pip trusts beyond the base's (a TLS-inspecting proxy's): those added the Debian
# way and pip's own bundle. Only the download stage of the build trusts them, never the image.
mkdir -p .ca
rm -f .ca/*.pem
for cert in /usr/local/share/ca-certificates/*.crt ${PIP_CERT:-}; do
  if [[ -f $cert ]]; then
    cat "$cert" >> .ca/host.pem
  fi
done

echo "== docker build -t $tag (base $base)"
exec docker build --network host -f infra/docker/Dockerfile -t "$tag" --build-arg BASE_IMAGE="$base" "$@" .
