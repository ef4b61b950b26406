# rdirdb: every target installs what it needs, so a fresh Debian/Ubuntu machine
# only runs `make demo` or `make test`. All targets are idempotent.

PYTHON ?= python3
PIP := $(PYTHON) -m pip
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := liblmdb-dev
STAMP := .make-installed
DEMO_ARGS ?=

.PHONY: all system-deps bench-deps install compile debug test test-debug demo bench compare clean distclean

all: compile

# System packages: the LMDB headers and library (skipped when already there or
# when LMDB_INCLUDEDIR points elsewhere).
system-deps:
	@if [ -z "$$LMDB_INCLUDEDIR" ] && [ ! -f /usr/include/lmdb.h ]; then \
		echo "rdirdb: installing $(APT_PACKAGES)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES); \
	fi

# The package, its build tools and its test extras, in the current environment.
$(STAMP): pyproject.toml setup.py | system-deps
	$(PIP) install -q "setuptools>=77" "Cython>=3.0,<3.2"
	$(PIP) install -q --no-build-isolation -e ".[test,leveldb]"
	touch $(STAMP)

install: system-deps $(STAMP)

# The HTTP load generator of the server benchmarks.
bench-deps:
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk; }

compile: install
	$(PYTHON) setup.py -q build_ext --inplace

# The debug build (bounds checks, assertions, warnings as errors) goes to a tree of
# its own, next to a copy of the Python sources: the release build in src/ stays.
DEBUG_TREE := build/debug-tree
NATIVE_TESTS := tests/test_lmdb.py tests/test_codec.py tests/test_batch.py tests/test_scan.py \
	tests/test_store.py tests/reliability/test_bad_input.py

debug: install
	rm -rf $(DEBUG_TREE) && mkdir -p $(DEBUG_TREE)
	cp -r src/rdirdb $(DEBUG_TREE)/ && rm -f $(DEBUG_TREE)/rdirdb/*.so
	RDIRDB_DEBUG=1 $(PYTHON) setup.py -q build_ext --build-lib $(DEBUG_TREE) --build-temp build/debug-temp

test-debug: debug
	PYTHONPATH=$(DEBUG_TREE) $(PYTHON) -m pytest $(NATIVE_TESTS) $(PYTEST_ARGS)

test: compile
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

demo: compile
	$(PYTHON) -m rdirdb demo $(DEMO_ARGS)

bench: compile bench-deps
	$(PYTHON) -m pytest benches --benchmark-only $(PYTEST_ARGS)
	$(PYTHON) benches/bench_server.py

compare: compile
	$(PYTHON) benches/compare.py

clean:
	rm -rf build src/rdirdb/*.so ext/rdirdb/*.c ext/rdirdb/*.html .pytest_cache

distclean: clean
	rm -rf $(STAMP) .hypothesis .benchmarks src/*.egg-info
