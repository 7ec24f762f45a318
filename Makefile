# the0 runtime. Two commands on a fresh machine:
#   make run    - the service, fully embedded (NATS child, sqlite store, local objects, process backend)
#   make test   - every test, with the real servers they need (installed and started here)
PY ?= python3
PY313 ?= /root/.pyenv/versions/3.13.0/bin/python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

export THE0_MOTO_VENV ?= $(CURDIR)/.venv-moto
export THE0_MONGO_VENV ?= $(CURDIR)/.venv-mongo

.PHONY: run test test-unit test-integration deps venv system-packages images bench kube-build clean help

help:
	@echo "make run | make test | make test-unit | make bench | make images [BASE=local] | make kube-build"

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.' pytest pytest-timeout
	touch $@

venv: $(BIN)/.installed

run: venv
	$(BIN)/python -m actors.main

$(THE0_MOTO_VENV)/.installed:
	$(PY) -m venv $(THE0_MOTO_VENV)
	$(THE0_MOTO_VENV)/bin/pip install -q "moto[server]>=5"
	touch $@

$(THE0_MONGO_VENV)/.installed:
	$(PY313) -m venv $(THE0_MONGO_VENV)
	$(THE0_MONGO_VENV)/bin/pip install -q "mongoeco[wire]"
	touch $@

system-packages:
	bash tests/servers/system-packages.sh

deps: venv $(THE0_MOTO_VENV)/.installed $(THE0_MONGO_VENV)/.installed system-packages kube-build

test: deps
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-unit: venv
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

test-integration: deps
	$(BIN)/python -m pytest -q tests/integration $(PYTEST_ARGS)

images: venv
	bash images/build.sh --base $(or $(BASE),public)

kube-build:
	bash tests/servers/kube.sh build

bench: deps
	@for b in bench/[!_]*.py; do $(BIN)/python $$b || echo "| $$b | failed | - | MISS |"; done

clean:
	rm -rf $(VENV) $(THE0_MOTO_VENV) $(THE0_MONGO_VENV) .the0 build
