# The targets the README names. `make demo` and `make test` each set up a fresh
# machine (a virtual environment in .venv with the CPU build of PyTorch) first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vmunet-installed
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup demo test test-slow lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,export,dicom,ray]"
	# nnU-Net's planner, which tests/plan/test_vs_nnunet.py holds `vmunet plan` against. Only its
	# planning code runs, so its training stack (timm -> torchvision, a CUDA build) is left out:
	# pip notes that timm is missing; that is expected.
	$(PY) -m pip install -q --no-deps nnunetv2==2.8.1 dynamic-network-architectures==0.4.4 \
		acvl-utils==0.2.6 batchgeneratorsv2==0.3.6
	$(PY) -m pip install -q batchgenerators blosc2 connected-components-3d graphviz imagecodecs \
		pandas requests scikit-learn seaborn yacs
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vmunet demo

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) benchmarks/selective_scan.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
