# nslib: the two commands a newcomer needs are `make demo` and `make test`.
# Both need root (namespaces, mounts, docker) on Debian 12.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.nslib-installed

.PHONY: demo test bench lint typecheck pytest setup clean

## demo: install what is missing, build, and run `nslib demo`
demo: setup
	$(BIN)/nslib demo

## test: lint, type-check and run the whole test suite (real kernel, real docker)
test: setup lint typecheck pytest

## bench: run every benchmark side by side; writes benchmarks/results/latest.md
bench: setup
	$(BIN)/nslib bench

lint: setup
	$(BIN)/ruff check nslib tests benchmarks csrc
	$(BIN)/ruff format --check nslib tests benchmarks csrc

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/python -m pytest

setup: $(STAMP)

# Host packages and dockerd first (gcc, headers), then the venv and the build.
$(STAMP): pyproject.toml setup.py csrc/nslib.c csrc/nslib.h csrc/native_build.py scripts/host-setup.sh
	bash scripts/host-setup.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $@

clean:
	rm -rf $(VENV) build dist *.egg-info nslib/_native*.so benchmarks/bin
