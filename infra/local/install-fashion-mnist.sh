#!/usr/bin/env bash
# Installs Debian's `dataset-fashion-mnist` (the full Fashion-MNIST, MIT) for `builtin:fashion-mnist`.
# Best effort: without apt or root, print how to get it; the other built-in datasets need nothing.
set -u
dir=${SPHERE_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
[ -f "$dir/train-images-idx3-ubyte.gz" ] && exit 0
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }) \
    && echo "installed dataset-fashion-mnist into $dir" && exit 0
fi
echo "note: Fashion-MNIST not installed; run 'sudo apt-get install dataset-fashion-mnist' or point" \
     "SPHERE_FASHION_MNIST_DIR at the four IDX .gz files to use builtin:fashion-mnist" >&2
exit 1
