SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed

##@ Setup
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"} /^##@/ {printf "\n\033[1m%s\033[0m\n", substr($$0, 5)} /^[a-zA-Z_-]+:.*##/ {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) ## Create .venv with the project and its test dependencies (torch first: CPU wheel)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[dev]'
	@bash infra/local/install-fashion-mnist.sh || true
	touch $@

##@ Quality
lint: install ## ruff, mypy and the import-boundary contracts
	$(BIN)/ruff check sphere_core orchestrator tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install lint ## Lint, then run the whole test suite
	$(BIN)/pytest tests

.PHONY: help install lint test
