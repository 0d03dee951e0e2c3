# hrm-edge developer targets. `make install` once, then any target.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
DEMO    ?= checkpoints/sudoku6-demo/model.pt
DEMO_TASK ?= sudoku6

.PHONY: install test lint bench gpu-test demo clean

$(BIN)/hrm-edge: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[torch,dev]'
	touch $@

install: $(BIN)/hrm-edge

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

demo: install
	$(BIN)/hrm-edge solve $(DEMO) --file calib_data/$(DEMO_TASK)/demo.txt --policy q

bench: install
	$(BIN)/python -m hrm_edge.bench --out bench/results

# No `install` prerequisite: GPU machines bring their own CUDA torch and may have no network.
gpu-test:
	bash scripts/gpu_test.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
