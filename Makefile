# Two commands: `make demo` and `make test`. Everything else is set-up they run first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT := demo-output

.PHONY: setup demo test lint typecheck contracts pytest bench clean model-hippocampus

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

# The shipped hippocampus model: plan, 5-fold cross-validation (its figures go into the package), then all cases.
# A 16-filter network at batch 2 so that a 2-core CPU trains it in about an hour (see docs/models.md).
HIPPOCAMPUS ?= ../shared/data/hippocampus
HIPPOCAMPUS_RUN ?= runs/hippocampus
HIPPOCAMPUS_SCHEDULE ?= --epochs 30 --iterations 100
model-hippocampus: setup
	$(BIN)/vesalius plan $(HIPPOCAMPUS) --base-filters 16 --batch-size 2 -o $(HIPPOCAMPUS_RUN)/plan.json
	$(BIN)/vesalius train $(HIPPOCAMPUS) --plan $(HIPPOCAMPUS_RUN)/plan.json --fold cv $(HIPPOCAMPUS_SCHEDULE) -o $(HIPPOCAMPUS_RUN)
	$(BIN)/vesalius train $(HIPPOCAMPUS) --plan $(HIPPOCAMPUS_RUN)/plan.json --fold all $(HIPPOCAMPUS_SCHEDULE) -o $(HIPPOCAMPUS_RUN)
	rm -rf models/hippocampus/package && mkdir -p models/hippocampus
	cp -r $(HIPPOCAMPUS_RUN)/all/model models/hippocampus/package
	cp $(HIPPOCAMPUS_RUN)/cv_summary.md $(HIPPOCAMPUS_RUN)/all/training_curves.png models/hippocampus/

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
