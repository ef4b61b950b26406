"""Group commit: the writes that arrive while a commit is flushed share the next one.

A worker validates and encodes each push or delete on its event loop
(:meth:`Store.prepare_write`: a bad request is answered at once and never joins
a group), then hands the batch to :class:`GroupCommit`. The batches waiting for
one volume are written in one transaction (``index.apply_group``), and each
request is answered when that transaction has committed, synced to disk when
the store syncs. A group is what one turn of the event loop received, or,
while a commit is running, what arrived meanwhile. A large group commits in a
thread of its own (LMDB's writes and its fsync release the GIL): the event loop
keeps reading requests meanwhile, and those form the next group, as in
PostgreSQL's and RocksDB's group commit. A group of fewer than ``inline_below``
requests commits on the loop itself: a short unsynced commit costs less than
the hand-over to a thread and back.

With ``defer_meta`` (a durable store), a group's commit flushes its data pages
but not its meta page (see ``Environment.write``): the next commit of the
volume, by this worker or another one, flushes its own data pages and puts that
meta page on disk too, so under load each commit costs one flush instead of
two. A group's requests are answered once a commit after it is done: another
worker's, seen when this worker's next commit gets LMDB's write lock (answered
then, while that commit flushes), or this worker's next one, or, when no
request is waiting, a sync of its meta page (as LMDB's MDB_NOMETASYNC, but no
acknowledged write waits on a commit that may never come). That next commit
takes the requests waiting for its volume only once it holds the write lock
(``more`` of ``index.apply_group``): those that arrived while the other
worker's commit held it join, instead of waiting for the commit after.

A group is all or nothing, and so is each request in it: if the group's
transaction fails (an engine or disk error: the input was checked before), it is
aborted and each of its requests is written again in a transaction of its own,
so each gets its own answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any, Callable, Union

from rdirdb._batch import Batch
from rdirdb.rdir.store import Volume

log = logging.getLogger("rdirdb.server")

Result = Union[int, Exception]  # records written (or found, for deletes), or why not
Done = Callable[[Result], None]
Group = tuple[Volume, list[Batch], list[Done]]


def _apply_alone(volume: Volume, batch: Batch) -> Result:  # meta page synced
    try:
        return volume.index.apply(batch)
    except Exception as exc:
        return exc


def commit_group(
    volume: Volume, batches: list[Batch], *, sync_meta: bool = True, more: Callable[[], list[Batch]] | None = None
) -> list[Result]:
    """Write ``batches``, then those ``more()`` returns once the transaction
    holds the write lock (see ``index.apply_group``), to ``volume`` in one
    transaction; if it fails, each in one of its own. The result of each
    batch, in order; never raises. ``sync_meta=False``: the group's meta page
    is on disk only after a later commit or ``env.sync()`` (see
    :meth:`Environment.write`)."""
    if len(batches) == 1 and sync_meta and more is None:
        return [_apply_alone(volume, batches[0])]
    try:
        return list(volume.index.apply_group(batches, sync_meta=sync_meta, more=more))
    except Exception:  # the transaction was aborted: nothing of the group is written
        return [_apply_alone(volume, batch) for batch in batches + (more() if more else [])]


def _commit_all(groups: list[Group]) -> list[list[Result]]:
    return [commit_group(volume, batches) for volume, batches, _ in groups]


Held = dict[Volume, int]  # volume: its last txnid once its unsynced group committed
Synced = dict[Volume, Exception]  # the volumes of Held whose sync failed
Waiting = tuple[list[Done], list[Result]]  # a held group: its requests and their results


def _committed_since(volume: Volume, txnid: int) -> bool:
    """Whether a commit after ``txnid`` is done: it flushed the meta page of ``txnid``."""
    try:
        return volume.env.info()["last_txnid"] > txnid
    except Exception:  # the environment is unusable: its sync, next, fails
        return False


class _Late:
    """The requests waiting for one volume, taken by its commit once it holds
    LMDB's write lock: those that arrived while another worker's commit held
    it join (memoized: a replayed transaction takes the same). Then, if a
    commit of another worker came after this worker's held group of the
    volume (``held``: its txnid and its requests), that group is on disk: it
    is answered at once, during this commit."""

    def __init__(self, commit: "GroupCommit", volume: Volume, held: tuple[int, Waiting] | None) -> None:
        self.commit, self.volume, self.held = commit, volume, held
        self.loop = asyncio.get_running_loop()
        self.taken: tuple[list[Batch], list[Done]] | None = None
        self.released = False

    def __call__(self) -> list[Batch]:
        if self.taken is None:
            self.taken = self.commit._take_volume(self.volume)
            if self.held is not None and _committed_since(self.volume, self.held[0]):
                self.released = True
                self.loop.call_soon_threadsafe(self.commit._release, self.volume, self.held[1])
        return self.taken[0]

    def group(self) -> Group:
        self()
        assert self.taken is not None
        batches, dones = self.taken
        return self.volume, batches, dones


def _commit_deferred(lates: list[_Late], held: Held) -> tuple[list[Group], list[list[Result]], Held, Synced]:
    """Commit the requests of ``lates`` leaving their meta pages unflushed,
    then make sure the commits of ``held`` are on disk: a later commit (of this
    worker or another one of the server, all durable) flushed its data pages
    after their meta page was written, or else a sync. Returns the results, the
    new held, and the held volumes whose sync failed; never raises."""
    results = [commit_group(late.volume, [], sync_meta=False, more=late) for late in lates]
    groups = [late.group() for late in lates]
    released = {late.volume for late in lates if late.released}
    failed: Synced = {}
    for volume, txnid in held.items():
        if volume in released or _committed_since(volume, txnid):
            continue
        try:
            volume.env.sync()
        except Exception as exc:
            failed[volume] = exc
    now: Held = {}
    for volume, _, _ in groups:
        try:
            now[volume] = volume.env.info()["last_txnid"]
        except Exception:  # the environment is unusable: its sync, next time, fails
            now[volume] = -1
    return groups, results, now, failed


class GroupCommit:
    """The write queue of one worker; ``submit`` from the event loop only."""

    def __init__(self, *, inline_below: int = 0, defer_meta: bool = False) -> None:
        self.inline_below = inline_below
        self._lock = threading.Lock()  # _pending: the commit thread takes late (see _Late)
        self.defer_meta = defer_meta  # a durable store: see the module's docstring
        self._held: dict[Volume, Waiting] = {}  # committed, meta not yet on disk
        self._held_txnids: Held = {}
        self._pending: dict[Volume, tuple[list[Batch], list[Done]]] = {}
        self._waiting = 0  # requests in _pending
        self._scheduled = False
        self._running: asyncio.Future[Any] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def submit(self, volume: Volume, batch: Batch, done: Done) -> None:
        """Write ``batch`` with the next group; ``done(result)`` is called on the
        event loop once its transaction committed (or failed)."""
        with self._lock:
            self._waiting += 1
            waiting = self._pending.get(volume)
            if waiting is None:
                self._pending[volume] = ([batch], [done])
            else:
                waiting[0].append(batch)
                waiting[1].append(done)
        if not self._scheduled and self._running is None:
            self._scheduled = True  # at the end of this turn of the loop: what it read joins
            asyncio.get_running_loop().call_soon(self._flush)

    def _take(self) -> list[Group]:
        with self._lock:
            groups = [(volume, batches, dones) for volume, (batches, dones) in self._pending.items()]
            self._pending = {}
            self._waiting = 0
        return groups

    def _take_volume(self, volume: Volume) -> tuple[list[Batch], list[Done]]:
        with self._lock:
            batches, dones = self._pending.pop(volume, ([], []))
            self._waiting -= len(batches)
        return batches, dones

    def _flush(self) -> None:
        self._scheduled = False
        if self._running is not None or not (self._pending or self._held):
            return
        if self.defer_meta:
            lates = [_Late(self, volume, (self._held_txnids[volume], self._held[volume]) if volume in self._held else None)
                     for volume in self._pending]  # the thread takes their requests
            running = self._run(_commit_deferred, lates, self._held_txnids)
            running.add_done_callback(self._committed_deferred)
            return
        inline = self._waiting < self.inline_below
        groups = self._take()
        if inline:
            _deliver(groups, _commit_all(groups))
            return
        self._run(_commit_all, groups).add_done_callback(lambda future: self._committed(groups, future))

    def _run(self, fn: Callable[..., Any], *args: object) -> asyncio.Future[Any]:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rdir-commit")
        running = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        self._running = running
        return running

    def _committed(self, groups: list[Group], future: asyncio.Future[list[list[Result]]]) -> None:
        self._running = None
        _deliver(groups, future.result())  # _commit_all never raises
        self._flush()  # what arrived during that commit

    def _committed_deferred(self, future: asyncio.Future[tuple[list[Group], list[list[Result]], Held, Synced]]) -> None:
        self._running = None
        groups, results, self._held_txnids, failed = future.result()  # _commit_deferred never raises
        for volume, (dones, outcome) in self._held.items():  # on disk now, unless their sync failed
            _deliver([(volume, [], dones)], [[failed[volume]] * len(outcome) if volume in failed else outcome])
        self._held = {volume: (dones, outcome) for (volume, _, dones), outcome in zip(groups, results) if dones}
        self._flush()  # what arrived during that commit, or the sync of this one

    def _release(self, volume: Volume, held: Waiting) -> None:
        """Answer ``held``, a group a later commit put on disk (see _Late)."""
        if self._held.get(volume) is held:
            del self._held[volume]
            _deliver([(volume, [], held[0])], [held[1]])

    async def close(self) -> None:
        """Commit what is waiting, then stop the thread (at shutdown, once no
        request can arrive any more)."""
        while self._running is not None or self._pending or self._held:
            if self._running is not None:
                await asyncio.wait([self._running])
                await asyncio.sleep(0)  # let _committed run
            else:
                self._flush()
        if self._executor is not None:
            self._executor.shutdown(wait=True)


def _deliver(groups: list[Group], results: list[list[Result]]) -> None:
    for (_, _, dones), outcome in zip(groups, results):
        for done, result in zip(dones, outcome):
            try:
                done(result)
            except Exception:  # a bug: the other requests still get their answers
                log.exception("answering a committed write failed")
