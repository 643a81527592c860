# entropy-asr: `make demo` (the main job) and `make test` (the suite) set up everything they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml .ci/constraints.txt | sha1sum | cut -c1-12)
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY := 1
export GRADIO_ANALYTICS_ENABLED := False
export TOKENIZERS_PARALLELISM := false

.PHONY: setup system test demo reproduce bench lint format clean

system:
	@bash .ci/install-system.sh

$(STAMP):
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c .ci/constraints.txt -e '.[space,dev]'
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

setup: system $(STAMP)

# the suite on both cores (pytest-xdist), a test file per worker at a time, the slowest files first (tests/conftest.py's
# SLOWEST_FIRST): 14.4 min in a fresh clone against 21 on one worker (2 cores)
test: setup
	$(PY) -m pytest tests -q -m "not slow" -p no:cacheprovider -n $${TEST_WORKERS:-2} --dist loadfile --no-loadscope-reorder

bench: setup
	ENTROPY_ASR_TORCH_THREADS=$${ENTROPY_ASR_TORCH_THREADS:-2} $(PY) -m pytest tests/benchmarks -q -s -m slow -p no:cacheprovider

demo: setup
	$(VENV)/bin/entropy-asr demo --size $${DEMO_SIZE:-full}

# the comparison once per seed (0, 1, 2), one after the other, and a report over the seeds
reproduce: setup
	$(VENV)/bin/entropy-asr demo --size $${DEMO_SIZE:-full} --seeds $${SEEDS:-0 1 2}

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
