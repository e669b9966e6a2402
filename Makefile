# fsstream developer entry points. `make demo` runs the job end to end on a local
# broker; `make test` installs everything and runs lint, types and the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint unit lock

$(BIN)/fsstream: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
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
	$(BIN)/pytest -q -m "not integration"

# Re-resolve every dependency to its newest allowed version and pin the result.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet '.[dev]'
	{ head -n 2 constraints.txt; .lock-venv/bin/pip freeze --exclude fsstream; } > constraints.new
	mv constraints.new constraints.txt
	rm -rf .lock-venv
