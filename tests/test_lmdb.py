"""The LMDB handles: lifecycle, errors, map growth, threads."""

from __future__ import annotations

import threading
import time

import pytest

import rdirdb
from rdirdb import Environment, errors


@pytest.fixture
def env(tmp_path):
    with Environment(tmp_path / "env", databases=["t"], map_size=1 << 20) as e:
        yield e


def test_versions():
    major, minor, patch = rdirdb.lmdb_version()
    assert (major, minor) >= (0, 9)
    assert rdirdb.__version__.count(".") == 2


def test_public_names():
    assert {"Environment", "Transaction", "Cursor", "errors", "lmdb_version", "RdirClient",
            "SharedBase"} <= set(rdirdb.__all__)


def test_commit_on_success_abort_on_error(env):
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v", db="t")
    with pytest.raises(KeyError):
        with env.begin(write=True) as txn:
            txn.put(b"k", b"other", db="t")
            raise KeyError("boom")
    with env.begin() as txn:
        assert txn.get(b"k", db="t") == b"v"


def test_put_get_delete_cursor(env):
    with env.begin(write=True) as txn:
        for i in range(10):
            assert txn.put(b"%02d" % i, b"v%d" % i, db="t")
        assert not txn.put(b"00", b"x", db="t", overwrite=False)
        assert txn.delete(b"05", db="t")
        assert not txn.delete(b"05", db="t")
    with env.begin() as txn, txn.cursor(db="t") as cur:
        assert cur.set_range(b"04x")
        assert cur.item() == (b"06", b"v6")
        assert [k for k, _ in cur] == [b"06", b"07", b"08", b"09"]
        assert not cur.set_key(b"05")
        assert cur.key() is None
        assert cur.last() and cur.key() == b"09"
        assert cur.prev() and cur.key() == b"08"


def test_use_after_close_raises_clear_errors(env):
    txn = env.begin()
    cur = txn.cursor(db="t")
    env.close()
    assert env.closed and txn.closed and cur.closed
    with pytest.raises(errors.ClosedError, match="cursor is closed"):
        cur.first()
    with pytest.raises(errors.ClosedError, match="transaction is closed"):
        txn.get(b"k", db="t")
    with pytest.raises(errors.ClosedError, match="environment is closed"):
        env.begin()
    with pytest.raises(errors.ClosedError):
        env.info()
    # Double close is harmless, on every handle.
    env.close(), txn.abort(), cur.close()


def test_closing_a_transaction_closes_its_cursors(env):
    txn = env.begin()
    cur = txn.cursor(db="t")
    txn.abort()
    assert cur.closed
    with pytest.raises(errors.ClosedError):
        cur.key()


def test_handles_cannot_be_built_directly():
    with pytest.raises(TypeError):
        rdirdb.Transaction()
    with pytest.raises(TypeError):
        rdirdb.Cursor()


def test_map_grows_past_initial_size(tmp_path):
    with Environment(tmp_path / "g", databases=["t"], map_size=64 << 10) as env:
        value = b"x" * 1000
        for i in range(2000):  # small transactions: the map grows ahead of them
            with env.begin(write=True) as txn:
                txn.put(b"%06d" % i, value, db="t")
        assert env.stat("t")["entries"] == 2000
        assert env.map_size > 64 << 10


def test_oversized_transaction_is_aborted_and_can_be_replayed(tmp_path):
    def write_all(env):
        with env.begin(write=True) as txn:
            for i in range(200):
                txn.put(b"%06d" % i, b"x" * 1000, db="t")

    with Environment(tmp_path / "g", databases=["t"], map_size=64 << 10) as env:
        with pytest.raises(errors.MapFullError, match="run the transaction again"):
            write_all(env)
        assert env.stat("t")["entries"] == 0  # nothing of the aborted transaction
        while True:  # each failure doubles the map
            try:
                write_all(env)
                break
            except errors.MapFullError:
                pass
        assert env.stat("t")["entries"] == 200


def test_engine_batch_grows_map_itself(tmp_path):
    from rdirdb.rdir.store import Store

    with Store(tmp_path, map_size=64 << 10) as store:
        chunks = store.volume("v", create=True).chunks
        records = [("c%d" % (i % 7), "content", "chunk%06d" % i, i, "p" * 200, 1) for i in range(5000)]
        assert chunks.put_batch(records) == 5000
        assert chunks.count() == 5000


@pytest.mark.parametrize("sync", [True, False])
def test_a_group_that_fills_the_map_is_written_whole_once_it_grew(tmp_path, sync):
    """apply_group's writes and commit run in one stretch without the GIL; a full map in
    the middle aborts the whole group, grows the map and writes it again, once."""
    from rdirdb._rdir import encode_chunks
    from rdirdb.rdir.store import Store

    with Store(tmp_path, map_size=64 << 10, sync=sync) as store:
        volume = store.volume("v", create=True)
        batches = [encode_chunks([("c%d" % (i % 7), "content", "chunk%06d" % (b * 500 + i), i, "p" * 200, 1)
                                  for i in range(500)]) for b in range(6)]
        batches.insert(3, encode_chunks([("c0", "chunk000007")], key_only=True))
        grown = volume.env.map_size
        assert volume.index.apply_group(batches, sync_meta=sync) == [500, 500, 500, 1, 500, 500, 500]
        assert volume.env.map_size > grown
        assert volume.chunks.count() == 2999  # chunk000007 deleted, no record written twice


def test_unknown_database(env):
    with pytest.raises(ValueError, match="unknown database 'nope'"):
        with env.begin() as txn:
            txn.get(b"k", db="nope")


def test_wrong_key_type(env):
    with env.begin(write=True) as txn:
        with pytest.raises(TypeError, match="must be bytes"):
            txn.put("k", b"v", db="t")


def test_error_table_names_the_failing_call(tmp_path):
    bogus = tmp_path / "bogus"
    bogus.mkdir()
    (bogus / "data.mdb").write_bytes(b"not an lmdb file" * 1000)
    with pytest.raises(errors.LmdbError) as info:
        Environment(bogus)
    assert info.value.what == "mdb_env_open"
    assert isinstance(info.value, errors.InvalidError)


def test_readonly_environment_refuses_writes(tmp_path):
    Environment(tmp_path / "ro", databases=["t"]).close()
    with Environment(tmp_path / "ro", databases=["t"], readonly=True) as env:
        with pytest.raises(errors.LmdbReadOnlyError):
            env.begin(write=True)


def test_missing_environment_without_create(tmp_path):
    with pytest.raises(errors.LmdbFileNotFoundError):
        Environment(tmp_path / "absent", create=False)


def test_readers_progress_while_a_writer_inserts(tmp_path):
    """The GIL is released in LMDB loops: reader threads run during a large batch."""
    from rdirdb.rdir.store import Store

    with Store(tmp_path) as store:
        chunks = store.volume("v", create=True).chunks
        chunks.put_batch([("c", "x", "k%06d" % i, 1, "p", 1) for i in range(1000)])
        records = [("%064X" % i, "x", "%064X" % (i * 7), 1, "p" * 50, 1) for i in range(300_000)]
        reads = []
        done = threading.Event()

        def reader():
            while not done.is_set():
                page, _, _ = chunks.fetch(prefix="c|", limit=100)
                assert len(page) == 100
                reads.append(time.monotonic())

        thread = threading.Thread(target=reader)
        thread.start()
        start = time.monotonic()
        try:
            chunks.put_batch(records)
        finally:
            end = time.monotonic()
            done.set()
            thread.join()
        during = [t for t in reads if start < t < end]
        assert during, "no read completed while the batch was being written"


def test_backup_copy_is_consistent(tmp_path):
    with Environment(tmp_path / "src", databases=["t"]) as env:
        with env.begin(write=True) as txn:
            txn.put(b"k", b"v", db="t")
        env.copy(tmp_path / "copy")
    with Environment(tmp_path / "copy", databases=["t"], readonly=True) as copy, copy.begin() as txn:
        assert txn.get(b"k", db="t") == b"v"


def test_write_replays_a_full_map_a_bounded_number_of_times(tmp_path):
    """MAP_FULL in one place: the transaction is aborted, the map doubled, the write run again."""
    from rdirdb._lmdb import MAX_MAP_GROWTHS

    calls = []

    def fill(txn):
        calls.append(txn)
        for i in range(200):
            txn.put(b"%06d" % i, b"x" * 1000, db="t")
        return "written"

    with Environment(tmp_path / "g", databases=["t"], map_size=64 << 10) as env:
        assert env.write(fill) == "written"
        assert len(calls) > 1 and env.stat("t")["entries"] == 200

        def always_full(txn):
            calls.append(txn)
            raise errors.MapGrownError("mdb_put", -30792, "full again")

        calls.clear()
        with pytest.raises(errors.MapGrownError):
            env.write(always_full)
        assert len(calls) == MAX_MAP_GROWTHS + 1
        assert all(txn.closed for txn in calls)


def test_a_durable_environment_writes_zeros_ahead_of_its_pages(tmp_path):
    """Its commits' flushes rewrite blocks the data file has (no journal commit
    of a new size); an unsynced one has nothing to gain and writes none."""
    sizes = {}
    for sync in (True, False):
        path = tmp_path / str(sync)
        with Environment(path, databases=["t"], sync=sync) as env:
            for i in range(300):
                with env.begin(write=True) as txn:
                    txn.put(b"%06d" % i, b"x" * 200, db="t")
            used = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        with open(path / "data.mdb", "rb") as f:
            data = f.read()
        sizes[sync] = len(data) - used
        assert data[used:] == bytes(len(data) - used)  # zeros
    assert sizes[True] >= 64 << 10 and sizes[False] == 0
    with Environment(tmp_path / "True", databases=["t"]) as env:  # reopened: all there
        assert env.stat("t")["entries"] == 300
