# hosttune — the two commands a new user needs:
#   make run    set-up, then the main job (the daemon with the default policy on the bundled model)
#   make test   set-up, then every test tier
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CACHE ?= $(HOME)/.cache/hosttune
export HOSTTUNE_CACHE := $(CACHE)

.PHONY: run test setup venv engine model system-deps rootfs install lint typecheck test-unit test-fast clean

run: setup
	HOSTTUNE_STATE_DIR=$${HOSTTUNE_STATE_DIR:-$(CACHE)/run-state} $(VENV)/bin/hosttune daemon --config systemd/daemon-run.yaml

test: setup
	scripts/run-tests.sh

setup: venv engine model system-deps rootfs

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,torch]'
	touch $@

engine: venv
	scripts/install-engine.sh $(PY)

model: venv
	scripts/install-model.sh $(PY)

system-deps:
	scripts/install-system-deps.sh

# The cached Debian rootfs the real-systemd test tier boots (root only; a no-op once built).
rootfs:
	scripts/build-rootfs.sh >/dev/null

# The systemd unit, tmpfiles.d entry and example config, pointing at this installation.
install: venv
	$(VENV)/bin/hosttune install-unit

lint: venv
	$(VENV)/bin/ruff check agent tests scripts bench
	$(VENV)/bin/mypy

test-unit: venv
	$(VENV)/bin/pytest tests/unit -q

clean:
	rm -rf $(VENV) build *.egg-info
