# Every target sets up the virtual environment on first use (make install).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install test demo accuracy report hw-report verilog bench train-digits clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The main job on the embedded default: quantize the digits ViT, FP32 vs integer-only.
demo: $(STAMP)
	$(BIN)/hwgen accuracy --backend golden --model digits --bits w8a8
	$(BIN)/hwgen accuracy --backend golden --model digits --bits w4a8 --report reports/accuracy_golden_w4a8.json

accuracy: demo

# Error of every GELU / Softmax / LayerNorm variant on the calibrated activations.
report: $(STAMP)
	$(BIN)/hwgen approx-report --model digits --bits w8a8

# Verilog of the default configuration (configs/default.json) into rtl/, with its manifest.
verilog: $(STAMP)
	$(BIN)/hwgen generate --config configs/default.json --out rtl

# Synthesis (yosys ECP5 + Xilinx) and place and route (nextpnr-ecp5) of every unit.
hw-report: verilog
	$(BIN)/hwgen report --rtl rtl

bench: $(STAMP)
	$(BIN)/python scripts/bench_golden.py
	$(BIN)/python scripts/bench_units.py

train-digits: $(STAMP)
	$(BIN)/python scripts/train_digits.py

clean:
	rm -rf sim_build .pytest_cache
