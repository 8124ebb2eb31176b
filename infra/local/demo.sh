#!/usr/bin/env bash
# `make demo` after install and cluster-up: MNIST shards into the local bucket, the demo sweep as a Ray job
# (it registers its best model), a grid of that model's samples (a row per digit, 1 step beside 4 steps
# from the same noise) and its class accuracy and fd_clf at MNIST's standard n.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=.venv/bin
sweep=${DEMO_SWEEP:-sweeps/demo.yaml}
grid=${DEMO_GRID:-out/demo-grid.png}
# shellcheck source=/dev/null
source "${CLUSTER_DIR:-.cluster}/env"

# The sweep names the data it reads and the registered model it produces; ask it rather than repeat them.
read -r data_url model_uri < <("$bin/python" -c '
import sys
from orchestrator.config.loader import load_sweep
e = load_sweep(sys.argv[1]).experiment
print(e.data.url, f"models:/{e.tracking.registered_model}@{e.tracking.alias}")' "$sweep")
dataset=${data_url%/*}  # builtin:mnist writes <out>/train and <out>/test

bash infra/local/mnist-shards.sh "$dataset"

echo "== submitting $sweep to the Ray cluster at $RAY_API_SERVER_ADDRESS"
"$bin/python" infra/local/cluster.py submit -- python -m orchestrator.sweep "$sweep"

echo "== sampling $model_uri"
mkdir -p "$(dirname "$grid")"
"$bin/python" -m orchestrator.generate --model "$model_uri" --per-class 8 --steps 1 4 --out "$grid"

echo "== scoring $model_uri: 1,000 samples per setting (MNIST's standard n) in the committed classifier"
"$bin/python" -m orchestrator.evaluation score --model "$model_uri" --steps 1 4 --num 1000

echo
echo "MLflow UI:   $MLFLOW_TRACKING_URI  (experiments, the sweep's parent run and its trials, Models > ${model_uri#models:/})"
echo "Ray jobs:    $RAY_API_SERVER_ADDRESS  (the page asks for the token: $bin/ray get-auth-token prints it)"
echo "Sample grid: $(pwd)/$grid"
echo "Shell env:   source ${CLUSTER_DIR:-.cluster}/env      stop everything: make cluster-down"
