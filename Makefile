# The two commands of the README: `make demo` and `make test`. Each installs what it
# needs (Debian packages, a virtual environment in .venv) and is safe to run again.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
HOST_PYTHON := $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
APT_PACKAGES := python3-venv runc busybox-static containerd docker-registry \
	golang-github-containerd-containerd-dev btrfs-progs iproute2 util-linux
PYTEST_ARGS ?=

.PHONY: all setup apt venv demo test unit integration protos lint bench clean

all: test

setup: apt venv

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(HOST_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: setup
	$(PY) scripts/demo.py

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: setup
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

protos: venv
	$(PY) scripts/genprotos.py

lint: venv
	$(VENV)/bin/ruff check src tests scripts bench
	$(VENV)/bin/mypy

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
