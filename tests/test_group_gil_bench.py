"""benches/group_gil.py still runs and prints both medians and their ratio; no timing is checked."""

from __future__ import annotations

import os
import re
import subprocess
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benches", "group_gil.py")


def test_the_bench_runs_and_prints_the_ratio():
    result = subprocess.run([sys.executable, BENCH, "--groups", "5", "--group", "3"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "apply_group of 3 one-record batches" in result.stdout
    assert re.search(r"alone:\s+\d+ us", result.stdout) and re.search(r"Python thread:\s+\d+ us", result.stdout)
    assert re.search(r"ratio busy / alone:\s+\d+\.\d\d$", result.stdout, re.M), result.stdout
