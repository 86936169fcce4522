# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-long soak fuzz lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bcrypt]'
	touch $(STAMP)

## Serve on the embedded default config (or CONFIG=path/to/file.yaml).
run: $(STAMP)
	$(BIN)/connectproxy run $(if $(CONFIG),--config $(CONFIG))

## The test suite (every test but the long soak), plus the lint and type checks.
test: $(STAMP) lint typecheck
	$(BIN)/pytest -q -m "not slow"

## The long runs CI adds: the 5,000-tunnel soak and 60 s of fuzzing per parser.
test-long: soak fuzz

soak: $(STAMP)
	$(BIN)/pytest -q -m slow -rP

fuzz: $(STAMP)
	$(BIN)/pip install --quiet atheris
	fuzz/run.sh $(or $(FUZZ_SECONDS),60)

lint: $(STAMP)
	$(BIN)/ruff check connectproxy tests
	$(BIN)/ruff format --check connectproxy tests

typecheck: $(STAMP)
	$(BIN)/mypy connectproxy

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
