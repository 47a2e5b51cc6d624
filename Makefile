# Dev and CI entry points. Everything installs into .venv; torch is pinned to the CPU wheel
# here (the container image pins its own CUDA build).
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# The image: its tag, and what its OCI labels say.
IMAGE ?= tfbench
IMAGE_VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' bench/__init__.py)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
SOURCE ?= $(shell git remote get-url origin 2>/dev/null)

.PHONY: install run test test-compat lint bench plan clean image test-image reliability

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

# Two pytest workers: most of the suite's time goes to tfbench processes started one at a time,
# which leave the second core idle. A module stays on one worker (--dist loadfile), so that a run
# shared by a module's tests is made once.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The end-to-end path against other transformers releases (tests/compat/): 5.23.0 as an unpacked
# wheel, 5.17.0 in a venv of its own; built once into COMPAT_DIR and kept between runs.
COMPAT_DIR ?= $(HOME)/.cache/tfbench/compat
test-compat: install
	PYTHON=$(PYTHON) TORCH_VERSION=$(TORCH_VERSION) scripts/compat_envs.sh $(COMPAT_DIR)
	TFBENCH_COMPAT_DIR=$(COMPAT_DIR) $(PY) -m pytest -q tests/compat

# The CI workflows (docs/ci/: every file there) with actionlint, which runs shellcheck on their
# `run:` scripts; the shell scripts themselves with shellcheck.
CI_WORKFLOWS = $(sort $(wildcard docs/ci/*.yml docs/ci/*.yaml))

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/actionlint -config-file .github/actionlint.yaml -shellcheck $(VENV)/bin/shellcheck -pyflakes= $(CI_WORKFLOWS)
	$(VENV)/bin/shellcheck scripts/*.sh .ci/run

# The CUDA image, with a Docker engine that has BuildKit (not run by CI): VARIANT cu126 or cu130,
# FLASH_ATTN wheel, build or none. More build args:
# make image FLASH_ATTN=build DOCKER_BUILD_ARGS='--build-arg TORCH_CUDA_ARCH_LIST=9.0'; see README, Docker.
VARIANT ?= cu126
FLASH_ATTN ?= wheel
image:
	@case "$(VARIANT)" in cu126|cu130) ;; *) echo "VARIANT=$(VARIANT): allowed: cu126, cu130 (the cpu variant: make test-image)" >&2; exit 2;; esac
	@case "$(FLASH_ATTN)" in wheel|build|none) ;; *) echo "FLASH_ATTN=$(FLASH_ATTN): allowed: wheel, build, none" >&2; exit 2;; esac
	DOCKER_BUILDKIT=1 docker build -t $(IMAGE) --build-arg VARIANT=$(VARIANT) --build-arg FLASH_ATTN=$(FLASH_ATTN) \
		--build-arg VERSION=$(IMAGE_VERSION) --build-arg REVISION=$(REVISION) --build-arg SOURCE='$(SOURCE)' \
		$(DOCKER_BUILD_ARGS) .

# The CPU variant of the image, built and tested in real containers (as root: it starts a
# private Docker daemon, and stops it again).
test-image: install
	TORCH_VERSION=$(TORCH_VERSION) VERSION=$(IMAGE_VERSION) REVISION=$(REVISION) SOURCE='$(SOURCE)' \
		PY=$(PY) bash scripts/test_image.sh

# Benchmarks of the harness itself: timing overhead, isolation cost, timing accuracy, stop latency,
# telemetry sampling's disturbance; the verdicts' false alarms, power and cost (verdicts.py) and through
# `tfbench ab` (ab.py); scale (10,000 cells), the long kill-and-restart loop, and syncing to an S3
# server with a kill loop on empty machines (sync.py), profiling's cost (profile.py), a quantized cell beside the
# unquantized one (quantization.py), tensor-parallel cells on the CPU against tp_size 1 (tp.py), the GPU pool on
# simulated GPUs (pool.py: speed-up, interference), whose figures (benchmarks/results/)
# RELIABILITY.md is generated from.
bench: install
	$(PY) benchmarks/harness.py
	$(PY) benchmarks/stop.py
	$(PY) benchmarks/sampler.py --gil release
	$(PY) benchmarks/scale.py
	$(PY) benchmarks/sync.py
	$(PY) benchmarks/profile.py
	$(PY) benchmarks/quantization.py
	$(PY) benchmarks/tp.py
	$(PY) benchmarks/verdicts.py
	$(PY) benchmarks/ab.py
	$(PY) benchmarks/kill_loop.py
	$(PY) benchmarks/pool.py
	$(MAKE) reliability

# RELIABILITY.md from the fault registry and the figures in benchmarks/results/ (a test keeps it in step).
reliability: install
	$(PY) benchmarks/reliability.py --write

clean:
	rm -rf $(VENV) results .pytest_cache
