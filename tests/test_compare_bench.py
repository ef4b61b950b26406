"""benches/compare.py still runs: every section on a small volume (no timing checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

COMPARE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benches", "compare.py")


def test_compare_runs_every_section_and_every_contender(tmp_path):
    out = subprocess.run([sys.executable, COMPARE, "--n", "20000", "--reps", "1", "--clock", "cpu",
                          "--json", str(tmp_path / "c.json")],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads((tmp_path / "c.json").read_text())
    assert (data["n"], data["clock"]) == (20000, "cpu")
    rows = {row["label"]: row for row in data["rows"]}
    assert {row["section"] for row in data["rows"]} == {"insert_section", "scan_section", "compare_client"}
    for label in ("insert ceiling raw_insert (nosync)", "scan ceiling raw_scan", "ceiling raw_entries",
                  "client chunk_fetch, pages of 1,000", "client chunk_push_batch, numpy"):
        assert rows[label]["records_per_s"] > 0, label
    # Each measured path names its ceiling or baseline, and its target where it has one.
    assert "ceiling" in rows["insert rdirdb put_batch (nosync)"]["note"]
    assert "target >= 0.8x" in rows["insert rdirdb put_batch (nosync)"]["note"]
    assert "target >= 10x" in rows["client chunk_fetch, pages of 1,000"]["note"]
    assert "ceiling" in rows["client chunk_fetch, pages of 1,000"]["note"]
    assert not [d for d in os.listdir(tmp_path) if d.startswith("rdirdb-compare-")]  # stores removed
