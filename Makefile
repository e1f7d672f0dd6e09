# Two commands: `make demo` and `make test`. Everything else is set-up they run first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT := demo-output

.PHONY: setup demo test lint typecheck contracts pytest bench clean

setup: $(STAMP)

# torch==2.13.0 goes in first (a CPU wheel on this machine); otherwise MONAI would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/python -m vesalius.cli.demo $(DEMO_OUT)

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: setup
	$(BIN)/mypy

contracts: setup
	$(BIN)/lint-imports

pytest: setup
	$(BIN)/pytest -q --cov=vesalius --cov-report=term:skip-covered --cov-fail-under=90

test: lint typecheck contracts pytest

bench: setup
	$(BIN)/python benchmarks/io_series_load.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
