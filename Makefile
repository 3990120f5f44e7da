# Two commands work on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/imgcrunch migrate
	$(BIN)/imgcrunch serve

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

test: lint
	$(BIN)/pytest

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/quality.py
	$(BIN)/python bench/scale_out.py
	$(BIN)/python bench/claims.py
	$(BIN)/python bench/operate.py
	$(BIN)/python bench/recovery.py
	$(BIN)/python bench/s3_clients.py
	$(BIN)/python bench/storage.py --pin
	$(BIN)/python bench/catalog.py
	$(BIN)/python bench/bytecap.py
	$(BIN)/python bench/million.py

clean:
	rm -rf $(VENV) var .mypy_cache .pytest_cache .ruff_cache
