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
		--loop uvloop --http httptools --ws websockets-sansio --lifespan on --no-access-log

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The suite runs on PostgreSQL: this machine's (127.0.0.1:5432, user postgres) unless
# DATABASE_URL names another (echo_site/pytest_environment.py); each run makes and
# drops a test database of its own (one per pytest-xdist worker). Three workers on
# two cores: the suite mostly waits on servers, subprocesses and the browser
# (measured: 4 min 42 s with three, 5 min with two. On 2026-11-27, 235 s with three
# and 221 s and 245 s with four: within the noise.) The files with slow tests run first
# (tests/conftest.py): --no-loadscope-reorder keeps that order, where xdist would
# otherwise send the files with the most tests first and leave a one-test fuzzer for
# the end, run by one worker while the others have stopped (measured on a slower
# machine: 342-380 s with the reorder, 300 s without, the workers ending within a second).
# Each worker imports every test module, and pytest rewrites the asserts of the tests and
# of its plugins' packages: with PYTHONDONTWRITEBYTECODE set (as on this machine) nothing
# of that is kept, and every worker compiles it all again, every run. The suite keeps its
# bytecode (in __pycache__, ignored by git): measured on a clean clone, the three workers
# were ready in 25.8 s instead of 32.3, and in 18.3 s on the next run.
TEST_WORKERS ?= 3
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
PYTEST := env -u PYTHONDONTWRITEBYTECODE ECHO_ENV=test $(BIN)/pytest
test: install-dev lint
	$(PYTEST) tests examples/echo-shout-plugin/tests $(XDIST)

test-fast: install-dev
	$(PYTEST) tests examples/echo-shout-plugin/tests -m "not slow" $(XDIST)

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# `make bench`: Echo beside the bare forwarder (the floor) and LiteLLM's proxy, measured
# in one interleaved run; writes bench/results/latest.md and .json (docs/BENCHMARKS.md).
# BENCH_ARGS="--quick" for a short run, "--skip-litellm" to leave LiteLLM out. LiteLLM is
# installed in its own environment (var/bench/litellm-venv), wrk from Debian.
BENCH_ARGS ?=
BENCH_INSTALLED := $(VENV)/.installed-bench
$(BENCH_INSTALLED): $(INSTALLED) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $(BENCH_INSTALLED)

bench: $(BENCH_INSTALLED)
	@command -v wrk >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get install -y wrk || { apt-get update && apt-get install -y wrk; }; \
		else echo "wrk is missing: run 'sudo apt-get install -y wrk', then make bench" >&2; exit 2; fi; }
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var
