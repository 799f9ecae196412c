# tvm-intq: setup, demo and tests. GNU make + bash.
#   make test                        venv + system packages, then the test suite
#   make test PYTEST_ARGS="tests/test_targets.py -x"
#   make demo                        runs the command-line demo
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

PY ?= python3
VENV := .venv
PYTEST_ARGS ?=

# Debian packages the project needs (cross linkers for the ARM and RISC-V targets).
# Add new system tools here (qemu-user, ...): system-deps installs whatever is missing.
APT_PACKAGES := g++-aarch64-linux-gnu g++-riscv64-linux-gnu

.PHONY: all install system-deps demo test clean distclean

all: test

install: $(VENV)/.installed

# An existing venv is reused as is (re-running venv over it could re-point its python).
$(VENV)/.installed: pyproject.toml
	[ -x $(VENV)/bin/python ] || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -e ".[test]"
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

test: install system-deps
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

# bench: (not yet: benchmarks go here)

# Build outputs only; the venv stays.
clean:
	rm -rf build/ out/ .pytest_cache/
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
