# One entry point for setup, tests and benchmarks. Everything installs into .venv in the repo.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test lint format bench clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $(STAMP)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: setup lint
	$(PY) -m pytest -q

bench: setup
	$(VENV)/bin/segfast bench --model mobile_sam --json out/bench.json

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
