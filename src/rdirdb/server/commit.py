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

A group is all or nothing, and so is each request in it: if the group's
transaction fails (an engine or disk error: the input was checked before), it is
aborted and each of its requests is written again in a transaction of its own,
so each gets its own answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Callable, Union

from rdirdb._batch import Batch
from rdirdb.rdir.store import Volume

log = logging.getLogger("rdirdb.server")

Result = Union[int, Exception]  # records written (or found, for deletes), or why not
Done = Callable[[Result], None]
Group = tuple[Volume, list[Batch], list[Done]]


def _apply_alone(volume: Volume, batch: Batch) -> Result:
    try:
        return volume.index.apply(batch)
    except Exception as exc:
        return exc


def commit_group(volume: Volume, batches: list[Batch]) -> list[Result]:
    """Write ``batches`` to ``volume`` in one transaction; if it fails, each in
    one of its own. The result of each batch, in order; never raises."""
    if len(batches) == 1:
        return [_apply_alone(volume, batches[0])]
    try:
        return list(volume.index.apply_group(batches))
    except Exception:  # the transaction was aborted: nothing of the group is written
        return [_apply_alone(volume, batch) for batch in batches]


def _commit_all(groups: list[Group]) -> list[list[Result]]:
    return [commit_group(volume, batches) for volume, batches, _ in groups]


class GroupCommit:
    """The write queue of one worker; ``submit`` from the event loop only."""

    def __init__(self, *, inline_below: int = 0) -> None:
        self.inline_below = inline_below
        self._pending: dict[Volume, tuple[list[Batch], list[Done]]] = {}
        self._waiting = 0  # requests in _pending
        self._scheduled = False
        self._running: asyncio.Future[list[list[Result]]] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def submit(self, volume: Volume, batch: Batch, done: Done) -> None:
        """Write ``batch`` with the next group; ``done(result)`` is called on the
        event loop once its transaction committed (or failed)."""
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
        groups = [(volume, batches, dones) for volume, (batches, dones) in self._pending.items()]
        self._pending = {}
        self._waiting = 0
        return groups

    def _flush(self) -> None:
        self._scheduled = False
        if self._running is not None or not self._pending:
            return
        inline = self._waiting < self.inline_below
        groups = self._take()
        if inline:
            _deliver(groups, _commit_all(groups))
            return
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rdir-commit")
        running = asyncio.get_running_loop().run_in_executor(self._executor, _commit_all, groups)
        self._running = running
        running.add_done_callback(lambda future: self._committed(groups, future))

    def _committed(self, groups: list[Group], future: asyncio.Future[list[list[Result]]]) -> None:
        self._running = None
        _deliver(groups, future.result())  # _commit_all never raises
        self._flush()  # what arrived during that commit

    async def close(self) -> None:
        """Commit what is waiting, then stop the thread (at shutdown, once no
        request can arrive any more)."""
        while self._running is not None or self._pending:
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
