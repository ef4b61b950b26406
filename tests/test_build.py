"""The build: a missing lmdb.h stops it with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_missing_lmdb_header_names_the_package(tmp_path):
    env = dict(os.environ, LMDB_INCLUDEDIR=str(tmp_path / "nowhere"))
    proc = subprocess.run(
        [sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("rdirdb: lmdb.h not found")
    assert "liblmdb-dev" in lines[-1]
    assert len(lines) == 1  # one line, not a wall of compiler errors
