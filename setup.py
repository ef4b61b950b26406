"""Build the Cython extensions in ext/ against the system liblmdb.

LMDB_INCLUDEDIR and LMDB_LIBDIR override where lmdb.h and liblmdb are found.
RDIRDB_DEBUG=1 builds with bounds checks, line tracing and assertions, and
compiler warnings as errors (``make test-debug`` runs the native tests on it).
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

EXT_DIR = "ext"
# The rdir engine is split by concern (docs/architecture.md); _ceiling is the
# benchmarks' ceiling, not part of the product.
MODULES = ["_lmdb", "_batch", "_encode", "_scan", "_count", "_repair", "_rdir", "_ceiling", "_shardmap"]
DEBUG = os.environ.get("RDIRDB_DEBUG") == "1"
DEBUG_C_DIR = os.path.join("build", "debug-c")
WARNINGS = ["-Wall", "-Wsign-compare"] + (["-Werror"] if DEBUG else [])


def _lmdb_paths():
    include_dirs = [os.environ["LMDB_INCLUDEDIR"]] if os.environ.get("LMDB_INCLUDEDIR") else []
    library_dirs = [os.environ["LMDB_LIBDIR"]] if os.environ.get("LMDB_LIBDIR") else []
    candidates = include_dirs or ["/usr/include", "/usr/local/include"]
    if not any(os.path.exists(os.path.join(d, "lmdb.h")) for d in candidates):
        where = include_dirs[0] if include_dirs else "/usr/include or /usr/local/include"
        sys.exit(
            f"rdirdb: lmdb.h not found in {where}. Install the LMDB headers "
            "(Debian/Ubuntu: apt-get install liblmdb-dev) or set LMDB_INCLUDEDIR/LMDB_LIBDIR."
        )
    return include_dirs, library_dirs


class BuildExt(build_ext):
    """build_ext that cythonizes on demand, with the usual debug knobs."""

    user_options = build_ext.user_options + [
        ("cython-always", None, "run cythonize() even if .c files are present"),
        ("cython-annotate", None, "produce a colorized HTML version of the Cython source"),
        ("cython-directives=", None, "Cython compiler directives"),
    ]
    boolean_options = build_ext.boolean_options + ["cython-always", "cython-annotate"]

    def initialize_options(self):
        super().initialize_options()
        self.cython_always = False
        self.cython_annotate = False
        self.cython_directives = None

    def finalize_options(self):
        # cythonize() first: setuptools annotates the Extension objects it is given.
        from Cython.Build import cythonize

        directives = {"language_level": 3, "embedsignature": True}
        if DEBUG:
            directives.update(linetrace=True, boundscheck=True, wraparound=True, initializedcheck=True)
        if self.cython_directives:
            for item in self.cython_directives.split(","):
                key, _, value = item.partition("=")
                directives[key.strip()] = value.strip()
        self.distribution.ext_modules[:] = cythonize(
            self.distribution.ext_modules,
            include_path=[EXT_DIR],
            compiler_directives=directives,
            annotate=self.cython_annotate,
            force=self.cython_always,
            quiet=True,
            # The debug build's C stays apart, so that it never stands in for the release build's.
            build_dir=DEBUG_C_DIR if DEBUG else None,
        )
        super().finalize_options()


def extensions():
    include_dirs, library_dirs = _lmdb_paths()
    macros = [("CYTHON_TRACE", "1")] if DEBUG else []
    return [
        Extension(
            f"rdirdb.{name}",
            [os.path.join(EXT_DIR, "rdirdb", f"{name}.pyx")],
            include_dirs=include_dirs + [os.path.join(EXT_DIR, "rdirdb")],
            library_dirs=library_dirs,
            libraries=["lmdb"],
            define_macros=macros,
            extra_compile_args=["-O2", "-UNDEBUG", *WARNINGS],
        )
        for name in MODULES
    ]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
