# rdirdb: every target installs what it needs, so a fresh Debian/Ubuntu machine
# only runs `make demo` or `make test`. All targets are idempotent.

PYTHON ?= python3
PIP := $(PYTHON) -m pip
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := liblmdb-dev
STAMP := .make-installed
DEMO_ARGS ?=

.PHONY: all system-deps bench-deps install compile debug test demo bench compare growth clean distclean

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
	$(PIP) install -q "setuptools>=64" wheel "Cython>=3.0,<3.2"
	$(PIP) install -q --no-build-isolation -e ".[test,leveldb]"
	touch $(STAMP)

install: system-deps $(STAMP)

# The HTTP load generator of the server benchmarks.
bench-deps:
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk; }

compile: install
	$(PYTHON) setup.py -q build_ext --inplace

debug: install
	RDIRDB_DEBUG=1 $(PYTHON) setup.py -q build_ext --inplace --force

test: compile
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

demo: compile
	$(PYTHON) -m rdirdb demo $(DEMO_ARGS)

bench: compile bench-deps
	$(PYTHON) -m pytest benches --benchmark-only $(PYTEST_ARGS)
	$(PYTHON) benches/bench_server.py

compare: compile
	$(PYTHON) benches/compare.py

# A volume growing to 10M chunks next to a C loop over liblmdb; plots docs/growth.png.
growth: compile
	$(PYTHON) -c "import matplotlib" 2>/dev/null || $(PIP) install -q --no-build-isolation -e ".[bench]"
	$(PYTHON) benches/growth.py --plot docs/growth.png $(GROWTH_ARGS)

clean:
	rm -rf build src/rdirdb/*.so ext/rdirdb/*.c ext/rdirdb/*.html .pytest_cache

distclean: clean
	rm -rf $(STAMP) .hypothesis .benchmarks src/*.egg-info
