# Conveyor: `make run` runs the platform (embedded default), `make test` runs the tests.
# Both set up everything they need on a fresh machine (a venv, pip packages, system packages).

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: run test lint bench install system-deps services

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[inference,deploy,resources,dev]" --config-settings editable_mode=compat
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

system-deps:
	@bash scripts/system-deps.sh

services:
	@bash scripts/services.sh

run: install
	$(VENV)/bin/conveyor up

test: install system-deps services
	@bash scripts/run-tests.sh

# The packages (pyproject's setuptools list): the duplicate-code check reads them all at once.
PACKAGES := api cli common config crawler deployments diagnostics idempotency inference jobs \
	monitoring plans resources store tasks webhooks workers projects assistants rag billing alerts access

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	# Copies of 5+ lines (comments, docstrings, imports and signatures ignored): write it once.
	$(VENV)/bin/pylint --disable=all --enable=duplicate-code --min-similarity-lines=5 \
		--score=n $(PACKAGES)

bench: install system-deps services
	$(PY) benchmarks/queue_overhead.py
	$(PY) benchmarks/api_poll.py
	$(PY) benchmarks/list_scaling.py --rows 200000
