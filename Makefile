# m3sh — the two commands that matter: `make demo` and `make test`.
# Each bootstraps .venv from pyproject.toml (re-installing only when it changes).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`: a test file runs whole on one worker (its module fixtures,
# ports and stacks stay together), in collection order so the long e2e files start first; 2 keeps
# both cores busy while one worker waits on Airflow.
TEST_WORKERS ?= 2

.PHONY: venv demo test lint typecheck unit bench conformance sandbox clean services

$(STAMP): pyproject.toml
	@echo ">> bootstrapping $(VENV) (python: $$($(PYTHON) --version))"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[dev]'
	@# The editable build leaves include/m3sh.egg-info on sys.path (the .pth adds include/): a second m3sh
	@# distribution, whose airflow.plugins entry point makes Airflow load the plugin twice. The installed
	@# metadata lives in site-packages.
	@rm -rf include/*.egg-info
	@rm -f $(VENV)/.stamp-* && touch $@
	@echo ">> $(VENV) ready"

venv: $(STAMP)

## demo: sandbox + Airflow standalone + one run of each use case; Ctrl-C stops everything
demo: venv
	@PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/m3sh demo --root .

## test: lint, type check, then every test suite (unit, sandbox, hooks, DAG runs, chaos, e2e, distributed)
test: lint typecheck services
	@PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

## services: PostgreSQL + Redis for the distributed-engine test (starts them only if they are down)
services:
	@bash .ci/start-services.sh || echo "!! could not start PostgreSQL/Redis: the distributed tests will fail and say why"

lint: venv
	@$(BIN)/ruff check include dags plugins tests benchmarks
	@echo ">> ruff clean"

typecheck: venv
	@$(BIN)/mypy
	@echo ">> mypy clean"

unit: venv
	@$(BIN)/pytest tests/unit $(PYTEST_ARGS)

## bench: every benchmark, results in benchmarks/results/*.json and one table
bench: venv
	@PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks

## conformance: published HubSpot, Salesforce and NetSuite connectors (airbyte-source-hubspot, tap-hubspot,
## tap-salesforce, airbyte-source-salesforce, airbyte-source-netsuite; each in its own cached virtualenv
## under .cache/peers) run
## unmodified against the emulators: discover, full, incremental
conformance: venv
	@PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.peers --conformance

sandbox: venv
	@$(BIN)/m3sh sandbox up --root .

clean:
	@$(BIN)/m3sh sandbox down --root . 2>/dev/null || true
	rm -rf .airflow .sandbox .mypy_cache .ruff_cache
