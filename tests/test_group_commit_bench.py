"""benches/group_commit.py still runs, on one volume and spread over several, and prints a
ratio per mode and connection count; no timing is checked."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

BENCHES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benches")
sys.path.append(BENCHES)  # after the package: no bench module shadows it
import group_commit  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


@pytest.mark.parametrize("volumes", [1, 3])
def test_the_bench_runs_and_prints_the_ratios(volumes):
    result = subprocess.run([sys.executable, os.path.join(BENCHES, "group_commit.py"), "--rounds", "1",
                             "--seconds", "1", "--workers", "1", "--connections", "2", "--volumes", str(volumes)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"1 workers, {volumes} volumes" in result.stdout
    assert re.search(r"^\s+2\s+[\d,]+\s+[\d,]+\s+\d\.\d\d$", result.stdout, re.M), result.stdout


def test_the_script_spreads_the_pushes_over_the_volumes():
    assert '"/v1/rdir/push?vol=wrk1"' in group_commit.push_script(1)
    script = group_commit.push_script(5)
    assert '"/v1/rdir/push?vol=wrk" .. math.random(1, 5)' in script and "wrk1" not in script
