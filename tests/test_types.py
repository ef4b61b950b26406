"""The types hold: mypy (strict, pyproject.toml's [tool.mypy]) on src/, and
stubtest comparing the .pyi stubs with the native extensions as built."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXTENSIONS = ["_lmdb", "_batch", "_encode", "_scan", "_count", "_repair", "_rdir", "_ceiling", "_shardmap"]

pytest.importorskip("mypy")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_mypy_strict_on_src():
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_stubs_match_the_extensions():
    import rdirdb

    # The extensions of the rdirdb imported here (the release build, or the debug tree).
    result = _run("mypy.stubtest", "--ignore-disjoint-bases", "--allowlist",
                  str(ROOT / "tests" / "stubtest_allowlist.txt"),
                  *(f"rdirdb.{name}" for name in EXTENSIONS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert Path(rdirdb.__file__).parent.joinpath("_rdir.pyi").exists()
