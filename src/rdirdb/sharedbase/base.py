"""SharedBase: winery's shard catalogue, on PostgreSQL or on embedded LMDB.

The facade owns the semantics (argument checks, defaults, error texts, the
locked shard of this instance); the backends own storage (``pg.py``,
``lmdb.py``), behind the protocol of ``backend.py``. Differences from winery
are listed in docs/sharedbase.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
import weakref
from datetime import datetime, timedelta
from typing import Any, Iterable, Iterator, Optional, Union
from urllib.parse import unquote, urlparse

import numpy as np
import numpy.typing as npt

from rdirdb._lmdb import replay
from rdirdb.errors import FencingError, ShardNotFound
from rdirdb.sharedbase.backend import Backend, Stats
from rdirdb.sharedbase.rows import ShardRow
from rdirdb.sharedbase.states import (
    OBJ_ID_SIZE,
    RELEASED_STATE,
    ShardState,
    check_obj_id,
    check_obj_ids,
    check_pool_name,
    check_shard_name,
    lookup_obj_id,
    new_shard_name,
    shard_state,
)

logger = logging.getLogger(__name__)

ONEDAY = timedelta(days=1)

OpenShard = tuple[str, ShardState, Optional[datetime], Optional[str]]

# list_signatures reads this many ids per query, holding no connection between pages.
_SIGNATURES_PAGE = 10_000

# The locker id of this process: winery's WRITER_UUID, renewed in a forked
# child (winery's is not, so gunicorn --preload workers would share one).
_process_locker = uuid.uuid4()


def _renew_process_locker() -> None:
    global _process_locker
    _process_locker = uuid.uuid4()


os.register_at_fork(after_in_child=_renew_process_locker)

LOCKER_SCOPES = ("process", "instance")
DSN_FORMS = "postgresql://..., postgres://..., a libpq 'host=... dbname=...' string, or lmdb:///path/to/dir"


def _open_backend(base_dsn: str, application_name: str, kwargs: dict[str, Any]) -> Backend[Any]:
    if not isinstance(base_dsn, str):
        raise TypeError(f"base_dsn must be a str, not {type(base_dsn).__name__}")
    scheme = urlparse(base_dsn).scheme if "://" in base_dsn or base_dsn.startswith("lmdb:") else ""
    if scheme == "lmdb":
        from rdirdb.sharedbase.lmdb import LmdbBackend

        url = urlparse(base_dsn)
        path = unquote(url.path)
        if url.netloc or not path:
            raise ValueError(f"an LMDB DSN is lmdb:///absolute/path/to/dir, not {base_dsn!r}")
        return LmdbBackend(path, **kwargs)
    if scheme not in ("", "postgresql", "postgres"):
        raise ValueError(f"unknown SharedBase DSN scheme {scheme!r} in {base_dsn!r}: use {DSN_FORMS}")
    try:
        from rdirdb.sharedbase.pg import PgBackend
    except ImportError as error:
        if error.name not in ("psycopg", "psycopg_pool"):
            raise
        raise ImportError(
            f"a PostgreSQL SharedBase needs {error.name}, which is not installed: "
            "install rdirdb with its pg extra (pip install 'rdirdb[pg]')", name=error.name) from error
    return PgBackend(base_dsn, application_name, **kwargs)


class SharedBase:
    """The shard catalogue of one winery deployment.

    ``base_dsn`` is a PostgreSQL DSN (``postgresql://...`` or ``host=...
    dbname=...``) or ``lmdb:///path/to/dir``. Extra keyword arguments go to
    the backend: ``min_size``/``max_size`` of the PostgreSQL pool,
    ``map_size``/``sync`` of the LMDB environment.

    ``locker_scope`` says who holds the shards this instance locks (its
    ``locker`` id): ``"process"`` (the default, as winery's WRITER_UUID) makes
    every SharedBase of a process one holder, so winery's flows that hand a
    shard from one instance to another (a writer starts packing, a new
    SharedBase ends it) work; ``"instance"`` makes this instance a holder of
    its own. See docs/sharedbase.md, "Who holds a shard".

    Nothing touches the database before the first call; a SharedBase dropped
    without ``close()`` releases its connections when it is collected.
    """

    current_version = 5

    def __init__(self, base_dsn: str, application_name: Optional[str] = None,
                 active_pool_name: Optional[str] = None, *, locker_scope: str = "process",
                 **kwargs: Any) -> None:
        if locker_scope not in LOCKER_SCOPES:
            raise ValueError(f"locker_scope must be one of {', '.join(LOCKER_SCOPES)}, not {locker_scope!r}")
        self.dsn = base_dsn
        self.application_name = application_name or "SWH Winery SharedBase"
        self.active_pool_name = check_pool_name(active_pool_name) if active_pool_name is not None else None
        self._own_locker = uuid.uuid4() if locker_scope == "instance" else None
        self._locked_shard: Optional[tuple[str, int]] = None
        self._backend: Backend[Any] = _open_backend(base_dsn, self.application_name, kwargs)
        # Winery's code never closes its SharedBases: collecting one closes its backend.
        self._finalizer = weakref.finalize(self, self._backend.close)

    @property
    def locker(self) -> uuid.UUID:
        """The id written in ``shards.locker`` for the shards this instance locks."""
        return self._own_locker or _process_locker

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> "SharedBase":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SharedBase {type(self._backend).__name__} locker={self.locker}>"

    # -- transactions -----------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """An open transaction of the backend, for the ``db`` argument of
        record_new_obj_id(s): a psycopg connection in a transaction, or an
        LMDB write transaction. Commits on success, rolls back on error."""
        held = self._locked_shard
        try:
            with self._backend.transaction() as db:
                yield db
        except BaseException:
            # On LMDB a shard locked inside the aborted transaction was never ours.
            if self._backend.locks_in_transaction and self._locked_shard not in (None, held):
                self._locked_shard = None
            raise

    @property
    def pool(self) -> Any:
        """The psycopg connection pool (PostgreSQL only), for code written
        against winery: ``with base.pool.connection() as db, db.transaction():``."""
        pool = getattr(self._backend, "pool", None)
        if pool is None:
            raise AttributeError("the LMDB backend has no connection pool: use base.transaction()")
        return pool

    # -- the locked shard of this instance -----------------------------------------

    @property
    def locked_shard(self) -> str:
        """The shard this instance writes to; locks or creates one if needed."""
        self.set_locked_shard()
        assert self._locked_shard, "failed to lock a shard"
        return self._locked_shard[0]

    @property
    def locked_shard_id(self) -> int:
        self.set_locked_shard()
        assert self._locked_shard, "failed to lock a shard"
        return self._locked_shard[1]

    def set_locked_shard(self) -> None:
        """Hold a WRITING shard: adopt a STANDBY one of the active pool, or create one."""
        if self._locked_shard is not None:
            return
        # Only the active pool's STANDBY shards: writing into another pool's
        # shard would put its image in the wrong pool. Without an active pool,
        # none (create_shard then says a pool is needed).
        locked = None
        if self.active_pool_name is not None:
            locked = self.lock_one_shard(ShardState.STANDBY, ShardState.WRITING, from_pool=self.active_pool_name)
        if locked is None:
            locked = self.create_shard(ShardState.WRITING)
        self._locked_shard = locked

    def release_locked_shard(self, new_state: Union[ShardState, str] = ShardState.STANDBY) -> None:
        """Give our shard up (to STANDBY, or FULL when it is full).

        Checks that we still hold it: a shard someone else took over is left
        alone (FencingError), unlike winery's blind release.
        """
        new_state = shard_state(new_state, "new_state")
        if new_state.locked:
            raise ValueError(f"{new_state} is a locked state; release to an unlocked one")
        if self._locked_shard is None:
            return
        name = self._locked_shard[0]
        try:
            self.set_shard_state(new_state, check_locker=True, name=name)
        finally:
            self._locked_shard = None

    # -- shard state machine ------------------------------------------------------------

    def lock_one_shard(self, current_state: Union[ShardState, str], new_state: Union[ShardState, str],
                       min_mapped_hosts: int = 0, from_pool: Optional[str] = None) -> Optional[tuple[str, int]]:
        """Move the oldest shard in ``current_state`` to the locked ``new_state``.

        Returns its ``(name, id)``, or None when no shard qualifies.
        """
        current_state = shard_state(current_state, "current_state")
        new_state = shard_state(new_state, "new_state")
        if not new_state.locked:
            raise ValueError(f"{new_state} is not a locked state")
        if not isinstance(min_mapped_hosts, int) or isinstance(min_mapped_hosts, bool):
            raise TypeError(f"min_mapped_hosts must be an int, not {type(min_mapped_hosts).__name__}")
        if from_pool is not None:
            check_pool_name(from_pool)
        return self._backend.lock_one(current_state, new_state, min_mapped_hosts, from_pool, self.locker)

    def maybe_lock_one_shard(self, current_state: Union[ShardState, str], new_state: Union[ShardState, str],
                             min_mapped_hosts: int = 0, from_pool: Optional[str] = None) -> "TemporaryShardLocker":
        return TemporaryShardLocker(self, current_state, new_state, min_mapped_hosts, from_pool)

    def set_shard_state(self, new_state: Union[ShardState, str], set_locker: bool = False,
                        check_locker: bool = False, name: Optional[str] = None, db: Any = None) -> None:
        """Set a shard's state (no transition rules, as in winery).

        The locker is set to ours with ``set_locker``, cleared otherwise.
        ``check_locker`` only changes a shard we hold. Raises ShardNotFound or
        FencingError (both ValueErrors) when no row was changed.
        """
        new_state = shard_state(new_state, "new_state")
        if not name:
            if not self._locked_shard:
                raise ValueError("Can't set shard state, no shard specified or locked")
            name = self._locked_shard[0]
        check_shard_name(name)
        reset_locked_shard = self._locked_shard is not None and self._locked_shard[0] == name
        changed = self._backend.update_state(
            name, new_state, locker=self.locker if set_locker else None,
            expect_locker=self.locker if check_locker else None, db=db)
        if not changed:
            message = f"set_shard_state({name}) affected 0 rows, expected 1"
            if self._backend.shard_row(name=name, db=db) is None:
                raise ShardNotFound(f"{message}: no shard named {name!r}")
            raise FencingError(f"{message}: the shard is not locked by this SharedBase ({self.locker})")
        if reset_locked_shard and not new_state.locked:
            self._locked_shard = None

    def create_shard(self, new_state: Union[ShardState, str], name: Optional[str] = None,
                     pool_name: Optional[str] = None) -> tuple[str, int]:
        """Register a new shard, locked by us, in ``new_state``; returns ``(name, id)``.

        Raises ShardExists (a ValueError) if the name is taken.
        """
        new_state = shard_state(new_state, "new_state")
        name = check_shard_name(name) if name is not None else new_shard_name()
        pool_name = pool_name if pool_name is not None else self.active_pool_name
        if pool_name is None:
            raise ValueError("The writable pool name must be configured to create new shards")
        check_pool_name(pool_name)
        locked = self._backend.create(name, new_state, self.locker, pool_name)
        logger.debug("SharedBase %s: created shard %s in state %s", self.locker, name, new_state.value)
        return locked

    def shard_packing_starts(self, name: str) -> None:
        """FULL -> PACKING, locked by us."""
        check_shard_name(name)
        if self._backend.update_state(name, ShardState.PACKING, locker=self.locker,
                                      expect_states=[ShardState.FULL]):
            return
        row = self._shard_row(name)
        raise ValueError(f"Cannot pack shard in state {row.state}, expected ShardState.FULL")

    def shard_packing_ends(self, name: str, check_locker: bool = True) -> None:
        """PACKING (or IMPORTING) -> PACKED, unlocked.

        Only for the instance that started packing, unless ``check_locker`` is
        False (winery's behaviour).
        """
        check_shard_name(name)
        expected = [ShardState.PACKING, ShardState.IMPORTING]
        if self._backend.update_state(name, ShardState.PACKED, locker=None, expect_states=expected,
                                      expect_locker=self.locker if check_locker else None):
            return
        row = self._shard_row(name)
        if row.state not in expected:
            raise ValueError(
                f"Cannot finalize packing for shard in state {row.state}, "
                "expected ShardState.PACKING or ShardState.IMPORTING")
        raise FencingError(f"shard {name} is being packed by {row.locker}, not by this SharedBase ({self.locker})")

    def _shard_row(self, name: str) -> ShardRow:
        row = self._backend.shard_row(name=name)
        if row is None:
            raise ShardNotFound(f"Could not get shard state for {name}")
        return row

    def release_lock(self, name: str) -> ShardState:
        """An operator's release of a locked shard whose holder is gone.

        WRITING -> STANDBY, PACKING -> FULL, CLEANING -> PACKED, only if the
        locker did not change meanwhile; returns the new state.
        """
        row = self._shard_row(check_shard_name(name))
        if row.state not in RELEASED_STATE:
            raise ValueError(f"shard {name} is in state {row.state.value}, which has no lock to release")
        target = RELEASED_STATE[row.state]
        if not self._backend.update_state(name, target, locker=None, expect_states=[row.state],
                                          expect_locker=row.locker):
            raise FencingError(f"shard {name} changed while releasing it; look again")
        if self._locked_shard is not None and self._locked_shard[0] == name:
            self._locked_shard = None
        return target

    def move_shard(self, name: str, from_pool: str, to_pool: str) -> None:
        """Relabel a READONLY shard's pool (moves no file)."""
        check_shard_name(name)
        check_pool_name(from_pool)
        check_pool_name(to_pool)
        current_pool = self.get_shard_pool(name)
        if current_pool != from_pool:
            raise ValueError(f"Image {name} is in {current_pool}, not in {from_pool}")
        affected = self._backend.move_pool(name, from_pool, to_pool)
        if affected != 1:
            raise ValueError(f"move_shard({name}) from {from_pool} to {to_pool} affected {affected} rows, expected 1")

    @contextlib.contextmanager
    def create_shard_for_import(self, name: str, pool_name: str) -> Iterator[Any]:
        """Register an existing image: yields a transaction to record its objects in.

        On error the shard is removed again; on success it ends READONLY.
        """
        if self._locked_shard is not None:
            raise RuntimeError(f"A shard is already locked ({self._locked_shard[0]})")
        check_pool_name(pool_name)
        self._locked_shard = self.create_shard(ShardState.IMPORTING, name=name, pool_name=pool_name)
        try:
            with self.transaction() as db:
                yield db
        except BaseException:
            logger.warning("Cancelling import of %s from %s", name, pool_name)
            self._backend.delete_shard(name, pool_name)
            raise
        else:
            self.shard_packing_ends(name)
            self.set_shard_state(ShardState.READONLY, name=name)
        finally:
            self._locked_shard = None

    def record_shard_mapped(self, host: str, name: str) -> set[str]:
        """Add ``host`` to the hosts that mapped the shard's image; returns them all."""
        if not isinstance(host, str) or not host:
            raise TypeError("host must be a non-empty str")
        hosts = self._backend.add_mapped_host(check_shard_name(name), host)
        if hosts is None:
            raise ShardNotFound(f"Can't update shard {name}")
        return hosts

    # -- shard queries ---------------------------------------------------------------

    def get_shard_info(self, id: int) -> Optional[tuple[str, ShardState]]:
        if not isinstance(id, int) or isinstance(id, bool):
            raise TypeError(f"shard id must be an int, not {type(id).__name__}")
        if not 1 <= id < 2**63:  # ids are a bigserial
            return None
        row = self._backend.shard_row(id=id)
        return (row.name, row.state) if row else None

    def get_shard_state(self, name: str) -> Optional[ShardState]:
        row = self._backend.shard_row(name=check_shard_name(name))
        return row.state if row else None

    def get_shard_pool(self, name: str) -> Optional[str]:
        row = self._backend.shard_row(name=check_shard_name(name))
        return row.pool_name if row else None

    def list_shards(self) -> Iterator[tuple[str, ShardState]]:
        """Every shard, oldest first."""
        for row in self._backend.select_shards():
            yield (row.name, row.state)

    def list_open_shards(self, state: Union[ShardState, str, None] = None) -> Iterator[OpenShard]:
        """Shards not READONLY: ``(name, state, locker_ts, locker)``, oldest first."""
        state = shard_state(state) if state is not None else None
        for row in self._backend.select_shards(state=state, not_state=ShardState.READONLY):
            yield row.open_shard_tuple()

    def list_stale_shards(self, delay: timedelta = ONEDAY,
                          state: Union[ShardState, str, None] = None) -> Iterator[OpenShard]:
        """Locked shards whose lock is older than ``delay``, oldest first."""
        if not isinstance(delay, timedelta):
            raise TypeError(f"delay must be a timedelta, not {type(delay).__name__}")
        state = shard_state(state) if state is not None else None
        for row in self._backend.select_shards(state=state, stale_delay=delay):
            yield row.open_shard_tuple()

    def count_objects(self, name: Optional[str] = None) -> int:
        """Present objects of the shard; 0 for an empty or unknown shard."""
        if name is None:
            if not self._locked_shard:
                raise ValueError("Can't count objects, no shard specified or locked")
            name = self._locked_shard[0]
        return self._backend.count_present(check_shard_name(name))

    def stats(self) -> Stats:
        """``{"shards": {state: count}, "objects": {signature state: count}}``."""
        return self._backend.stats()

    # -- objects ------------------------------------------------------------------------

    def list_shard_tables(self) -> list[str]:
        """The shards that have a write table (``shard_<name>``) on PostgreSQL."""
        return self._backend.list_shard_tables()

    def contains(self, obj_id: bytes) -> Optional[int]:
        """The id of the shard holding ``obj_id``, or None (unknown, deleted, or
        not a 32-byte id: no such object can be stored)."""
        checked = lookup_obj_id(obj_id)
        return self._backend.contains(checked) if checked is not None else None

    def contains_many(self, obj_ids: Union[np.ndarray, Iterable[bytes]]) -> npt.NDArray[np.int64]:
        """Shard ids (int64 array, 0 when absent) for many obj_ids at once.

        ``obj_ids`` is an iterable of 32-byte ids, an ``(n, 32)`` uint8 array or
        an ``S32`` array. One query on PostgreSQL; on LMDB one read transaction
        run without the GIL.
        """
        return self._backend.contains_many(_as_id_matrix(obj_ids))

    def get(self, obj_id: bytes) -> Optional[tuple[str, ShardState]]:
        """``(name, state)`` of the shard holding ``obj_id``, or None (as contains())."""
        checked = lookup_obj_id(obj_id)
        return self._backend.get(checked) if checked is not None else None

    def _record_in_own_transaction(self, ids: list[bytes]) -> dict[bytes, int]:
        with self.transaction() as own:
            return self.record_new_obj_ids(own, ids)

    def record_new_obj_ids(self, db: Any, obj_ids: Iterable[bytes]) -> dict[bytes, int]:
        """Record ``obj_ids`` in our shard within ``db``'s transaction.

        Returns ``{obj_id: owner shard id}`` for each unique id, sorted: an id
        already present keeps its shard (skip its content). Raises FencingError,
        writing nothing, if we no longer hold our shard. ``db=None`` runs in a
        transaction of its own.
        """
        ids = sorted(set(check_obj_ids(obj_ids)))
        if not ids:
            return {}
        if db is None:
            # Our own transaction: run again if LMDB aborted it to grow its map.
            return replay(self._record_in_own_transaction, ids)
        self._backend.check_db(db)
        # Joining ``db``: on LMDB, a shard this locks is locked inside it (see
        # transaction()); on PostgreSQL locks commit on connections of their own.
        with self._backend.transaction(db):
            shard_name, shard_id = self.locked_shard, self.locked_shard_id
        owners = self._backend.record(db, shard_id, self.locker, ids)
        if owners is None:
            self._locked_shard = None
            raise FencingError(
                f"shard {shard_name} is no longer locked for writing by this SharedBase "
                f"({self.locker}); nothing was recorded")
        # Winery's check, the right way round: every id must have an owner.
        if len(owners) != len(ids):
            missing = [obj_id.hex() for obj_id in ids if obj_id not in owners]
            raise RuntimeError(
                f"Could not record all objects in any shard: missing {', '.join(missing[:5])}"
                + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        return owners

    def record_new_obj_id(self, db: Any, obj_id: bytes) -> Optional[int]:
        """Record one obj_id; returns the id of the shard that owns it."""
        obj_id = check_obj_id(obj_id)
        return self.record_new_obj_ids(db, [obj_id])[obj_id]

    def list_signatures(self, after_id: Optional[bytes] = None, limit: Optional[int] = None) -> Iterator[bytes]:
        """Present obj_ids in increasing order, after ``after_id``, at most ``limit``."""
        after = b"" if after_id is None else bytes(after_id)
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a non-negative int or None, not {limit!r}")
        left = limit
        while left is None or left > 0:
            page = self._backend.signatures_page(after, _SIGNATURES_PAGE if left is None else min(left, _SIGNATURES_PAGE))
            yield from page
            if len(page) < _SIGNATURES_PAGE:
                return
            after = page[-1]
            if left is not None:
                left -= len(page)

    def delete(self, obj_id: bytes) -> None:
        """Mark ``obj_id`` deleted (a tombstone); nothing happens for an unknown id."""
        self._backend.delete(check_obj_id(obj_id))

    def deleted_objects(self, pool_name: Optional[str] = None) -> Iterator[tuple[bytes, str, ShardState, str]]:
        """Tombstones as ``(obj_id, shard name, shard state, pool name)``, grouped
        as winery's cleaner expects: by pool, then shard name. Within a shard,
        PostgreSQL's order (winery's query), by obj_id on LMDB."""
        if pool_name is not None:
            check_pool_name(pool_name)
        yield from self._backend.deleted_objects(pool_name)

    def clean_deleted_object(self, obj_id: bytes) -> None:
        """Forget a tombstone; an object re-added meanwhile is left alone."""
        self._backend.clean_deleted(check_obj_id(obj_id))


def _as_id_matrix(obj_ids: Union[np.ndarray, Iterable[bytes]]) -> npt.NDArray[np.uint8]:
    """obj_ids as a C-contiguous ``(n, 32)`` uint8 array."""
    if isinstance(obj_ids, np.ndarray):
        if obj_ids.dtype == np.dtype(f"S{OBJ_ID_SIZE}") and obj_ids.ndim == 1:
            return np.ascontiguousarray(obj_ids).view(np.uint8).reshape(-1, OBJ_ID_SIZE)
        if obj_ids.dtype == np.uint8 and obj_ids.ndim == 2 and obj_ids.shape[1] == OBJ_ID_SIZE:
            return np.ascontiguousarray(obj_ids)
        raise ValueError(
            f"obj_ids array must be (n, {OBJ_ID_SIZE}) uint8 or 1-d S{OBJ_ID_SIZE}, "
            f"not {obj_ids.shape} {obj_ids.dtype}")
    ids = check_obj_ids(obj_ids)
    return np.frombuffer(b"".join(ids), dtype=np.uint8).reshape(-1, OBJ_ID_SIZE)


class TemporaryShardLocker:
    """Locks one shard on creation; rolls it back to ``current_state`` if the
    ``with`` body raises (only if we still hold it; errors of that rollback
    are logged, the body's exception propagates)."""

    def __init__(self, base: SharedBase, current_state: Union[ShardState, str],
                 new_state: Union[ShardState, str], min_mapped_hosts: int = 0,
                 from_pool: Optional[str] = None) -> None:
        self.base = base
        self.previous_state = shard_state(current_state, "current_state")
        locked = base.lock_one_shard(current_state, new_state, min_mapped_hosts, from_pool)
        self.name: Optional[str] = locked[0] if locked else None
        self.id: Optional[int] = locked[1] if locked else None

    def __bool__(self) -> bool:
        return self.name is not None

    def __enter__(self) -> "TemporaryShardLocker":
        if self.name is None:
            raise ValueError("No shard was locked")
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.name is None or exc_type is None:
            return
        try:
            self.base.set_shard_state(name=self.name, new_state=self.previous_state, check_locker=True)
        except Exception:
            logger.warning("Could not unlock shard %s:", self.name, exc_info=True)
