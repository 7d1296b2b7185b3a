# hosttune — the two commands a new user needs:
#   make run    set-up, then the main job (the daemon with the default policy on the bundled model)
#   make test   set-up, then every test tier
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CACHE ?= $(HOME)/.cache/hosttune
export HOSTTUNE_CACHE := $(CACHE)

.PHONY: run test setup venv engine model system-deps lint typecheck test-unit test-fast clean

run: setup
	$(VENV)/bin/hosttune inspect

test: setup
	scripts/run-tests.sh

setup: venv engine model system-deps

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

engine: venv
	scripts/install-engine.sh $(PY)

model: venv
	scripts/install-model.sh $(PY)

system-deps:
	scripts/install-system-deps.sh

lint: venv
	$(VENV)/bin/ruff check agent tests scripts bench
	$(VENV)/bin/mypy

test-unit: venv
	$(VENV)/bin/pytest tests/unit -q

clean:
	rm -rf $(VENV) build *.egg-info
