# The whole set-up is one of two commands, on a machine with only Python 3.10+ and make:
#   make quickstart   the README's main job (peftlab compare configs/quickstart --out runs/quickstart)
#   make test         the test suite (what CI runs: .ci/run)
# Each creates .venv (or reuses it) and installs torch, then peftlab editable with its test extras,
# every package at the exact version requirements/lock.txt pins (pip constraints): pyproject.toml
# keeps version ranges for whoever installs peftlab as a library; this repository's two commands,
# CI and the committed results run on one set of versions.
# The install is remembered by a stamp keyed on pyproject.toml's and the lock's hashes and the torch
# requirement, so a later command goes straight to work until one of them changes.
#   make env          what `auto` precision resolves to here, versions, CPU capability (peftlab env)
#   make test PYTEST_ARGS="-x tests/test_env.py"   a part of the suite
#   make setup PYTHON=python3.12                   build .venv with another interpreter
#   make lock         re-resolve: a fresh venv, the newest versions within pyproject.toml's ranges, frozen
#                     into requirements/lock.txt (commit it with the results it changes)
#   make setup LOCK=  install without the lock (the newest versions in range)

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
LOCK ?= requirements/lock.txt
PYTEST_ARGS ?=
PYTEST_JOBS ?= 2
BIN := $(VENV)/bin
STAMP := $(VENV)/.peftlab-setup
PINNED := $(if $(LOCK),-c $(LOCK))

.PHONY: quickstart test env setup lock

quickstart: setup
	$(BIN)/peftlab compare configs/quickstart --out runs/quickstart

# two pytest workers (pytest-xdist): the suite's processes are single-threaded (tests/conftest.py),
# so a 2-core machine runs it in about half the serial time; PYTEST_JOBS=0 runs it in one process
test: setup
	$(BIN)/python -m pytest -q -n $(PYTEST_JOBS) $(PYTEST_ARGS)

env: setup
	$(BIN)/peftlab env

# torch first: pip would otherwise resolve it from peftlab's range; 2.13.0 is the CPU wheel this
# project is tested with (a machine's local wheel directory, or PyPI, serves it).
setup:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
	  { echo "peftlab needs Python 3.10 or newer; $(PYTHON) is $$($(PYTHON) -V 2>&1)"; exit 1; }
	@key=$$($(PYTHON) -c 'import hashlib, sys; print(*[hashlib.sha256(open(f, "rb").read()).hexdigest() for f in sys.argv[2:]], sys.argv[1])' '$(TORCH)' pyproject.toml $(LOCK)); \
	if [ -x $(BIN)/python ] && [ "$$(cat $(STAMP) 2>/dev/null)" = "$$key" ]; then exit 0; fi; \
	set -e; \
	echo "setting up $(VENV): $(TORCH), then peftlab[test], at the versions of $(or $(LOCK),no lock) (once; again only when it or pyproject.toml changes)"; \
	rm -f $(STAMP); \
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV); \
	$(BIN)/python -m pip install -q --upgrade pip $(PINNED); \
	$(BIN)/python -m pip install -q '$(TORCH)' $(PINNED); \
	$(BIN)/python -m pip install -q -e '.[test]' $(PINNED); \
	echo "$$key" > $(STAMP)

# Every package a fresh venv gets from the installs above, without the lock, at its exact version
# (pip, but not the interpreter's own setuptools/wheel, nor peftlab itself); a local version label
# is dropped (torch 2.13.0+cpu -> torch==2.13.0, which the CPU wheel and PyPI's both satisfy).
lock:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install -q --upgrade pip; \
	"$$tmp/venv/bin/python" -m pip install -q '$(TORCH)'; \
	"$$tmp/venv/bin/python" -m pip install -q -e '.[test]'; \
	mkdir -p $$(dirname $(LOCK)); \
	{ echo "# Exact versions of every package \`make setup\` installs (pip constraints: -c $(LOCK))."; \
	  echo "# Made by \`make lock\` (a fresh venv, the newest versions within pyproject.toml's ranges, frozen)"; \
	  echo "# with $$("$$tmp/venv/bin/python" -V) on $$(uname -sm); a package that another Python or platform needs"; \
	  echo "# and this one did not is resolved within its range."; \
	  "$$tmp/venv/bin/python" -m pip freeze --all --exclude-editable | grep -v -E '^(setuptools|wheel)==' | sed -E 's/^([^=]+==[^+]+)\+.*/\1/'; \
	} > $(LOCK); \
	echo "wrote $(LOCK): $$(grep -c '==' $(LOCK)) packages"
