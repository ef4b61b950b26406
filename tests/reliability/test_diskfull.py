"""Disk full on the LMDB directory (a 2 MiB tmpfs; see tests/stress/diskfull.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from rdirdb.errors import DiskFullError, LmdbIOError
from tests.stress import crash_harness, diskfull


def _run(sync, tmp_path):
    try:
        return diskfull.run(sync, str(tmp_path))
    except diskfull.MountNotPermitted as exc:
        pytest.skip(f"disk-full test needs a tmpfs mount (root): {exc}")


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "nosync"])
def test_disk_full_is_clean(tmp_path, sync):
    figures = _run(sync, tmp_path)
    assert figures.errors == []
    assert figures.acked > 0
    assert figures.error_class in (DiskFullError.__name__, LmdbIOError.__name__)
    # a durable volume writes zeros ahead of its pages (Environment.reserve): the
    # disk is full there, before a transaction wrote anything
    assert figures.error.startswith("pwrite: " if sync else "mdb_txn_commit: ")
    assert figures.retries_failed == 3
    assert figures.reopened_while_full and figures.written_after_free


def test_disk_full_error_names_the_cause(tmp_path):
    figures = _run(True, tmp_path)
    assert figures.error_class == DiskFullError.__name__, figures.error


_WRITEMAP_RUN = """
import dataclasses, json, sys
from tests.stress import diskfull
try:
    figures = diskfull.run(sys.argv[1] == "sync", sys.argv[2], writemap=True)
except diskfull.MountNotPermitted as exc:
    print(json.dumps({"skip": str(exc)}))
else:
    print(json.dumps(dataclasses.asdict(figures)))
"""


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "nosync"])
def test_disk_full_under_writemap_is_an_error_not_sigbus(tmp_path, sync):
    """With MDB_WRITEMAP, LMDB writes through the map into a sparse file, where a
    full disk would be a SIGBUS: run in a process of its own, so that one would
    fail this test, not kill the test run."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", _WRITEMAP_RUN, "sync" if sync else "nosync", str(tmp_path)],
                         cwd=root, env=crash_harness._env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"exit {out.returncode} ({signal.Signals(-out.returncode).name if out.returncode < 0 else ''}): {out.stderr[-2000:]}"
    figures = json.loads(out.stdout)
    if "skip" in figures:
        pytest.skip(f"disk-full test needs a tmpfs mount (root): {figures['skip']}")
    assert figures["errors"] == []
    assert figures["acked"] > 0
    assert figures["error_class"] == DiskFullError.__name__
    assert figures["error"].startswith("fallocate: ")
    assert figures["retries_failed"] == 3
    assert figures["reopened_while_full"] and figures["written_after_free"]
