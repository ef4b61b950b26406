"""Disk full on the LMDB directory (a 2 MiB tmpfs; see tests/stress/diskfull.py)."""

from __future__ import annotations

import pytest

from rdirdb.errors import DiskFullError, LmdbIOError
from tests.stress import diskfull


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
    assert figures.error.startswith("mdb_txn_commit: ")
    assert figures.retries_failed == 3
    assert figures.reopened_while_full and figures.written_after_free


def test_disk_full_error_names_the_cause(tmp_path):
    figures = _run(True, tmp_path)
    assert figures.error_class == DiskFullError.__name__, figures.error
