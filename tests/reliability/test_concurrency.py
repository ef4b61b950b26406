"""Concurrency: writers on their own volumes and on one shared volume, readers
scanning at once (see tests/stress/concurrency.py)."""

from __future__ import annotations

import threading

import pytest

from rdirdb.rdir.store import Store
from tests.stress import concurrency


def test_writers_and_readers_processes(tmp_path):
    figures = concurrency.run(writers=3, readers=2, batches=40, size=30, workdir=str(tmp_path),
                              timeout=120)
    assert figures.errors == []
    assert figures.scans > 0
    assert figures.shared_file_mib > 1  # past the 1 MiB map: it was grown while shared


def test_hot_copies_during_writes(tmp_path):
    result = concurrency.hot_copy(copies=3, workdir=str(tmp_path))
    assert result.errors == []
    assert result.copies == 3 and result.during_writes > 0


def test_threads_share_one_volume(tmp_path):
    """Threads of one process write one environment while its map grows."""
    errors = []
    with Store(tmp_path, map_size=1 << 20) as store:
        chunks = store.volume("v", create=True).chunks

        def work(t):
            try:
                for b in range(30):
                    chunks.put_batch(concurrency._records(f"t{t}", b, 40))
                    chunks.fetch(limit=100)
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        records, truncated, _ = chunks.fetch(limit=100_000)
        assert len(records) == chunks.count() == chunks.status(limit=100_000)[0] == 4 * 30 * 40
        assert concurrency._whole_batches(records) == []


def test_read_only_open_of_a_volume_being_created(tmp_path):
    from rdirdb._lmdb import Environment
    from rdirdb.errors import NotFound

    # What a creator has done just before Environment.open_db(): data.mdb, no named databases.
    Environment(tmp_path / "rawx" / "vol", databases=()).close()
    with Store(tmp_path, readonly=True) as store:
        with pytest.raises(NotFound):
            store.volume("vol")


@pytest.mark.stress
@pytest.mark.timeout(900)
def test_writers_and_readers_long(tmp_path):
    figures = concurrency.run(writers=4, readers=3, batches=500, size=50, workdir=str(tmp_path))
    assert figures.errors == []
