# Berth: `make up` brings the platform up; `make test` runs the whole suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
BERTH := $(VENV)/bin/berth
PYTHON ?= python3

.PHONY: up down test lint unit integration test-postgres bench system venv images clean

up: system venv images
	$(BERTH) server start
	@ln -sf "$(abspath $(BERTH))" /usr/local/bin/berth 2>/dev/null && echo "berth CLI: /usr/local/bin/berth" || echo "berth CLI: $(abspath $(BERTH))"

down:
	$(BERTH) server stop

system:
	@bash scripts/ensure-system.sh

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

images: venv
	$(PY) -m berth.images

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

test: system venv images
	@bash scripts/ensure-system.sh --with-postgres
	$(MAKE) lint
	@bash scripts/run-tests.sh

# The store and API tests again, against a real PostgreSQL from the distro.
test-postgres: venv
	@url="$$(bash scripts/postgres-test-db.sh)"; \
	BERTH_DATABASE_URL="$$url" $(VENV)/bin/pytest -q -p no:cacheprovider -m store tests; rc=$$?; \
	bash scripts/postgres-drop-db.sh "$$url"; exit $$rc

bench: system venv images
	@command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null || echo "wrk unavailable: the load benchmark uses Python clients"
	$(PY) bench/run.py
	$(PY) bench/metering.py
	$(PY) bench/builds.py
	$(PY) bench/context_validation.py
	$(PY) bench/ingress_scale.py
	$(PY) bench/control_plane_scale.py
	$(PY) bench/swarm_deploy.py
	$(PY) bench/swarm_failures.py
	$(PY) bench/cert_issuance.py
	$(PY) bench/databases.py
	$(PY) bench/metrics_collect.py
	$(PY) bench/metrics_nginx_log.py
	@bash scripts/ensure-edge-candidates.sh
	$(PY) bench/edge_candidates.py
	$(PY) bench/edge_https.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
