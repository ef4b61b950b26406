"""benches/growth.py still runs: a tiny volume through every contender (no timing checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

GROWTH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benches", "growth.py")


def test_growth_bench_fills_every_contender_and_scans(tmp_path):
    out = subprocess.run([sys.executable, GROWTH, "--size", "20000", "--batch", "1000",
                          "--json", str(tmp_path / "growth.json"), "--workdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads((tmp_path / "growth.json").read_text())
    assert set(data["steps"]) == {"rdirdb plain", "rdirdb writemap", "C loop plain", "C loop writemap"}
    for name, samples in data["samples"].items():
        assert [step["records"] for step in samples[0]["steps"]] == list(range(2000, 20001, 2000)), name
        assert samples[0]["disk_bytes"] > 0
    for name in ("rdirdb plain", "rdirdb writemap"):
        sample = data["samples"][name][0]
        assert sample["listed"] > 0 and sample["fetch_seconds"] > 0  # it fetched all 20,000 (checked inside)
    assert "== insert, records/s per tenth (20,000 records" in out.stdout
    assert not [d for d in os.listdir(tmp_path) if d.startswith("rdirdb-growth-")]  # stores removed
