# The README's commands. `make run` and `make test` work from a fresh clone: they create the
# virtualenv, install the pinned requirements, bring the local stack up and migrate every database.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000

.PHONY: chromium nginx promtool run test bench lint stack stack-down stack-status migrate bootstrap clean add-shard lb-demo sentinel-demo cluster-demo chaos

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

# The browser test drives Debian's chromium (never a downloaded browser).
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && echo "installing chromium with apt-get" && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } \
		|| { echo "install Debian's chromium (apt-get install chromium) for the browser test"; exit 1; }

# nginx in front of the app (deploy/nginx.conf): the load-balancing demo, the overload front's test and the
# bench's overload section run Debian's nginx-light, in the foreground under their own prefix (never the
# system nginx's files or service).
nginx:
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { [ "$$(id -u)" = 0 ] && echo "installing nginx-light with apt-get" && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light >/dev/null; } \
		|| { echo "install Debian's nginx (apt-get install nginx-light) for the overload front's test and bench"; exit 1; }

# `make lint` checks deploy/prometheus/alerts.yml and runs its unit tests (alerts_test.yml) with promtool,
# from Debian's prometheus package.
promtool:
	@command -v promtool >/dev/null || { [ "$$(id -u)" = 0 ] && echo "installing promtool (prometheus) with apt-get" && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null; } \
		|| { echo "install Debian's prometheus package (apt-get install prometheus) for promtool"; exit 1; }

test: $(VENV)/.installed stack chromium nginx
	DJANGO_SETTINGS_MODULE=project.settings.test $(VENV)/bin/pytest

bench: $(VENV)/.installed stack nginx
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null; } \
		|| { echo "install wrk (apt-get install wrk) to run the benchmark"; exit 1; }
	DJANGO_SETTINGS_MODULE=project.settings.bench $(PY) -m bench

# Fault injection under a steady mixed load: each scenario's guarantee checked (docs/operations.md,
# "Chaos suite"). CHAOS_ONLY=name,name picks scenarios, CHAOS_SECONDS how long a fault is held.
chaos: $(VENV)/.installed stack
	DJANGO_SETTINGS_MODULE=chaos.settings $(PY) -m chaos

# nginx (deploy/nginx.conf) over two app servers on loopback; one is stopped (SIGTERM, then another
# SIGKILLed) under a GET load, and no GET may fail. Uses the bench settings and databases.
lb-demo: $(VENV)/.installed stack nginx
	deploy/lb-demo

# Redis Sentinel for the state Redis: its own master, replica and three Sentinels under /tmp (never the
# stack's state Redis), the app on them under load; the master is SIGKILLed, then two SENTINEL FAILOVERs.
sentinel-demo: $(VENV)/.installed stack
	$(PY) deploy/sentinel_demo.py

# The state Redis as a Redis Cluster: three masters with a replica each and a broker Redis, its own, under
# /tmp; the app on them under load; one master is SIGKILLed and the cluster fails over.
cluster-demo: $(VENV)/.installed stack
	$(PY) deploy/cluster_demo.py

# Move about a third of the logical shards onto the local stack's third shard, online, beside a serving
# `make run` (local settings configure shard_2 in every process; the seeded map uses two shards).
# reshard refuses to switch while a running process does not know shard_2, and names it.
add-shard: $(VENV)/.installed stack
	$(PY) manage.py migrate_all
	$(PY) manage.py reshard plan --to shard_2 --apply

lint: $(VENV)/.installed promtool
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	DJANGO_SETTINGS_MODULE=project.settings.test $(PY) manage.py makemigrations --check --dry-run
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts_test.yml

clean:
	scripts/stack destroy
	rm -rf $(VENV)
