# Two commands do all set-up on a fresh machine (Python 3.10+ and make):
#   make demo   serve the demo app on 127.0.0.1:8000 (Ctrl-C prints the shutdown report)
#   make test   lint, type-check, test (with the coverage floor) and build the docs
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXAMPLE ?= demo

.PHONY: demo test lint typecheck pytest docs bench bench-smoke clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m trio_background examples.$(EXAMPLE):app --bind 127.0.0.1:8000 --drain-timeout 10

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

test: lint typecheck pytest

# Benchmarks against the anchors (about 8 minutes on 2 cores): wrk from Debian
# when it can be installed, else bench/load.py; prints tables, writes JSON to
# bench/results/ and the plot to docs/_static/bench.png.
bench: $(STAMP)
	command -v wrk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq wrk) \
		|| echo "bench: no wrk; bench/load.py is used"
	$(PY) -m bench.run
	$(PY) -m bench.progress_cost
	$(PY) -m bench.durable

bench-smoke: $(STAMP)
	$(PY) -m bench.run --smoke

docs: $(STAMP)
	$(PY) -m sphinx -nW --keep-going -q -b html docs docs/_build/html

clean:
	rm -rf $(VENV) .coverage docs/_build
