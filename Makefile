# The README's commands. `make run` and `make test` work from a fresh clone: they create the
# virtualenv, install the pinned requirements, bring the local stack up and migrate every database.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000

.PHONY: run test bench lint stack stack-down stack-status migrate bootstrap clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

stack:
	scripts/stack up

stack-down:
	scripts/stack down

stack-status:
	scripts/stack status

migrate: $(VENV)/.installed stack
	$(PY) manage.py migrate_all

bootstrap: migrate
	$(PY) manage.py ensure_superuser
	$(PY) manage.py seed_demo

run: bootstrap
	PORT=$(PORT) $(VENV)/bin/honcho start -f Procfile

test: $(VENV)/.installed stack
	DJANGO_SETTINGS_MODULE=project.settings.test $(VENV)/bin/pytest

bench: $(VENV)/.installed stack
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null; } \
		|| { echo "install wrk (apt-get install wrk) to run the benchmark"; exit 1; }
	DJANGO_SETTINGS_MODULE=project.settings.bench $(PY) -m bench

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	scripts/stack destroy
	rm -rf $(VENV)
