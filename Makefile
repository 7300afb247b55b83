# logferry — the two commands a newcomer needs: `make run` and `make test`.
# Everything they need is set up here: a .venv from PyPI, and a real OpenSearch node from
# Maven Central (cached in ~/.m2, so a fresh clone does not download it again).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: docs java go help venv test lint typecheck unit integration run bench opensearch-start opensearch-stop clean

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

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest tests/unit

integration: venv java go
	$(BIN)/pytest tests/integration tests/chaos

test: lint typecheck java go
	$(BIN)/pytest

# Without Java, make run still runs: the aggregators then write NDJSON files instead.
run: venv
	@scripts/ensure-java || echo "make run: no Java; the logs go to NDJSON files instead"
	$(BIN)/python scripts/run_local.py $(RUN_ARGS)

docs: venv
	$(BIN)/python -m devtools.update_docs

bench: venv
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

opensearch-start: venv java
	scripts/opensearch start

opensearch-stop:
	scripts/opensearch stop

clean:
	-scripts/opensearch stop
	rm -rf $(VENV) .cache/opensearch/state.json run .pytest_cache .ruff_cache .mypy_cache .hypothesis
