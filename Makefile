# The whole set-up is one of two commands, on a machine with only Python 3.10+ and make:
#   make quickstart   the README's main job (peftlab compare configs/quickstart --out runs/quickstart)
#   make test         the test suite (what CI runs: .ci/run)
# Each creates .venv (or reuses it) and installs torch, then peftlab editable with its test extras.
# The install is remembered by a stamp keyed on pyproject.toml's hash and the torch requirement,
# so a later command goes straight to work until either changes.
#   make env          what `auto` precision resolves to here, versions, CPU capability (peftlab env)
#   make test PYTEST_ARGS="-x tests/test_env.py"   a part of the suite
#   make setup PYTHON=python3.12                   build .venv with another interpreter

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.peftlab-setup

.PHONY: quickstart test env setup

quickstart: setup
	$(BIN)/peftlab compare configs/quickstart --out runs/quickstart

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

env: setup
	$(BIN)/peftlab env

# torch first: pip would otherwise resolve it from peftlab's range; 2.13.0 is the CPU wheel this
# project is tested with (a machine's local wheel directory, or PyPI, serves it).
setup:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
	  { echo "peftlab needs Python 3.10 or newer; $(PYTHON) is $$($(PYTHON) -V 2>&1)"; exit 1; }
	@key=$$($(PYTHON) -c 'import hashlib, sys; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest(), sys.argv[1])' '$(TORCH)'); \
	if [ -x $(BIN)/python ] && [ "$$(cat $(STAMP) 2>/dev/null)" = "$$key" ]; then exit 0; fi; \
	set -e; \
	echo "setting up $(VENV): $(TORCH), then peftlab[test] (once; again only when pyproject.toml changes)"; \
	rm -f $(STAMP); \
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV); \
	$(BIN)/python -m pip install -q --upgrade pip; \
	$(BIN)/python -m pip install -q '$(TORCH)'; \
	$(BIN)/python -m pip install -q -e '.[test]'; \
	echo "$$key" > $(STAMP)
