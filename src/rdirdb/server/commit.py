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
then, while that commit flushes), or this worker's next one. A worker whose
group is held and has no request waiting still begins a transaction: it gets
the write lock once the other worker's commit (which flushed the held meta
page) is done, and takes what arrived meanwhile; only if neither happened, its
meta page is synced (as LMDB's MDB_NOMETASYNC, but no acknowledged write waits
on a commit that may never come). That next commit takes the requests waiting
for its volume only once it holds the write lock (``more`` of
``index.apply_group``): those that arrived while the other worker's commit held
it join, instead of waiting for the commit after. A durable worker's commits
run one after the other in a thread of their own, which starts the next one as
soon as one is done, without a turn of the event loop in between (each turn
ends by waking it); the event loop only queues requests and writes the answers
the thread hands it. When several volumes have a group (or a held one), their
commits run together, each in a thread of a pool of :data:`VOLUME_THREADS`:
volumes are separate files, so their flushes are on their way to the disk at
once instead of one after the other (docs/server.md, "Many volumes").

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

VOLUME_THREADS = 8  # a durable worker commits (and flushes) up to this many volumes at once
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
    is answered at once, on ``loop``, during this commit."""

    def __init__(self, commit: "GroupCommit", volume: Volume, held: tuple[int, Waiting] | None,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.commit, self.volume, self.held, self.loop = commit, volume, held, loop
        self.taken: tuple[list[Batch], list[Done]] | None = None
        self.released = False

    def __call__(self) -> list[Batch]:
        if self.taken is None:
            self.taken = self.commit._take_volume(self.volume)
            if self.held is not None and _committed_since(self.volume, self.held[0]):
                self.released = True
                dones, outcome = self.held[1]
                answered: list[Group] = [(self.volume, [], dones)]
                self.loop.call_soon_threadsafe(_deliver, answered, [outcome])
        return self.taken[0]

    def group(self) -> Group:
        self()
        assert self.taken is not None
        batches, dones = self.taken
        return self.volume, batches, dones


VolumeTurn = tuple[Group, list[Result], int | None, Exception | None]  # see _commit_volume


def _commit_volume(late: _Late, held_txnid: int | None) -> VolumeTurn:
    """One volume's turn in a durable worker's commit: commit the requests of
    ``late`` leaving its meta page unflushed, then make sure the held commit of the
    volume (``held_txnid``) is on disk: a later commit (this one, or another
    worker's, all durable) flushed its data pages after that meta page was
    written, or else a sync. Returns the group, its results, the txnid to hold
    (None: nothing was waiting) and the held commit's sync error; never raises."""
    volume = late.volume
    results = commit_group(volume, [], sync_meta=False, more=late)
    group = late.group()
    failed = None if held_txnid is None or late.released else _sync_held(volume, held_txnid)
    txnid = None
    if group[2]:  # requests were waiting: their meta page is held (else an empty transaction)
        try:
            txnid = volume.env.info()["last_txnid"]
        except Exception:  # the environment is unusable: its sync, next time, fails
            txnid = -1
    return group, results, txnid, failed


def _sync_held(volume: Volume, txnid: int) -> Exception | None:
    """Put the held commit ``txnid`` of ``volume`` on disk unless a later commit did;
    the sync's error, if any."""
    if _committed_since(volume, txnid):
        return None
    try:
        volume.env.sync()
    except Exception as exc:
        return exc
    return None


def _commit_deferred(lates: list[_Late], held: Held, pool: concurrent.futures.Executor | None = None
                     ) -> tuple[list[Group], list[list[Result]], Held, Synced]:
    """Each volume's turn (:func:`_commit_volume`; a held volume without a late
    group only has its held commit put on disk), in ``pool`` when there are
    several: volumes are separate files, so their flushes can be on their way to
    the disk together. Returns the results, the new held (the volumes whose group
    had requests), and the held volumes whose sync failed; never raises."""
    late_volumes = {late.volume for late in lates}
    alone = [(volume, txnid) for volume, txnid in held.items() if volume not in late_volumes]

    def turn(i: int) -> Any:
        if i < len(lates):
            return _commit_volume(lates[i], held.get(lates[i].volume))
        return _sync_held(*alone[i - len(lates)])

    count = len(lates) + len(alone)
    done = [turn(i) for i in range(count)] if pool is None or count < 2 else list(pool.map(turn, range(count)))
    committed: list[VolumeTurn] = done[:len(lates)]
    groups = [group for group, _, _, _ in committed]
    results = [outcome for _, outcome, _, _ in committed]
    now: Held = {group[0]: txnid for group, _, txnid, _ in committed if txnid is not None}
    failed: Synced = {group[0]: exc for group, _, _, exc in committed if exc is not None}
    failed.update((volume, exc) for (volume, _), exc in zip(alone, done[len(lates):]) if exc is not None)
    return groups, results, now, failed


class GroupCommit:
    """The write queue of one worker; ``submit`` from the event loop only."""

    def __init__(self, *, inline_below: int = 0, defer_meta: bool = False) -> None:
        self.inline_below = inline_below
        self._lock = threading.Lock()  # _pending: the commit thread takes late (see _Late)
        self.defer_meta = defer_meta  # a durable store: see the module's docstring
        self._pending: dict[Volume, tuple[list[Batch], list[Done]]] = {}
        self._waiting = 0  # requests in _pending
        self._scheduled = False
        self._running: asyncio.Future[Any] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._volume_pool: concurrent.futures.ThreadPoolExecutor | None = None  # defer_meta: see _commit_deferred
        # defer_meta: the commit thread, woken at the end of each turn of the loop
        self._wake = threading.Condition(self._lock)
        self._woken = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None

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
        if self.defer_meta:
            self._start()
            with self._wake:
                self._woken = True
                self._wake.notify()
            return
        if self._running is not None or not self._pending:
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

    def _start(self) -> None:
        if self._thread is None:
            loop = asyncio.get_running_loop()
            self._stopped = loop.create_future()
            self._thread = threading.Thread(target=self._commit_loop, args=(loop,), name="rdir-commit", daemon=True)
            self._thread.start()

    def _commit_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The durable commit thread: one commit after the other while requests
        wait or a group is held, answers handed to ``loop``."""
        held: dict[Volume, Waiting] = {}  # committed, meta page not yet on disk
        txnids: Held = {}
        try:
            while True:
                with self._wake:
                    while not (self._woken or held or self._closing):
                        self._wake.wait()
                    if self._closing and not (self._pending or held):
                        return
                    self._woken = False
                    volumes = [*self._pending, *(volume for volume in held if volume not in self._pending)]
                # A held volume with nothing pending commits too: see the module's docstring.
                lates = [_Late(self, volume, (txnids[volume], held[volume]) if volume in held else None, loop)
                         for volume in volumes]
                if len(lates) > 1 and self._volume_pool is None:
                    self._volume_pool = concurrent.futures.ThreadPoolExecutor(
                        VOLUME_THREADS, thread_name_prefix="rdir-volume-commit")
                groups, results, txnids, failed = _commit_deferred(lates, txnids, self._volume_pool)  # never raises
                released = {late.volume for late in lates if late.released}
                answered: list[Group] = [(volume, [], dones) for volume, (dones, _) in held.items()
                                         if volume not in released]
                outcomes: list[list[Result]] = [[failed[volume]] * len(outcome) if volume in failed else outcome
                                                for volume, (_, outcome) in held.items() if volume not in released]
                if answered:  # on disk now, unless their sync failed
                    loop.call_soon_threadsafe(_deliver, answered, outcomes)
                held = {volume: (dones, outcome) for (volume, _, dones), outcome in zip(groups, results) if dones}
        except Exception as exc:  # a bug: the requests it held get no answer (logged), the queued ones a 500
            log.exception("the commit thread failed")
            queued = self._take()
            errors: list[list[Result]] = [[exc] * len(dones) for _, _, dones in queued]
            loop.call_soon_threadsafe(_deliver, queued, errors)
        finally:
            loop.call_soon_threadsafe(self._stopped_now)

    def _stopped_now(self) -> None:
        """On the loop, once the commit thread ended: the next flush starts another
        one, unless the commit is closing."""
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)
        if not self._closing:
            self._thread = None

    async def close(self) -> None:
        """Commit what is waiting, then stop the thread (at shutdown, once no
        request can arrive any more)."""
        if self._thread is not None:
            assert self._stopped is not None
            with self._wake:
                self._closing = True
                self._wake.notify()
            await self._stopped  # the answers it handed over were called before
            self._thread.join()
        while self._running is not None or self._pending:
            if self._running is not None:
                await asyncio.wait([self._running])
                await asyncio.sleep(0)  # let _committed run
            else:
                self._flush()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self._volume_pool is not None:
            self._volume_pool.shutdown(wait=True)


def _deliver(groups: list[Group], results: list[list[Result]]) -> None:
    for (_, _, dones), outcome in zip(groups, results):
        for done, result in zip(dones, outcome):
            try:
                done(result)
            except Exception:  # a bug: the other requests still get their answers
                log.exception("answering a committed write failed")
