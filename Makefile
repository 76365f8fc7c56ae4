# tidings: the two commands from a fresh clone are `make serve` and `make test`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help install serve editor game ticker test lint typecheck bench conformance clean sdk-suites

help:
	@echo "make serve   install what serving needs (Python packages only), then run the chat"
	@echo "             example (examples/chat) on http://127.0.0.1:8000"
	@echo "make editor  the same for the collaborative editor (examples/editor; needs npm)"
	@echo "make game    the multiplayer arena (examples/game)"
	@echo "make ticker  the market ticker (examples/ticker; needs npm for its chart)"
	@echo "make test    install everything (Python, npm, chromium), then run the whole test suite"
	@echo "             and centrifuge-python's own suite (needs port 8000 free)"
	@echo "make bench   run the benchmarks against the Node.js reference and write docs/benchmarks.md"

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "tidings needs Python >= 3.11 (set PYTHON=python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Serving needs the package alone: no test or benchmark tools, no Node.js (the chat
# example's page loads the centrifuge-js bundle that ships inside the package).
$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# The editor example also needs pycrdt (the examples extra) and its page's bundle from npm.
$(VENV)/.examples-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[examples]'
	touch $@ $(VENV)/.serve-installed

# Everything else: the test suite, the Redis broker, the load generator and the examples.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,redis,bench,examples]'
	touch $@ $(VENV)/.serve-installed $(VENV)/.examples-installed

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The example applications' browser bundles (esbuild, from npm), gitignored.
EDITOR_BUNDLE := examples/editor/static/dist/editor.js
TICKER_BUNDLE := examples/ticker/static/dist/chart.js

$(EDITOR_BUNDLE): node_modules/.installed $(wildcard examples/editor/src/*.js)
	npm run --silent build:editor

$(TICKER_BUNDLE): node_modules/.installed examples/ticker/chart-lib.mjs
	npm run --silent build:ticker

install: $(VENV)/.installed node_modules/.installed $(EDITOR_BUNDLE) $(TICKER_BUNDLE)

# Debian packages the tests drive: chromium for the browser tests (Playwright drives it and
# never downloads its own) and slowhttptest for the slow-header flood.
SYSTEM_PACKAGES := chromium slowhttptest

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else echo "note: install Debian's$$missing (sudo apt-get install$$missing) for the browser and flood tests"; fi; \
	fi

serve: $(VENV)/.serve-installed
	$(BIN)/tidings serve examples.chat.app:rt

editor: $(VENV)/.examples-installed $(EDITOR_BUNDLE)
	$(BIN)/tidings serve examples.editor.app:rt

game: $(VENV)/.serve-installed
	$(BIN)/tidings serve examples.game.app:rt

ticker: $(VENV)/.serve-installed $(TICKER_BUNDLE)
	$(BIN)/tidings serve examples.ticker.app:rt

lint: install
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

typecheck: install
	$(BIN)/mypy
	$(BIN)/mypy --strict --explicit-package-bases examples

# After pytest, centrifuge-python's own suite against `tidings serve` on port 8000 (~40 s,
# ~11 s of CPU; see sdk-suites below). PYTEST_ARGS narrows pytest only.
test: install system-deps lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)
	$(BIN)/python tests/sdk/run.py --only python

bench: install
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache

# WebSocket conformance: the Autobahn|Testsuite fuzzing client (Python 2.7, built once into
# .cache/autobahn) against a test-only echo route on the production stack and limits, cases
# 1-7, 9, 12 and 13 (~4 minutes). Fails on any result outside tests/conformance/allowlist.json;
# skips with a message when no Python 2.7 exists. Not part of `make test`.
conformance: install
	$(BIN)/python tests/conformance/run_autobahn.py

# The SDKs' own test suites against `tidings serve` (tests/sdk/tidings-sdk.toml, port 8000):
# centrifuge-python's unittest suite from its published sdist (pinned in tests/sdk/run.py,
# downloaded from PyPI into .cache/sdk), minus tests/sdk/excluded.txt; `make test` runs this
# part too. centrifuge-js' Jest suite is not published: it runs only with
# SDK_JS_SRC=<a centrifuge-js checkout with its node_modules>, and is reported as not run
# otherwise. Exits non-zero when a test that counts fails.
SDK_JS_SRC ?=
sdk-suites: install
	$(BIN)/python tests/sdk/run.py $(if $(SDK_JS_SRC),--js-src $(SDK_JS_SRC))
