# Two commands: `make demo` and `make test`. Everything else is set-up they run first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT := demo-output

.PHONY: setup demo test lint typecheck contracts pytest bench clean model-hippocampus model-cxr-pneumonia model-breast-us model-adrenal-3d model-lung-nodules

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

# The shipped pneumonia classifier: fold 0 of 5 (patients grouped), scored on the fold's held-out children.
# 128 px and a half-width ResNet-18 so that a 2-core CPU trains it in about 20 minutes (see models/cxr-pneumonia).
PNEUMONIA ?= ../shared/data/cxr-pneumonia/train
PNEUMONIA_RUN ?= runs/cxr-pneumonia
PNEUMONIA_PATIENTS := '(?P<patient>person\d+|IM-\d+)'
model-cxr-pneumonia: setup
	$(BIN)/vesalius plan $(PNEUMONIA) --patient-pattern $(PNEUMONIA_PATIENTS) --input-size 128 --width 0.5 \
		-o $(PNEUMONIA_RUN)/plan.json
	$(BIN)/vesalius train $(PNEUMONIA) --patient-pattern $(PNEUMONIA_PATIENTS) --plan $(PNEUMONIA_RUN)/plan.json \
		--fold 0 -o $(PNEUMONIA_RUN)
	$(call ship-classifier,cxr-pneumonia,$(PNEUMONIA_RUN)/fold_0)

# BreastMNIST (28 px ultrasound) upsampled to 64 px, mirrored left-right in training and at test time; trained
# on MedMNIST's train split minus a selection share, scored on its val split (--fold official).
MEDMNIST ?= ../shared/data/medmnist
BREAST_RUN ?= runs/breast-us
BREAST_PLAN_OPTIONS ?= --input-size 64 --flip-axis 1
model-breast-us: setup
	$(BIN)/vesalius plan $(MEDMNIST)/breastmnist.npz $(BREAST_PLAN_OPTIONS) -o $(BREAST_RUN)/plan.json
	$(BIN)/vesalius train $(MEDMNIST)/breastmnist.npz --plan $(BREAST_RUN)/plan.json --fold official -o $(BREAST_RUN)
	$(call ship-classifier,breast-us,$(BREAST_RUN)/official)

# AdrenalMNIST3D at 64^3, seen by a half-width 3-D ResNet-18 at 32^3 so that a 2-core CPU trains it in minutes.
ADRENAL_RUN ?= runs/adrenal-3d
ADRENAL_PLAN_OPTIONS ?= --input-size 32
model-adrenal-3d: setup
	$(BIN)/vesalius plan $(MEDMNIST)/adrenalmnist3d_64.npz $(ADRENAL_PLAN_OPTIONS) -o $(ADRENAL_RUN)/plan.json
	$(BIN)/vesalius train $(MEDMNIST)/adrenalmnist3d_64.npz --plan $(ADRENAL_RUN)/plan.json --fold official \
		-o $(ADRENAL_RUN)
	$(call ship-classifier,adrenal-3d,$(ADRENAL_RUN)/official)

# The lung-nodule model: trained on nodules inserted into the right lung of LIDC-IDRI-0001, scored on its left lung
# (docs/detection.md); about 45 minutes on a 2-core CPU. Resumes from the run's checkpoints.
LIDC ?= ../shared/data/lidc/LIDC-IDRI-0001
NODULES_RUN ?= runs/lung-nodules
model-lung-nodules: setup
	$(BIN)/vesalius train-nodules $(LIDC) -o $(NODULES_RUN)
	rm -rf models/lung-nodules/package && mkdir -p models/lung-nodules
	cp -r $(NODULES_RUN)/model models/lung-nodules/package
	cp $(NODULES_RUN)/froc_inserted.png $(NODULES_RUN)/froc_real.png models/lung-nodules/

# A classification run's package and its plots become models/NAME (README.md there is written by hand).
define ship-classifier
	rm -rf models/$(1)/package && mkdir -p models/$(1)
	cp -r $(2)/model models/$(1)/package
	cp $(2)/evaluation.md $(2)/roc.png $(2)/confusion.png $(2)/reliability.png $(2)/training_curves.png models/$(1)/
endef

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
