# `make demo` trains the digits classifier on accuracy; `make test` runs lint and the test suite.
# Both create .venv and install what they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch==2.13.0 (CPU) installs from a local file on the dev machines; the package itself
	# only asks for torch>=2.4.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,demo]"
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest -q tests benchmarks --benchmark-disable

demo: $(STAMP)
	$(PY) examples/01_digits_accuracy.py

bench: $(STAMP)
	$(PY) benchmarks/es_generation.py --out benchmarks/results/es_generation_cpu.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
