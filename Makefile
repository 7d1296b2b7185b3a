# hosttune — the two commands a new user needs:
#   make run    what running needs (venv, llama-server, bundled model), then the main job (the daemon with the
#               default policy on the bundled model)
#   make test   that, plus what the test tiers need (test tools, Debian packages, the cached rootfs trees the
#               real-systemd and Ansible tiers boot), then every test tier
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CACHE ?= $(HOME)/.cache/hosttune
export HOSTTUNE_CACHE := $(CACHE)

.PHONY: run test setup setup-run venv venv-test engine model system-deps-run system-deps rootfs fleet-rootfs \
	install lint test-unit test-process clean test-models

run: setup-run
	HOSTTUNE_STATE_DIR=$${HOSTTUNE_STATE_DIR:-$(CACHE)/run-state} $(VENV)/bin/hosttune daemon --config systemd/daemon-run.yaml

test: setup
	scripts/run-tests.sh

# What running needs, and nothing only the tests need.
setup-run: venv engine model system-deps-run

# Everything: running's set-up plus what the test tiers need.
setup: setup-run venv-test system-deps rootfs fleet-rootfs test-models

venv: $(VENV)/.installed

venv-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[torch]'
	touch $@

# The test tools (pytest, hypothesis, schemathesis, ruff, mypy, ansible-core, ...).
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,torch]'
	touch $@

engine: venv
	scripts/install-engine.sh $(PY)

model: venv
	scripts/install-model.sh $(PY)

# The extra GGUF models (other attention layouts) the engine tier holds `hosttune fit` against; cached by version.
test-models: venv
	$(PY) scripts/install_test_models.py

system-deps-run:
	scripts/install-system-deps.sh run

system-deps:
	scripts/install-system-deps.sh test

# The cached Debian rootfs the real-systemd test tier boots (root only; a no-op once built).
rootfs:
	scripts/build-rootfs.sh >/dev/null

# The cached rootfs of the Ansible tier's fleet hosts: the systemd rootfs plus sshd (root only; a no-op once built).
fleet-rootfs: rootfs
	scripts/build-fleet-rootfs.sh >/dev/null

# The systemd unit, tmpfiles.d entry and example config, pointing at this installation.
install: venv
	$(VENV)/bin/hosttune install-unit

lint: venv-test
	$(VENV)/bin/ruff check agent tests scripts bench
	$(VENV)/bin/mypy

# The fast tier: no child processes, no servers on ports (tests/unit/conftest.py fails a test that tries).
test-unit: venv-test
	$(VENV)/bin/pytest tests/unit -q -m "not process"

# The tests that start real processes (the CLI, the daemon, workers, uvicorn servers on loopback ports).
test-process: venv-test
	$(VENV)/bin/pytest tests/process tests/unit -q -m process

clean:
	rm -rf $(VENV) build *.egg-info
