"""MDB_WRITEMAP environments: round trips, map growth, blocks reserved ahead, plumbing."""

from __future__ import annotations

import os

import pytest

from rdirdb import Environment, RdirClient
from rdirdb.rdir.store import Store

CHUNK = {"container_id": "A" * 64, "content_id": "B" * 32, "mtime": 1_700_000_000, "path": "obj",
         "version": 1}


def _records(n: int, start: int = 0) -> list[tuple]:
    return [("%064X" % (i % 7), "B" * 32, "%064X" % i, i, "p" * 100, 1) for i in range(start, start + n)]


def _data_file(env: Environment) -> os.stat_result:
    return os.stat(os.path.join(env.path, "data.mdb"))


def _used(env: Environment) -> int:
    return (env.info()["last_pgno"] + 1) * env.stat()["psize"]


def test_writemap_round_trips_and_reopens_without_it(tmp_path):
    with Environment(tmp_path / "e", databases=["t"], writemap=True) as env:
        assert env.writemap
        with env.begin(write=True) as txn:
            txn.put(b"k", b"v", db="t")
        with env.begin() as txn:
            assert txn.get(b"k", db="t") == b"v"
    with Environment(tmp_path / "e", databases=["t"]) as env, env.begin() as txn:
        assert not env.writemap
        assert txn.get(b"k", db="t") == b"v"
    with Environment(tmp_path / "e", databases=["t"], writemap=True, readonly=True) as env:
        assert not env.writemap  # a read-only map is never writable
        with env.begin() as txn:
            assert txn.get(b"k", db="t") == b"v"


def test_writemap_map_grows_for_small_transactions(tmp_path):
    with Environment(tmp_path / "g", databases=["t"], map_size=64 << 10, writemap=True) as env:
        for i in range(2000):
            with env.begin(write=True) as txn:
                txn.put(b"%06d" % i, b"x" * 1000, db="t")
        assert env.stat("t")["entries"] == 2000
        assert env.map_size > 64 << 10
        # The data file follows the map (LMDB sizes it so), sparse past the reserve.
        assert _data_file(env).st_size == env.map_size


def test_writemap_engine_batch_replays_after_growing_the_map(tmp_path):
    with Store(tmp_path, map_size=64 << 10, writemap=True) as store:
        chunks = store.volume("v", create=True).chunks
        assert chunks.put_batch(_records(5000)) == 5000
        assert store.volume("v").env.map_size > 64 << 10
    with Store(tmp_path) as store:  # reopened without writemap: everything is there
        chunks = store.volume("v").chunks
        assert chunks.count() == 5000
        page, truncated, _ = chunks.fetch(limit=10)
        assert len(page) == 10 and truncated


def test_writemap_allocates_blocks_ahead_of_the_pages_in_use(tmp_path):
    with Store(tmp_path, map_size=256 << 20, writemap=True) as store:
        volume = store.volume("v", create=True)
        volume.chunks.put_batch(_records(20_000))
        env = volume.env
        used = _used(env)
        volume.chunks.put_batch(_records(1, 20_000))  # a write transaction reserves first
        st = _data_file(env)
        # Blocks for the pages in use and as much again ahead (up to 64 MiB)...
        assert st.st_blocks * 512 >= 2 * used
        # ...but the file, as long as the map, stays sparse.
        assert st.st_size == 256 << 20
        assert st.st_blocks * 512 < st.st_size // 2


def test_a_copy_of_a_writemap_store_holds_only_the_pages_in_use(tmp_path):
    with Store(tmp_path / "s", map_size=256 << 20, writemap=True) as store:
        volume = store.volume("v", create=True)
        volume.chunks.put_batch(_records(5000))
        volume.env.copy(tmp_path / "copy")
        used = _used(volume.env)
    copied = os.stat(tmp_path / "copy" / "data.mdb")
    assert copied.st_size <= used
    with Environment(tmp_path / "copy", databases=["chunk_bin", "chunk_text", "admin"],
                     readonly=True) as env:
        assert env.stat("chunk_bin")["entries"] == 5000


@pytest.mark.parametrize("value, expected", [(True, True), ("yes", True), ("false", False), (0, False)])
def test_client_conf_db_writemap(tmp_path, value, expected):
    with RdirClient({"db_path": str(tmp_path), "db_writemap": value}) as client:
        client.chunk_push("vol", chunk_id="C" * 64, create=True, **CHUNK)
        assert client.backend.store.volume("vol").env.writemap is expected
        assert [chunk for _, chunk, _ in client.chunk_fetch("vol")] == ["C" * 64]


def test_writemap_is_on_by_default_when_commits_are_not_synced(tmp_path):
    for sync, writemap, expected in [(False, None, True), (True, None, False), (False, False, False),
                                     (True, True, True)]:
        with Store(tmp_path / f"{sync}-{writemap}", sync=sync, writemap=writemap) as store:
            assert store.volume("v", create=True).env.writemap is expected
    with RdirClient({"db_path": str(tmp_path / "client"), "db_sync": "no"}) as client:
        client.create("vol")
        assert client.backend.store.volume("vol").env.writemap


def _data_file_size(db_path: str) -> int:
    return os.path.getsize(os.path.join(db_path, "rawx", "vol", "data.mdb"))


@pytest.mark.parametrize("args, writemap", [((), False), (("--no-fsync",), True), (("--no-fsync", "--no-writemap"), False),
                                            (("--fsync",), False), (("--writemap",), True)])
def test_server_writemap_flag(tmp_path, args, writemap):
    pytest.importorskip("httptools")
    from tests.server.helpers import Server

    db_path = tmp_path / "db"
    db_path.mkdir()
    server = Server(str(db_path), *args, log_path=str(tmp_path / "server.log")).wait_ready()
    try:
        with RdirClient({"rdir_hosts": [f"{server.host}:{server.port}"]}) as client:
            client.chunk_push("vol", chunk_id="C" * 64, create=True, **CHUNK)
            assert [chunk for _, chunk, _ in client.chunk_fetch("vol")] == ["C" * 64]
    finally:
        server.stop()
    # With MDB_WRITEMAP, LMDB sizes the data file to the map (64 MiB), sparse.
    assert (_data_file_size(str(db_path)) == 64 << 20) is writemap
