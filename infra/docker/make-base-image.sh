#!/usr/bin/env bash
# Builds a local stand-in for python:3.11-slim-bookworm on a machine that cannot pull from a registry:
# Debian bookworm's minimal system with its own Python 3.11 (python3, venv, pip) and CA certificates, made
# by mmdebstrap from the Debian mirror and loaded with `docker import`. The project's Dockerfile takes it as
# BASE_IMAGE (`make image` does this by itself when the default cannot be pulled).
#
#     infra/docker/make-base-image.sh [TAG]     # default tag: sphere-base:bookworm-python3.11
#
# Needs root (mmdebstrap's root mode), mmdebstrap and a running dockerd. A tag that exists is kept: remove
# it (`docker rmi TAG`) to rebuild from the mirror.
set -euo pipefail
tag=${1:-sphere-base:bookworm-python3.11}
if [[ $# -gt 1 || $tag == -* ]]; then
  echo "usage: infra/docker/make-base-image.sh [TAG]" >&2
  exit 2
fi
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "== $tag already exists"
  exit 0
fi
command -v mmdebstrap >/dev/null || { echo "error: mmdebstrap is not installed (apt-get install mmdebstrap)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "== building $tag with mmdebstrap (Debian bookworm, minbase + python3)"
# --dpkgopt / --aptopt keep documentation and apt's lists out, as the slim images do.
mmdebstrap --variant=minbase --quiet \
  --include=python3,python3-venv,python3-pip,ca-certificates \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
  bookworm "$work/base.tar"
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --message "mmdebstrap --variant=minbase bookworm + python3 (infra/docker/make-base-image.sh)" \
  "$work/base.tar" "$tag"
echo "== $tag: $(docker run --rm "$tag" python3 --version)"
