# Conventional operator targets. Everything installs what it needs first:
# a Python virtual environment in .venv and the control plane binaries, built
# once from Go modules into ~/.cache/hybrid-compute.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JS_CLIENT := tests/js
JS_STAMP  := $(JS_CLIENT)/node_modules/.installed

.DEFAULT_GOAL := help
.PHONY: help install toolchain serving js-client image dev dev-down run crds crds-check manifests lint fmt unit test argocd argocd-test bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Python 3.11 or newer is needed (found $$($(PYTHON) --version))"; exit 1; }
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || \
	  { echo "the venv module is missing: apt-get install python3-venv"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

install: $(STAMP) ## create .venv and install the package with its test tools

toolchain: install ## build the control plane binaries and helm (once per version)
	@start=$$(date +%s); $(BIN)/hybrid-compute dev build && \
	  echo "toolchain ready in $$(( $$(date +%s) - start ))s"

serving: install ## install the LiteLLM proxy and build llama-server (once per version)
	@start=$$(date +%s); $(BIN)/hybrid-compute dev build --serving && \
	  echo "serving tools ready in $$(( $$(date +%s) - start ))s"

$(JS_STAMP): $(JS_CLIENT)/package.json $(JS_CLIENT)/package-lock.json
	@command -v npm >/dev/null || { echo "npm is missing: install Node.js 20 or newer"; exit 1; }
	cd $(JS_CLIENT) && npm ci --no-audit --no-fund --prefer-offline
	@touch $@

js-client: $(JS_STAMP) ## install the OpenAI JavaScript SDK the client tests run (npm ci, once per lock)

image: install ## build the container image: Docker, else podman (installed with apt-get if missing)
	@start=$$(date +%s); $(BIN)/hybrid-compute dev image --install-missing && \
	  echo "image ready in $$(( $$(date +%s) - start ))s"

dev: toolchain serving ## start the local cluster serving the samples through LiteLLM
	$(BIN)/hybrid-compute dev up

dev-down: install ## stop the local cluster
	$(BIN)/hybrid-compute dev down

run: install ## run the operator against the current kubeconfig
	$(BIN)/hybrid-compute run

crds: install ## regenerate crds/, the chart's CRD templates and manifests/base from the models
	$(BIN)/hybrid-compute crds
	$(BIN)/python -m hybrid_compute.dev.manifests

crds-check: install ## fail when crds/ differs from what the models generate
	$(BIN)/hybrid-compute crds --check

manifests: toolchain ## regenerate manifests/base (for Argo CD) from the chart
	$(BIN)/python -m hybrid_compute.dev.manifests

lint: install ## ruff, mypy, hadolint, actionlint (built once) and the import contract
	$(BIN)/ruff check operator tests bench
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile
	$(BIN)/python -m hybrid_compute.dev.actionlint
	$(BIN)/pytest -q tests/unit/test_import_contract.py

fmt: install ## apply ruff's fixes
	$(BIN)/ruff check --fix operator tests

unit: install ## tests that need no cluster
	$(BIN)/pytest -m 'not cluster'

test: toolchain serving js-client image argocd lint crds-check ## everything: lint, CRD check, unit, cluster, image and Argo CD tests
	@start=$$(date +%s); $(BIN)/pytest; status=$$?; \
	  echo "tests took $$(( $$(date +%s) - start ))s"; exit $$status

argocd: toolchain ## build Argo CD once from Go modules and install redis-server (apt-get) for its tests
	@start=$$(date +%s); $(BIN)/hybrid-compute dev build --argocd && \
	  echo "Argo CD ready in $$(( $$(date +%s) - start ))s"

argocd-test: argocd ## only the GitOps tests against a real Argo CD
	@start=$$(date +%s); $(BIN)/pytest -m argocd; status=$$?; \
	  echo "Argo CD tests took $$(( $$(date +%s) - start ))s"; exit $$status

bench: toolchain serving ## benchmarks: plan speed, swap overhead, router hook, idle cost, swaps against the floor
	$(BIN)/python bench/plan_speed.py
	$(BIN)/python bench/swap_overhead.py
	$(BIN)/python bench/router_hook.py
	$(BIN)/python bench/idle_cost.py
	$(BIN)/python bench/swap_floor.py

clean: ## remove the virtual environment (the binary cache stays)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
