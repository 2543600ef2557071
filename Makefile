# Echo: `make run` serves it on http://$(HOST):$(PORT); `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
INSTALLED := $(VENV)/.installed

.PHONY: install run test lint format bench clean

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet -e examples/echo-shout-plugin
	touch $(INSTALLED)

install: $(INSTALLED)

run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py sync_providers
	$(BIN)/python manage.py bootstrap_local
	$(BIN)/uvicorn echo_site.asgi:application --host $(HOST) --port $(PORT) \
		--loop uvloop --http httptools --ws websockets-sansio --lifespan on

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint
	ECHO_ENV=test $(BIN)/pytest tests examples/echo-shout-plugin/tests

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var
