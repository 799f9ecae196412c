# tvm-intq: setup, demo and tests. GNU make + bash.
#   make test                        venv + system packages, lint, then the whole test suite
#   make test PYTEST_ARGS="tests/test_targets.py -x"
#   make test-fast                   lint and the unit tests (no boards, no tuning; ~2 min)
#   make lint                        ruff check + ruff format --check
#   make demo                        runs the command-line demo
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

PY ?= python3
VENV := .venv
PYTEST_ARGS ?=

# Debian packages the project needs (cross linkers for the ARM and RISC-V targets; fonts for
# the rendered OCR text and the libraries opencv-python loads, for eval/).
# Add new system tools here (qemu-user, ...): system-deps installs whatever is missing.
APT_PACKAGES := g++-aarch64-linux-gnu g++-riscv64-linux-gnu qemu-user fonts-dejavu-core libgl1 libglib2.0-0
# Instruction counts and llvm-mca cycles on the emulated boards (build_insn_count.sh builds
# QEMU with plugins: glib + ninja; llvm-19: the first llvm-mca with RVV core models).
APT_PACKAGES += libglib2.0-dev ninja-build llvm-19

.PHONY: all install system-deps boards demo lint test test-fast bench eval clean distclean

all: test

install: $(VENV)/.installed

# An existing venv is reused as is (re-running venv over it could re-point its python).
$(VENV)/.installed: pyproject.toml
	[ -x $(VENV)/bin/python ] || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -e ".[test,qat,eval]"
	touch $@

# Re-checked when the Makefile changes (APT_PACKAGES may have grown); installs only what
# dpkg does not report as installed, so a machine that has everything does nothing.
system-deps: $(VENV)/.system-deps

$(VENV)/.system-deps: Makefile
	@missing=(); \
	if ! command -v dpkg-query >/dev/null; then \
	  echo "system-deps: not a Debian/Ubuntu system; install the equivalents of: $(APT_PACKAGES)" >&2; \
	  exit 1; \
	fi; \
	for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$$p"); \
	done; \
	if (( $${#missing[@]} )); then \
	  sudo=; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	  echo "system-deps: installing $${missing[*]}"; \
	  $$sudo apt-get update; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$${missing[@]}"; \
	else \
	  echo "system-deps: all present ($(APT_PACKAGES))"; \
	fi
	@mkdir -p $(@D) && touch $@

demo: install system-deps
	$(VENV)/bin/tvm-intq demo

# Emulated boards (tvm-intq board up): Debian's qemu-user 10 from bookworm-backports (QEMU 7.2
# aborts on RVV code), TVM's aarch64 runtime from its aarch64 wheels, and the TVM runtime
# cross-built for riscv64 from the wheel's sources (~3-4 min on 2 cores the first time). Each
# script is a no-op when its output is up to date, and reuses an identical earlier build from
# ~/.cache/tvm-intq/boards (a fresh clone on the same machine builds nothing). Last, what counts
# instructions on them: QEMU built with plugins from Debian's source package (~10 min once).
# And the peers counted on the same emulated ARM core: an aarch64 python3.11 from Debian's arm64
# packages (downloaded and unpacked, not installed) with the aarch64 wheels of onnxruntime,
# numpy and ai-edge-litert (~230 MB, a minute once).
boards: install system-deps
	bash targets/boards/fetch_qemu.sh
	bash targets/boards/build_aarch64_emu.sh
	bash targets/boards/build_riscv64_emu.sh
	bash targets/boards/build_insn_count.sh
	bash targets/boards/build_peers.sh

# ruff's rules and format are in pyproject.toml; `ruff format .` fixes the format.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Tests run in TEST_WORKERS processes (pytest-xdist), each test file in one of them (its
# module fixtures, e.g. a compiled model, built once); CI's machine has 2 cores.
TEST_WORKERS ?= 2
test: lint system-deps boards
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Integration tests (boards, tuning, whole-model compiles) carry the `integration` marker.
test-fast: lint
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not integration" $(PYTEST_ARGS)

# Benchmark (not part of test) on real models (PP-OCRv4, the light zoo, bundled, unseen): ONNX
# Runtime fp32/int8 vs TVM fp32 vs tvm-intq int8 without a database and after --minutes of
# tuning, batch 1, 1 and 2 threads, compile time and memory. Hours for all models: rows and
# libraries resume from bench/work/models/, the table grows. Results: bench/results/models/.
#   make bench BENCH_ARGS="--models ocr_cls light_resnet50 --minutes 10"
#   make bench BENCH_ARGS="--models bundled --parts emulated"      (emulated boards' figures)
# Then bench/load_sensitivity.py: the same runtimes quiet and beside CPU hogs, per-call wall and
# CPU time (issue 18: a busy machine must not slow tvm-intq more than ONNX Runtime), 1 and 2
# threads. Results: bench/results/load_sensitivity/.   make bench LOAD_ARGS="--models unseen"
BENCH_ARGS ?=
LOAD_ARGS ?=
bench: install
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)
	$(VENV)/bin/python bench/load_sensitivity.py --threads 1 $(LOAD_ARGS)
	$(VENV)/bin/python bench/load_sensitivity.py --threads 2 $(LOAD_ARGS)

# Accuracy table of issue #7 (not part of test): the bundled model and rapidocr's PP-OCRv4
# det/rec/cls, every tvm-intq method vs ONNX Runtime int8; results in eval/results/ (about an
# hour on 2 cores; finished rows are kept in eval/results/rows/).
#   make eval EVAL_ARGS="--models cls"
EVAL_ARGS ?=
eval: install system-deps
	$(VENV)/bin/python -m eval.run $(EVAL_ARGS)

# Build outputs only; the venv stays.
clean:
	rm -rf build/ out/ .pytest_cache/
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
