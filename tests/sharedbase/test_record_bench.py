"""benches/sharedbase_record.py still runs: a few small batches, on its own tree and
split into parts (no timing checked; the bench asserts what it recorded)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
BENCH = ROOT / "benches" / "sharedbase_record.py"


def _bench(*args: str) -> str:
    out = subprocess.run([sys.executable, str(BENCH), "--ids", "3000", "--batch", "500", "--runs", "1", *args],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_record_bench_runs_against_a_tree():
    out = _bench("--against", str(ROOT / "src"))  # this tree on both sides
    assert "3,000 ids in batches of 500" in out
    for row in ("new call", "new transaction", "present call", "present transaction"):
        assert any(line.startswith(row) and line.rstrip().endswith("x") for line in out.splitlines()), row


def test_record_bench_splits_the_call():
    out = _bench("--parts")
    for part in ("facade", "native", "dict"):
        assert f"new {part}" in out and f"present {part}" in out
