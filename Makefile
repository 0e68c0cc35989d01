# twinsim: `make demo` sets everything up and runs the main job; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo
VALIDATE_FAILED = twinsim validate: a gate failed, see $(DEMO_DIR)/report/report.html (the demo goes on: a failed gate is a finding, not an error)

.PHONY: demo test setup lint bench clean

setup: $(VENV)/.installed

# torch 2.13.0 (CPU build) goes in first, so that no dependency pulls a CUDA build of torch.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,dp,btyd,ray,live]'
	touch $@

demo: setup
	$(BIN)/twinsim reference-world --users 5000 --days 365 --seed 7 -o $(DEMO_DIR)/world --overwrite
	$(BIN)/twinsim inspect $(DEMO_DIR)/world
	$(BIN)/twinsim train $(DEMO_DIR)/world -o $(DEMO_DIR)/model --overwrite
	$(BIN)/twinsim generate $(DEMO_DIR)/model -n 2000 --start 2025-01-01 --days 365 --seed 1 -o $(DEMO_DIR)/synthetic --overwrite
	$(BIN)/twinsim inspect $(DEMO_DIR)/synthetic
	$(BIN)/twinsim validate --model $(DEMO_DIR)/model --data $(DEMO_DIR)/world --synthetic $(DEMO_DIR)/synthetic \
		-o $(DEMO_DIR)/report --overwrite; rc=$$?; [ $$rc -ne 1 ] || echo "$(VALIDATE_FAILED)"; [ $$rc -le 1 ]
	$(BIN)/twinsim whatif $(DEMO_DIR)/model --scenario travel_card_push --users 10000 --start 2025-06-01 --days 30 --seed 1 -o $(DEMO_DIR)/whatif --overwrite

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/reference_world_throughput.py
	$(BIN)/python benchmarks/model_fidelity.py --world runs/bench/world --model runs/bench/model
	$(BIN)/python benchmarks/generation_throughput.py runs/bench/model --users 100000 --days 90 --profile

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
