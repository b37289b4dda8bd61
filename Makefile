# nslib: the two commands a newcomer needs are `make demo` and `make test`.
# Both need root (namespaces, mounts, docker) on Debian 12.
# `make lint`, `make typecheck` and `make docs` need neither root nor docker:
# only python3 with its headers and gcc, to build the venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.nslib-installed

.PHONY: demo test bench lint typecheck docs pytest setup host build clean

## demo: install what is missing, build, and run `nslib demo`
demo: host build
	$(BIN)/nslib demo

## test: lint, type-check, build the docs and run the whole test suite (real kernel, real docker)
test: lint typecheck docs pytest

## bench: run every benchmark side by side; writes benchmarks/results/latest.md
bench: host build
	$(BIN)/nslib bench

lint: build
	$(BIN)/ruff check nslib tests benchmarks csrc docs
	$(BIN)/ruff format --check nslib tests benchmarks csrc docs

typecheck: build
	$(BIN)/mypy

## docs: the API reference from the docstrings, into docs/_build/html; any warning fails
docs: build
	$(BIN)/sphinx-build -b html -E -n -W --keep-going -q -d docs/_build/doctrees docs docs/_build/html
	@echo "docs: open docs/_build/html/index.html"

pytest: host build
	$(BIN)/python -m pytest

setup: host build

## host: root only; apt packages, the system dockerd and the test image (idempotent)
host:
	bash scripts/host-setup.sh

## build: the venv with nslib built and installed (editable) and every extra; no root
build: $(STAMP)

# The goals that need the host run host-setup *before* the venv is built
# (on a fresh machine it installs gcc and the Python headers); lint, typecheck
# and docs alone never touch the host.
ifneq ($(filter demo test bench pytest setup host,$(or $(MAKECMDGOALS),demo)),)
HOST_FIRST := host
endif

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.c csrc/*.h csrc/*.py) | $(HOST_FIRST)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,bench,docs]'
	touch $@

clean:
	rm -rf $(VENV) build dist *.egg-info nslib/_native*.so benchmarks/bin docs/_build
