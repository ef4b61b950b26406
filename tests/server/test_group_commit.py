"""Group commit (rdirdb.server.commit): writes that arrive together share one
transaction, each is answered after that commit, each stays all or nothing, and
with --fsync nothing acknowledged is lost to a SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
from typing import Any

import pytest

from rdirdb._lmdb import Environment
from rdirdb.rdir.store import Store
from rdirdb.server.app import Deferred, RdirApp, Response
from rdirdb.server.commit import GroupCommit
from tests.server.helpers import chunk_record, fetch_item, new_volume


def _post(path: str, vol: str, body: Any, *, method: str = "POST", last: bool = False) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    close = b"Connection: close\r\n" if last else b""
    return b"%s %s?vol=%s HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n%s" % (
        method.encode(), path.encode(), vol.encode(), close, len(data), data)


def _exchange(server, data: bytes) -> list[bytes]:
    """Send ``data`` in one write; the answers, split (the last request closes)."""
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return [b"HTTP/1.1 " + a for a in b"".join(chunks).split(b"HTTP/1.1 ")[1:]]


def _last_txnid(db_path: str, vol: str) -> int:
    env = Environment(os.path.join(db_path, "rawx", vol), create=False)
    try:
        return env.info()["last_txnid"]
    finally:
        env.close()


def test_pipelined_writes_share_one_commit_and_keep_their_own_answers(start_server):
    server = start_server()  # --fsync, the default
    config = server.request("GET", "/config").json
    assert (config["rdir.fsync"], config["rdir.writemap"], config["rdir.pretouch"]) == (True, False, False)
    vol = new_volume()
    assert server.request("POST", "/v1/rdir/create", {"vol": vol}).status == 201
    before = _last_txnid(server.db_path, vol)
    a, b, c = chunk_record(), chunk_record(), chunk_record()
    bad = dict(chunk_record(), mtime="yesterday")
    requests = b"".join([
        _post("/v1/rdir/push", vol, a),
        _post("/v1/rdir/push", vol, [b, bad]),  # refused whole: b is not written
        _post("/v1/rdir/push", "absent-" + vol, c),  # no such volume (no create)
        _post("/v1/rdir/push", vol, b"{not json"),
        _post("/v1/rdir/push", vol, c),
        _post("/v1/rdir/delete", vol, {"container_id": a["container_id"], "chunk_id": a["chunk_id"]},
              method="DELETE"),
        b"GET /v1/rdir/fetch?vol=%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % vol.encode(),
    ])
    answers = _exchange(server, requests)
    statuses = [int(answer.split(b" ")[1]) for answer in answers]
    assert statuses == [204, 400, 404, 400, 204, 204, 200]
    assert b"[mtime]" in answers[1]
    assert json.loads(answers[-1].partition(b"\r\n\r\n")[2]) == [fetch_item(c)]
    # the three writes that were accepted went to disk in one transaction
    assert _last_txnid(server.db_path, vol) == before + 1


def test_a_group_applies_its_requests_in_their_order(start_server):
    server = start_server("--no-fsync", "--pretouch")  # small groups on the event loop
    config = server.request("GET", "/config").json
    assert (config["rdir.fsync"], config["rdir.writemap"], config["rdir.pretouch"]) == (False, True, True)
    vol = new_volume()
    assert server.request("POST", "/v1/rdir/create", {"vol": vol}).status == 201
    rec = chunk_record(mtime=1)
    key = {"container_id": rec["container_id"], "chunk_id": rec["chunk_id"]}
    later = dict(rec, mtime=3)
    answers = _exchange(server, b"".join([
        _post("/v1/rdir/push", vol, rec),
        _post("/v1/rdir/delete", vol, key, method="DELETE"),
        _post("/v1/rdir/push", vol, dict(rec, mtime=2)),
        _post("/v1/rdir/push", vol, later),
        b"GET /v1/rdir/fetch?vol=%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % vol.encode(),
    ]))
    assert [a.split(b" ")[1] for a in answers] == [b"204"] * 4 + [b"200"]
    assert json.loads(answers[-1].partition(b"\r\n\r\n")[2]) == [fetch_item(later)]


class _FailingIndex:
    """An index whose group transactions fail, and whose ``apply`` fails for
    the batches listed in ``bad`` (a disk error, say, after validation)."""

    def __init__(self, index: Any, bad: list[Any]) -> None:
        self.index = index
        self.bad = bad
        self.groups = 0

    def apply_group(self, batches: list[Any], *, sync_meta: bool = True, more: Any = None) -> list[int]:
        group = batches + (more() if more else [])
        self.groups += bool(group)  # a durable worker's held group also begins an empty one
        if any(batch in self.bad for batch in group):
            raise OSError(5, "Input/output error")
        return self.index.apply_group(batches, sync_meta=sync_meta, more=more)

    def apply(self, batch: Any) -> int:
        if batch in self.bad:
            raise OSError(5, "Input/output error")
        return self.index.apply(batch)


@pytest.mark.parametrize(("inline_below", "defer_meta"), [(0, False), (5, False), (0, True)],
                         ids=["threaded", "on-the-loop", "durable"])
def test_a_failed_group_is_written_again_one_request_at_a_time(tmp_path, inline_below, defer_meta, caplog):
    store = Store(tmp_path, sync=defer_meta)
    volume = store.volume("v", create=True)
    records = [chunk_record() for _ in range(4)]
    batches = {}
    original = store.prepare_write

    def prepare(*args: Any, **kwargs: Any) -> Any:
        vol, batch = original(*args, **kwargs)
        batches[len(batches)] = batch
        return vol, batch

    store.prepare_write = prepare  # type: ignore[method-assign]

    async def run() -> list[Response]:
        app = RdirApp(store, committer=GroupCommit(inline_below=inline_below, defer_meta=defer_meta))
        deferred = [app.handle("POST", "/v1/rdir/push", "vol=v", json.dumps(rec).encode()) for rec in records]
        assert all(isinstance(d, Deferred) and d.response is None for d in deferred)
        volume.index = failing = _FailingIndex(volume.index, [batches[1]])
        answers: list[asyncio.Future[Response]] = []
        for d in deferred:
            future = asyncio.get_running_loop().create_future()
            d.then(future.set_result)
            answers.append(future)
        result = list(await asyncio.gather(*answers))
        await app.committer.close()  # type: ignore[union-attr]
        assert failing.groups == 1
        return result

    answers = asyncio.run(run())
    assert [a.status for a in answers] == [204, 500, 204, 204]
    assert json.loads(answers[1].body)["message"] == "Backend error: [Errno 5] Input/output error"
    assert "push to 'v' failed" in caplog.text
    stored = {rec[2] for rec in volume.chunks.fetch()[0]}
    assert stored == {records[i]["chunk_id"] for i in (0, 2, 3)}
    store.close()


def test_without_a_committer_writes_are_answered_at_once(tmp_path):
    with Store(tmp_path, sync=False) as store:
        app = RdirApp(store)
        app.handle("POST", "/v1/rdir/create", "vol=v", b"")
        answer = app.handle("POST", "/v1/rdir/push", "vol=v", json.dumps(chunk_record()).encode())
        assert isinstance(answer, Response) and answer.status == 204


def _server_pids(server) -> list[int]:
    with open(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children") as f:
        return [server.proc.pid, *map(int, f.read().split())]


def test_acknowledged_writes_survive_a_sigkill_of_every_process(start_server):
    server = start_server("--service-id", "svc", "--fsync", workers=2)
    vol = new_volume()
    assert server.request("POST", "/v1/rdir/create", {"vol": vol}).status == 201
    acked: list[dict] = []
    stop = threading.Event()

    def writer() -> None:  # one keep-alive connection, one record per request
        sock = socket.create_connection((server.host, server.port), timeout=10)
        try:
            while not stop.is_set():
                rec = chunk_record()
                sock.sendall(_post("/v1/rdir/push", vol, rec))
                answer = sock.recv(65536)
                if not answer:
                    return
                assert answer.startswith(b"HTTP/1.1 204 "), answer
                acked.append(rec)
        except OSError:  # killed mid-request: that one was not acknowledged
            return
        finally:
            sock.close()

    threads = [threading.Thread(target=writer) for _ in range(16)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acked) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in _server_pids(server):  # no process gets to flush or close anything
        os.kill(pid, signal.SIGKILL)
    server.wait_exit()
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acked) >= 300

    again = start_server("--service-id", "svc", "--fsync", db_path=server.db_path)
    items = again.request("GET", "/v1/rdir/fetch", {"vol": vol, "max": 100000}).json
    stored = {item[0] for item in items}
    assert [r for r in acked if fetch_item(r)[0] not in stored] == []


class _SyncCounter:
    """A volume's environment that counts its syncs."""

    def __init__(self, env: Environment) -> None:
        self.env = env
        self.syncs = 0

    def info(self) -> dict[str, int]:
        return self.env.info()

    def sync(self) -> None:
        self.syncs += 1
        self.env.sync()


def _late(store: Store, volume: Any, n: int, held: Any = None) -> Any:
    """A _Late of ``n`` requests waiting for ``volume`` (a running loop's)."""
    from rdirdb.server.commit import _Late

    commit = GroupCommit(defer_meta=True)
    commit._pending[volume] = ([store.prepare_write("v", "rawx", [chunk_record()])[1] for _ in range(n)],
                               [lambda result: None] * n)
    return _Late(commit, volume, held, asyncio.get_running_loop())


def test_a_durable_group_is_on_disk_after_the_next_commit_or_a_sync(tmp_path):
    from rdirdb.server.commit import _commit_deferred

    async def run() -> None:
        groups, results, held, failed = _commit_deferred([_late(store, volume, 3)], {})
        assert [len(batches) for _, batches, _ in groups] == [3]
        assert results == [[1, 1, 1]] and failed == {} and counter.syncs == 0
        assert held == {volume: counter.info()["last_txnid"]}
        # the next group's commit flushed its data pages, and the meta page of the first
        groups, results, held, failed = _commit_deferred([_late(store, volume, 2)], held)
        assert results == [[1, 1]] and failed == {} and counter.syncs == 0
        # nothing committed after the second group: its meta page needs a sync
        assert _commit_deferred([], held) == ([], [], {}, {}) and counter.syncs == 1

    with Store(tmp_path, sync=True) as store:
        volume = store.volume("v", create=True)
        volume.env = counter = _SyncCounter(volume.env)  # type: ignore[assignment]
        asyncio.run(run())
        volume.env = counter.env
    with Store(tmp_path, sync=True) as store:
        assert store.volume("v").chunks.count() == 5


def test_a_held_group_is_answered_when_another_commit_came_after_it(tmp_path):
    """Another worker's commit, done while this one waited for the write lock,
    flushed the meta page of this worker's held group: it is answered before
    this worker's own commit is."""
    from rdirdb.server.commit import _commit_deferred

    answered: list[Any] = []

    async def run() -> None:
        _, results, held, _ = _commit_deferred([_late(store, volume, 1)], {})
        waiting = ([answered.append], results[0])
        late = _late(store, volume, 2, (held[volume], waiting))
        _commit_deferred([late], held)
        assert not late.released and counter.syncs == 0  # nothing came between: its own commit
        other = store.prepare_write("v", "rawx", [chunk_record()])[1]
        volume.index.apply(other)  # another worker's commit, synced
        late = _late(store, volume, 2, (held[volume], waiting))
        _commit_deferred([late], held)
        assert late.released and answered == [] and counter.syncs == 0
        await asyncio.sleep(0)  # the loop answers it
        assert answered == [1]

    with Store(tmp_path, sync=True) as store:
        volume = store.volume("v", create=True)
        volume.env = counter = _SyncCounter(volume.env)  # type: ignore[assignment]
        asyncio.run(run())
        volume.env = counter.env


def test_a_group_takes_its_late_requests_while_it_holds_the_write_lock(tmp_path):
    """``more`` of ``apply_group``: called once the transaction holds LMDB's
    write lock (another writer waits meanwhile); its batches join the commit."""
    with Store(tmp_path, sync=True) as store:
        volume = store.volume("v", create=True)
        first, late, other = (store.prepare_write("v", "rawx", [chunk_record()])[1] for _ in range(3))
        before = volume.env.info()["last_txnid"]
        writer = threading.Thread(target=volume.index.apply, args=(other,))

        def more() -> list[Any]:
            writer.start()
            writer.join(0.2)
            assert writer.is_alive()  # waiting for the lock this transaction holds
            return [late]

        assert volume.index.apply_group([first], more=more) == [1, 1]
        writer.join(10)
        assert volume.env.info()["last_txnid"] == before + 2  # the group's commit, then the writer's
        assert volume.chunks.count() == 3


def test_a_held_group_with_nothing_waiting_waits_for_the_write_lock_before_it_syncs(tmp_path):
    """A held volume with no request waiting begins a transaction: another
    worker's commit, holding the write lock meanwhile, flushes the held meta
    page (answered, no sync); with no other commit, the empty transaction
    writes nothing and the meta page is synced."""
    from rdirdb.server.commit import _commit_deferred

    answered: list[Any] = []
    locked = threading.Event()

    def other_worker() -> None:  # holds the write lock 0.3 s, then commits one record
        def more() -> list[Any]:
            locked.set()
            time.sleep(0.3)
            return []

        volume.index.apply_group([store.prepare_write("v", "rawx", [chunk_record()])[1]], more=more)

    async def run() -> None:
        _, results, held, _ = _commit_deferred([_late(store, volume, 1)], {})
        waiting = ([answered.append], results[0])
        writer = threading.Thread(target=other_worker)
        writer.start()
        assert locked.wait(10)
        started = time.monotonic()
        late = _late(store, volume, 0, (held[volume], waiting))
        groups, _, now, failed = _commit_deferred([late], held)
        assert time.monotonic() - started > 0.1  # it waited for the other commit
        writer.join(10)
        assert late.released and counter.syncs == 0 and failed == {}
        assert [dones for _, _, dones in groups] == [[]] and now == {}  # nothing new is held
        await asyncio.sleep(0)
        assert answered == [1]
        # no other commit: the empty transaction commits nothing, then a sync
        _, results, held, _ = _commit_deferred([_late(store, volume, 1)], {})
        txnid = held[volume]
        late = _late(store, volume, 0, (txnid, ([answered.append], results[0])))
        assert _commit_deferred([late], held)[2:] == ({}, {})
        assert not late.released and counter.syncs == 1 and counter.info()["last_txnid"] == txnid

    with Store(tmp_path, sync=True) as store:
        volume = store.volume("v", create=True)
        volume.env = counter = _SyncCounter(volume.env)  # type: ignore[assignment]
        asyncio.run(run())
        volume.env = counter.env
        assert volume.chunks.count() == 3


def test_the_durable_commit_thread_answers_each_request_and_stops_at_close(tmp_path):
    """With ``defer_meta``, one thread commits group after group; every request
    is answered with its own result, and ``close`` stops the thread once all
    are answered and on disk."""
    records = [chunk_record() for _ in range(40)]

    async def run() -> tuple[list[Any], GroupCommit]:
        commit = GroupCommit(defer_meta=True)
        answers: list[asyncio.Future[Any]] = []
        for i, record in enumerate(records):  # several turns of the loop, some while a commit runs
            volume, batch = store.prepare_write("v", "rawx", [record])
            future = asyncio.get_running_loop().create_future()
            commit.submit(volume, batch, future.set_result)
            answers.append(future)
            if i % 7 == 0:
                await asyncio.sleep(0.002)
        results = list(await asyncio.gather(*answers))
        await commit.close()
        return results, commit

    with Store(tmp_path, sync=True) as store:
        store.volume("v", create=True)
        results, commit = asyncio.run(run())
        assert results == [1] * len(records)
        assert commit._thread is not None and not commit._thread.is_alive()
    with Store(tmp_path, sync=True) as store:
        assert store.volume("v").chunks.count() == len(records)


def test_a_durable_worker_commits_several_volumes_at_once(tmp_path, monkeypatch):
    """Volumes are separate files: the durable commit thread commits (and flushes)
    the groups of several volumes together, each in a thread of its own. Each of
    four volumes' commits waits at a barrier of four: they meet only if all four
    run at once (one after the other, the barrier breaks and the requests fail)."""
    from rdirdb.server.commit import VOLUME_THREADS

    assert VOLUME_THREADS >= 4
    barrier = threading.Barrier(4, timeout=10)

    class _Meeting:
        def __init__(self, index: Any) -> None:
            self.index = index

        def apply_group(self, batches: list[Any], **kwargs: Any) -> Any:
            more = kwargs.get("more")
            if (batches or (more() if more else [])) and barrier.n_waiting < 4:
                barrier.wait()
            return self.index.apply_group(batches, **kwargs)

    async def run() -> list[Any]:
        commit = GroupCommit(defer_meta=True)
        answers: list[asyncio.Future[Any]] = []
        for name in names:  # one turn of the loop: one group per volume
            volume, batch = store.prepare_write(name, "rawx", [chunk_record()])
            future = asyncio.get_running_loop().create_future()
            commit.submit(volume, batch, future.set_result)
            answers.append(future)
        results = list(await asyncio.gather(*answers))
        await commit.close()
        return results

    names = ["a", "b", "c", "d"]
    with Store(tmp_path, sync=True) as store:
        for name in names:
            volume = store.volume(name, create=True)
            volume.index = _Meeting(volume.index)  # type: ignore[assignment]
        assert asyncio.run(run()) == [1] * 4
    with Store(tmp_path, sync=True) as store:
        assert [store.volume(name).chunks.count() for name in names] == [1] * 4


def test_a_failed_commit_thread_answers_what_is_queued_and_the_next_request_starts_another(
        tmp_path, monkeypatch, caplog):
    """A bug in the durable commit thread is logged and answers the requests it
    had not taken with the error (a 500, never a hang); the next request gets a
    new thread and is written."""
    import rdirdb.server.commit as commit_module

    real = commit_module._commit_deferred
    calls = 0

    def fail_once(lates: Any, held: Any, pool: Any = None) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in the commit thread")
        return real(lates, held, pool)

    monkeypatch.setattr(commit_module, "_commit_deferred", fail_once)

    async def push(commit: GroupCommit, record: Any) -> Any:
        volume, batch = store.prepare_write("v", "rawx", [record])
        future = asyncio.get_running_loop().create_future()
        commit.submit(volume, batch, future.set_result)
        return await asyncio.wait_for(future, 10)

    async def run() -> tuple[Any, Any]:
        commit = GroupCommit(defer_meta=True)
        first = await push(commit, chunk_record())
        await asyncio.sleep(0.05)  # the dead thread's end reaches the loop
        second = await push(commit, chunk_record())
        await commit.close()
        return first, second

    with Store(tmp_path, sync=True) as store:
        store.volume("v", create=True)
        first, second = asyncio.run(run())
        assert isinstance(first, RuntimeError)
        assert second == 1
        assert "the commit thread failed" in caplog.text
        assert store.volume("v").chunks.count() == 1
