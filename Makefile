# rdirdb: every target installs what it needs, so a fresh Debian/Ubuntu machine
# only runs `make demo` or `make test`. All targets are idempotent.

PYTHON ?= python3
PIP := $(PYTHON) -m pip
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := liblmdb-dev libxxhash-dev
STAMP := .make-installed
DEMO_ARGS ?=

.PHONY: all system-deps bench-deps install compile debug test test-debug demo bench compare growth \
	clean distclean peer-deps peer-test peer-constraints

all: compile

# System packages: the LMDB headers and library (skipped when already there or
# when LMDB_INCLUDEDIR points elsewhere).
system-deps:
	@if { [ -z "$$LMDB_INCLUDEDIR" ] && [ ! -f /usr/include/lmdb.h ]; } || [ ! -f /usr/include/xxhash.h ]; then \
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

# The HTTP load generator of the server benchmarks (and of their tests).
bench-deps:
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk; }

compile: install
	$(PYTHON) setup.py -q build_ext --inplace

# The debug build (bounds checks, assertions, warnings as errors) goes to a tree of
# its own, next to a copy of the Python sources: the release build in src/ stays.
DEBUG_TREE := build/debug-tree
NATIVE_TESTS := tests/test_lmdb.py tests/test_codec.py tests/test_batch.py tests/test_scan.py \
	tests/test_store.py tests/reliability/test_bad_input.py tests/sharedbase/test_objects.py \
	tests/sharedbase/test_record_model.py tests/repair/test_engine.py \
	tests/test_warm.py tests/test_pretouch.py  # the native threads of warm() and pretouch()

debug: install
	rm -rf $(DEBUG_TREE) && mkdir -p $(DEBUG_TREE)
	cp -r src/rdirdb $(DEBUG_TREE)/ && rm -f $(DEBUG_TREE)/rdirdb/*.so
	RDIRDB_DEBUG=1 $(PYTHON) setup.py -q build_ext --build-lib $(DEBUG_TREE) --build-temp build/debug-temp

test-debug: debug
	PYTHONPATH=$(DEBUG_TREE) $(PYTHON) -m pytest $(NATIVE_TESTS) $(PYTEST_ARGS)

test: compile bench-deps  # wrk: the benchmark tests drive servers with it
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

demo: compile
	$(PYTHON) -m rdirdb demo $(DEMO_ARGS)

bench: compile bench-deps
	$(PYTHON) -m pytest benches --benchmark-only $(PYTEST_ARGS)
	$(PYTHON) benches/bench_server.py

compare: compile
	$(PYTHON) benches/compare.py

# Winery's own test suite (swh-objstorage's, pinned) against rdirdb's SharedBase:
# see tests/peer/run_peer.py. Its virtualenv lives outside the tree, on the
# system interpreter, where the unprivileged user who runs the suite (initdb
# refuses root) can read it; one per checkout, and .venv-peer points to it.
SWH_OBJSTORAGE := swh-objstorage[testing,winery]==7.4.1
PEER_PYTHON ?= /usr/bin/python3
PEER_VENV ?= /var/tmp/rdirdb-peer-$(shell echo "$(CURDIR)" | md5sum | cut -c1-8)
PEER_USER ?= rdirdb-peer
PEER_MIN_PASSES ?= 291
# Builds psycopg's C module (libpq-dev) and systemd-python (libsystemd-dev);
# postgresql brings the pg_ctl that winery's fixtures start.
PEER_APT_PACKAGES := python3-venv python3-dev gcc pkg-config libpq-dev libsystemd-dev postgresql

peer-deps:
	@missing=$$(for p in $(PEER_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "rdirdb: installing" $$missing; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@id -u $(PEER_USER) >/dev/null 2>&1 || $(SUDO) useradd --system --no-create-home \
		--home-dir /nonexistent --shell /usr/sbin/nologin $(PEER_USER)

$(PEER_VENV)/.installed: tests/peer/constraints.txt | peer-deps
	rm -rf $(PEER_VENV)
	$(PEER_PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install -q -c tests/peer/constraints.txt "$(SWH_OBJSTORAGE)"
	touch $@

# rdirdb goes in as a user would install it: a wheel of this tree, with its pg
# extra. Then our interoperability tests, which need winery's SharedBase too.
peer-test: compile $(PEER_VENV)/.installed
	rm -rf .venv-peer && ln -s $(PEER_VENV) .venv-peer
	$(PEER_VENV)/bin/pip install -q -c tests/peer/constraints.txt ".[pg]"
	$(SUDO) $(PEER_VENV)/bin/python tests/peer/run_peer.py --user $(PEER_USER) \
		--min-passes $(PEER_MIN_PASSES) $(PEER_ARGS)
	RDIRDB_PEER_PYTHON=$(PEER_VENV)/bin/python $(PYTHON) -m pytest -p no:cacheprovider -q \
		tests/sharedbase/test_winery_interop.py

# After changing SWH_OBJSTORAGE: pin the new set of packages.
peer-constraints: peer-deps system-deps
	rm -rf $(PEER_VENV)
	$(PEER_PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install -q "$(SWH_OBJSTORAGE)" ".[pg]"
	{ sed -n '/^#/p' tests/peer/constraints.txt; \
	  $(PEER_VENV)/bin/pip freeze | grep -v '^rdirdb'; } > tests/peer/constraints.tmp
	mv tests/peer/constraints.tmp tests/peer/constraints.txt

# A volume growing to 10M chunks next to a C loop over liblmdb; plots docs/growth.png.
growth: compile
	$(PYTHON) -c "import matplotlib" 2>/dev/null || $(PIP) install -q --no-build-isolation -e ".[bench]"
	$(PYTHON) benches/growth.py --plot docs/growth.png $(GROWTH_ARGS)

clean:
	rm -rf build src/rdirdb/*.so ext/rdirdb/*.c ext/rdirdb/*.html .pytest_cache

distclean: clean
	rm -rf $(STAMP) .venv-peer $(PEER_VENV) .hypothesis .benchmarks src/*.egg-info
