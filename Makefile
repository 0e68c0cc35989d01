# twinsim: `make demo` sets everything up and runs the main job; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo

.PHONY: demo test setup lint bench clean

setup: $(VENV)/.installed

# torch 2.13.0 (CPU build) goes in first, so that no dependency pulls a CUDA build of torch.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/twinsim reference-world --users 5000 --days 365 --seed 7 -o $(DEMO_DIR)/world --overwrite
	$(BIN)/twinsim inspect $(DEMO_DIR)/world

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/reference_world_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
