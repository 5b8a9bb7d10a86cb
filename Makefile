# nir: `make train` and `make test` set everything up from a fresh clone (Python 3.10+ only).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch goes in first, and only if the venv has none: a GPU user can create the venv with their
# own CUDA build (`make venv TORCH='torch==X.Y.Z'`, or pip-install it into .venv beforehand).
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.nir-installed
ARGS ?=

.PHONY: venv train test lint format clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,onnx,sweeps,sci]"
	touch $(STAMP)

## train the default field (SIREN on the bundled chelsea photo); pass overrides as ARGS="..."
train: $(STAMP)
	$(VENV)/bin/nir-train $(ARGS)

## the test suite (CPU only), one pytest-xdist worker per core (at most 4); ARGS="-n 0" runs it in one process
test: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses=4 --dist worksteal $(ARGS)

## ruff: lint and format check (configuration in pyproject.toml); `make format` applies the formatter
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
