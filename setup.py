"""Build the Cython extensions in ext/ against the system liblmdb.

LMDB_INCLUDEDIR and LMDB_LIBDIR override where lmdb.h and liblmdb are found.
RDIRDB_DEBUG=1 builds with line tracing and assertions (for coverage and gdb).
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

EXT_DIR = "ext"
MODULES = ["_lmdb", "_rdir", "_shardmap"]


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

        debug = os.environ.get("RDIRDB_DEBUG") == "1"
        directives = {"language_level": 3, "embedsignature": True}
        if debug:
            directives.update(linetrace=True, boundscheck=True, wraparound=True)
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
        )
        super().finalize_options()


def extensions():
    include_dirs, library_dirs = _lmdb_paths()
    macros = [("CYTHON_TRACE", "1")] if os.environ.get("RDIRDB_DEBUG") == "1" else []
    return [
        Extension(
            f"rdirdb.{name}",
            [os.path.join(EXT_DIR, "rdirdb", f"{name}.pyx")],
            include_dirs=include_dirs + [os.path.join(EXT_DIR, "rdirdb")],
            library_dirs=library_dirs,
            libraries=["lmdb"],
            define_macros=macros,
            extra_compile_args=["-O2", "-UNDEBUG"],
        )
        for name in MODULES
    ]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
