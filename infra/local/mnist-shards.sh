#!/usr/bin/env bash
# Builds builtin:mnist into DATASET_URL (<url>/train and <url>/test) unless its train split is already there.
# Run after cluster-up with the cluster env sourced; used by `make demo` and `make gpu-check`.
set -euo pipefail
cd "$(dirname "$0")/../.."
dataset=${1:?usage: infra/local/mnist-shards.sh s3://bucket/datasets/mnist}
if .venv/bin/python -c 'import sys, fsspec; sys.exit(not fsspec.filesystem("s3").exists(sys.argv[1]))' \
    "$dataset/train/manifest.json"; then
  echo "== $dataset already built"
else
  echo "== building builtin:mnist into $dataset"
  .venv/bin/python -m orchestrator.data build --source builtin:mnist --out "$dataset" --no-progress
fi
