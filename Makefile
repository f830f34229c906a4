# MedSearch: `make run` and `make test` set up the environment themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PACKAGE_FILES := $(wildcard libs/*/pyproject.toml services/*/pyproject.toml)

.PHONY: install run test lint format clean bench-embedder bench-search bench-ingest bench-query bench-quality bench-soak bench-explore bench-duplicates bench-map

install: $(STAMP)

# Re-run only when a dependency list changes; otherwise `make test` starts at once.
$(STAMP): requirements-dev.txt constraints.txt $(PACKAGE_FILES)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	@touch $@

# Everything on embedded defaults (see scripts/run.py); Ctrl-C stops it.
run: install
	$(BIN)/python scripts/run.py

test: install
	$(BIN)/python -m pytest

# Benchmarks: never part of `make test`; each writes bench-results/<name>.json.
bench-embedder: install
	$(BIN)/python benchmarks/bench_embedder.py

bench-search: install
	$(BIN)/python benchmarks/bench_search.py

bench-ingest: install
	$(BIN)/python benchmarks/bench_ingest.py

bench-query: install
	$(BIN)/python benchmarks/bench_query.py

bench-quality: install
	$(BIN)/python benchmarks/bench_quality.py

bench-soak: install
	$(BIN)/python benchmarks/bench_soak.py

bench-explore: install
	$(BIN)/python benchmarks/bench_explore.py

# The collection map at 112,120 images, beside PCA + UMAP in memory and UMAP without PCA.
bench-map: install
	$(BIN)/python benchmarks/bench_map.py

# The near-duplicate threshold for the served weights, and a scan's cost at 112,120 images.
bench-duplicates: install
	$(BIN)/python benchmarks/calibrate_duplicates.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts
