# fsstream developer entry points. `make demo` runs the job end to end on a local
# broker; `make test` installs everything and runs lint, types and the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint unit

$(BIN)/fsstream: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/fsstream

demo: install
	$(BIN)/fsstream demo

lint: install
	$(BIN)/ruff check fsstream tests
	$(BIN)/ruff format --check fsstream tests
	$(BIN)/mypy

# pytest exits 5 when it collects nothing: a run that executes no test is a failure.
test: lint
	$(BIN)/fsstream kafka fetch
	$(BIN)/pytest -q -p no:cacheprovider --durations=15; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

unit: install
	$(BIN)/pytest -q tests/unit
