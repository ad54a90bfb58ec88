# `make demo` and `make test` create the environment (.venv) when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch/torchvision pins; override for another platform, e.g. TORCH_SPEC="torch torchvision"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: env demo test test-slow test-slurm test-all lint bench wheel-check clean

env: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m dinotracker.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow || test $$? -eq 5  # exit 5: no slow test selected

# needs a Slurm cluster: `sudo experiments/slurm/local_cluster.sh start` makes a local one (CI does)
test-slurm: $(STAMP)
	$(BIN)/python -m pytest -q -m slurm tests/slurm

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

# ruff, and the import contract of pyproject.toml [tool.importlinter] (layers run one way; docs/DESIGN.md)
lint: $(STAMP)
	$(BIN)/ruff check dinotracker tests experiments
	$(BIN)/lint-imports --no-cache

bench: $(STAMP)
	for f in experiments/bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

# build a wheel and run the entry point from a clean virtual environment
wheel-check: $(STAMP)
	PY=$(BIN)/python bash experiments/wheel_check.sh

clean:
	rm -rf build dist *.egg-info
