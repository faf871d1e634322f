# Two commands do all set-up on a fresh machine (Python 3.10+ and make):
#   make demo   serve the demo app on 127.0.0.1:8000 (Ctrl-C prints the shutdown report);
#               make demo BIND=0.0.0.0:9000 serves it elsewhere
#   make test   lint, type-check, test (with the coverage floor), build the docs, test the
#               lowest FastAPI/Starlette pyproject allows, build and check the sdist and wheel
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-examples
FLOOR := .floor
EXAMPLE ?= demo
BIND ?= 127.0.0.1:8000

.PHONY: demo test lint typecheck pytest test-floor dist docs bench bench-smoke chaos clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The demo needs only the examples extra (FastAPI, httpx, SQLAlchemy), not dev's
# docs, type checkers and browsers.
$(DEMO_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[examples]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(PY) -m trio_background examples.$(EXAMPLE):app --bind $(BIND) --drain-timeout 10

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy
	$(VENV)/bin/pyright --pythonpath $(PY)

# coverage starts before pytest, so it also measures what the plugin imports.
pytest: $(STAMP)
	./scripts/ensure-chromium
	./scripts/ensure-redis
	$(PY) -m coverage erase
	$(PY) -m coverage run -m pytest
	$(PY) -m coverage combine --quiet
	$(PY) -m coverage report

test: lint typecheck pytest test-floor dist

# The FastAPI tests on the lowest fastapi and starlette that pyproject.toml
# allows (scripts/floor-pins reads them), installed beside the venv's in
# $(FLOOR)/, which PYTHONPATH puts first. Their other needs come from the venv.
# FastAPI tests: the examples, the CLI's (its app is FastAPI) and every file that
# imports FastAPI, but the docs build, the browser and the benchmarks.
FLOOR_TESTS = tests/examples tests/conformance tests/upstream tests/test_cli.py \
	$(filter-out tests/test_docs.py tests/test_monitor_browser.py tests/test_bench_smoke.py, \
	$(shell grep -lE '^(from|import) (fastapi|trio_background\.fastapi)' tests/test_*.py))

$(FLOOR)/.installed: pyproject.toml $(STAMP)
	rm -rf $(FLOOR)
	$(PY) -m pip install --quiet --target $(FLOOR) --no-deps $$($(PY) scripts/floor-pins)
	touch $(FLOOR)/.installed

test-floor: $(FLOOR)/.installed
	PYTHONPATH=$(CURDIR)/$(FLOOR) $(PY) -m pytest -q -p no:cacheprovider $(FLOOR_TESTS)

# The sdist and wheel users get: built, checked by twine, and the wheel holds
# py.typed and no tests (scripts/check-dist); installed with only the testing
# extra in a fresh venv, it runs a user's pytest suite on the plugin's fixtures
# (scripts/check-testing-extra, about 10 s with a warm pip cache).
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --outdir dist . >/dev/null
	$(PY) -m twine check --strict dist/*
	$(PY) scripts/check-dist dist
	$(PY) scripts/check-testing-extra dist

# Benchmarks against the anchors (about 8 minutes on 2 cores): wrk from Debian
# when it can be installed, else bench/load.py; prints tables, writes JSON to
# bench/results/ and the plot to docs/_static/bench.png.
bench: $(STAMP)
	command -v wrk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq wrk) \
		|| echo "bench: no wrk; bench/load.py is used"
	$(PY) -m bench.run
	$(PY) -m bench.progress_cost
	$(PY) -m bench.monitor_poll
	$(PY) -m bench.durable
	$(PY) -m bench.cycles
	$(PY) -m bench.memory

# The fault suite (about 3 minutes): 50 seeded runs of real processes under load, each
# with one fault: in process (SIGKILL of the server or of a worker, signal storms, a
# second signal, a report that cannot be written) or durable (redis-server SIGKILLed
# and restarted, Redis made slow, a streaQ worker or the web process SIGKILLed);
# checked; prints the table that docs/reliability.rst shows, and fails if any run
# broke a rule. The durable runs need Debian's redis-server (./scripts/ensure-redis).
chaos: $(STAMP)
	./scripts/ensure-redis
	$(PY) -m bench.chaos --runs 50

bench-smoke: $(STAMP)
	$(PY) -m bench.run --smoke

docs: $(STAMP)
	$(PY) -m sphinx -nW --keep-going -q -b html docs docs/_build/html

clean:
	rm -rf $(VENV) .coverage docs/_build $(FLOOR) build dist
