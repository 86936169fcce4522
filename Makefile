# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# setup.py compiles the connection path with mypyc, in place: the extension modules sit beside
# their sources and are imported instead of them. They are rebuilt whenever a source changes, and
# when CONNECTPROXY_PURE_PYTHON=1 (no compiler needed) switches the build to plain Python.
BUILD := $(if $(CONNECTPROXY_PURE_PYTHON),pure,compiled)
BUILT := $(VENV)/.built-$(BUILD)
SOURCES := $(wildcard connectproxy/*.py) setup.py

.PHONY: run test suite test-pure test-long soak fuzz lint typecheck bench clean

# The install itself stays plain; compiling is $(BUILT)'s job, so it happens once.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	CONNECTPROXY_PURE_PYTHON=1 $(BIN)/pip install --quiet -e '.[test,bcrypt]'
	touch $(STAMP)

# The touch says the modules are built from the sources as they are now, also where the build
# reused an unchanged result (the stale-build guard in tests/conftest.py compares the times).
$(BUILT): $(STAMP) $(SOURCES)
	rm -f connectproxy/*.so $(VENV)/.built-*
	$(BIN)/python setup.py --quiet build_ext --inplace
	find connectproxy -name "*.so" -exec touch {} +
	touch $(BUILT)

## Serve on the embedded default config (or CONFIG=path/to/file.yaml).
run: $(BUILT)
	$(BIN)/connectproxy run $(if $(CONFIG),--config $(CONFIG))

## The test suite (every test but the long soak), plus the lint and type checks.
test: lint typecheck suite

suite: $(BUILT)
	$(BIN)/pytest -q -m "not slow"

## The suite once more on the plain-Python build, in a copy of the tree with a venv of its own,
## so the build for machines without a C compiler stays tested too.
test-pure:
	rm -rf build/pure && mkdir -p build/pure
	tar -c --exclude=./.venv --exclude=./build --exclude=./.git --exclude='*.so' . \
		| tar -x -C build/pure
	CONNECTPROXY_PURE_PYTHON=1 $(MAKE) -C build/pure suite

## The long runs CI adds: the 5,000-tunnel soak and 60 s of fuzzing per parser.
test-long: soak fuzz

soak: $(BUILT)
	$(BIN)/pytest -q -m slow -rP

fuzz: $(BUILT)
	$(BIN)/pip install --quiet atheris
	fuzz/run.sh $(or $(FUZZ_SECONDS),60)

# The benchmark driver and the fuzz targets are held to the same rules as the package: their
# figures and crashes are only worth something while their code is right.
LINTED := connectproxy tests bench fuzz

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

typecheck: $(STAMP)
	$(BIN)/mypy connectproxy bench fuzz

bench: $(BUILT)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info connectproxy/*.so .mypy_cache .pytest_cache .ruff_cache
