# Dev and CI entry points. Everything installs into .venv; torch is pinned to the CPU wheel
# here (the container image pins its own CUDA build).
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install run test lint bench plan clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==$(TORCH_VERSION)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Benchmarks the embedded default config (a small synthetic Llama on the CPU).
run: install
	$(VENV)/bin/tfbench run

plan: install
	$(VENV)/bin/tfbench plan

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Benchmarks of the harness itself: timing overhead, isolation cost, timing accuracy.
bench: install
	$(PY) benchmarks/harness.py

clean:
	rm -rf $(VENV) results .pytest_cache
