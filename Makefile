# Echo: `make run` serves it on http://$(HOST):$(PORT); `make test` runs the whole suite,
# `make test-fast` all but the tests marked slow (servers, processes, browser, fuzzing).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Serving needs only the project's dependencies; the test tools (Playwright,
# schemathesis, the SDKs, ruff) come with `make test`, on top of them.
INSTALLED := $(VENV)/.installed
DEV_INSTALLED := $(VENV)/.installed-dev

.PHONY: install install-dev run test test-fast lint format bench clean

$(INSTALLED): pyproject.toml examples/echo-shout-plugin/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m pip install --quiet -e examples/echo-shout-plugin
	touch $(INSTALLED)

$(DEV_INSTALLED): $(INSTALLED) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(DEV_INSTALLED)

install: $(INSTALLED)

install-dev: $(DEV_INSTALLED)

run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py sync_providers
	$(BIN)/python manage.py bootstrap_local
	$(BIN)/uvicorn echo_site.asgi:application --host $(HOST) --port $(PORT) \
		--loop uvloop --http httptools --ws websockets-sansio --lifespan on

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The suite runs on PostgreSQL: this machine's (127.0.0.1:5432, user postgres) unless
# DATABASE_URL names another (echo_site/pytest_environment.py); each run makes and
# drops a test database of its own.
test: install-dev lint
	ECHO_ENV=test $(BIN)/pytest tests examples/echo-shout-plugin/tests

test-fast: install-dev
	ECHO_ENV=test $(BIN)/pytest tests examples/echo-shout-plugin/tests -m "not slow"

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var
