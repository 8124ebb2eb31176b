SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
STAMP_LOCAL := $(VENV)/.installed-local
STAMP := $(VENV)/.installed
CLUSTER_DIR ?= .cluster
export CLUSTER_DIR
CLUSTER := $(BIN)/python infra/local/cluster.py
# The cluster image is tagged with the Ray pinned in pyproject.toml; the KubeRay manifests' rayVersion repeats it.
RAY_VERSION := $(shell sed -n 's/.*"ray\[[^]]*\]==\([0-9.]*\)".*/\1/p' pyproject.toml)
IMAGE ?= sphere-orchestrator

##@ Setup
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"} /^##@/ {printf "\n\033[1m%s\033[0m\n", substr($$0, 5)} /^[a-zA-Z_-]+:.*##/ {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install-local: $(STAMP_LOCAL) ## Create .venv with the project and what the local cluster runs (torch first: CPU wheel)

# pip compiles every installed file to bytecode one at a time (~half of this install); compileall does it on
# every core, leaving out the packages' own test suites (a fifth of the files, never imported by a run). Like
# pip, it skips files that do not compile under this Python (torch ships 3.12-only syntax).
$(STAMP_LOCAL): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-compile $(TORCH_PIN)
	$(BIN)/pip install -q --no-compile -e '.[local]'
	$(BIN)/python -m compileall -qq -j 0 -x '/tests?/' $(VENV)/lib || true
	touch $@

install: $(STAMP) ## + the test and lint tools and Fashion-MNIST (Debian's package, as root)

$(STAMP): $(STAMP_LOCAL)
	$(BIN)/pip install -q -e '.[dev]'
	@bash infra/local/install-fashion-mnist.sh || true
	touch $@

##@ Quality
lint: install ## ruff, mypy and the import-boundary contracts
	$(BIN)/ruff check sphere_core orchestrator tests bench infra
	$(BIN)/ruff format --check sphere_core orchestrator tests bench infra
	$(BIN)/mypy
	$(BIN)/mypy --strict infra/local/*.py
	$(BIN)/lint-imports

test: install lint ## Lint, start docker (installed as root when missing), then run the whole test suite
	@# Without root and docker the image tests skip and say why; in CI (CI=true, as root) docker must come up.
	bash infra/docker/install-docker.sh || { test -z "$${CI:-}" && echo "warning: no docker: the image tests will skip"; }
	$(BIN)/pytest tests

##@ Local cluster (127.0.0.1 only; ports and state dir: see infra/local/cluster.py)
cluster-up: install-local ## Start the Ray head, MLflow server and S3 endpoint (no-op when healthy); then source .cluster/env
	$(CLUSTER) up

cluster-down: ## Stop exactly this cluster's processes (never `ray stop`)
	$(CLUSTER) down

cluster-status: ## Each service: up/down, pid, URL (exit 3 when one is down)
	$(CLUSTER) status

##@ Containers (docker, installed and started by `make docker`; no registry needed: see docs/infra.md)
docker: ## Install docker.io and start dockerd when missing (as root; nothing when `docker info` answers)
	bash infra/docker/install-docker.sh

image: docker ## Build infra/docker/Dockerfile as $(IMAGE):<ray version> (a local Debian base without a registry)
	bash infra/docker/build-image.sh --tag $(IMAGE):$(RAY_VERSION) \
	    --build-arg SPHERE_GIT_COMMIT=$$(git rev-parse HEAD 2>/dev/null || echo unknown)

image-cluster: image cluster-up ## Ray head + 2 worker containers of the image on 127.0.0.1, on cluster-up's S3 and MLflow
	source $(CLUSTER_DIR)/env && bash infra/local/mnist-shards.sh s3://sphere/datasets/mnist
	$(BIN)/python infra/local/image_cluster.py up --image $(IMAGE):$(RAY_VERSION)

image-cluster-down: ## Remove exactly image-cluster's containers (never `ray stop`)
	$(BIN)/python infra/local/image_cluster.py down

.PHONY: docker image-cluster image-cluster-down

mlflow-up: ## Start the shared MLflow server (PostgreSQL + S3 artifacts) of infra/mlflow/
	docker compose -f infra/mlflow/docker-compose.yaml up -d --build

rayup-loopback: cluster-up ## `ray up` of infra/ray-cluster/onprem.yaml on this machine (sshd on 127.0.0.2/3, docker, root; after make image)
	source $(CLUSTER_DIR)/env && bash infra/local/mnist-shards.sh s3://sphere/datasets/mnist
	$(BIN)/python infra/ray-cluster/loopback.py up
	@echo "smoke sweep: source $(CLUSTER_DIR)/env && RAY_API_SERVER_ADDRESS=http://127.0.0.1:$${RAYUP_DASHBOARD_PORT:-8500} $(BIN)/ray job submit -- python -m orchestrator.sweep sweeps/smoke.yaml"

rayup-loopback-down: ## `ray down` of the loopback cluster; stops its sshd, fails if a container is left
	$(BIN)/python infra/ray-cluster/loopback.py down

.PHONY: rayup-loopback rayup-loopback-down

##@ Experiments
sweep-arg:
	@test -n "$(SWEEP)" || { echo "usage: make $(firstword $(MAKECMDGOALS)) SWEEP=sweeps/<name>.yaml" >&2; exit 2; }

dry-run: sweep-arg install-local ## Print a sweep's trials and resolved config without running it: make dry-run SWEEP=sweeps/noise.yaml
	@# With the local cluster up, the dry run can also list the shards it would read from the bucket.
	if $(CLUSTER) status >/dev/null; then source $(CLUSTER_DIR)/env; fi; \
	$(BIN)/python -m orchestrator.sweep $(SWEEP) --dry-run

sweep: sweep-arg cluster-up ## Submit a sweep as a Ray job and follow its logs: make sweep SWEEP=sweeps/noise.yaml
	$(CLUSTER) submit -- python -m orchestrator.sweep $(SWEEP)

demo: cluster-up ## First command on a fresh machine: cluster, MNIST shards, smoke sweep, out/demo-grid.png
	bash infra/local/demo.sh

gpu-check: cluster-up ## On a GPU machine: bf16 train/sample/eval of imagenet-256-l and a use_gpu sweep (~5 min)
	source $(CLUSTER_DIR)/env && bash infra/local/mnist-shards.sh s3://sphere/datasets/mnist
	source $(CLUSTER_DIR)/env && $(BIN)/python bench/gpu_check.py --sweep

.PHONY: help install-local install lint test cluster-up cluster-down cluster-status image mlflow-up sweep-arg dry-run sweep demo gpu-check
