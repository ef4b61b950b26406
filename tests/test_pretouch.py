"""Environment.pretouch and Environment(pretouch=True): the free pages that the next
writes reuse are faulted in writable ahead (MDB_WRITEMAP), without changing a byte.

The pages a call touched are read from /proc/<pid>/smaps: the dirty size of the
process's mapping of ``data.mdb`` (a page faulted in writable is marked dirty).
"""

from __future__ import annotations

import os

import pytest

from rdirdb import Environment
from rdirdb.errors import ClosedError
from rdirdb.rdir.store import Store
from tests.test_warm import pytestmark, smaps_bytes  # noqa: F401 (pytestmark: the same needs)

VALUE = os.urandom(1000)
N = 4000


def dirty(path: str) -> int:
    """Dirty bytes of this process's mappings of ``path``."""
    return smaps_bytes(path, ("Private_Dirty:", "Shared_Dirty:"))


def rewrite(env: Environment, start: int, step: int, value: bytes) -> None:
    """One write transaction changing every ``step``-th record: it frees the pages it copies."""
    with env.begin(write=True) as txn:
        for i in range(start, N, step):
            txn.put(b"%08d" % i, value, db="t")


def fill_and_free(path) -> dict[bytes, bytes]:
    """A volume whose free list holds pages, written back to disk (so mapped clean)."""
    with Environment(path, databases=["t"], writemap=True, sync=False) as env:
        with env.begin(write=True) as txn:
            for i in range(N):
                txn.put(b"%08d" % i, VALUE, db="t")
        for start in range(4):  # each frees the pages the one before copied
            rewrite(env, start, 7, VALUE[::-1])
        with env.begin() as txn:
            expected = {b"%08d" % i: txn.get(b"%08d" % i, db="t") for i in range(N)}
        env.sync()
    os.sync()
    return expected


def test_pretouch_maps_the_free_pages_writable_and_changes_nothing(tmp_path):
    expected = fill_and_free(tmp_path / "e")
    data = str(tmp_path / "e" / "data.mdb")
    with Environment(tmp_path / "e", databases=["t"], writemap=True, sync=False) as env:
        before = dirty(data)
        touched = env.pretouch()
        assert touched > 100  # the pages the last rewrites freed, and some past the end
        assert dirty(data) - before >= touched * env.stat()["psize"] * 9 // 10
        assert env.pretouch() == 0  # each page once: nothing was freed since
        rewrite(env, 5, 7, VALUE)
        expected.update({b"%08d" % i: VALUE for i in range(5, N, 7)})
        assert env.pretouch() > 0  # what that write freed
        with env.begin() as txn:
            assert {b"%08d" % i: txn.get(b"%08d" % i, db="t") for i in range(N)} == expected
    with Environment(tmp_path / "e", databases=["t"], readonly=True) as env, env.begin() as txn:
        assert {b"%08d" % i: txn.get(b"%08d" % i, db="t") for i in range(N)} == expected


def test_pretouch_respects_its_limit(tmp_path):
    fill_and_free(tmp_path / "e")
    with Environment(tmp_path / "e", databases=["t"], writemap=True, sync=False) as env:
        assert env.pretouch(max_pages=0) == 0
        assert 0 < env.pretouch(max_pages=5) <= 5
        assert 5 < env.pretouch(max_pages=10**6)  # the rest


def test_pretouch_does_nothing_without_writemap(tmp_path):
    fill_and_free(tmp_path / "e")
    with Environment(tmp_path / "e", databases=["t"], writemap=False, sync=False, pretouch=True) as env:
        assert not env.pretouching
        assert env.pretouch() == 0
        rewrite(env, 0, 3, VALUE)


def test_pretouch_of_a_closed_environment_raises(tmp_path):
    env = Environment(tmp_path / "e", databases=["t"], writemap=True)
    env.close()
    with pytest.raises(ClosedError):
        env.pretouch()


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_a_pretouching_environment_runs_a_thread_from_its_first_write_to_close(tmp_path):
    expected = fill_and_free(tmp_path / "e")
    data = str(tmp_path / "e" / "data.mdb")
    before = threads()
    env = Environment(tmp_path / "e", databases=["t"], writemap=True, sync=False, pretouch=True)
    assert env.pretouching and threads() == before  # none until a write
    with env.begin() as txn:
        txn.get(b"00000001", db="t")
    assert threads() == before  # a read is no write
    for start in range(3):
        rewrite(env, start, 11, VALUE)
        expected.update({b"%08d" % i: VALUE for i in range(start, N, 11)})
    assert threads() == before + 1
    with env.begin() as txn:
        assert {b"%08d" % i: txn.get(b"%08d" % i, db="t") for i in range(N)} == expected
    assert dirty(data) > 0
    env.close()  # stops and joins the thread
    assert threads() == before
    env.close()


def test_a_pretouching_environment_dropped_without_close_stops_its_thread(tmp_path):
    before = threads()
    env = Environment(tmp_path / "e", databases=["t"], writemap=True, sync=False, pretouch=True)
    rewrite(env, 0, 1, VALUE)
    assert threads() == before + 1
    del env
    assert threads() == before


def test_store_pretouch_reaches_its_volumes(tmp_path):
    with Store(tmp_path, sync=False, pretouch=True) as store:
        vol = store.volume("v", create=True)
        assert vol.env.pretouching
        vol.chunks.put_batch([("%064X" % i, "B" * 32, "%064X" % i, i, "p", 1) for i in range(1000)])
        assert vol.chunks.count() == 1000
    with Store(tmp_path, sync=False) as store:
        assert not store.volume("v").env.pretouching  # off by default
    with Store(tmp_path, sync=True, pretouch=True) as store:
        assert not store.volume("v").env.pretouching  # no MDB_WRITEMAP by default when synced
    with Store(tmp_path, sync=True, writemap=True, pretouch=True) as store:
        assert not store.volume("v").env.pretouching  # its flushes would write the touched pages


@pytest.mark.parametrize("args", [("--no-fsync", "--pretouch"), ("--fsync", "--writemap", "--pretouch")])
def test_a_server_with_pretouch_answers_what_it_wrote(tmp_path, args):
    pytest.importorskip("httptools")
    from rdirdb import RdirClient
    from tests.server.helpers import Server

    server = Server(str(tmp_path), *args, log_path=str(tmp_path / "server.log")).wait_ready()
    try:
        with RdirClient({"rdir_hosts": [f"{server.host}:{server.port}"]}) as client:
            for b in range(5):
                client.chunk_push_batch("vol", [
                    {"container_id": "%064X" % (i * 7919), "content_id": "B" * 32, "chunk_id": "%064X" % i,
                     "mtime": i, "path": "p", "version": 1} for i in range(b * 500, b * 500 + 500)], create=True)
                assert len(list(client.chunk_fetch("vol"))) == b * 500 + 500  # each batch seen at once
    finally:
        server.stop()
