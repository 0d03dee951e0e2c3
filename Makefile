# hrm-edge developer targets. `make install` once, then any target.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
DEMO    ?= checkpoints/sudoku6-demo

.PHONY: install test lint bench loadtest gpu-test device-test demo fuzz clean

$(BIN)/hrm-edge: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[torch,dev,serve,openvino]'
	touch $@

install: $(BIN)/hrm-edge

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

demo: install
	$(BIN)/hrm-edge solve $(DEMO)/model.pt --file $(DEMO)/demo.txt --policy q

bench: install
	$(BIN)/hrm-edge bench --out bench/results
	$(BIN)/python -m hrm_edge.bench.continuous --out bench/results

# Bounded load test of `hrm-edge serve` on loopback (stops by itself): JSON in bench/results/loadtest.json.
loadtest: install
	$(BIN)/python -m hrm_edge.bench.loadtest --out bench/results

# Property-based fuzzing of the input readers (tests/fuzz) with ~5,000 examples per property: minutes.
fuzz: install
	HRM_EDGE_FUZZ_PROFILE=fuzz $(BIN)/python -m pytest -q -p no:cacheprovider tests/fuzz

# No `install` prerequisite: GPU machines bring their own CUDA torch and may have no network.
gpu-test:
	bash scripts/gpu_test.sh

# The device bundle on aarch64 (qemu user emulation, a cached Debian arm64 root): README-device.md's commands
# word for word; needs root. First run ~20 min, then minutes (scripts/device_test.sh; README "Device test").
device-test: install
	bash scripts/device_test.sh $(DEVICE_TEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
