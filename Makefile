# One virtualenv for the library, its tests, the example app and the benchmarks.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APP := examples/roadmap_app
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench docs clean

$(STAMP): pyproject.toml $(wildcard $(APP)/pyproject.toml)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench]' \
		$(if $(wildcard $(APP)/pyproject.toml),-e '$(APP)[test]')
	touch $@

install: $(STAMP)

test: install  ## the whole suite, on embedded servers unless LOOPSAFE_TEST_*_URL are set
	@# PYTEST_ARGS passes extra pytest options, e.g. PYTEST_ARGS='-k fork -x'
	@# LOOPSAFE_TEST_TIER=full adds the slow tier (the fault suite, schemathesis's full budget, the
	@# demo, the adoption guide's app, the browser tour, shared-loop workers served), as CI does
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install  ## the roadmap app end to end on embedded PostgreSQL + Redis
	$(BIN)/python -m roadmap_app demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src
	$(BIN)/mypy

bench: install
	for bench in benchmarks/bench_*.py; do $(BIN)/python $$bench || exit 1; done

$(VENV)/.docs-installed: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[docs]'
	touch $@

docs: $(VENV)/.docs-installed  ## the documentation site in docs/_build/html; any warning fails
	$(BIN)/python -m sphinx -b html -n -W --keep-going -q docs docs/_build/html

clean:
	rm -rf $(VENV) .venv-* .pytest_cache .mypy_cache .ruff_cache docs/_build docs/benchmarks.md
