"""The progress bar: rates of what it measures and of what it counts besides."""

from __future__ import annotations

import io

from rdirdb.progress import Progress


def test_a_byte_bar_shows_the_rate_of_the_records_it_counts():
    out = io.StringIO()
    with Progress(1000, "importing", unit="bytes", also="records", stream=out, force=True) as bar:
        bar.update(500)
        bar.count(20)
    last = out.getvalue().rstrip("\n").rsplit("\r", 1)[-1]
    assert "500/1,000" in last and "bytes/s" in last
    assert ", 20 records " in last and last.endswith("records/s")


def test_a_bar_draws_nothing_off_a_terminal():
    out = io.StringIO()
    with Progress(10, "indexing", stream=out) as bar:
        bar.update(10)
        bar.count(10)
    assert out.getvalue() == ""
