"""Embedded backend: the catalogue in one LMDB environment (a directory).

LMDB runs one write transaction at a time across all processes of the host,
so every check-then-update here is atomic without row locks: lock_one_shard
cannot hand a shard out twice, and the writer's fence holds until commit.

Named databases:

* ``shards``: shard id (8 bytes, big-endian) -> JSON record, its fence fields
  (state, locker) first;
* ``names``: shard name -> shard id;
* ``sigs``: obj_id (32 bytes) -> shard id (8 bytes) + state byte;
* ``deleted``: obj_id -> shard id, the tombstones (winery's partial index);
* ``counts``: shard id -> number of present objects (8 bytes);
* ``meta``: schema version and the next shard id.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterator, Optional, TypeVar

import numpy as np

from rdirdb import _shardmap
from rdirdb._lmdb import Environment, Transaction, replay
from rdirdb.errors import SchemaVersionError, ShardExists
from rdirdb.sharedbase.backend import Stats
from rdirdb.sharedbase.rows import ShardRow
from rdirdb.sharedbase.schema import SCHEMA_VERSION
from rdirdb.sharedbase.states import ShardState

DATABASES = ("meta", "shards", "names", "sigs", "deleted", "counts")

SIG_PRESENT, SIG_DELETED = _shardmap.SIG_PRESENT, _shardmap.SIG_DELETED  # a ``sigs`` value's state byte

T = TypeVar("T")

_U64 = struct.Struct(">Q")
_SIG = struct.Struct(">QB")


def _id_key(shard_id: int) -> bytes:
    return _U64.pack(shard_id)


class _Shared:
    """One Environment per directory and process: LMDB forbids opening an
    environment twice in a process (closing one would drop the other's locks).
    It also tracks each thread's open write transaction, which nested calls
    join instead of deadlocking on LMDB's writer lock."""

    registry: dict[tuple[str, int], "_Shared"] = {}
    registry_lock = threading.Lock()

    def __init__(self, path: str, map_size: int, sync: bool) -> None:
        self.env = Environment(path, databases=DATABASES, map_size=map_size, sync=sync)
        self.users = 0
        self.local = threading.local()

    @classmethod
    def acquire(cls, path: str, map_size: int, sync: bool) -> "_Shared":
        key = (os.path.realpath(path), os.getpid())  # a forked child opens its own
        with cls.registry_lock:
            shared = cls.registry.get(key)
            if shared is None or shared.env.closed:
                shared = cls.registry[key] = cls(key[0], map_size, sync)
            shared.users += 1
            return shared

    def release(self) -> None:
        with self.registry_lock:
            self.users -= 1
            if self.users == 0:
                self.registry.pop((self.env.path, os.getpid()), None)
                self.env.close()


class LmdbBackend:
    # A shard locked inside the caller's write transaction is only ours if
    # that transaction commits.
    locks_in_transaction = True

    def __init__(self, path: str, *, map_size: int = 64 << 20, sync: bool = True) -> None:
        self.path = path
        self._shared = _Shared.acquire(path, map_size, sync)
        self._closed = False
        self.env = self._shared.env
        try:
            self._run_write(self._check_meta)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._shared.release()

    def _check_meta(self, txn: Transaction) -> None:
        stored = txn.get(b"version", db="meta")
        if stored is None:
            txn.put(b"version", str(SCHEMA_VERSION).encode(), db="meta")
            txn.put(b"next_id", _id_key(1), db="meta")
        elif int(stored) != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path} holds SharedBase schema version {int(stored)}, this rdirdb "
                f"supports version {SCHEMA_VERSION} only")

    # -- transactions ---------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, db: Optional[Transaction] = None) -> Iterator[Transaction]:
        """A write transaction: ``db``, else this thread's open one, else a new one.

        Calls made inside it join it (LMDB has one writer at a time: a second
        write transaction in the same thread would wait for itself).
        """
        local = self._shared.local
        current = getattr(local, "txn", None)
        if current is not None and current.closed:
            current = None
        if db is None and current is not None:
            yield current
            return
        if db is not None:
            local.txn = db
            try:
                yield db
            finally:
                local.txn = current
            return
        with self.env.begin(write=True) as txn:
            local.txn = txn
            try:
                yield txn
            finally:
                local.txn = None

    @contextlib.contextmanager
    def _read(self) -> Iterator[Transaction]:
        active = getattr(self._shared.local, "txn", None)
        if active is not None and not active.closed:
            yield active  # see this thread's uncommitted writes
            return
        with self.env.begin() as txn:
            yield txn

    def _run_write(self, fn: Callable[[Transaction], T], db: Optional[Transaction] = None) -> T:
        """``fn(txn)`` in a write transaction; one of our own is replayed once the map has grown."""
        if db is not None or getattr(self._shared.local, "txn", None) is not None:
            with self.transaction(db) as txn:  # the caller's: not ours to replay
                return fn(txn)
        return replay(self._run_in_own, fn)

    def _run_in_own(self, fn: Callable[[Transaction], T]) -> T:
        with self.transaction() as txn:
            return fn(txn)

    # -- shard records --------------------------------------------------------

    @staticmethod
    def _decode(shard_id: int, raw: bytes) -> ShardRow:
        r = json.loads(raw)
        locker_ts = datetime.fromtimestamp(r["ts"], timezone.utc) if r["ts"] is not None else None
        locker = uuid.UUID(r["locker"]) if r["locker"] else None
        return ShardRow(shard_id, r["name"], ShardState(r["state"]), locker, locker_ts, r["pool"], r["mapped"])

    @staticmethod
    def _put_row(txn: Transaction, row: ShardRow) -> None:
        rest = {
            "name": row.name, "ts": row.locker_ts.timestamp() if row.locker_ts else None,
            "pool": row.pool_name, "mapped": row.mapped_on_hosts,
        }
        txn.put(_id_key(row.id), _fence(row.state, row.locker) + b", " + json.dumps(rest)[1:].encode(), db="shards")

    def _row_by_id(self, txn: Transaction, shard_id: int) -> Optional[ShardRow]:
        raw = txn.get(_id_key(shard_id), db="shards")
        return self._decode(shard_id, raw) if raw is not None else None

    def _row_by_name(self, txn: Transaction, name: str) -> Optional[ShardRow]:
        key = txn.get(name.encode(), db="names")
        return self._row_by_id(txn, _U64.unpack(key)[0]) if key is not None else None

    def _rows(self, txn: Transaction) -> Iterator[ShardRow]:
        """Every shard, in id order."""
        for key, raw in txn.cursor(db="shards"):
            yield self._decode(_U64.unpack(key)[0], raw)

    def shard_row(self, *, name: Optional[str] = None, id: Optional[int] = None,
                  db: Optional[Transaction] = None) -> Optional[ShardRow]:
        with (self.transaction(db) if db is not None else self._read()) as txn:
            if name is not None:
                return self._row_by_name(txn, name)
            return self._row_by_id(txn, id) if id is not None else None

    def select_shards(self, *, state: Optional[ShardState] = None, not_state: Optional[ShardState] = None,
                      stale_delay: Optional[timedelta] = None) -> list[ShardRow]:
        cutoff = datetime.now(timezone.utc) - stale_delay if stale_delay is not None else None
        with self._read() as txn:
            return [
                row for row in self._rows(txn)
                if (state is None or row.state == state)
                and (not_state is None or row.state != not_state)
                and (cutoff is None or (row.locker is not None and row.locker_ts is not None
                                        and row.locker_ts < cutoff))
            ]

    def lock_one(self, current: ShardState, new: ShardState, min_hosts: int, from_pool: Optional[str],
                 locker: uuid.UUID) -> Optional[tuple[str, int]]:
        def lock(txn: Transaction) -> Optional[tuple[str, int]]:
            for row in self._rows(txn):
                if (row.state == current and len(row.mapped_on_hosts) >= min_hosts
                        and (from_pool is None or row.pool_name == from_pool)):
                    self._put_row(txn, row._replace(state=new, locker=locker, locker_ts=_now()))
                    return (row.name, row.id)
            return None
        return self._run_write(lock)

    def create(self, name: str, state: ShardState, locker: uuid.UUID, pool_name: str) -> tuple[str, int]:
        def create(txn: Transaction) -> tuple[str, int]:
            if txn.get(name.encode(), db="names") is not None:
                raise ShardExists(f"a shard named {name!r} already exists")
            next_id = txn.get(b"next_id", db="meta")
            assert next_id is not None  # written with the version, by _check_meta
            shard_id = _U64.unpack(next_id)[0]
            txn.put(b"next_id", _id_key(shard_id + 1), db="meta")
            txn.put(name.encode(), _id_key(shard_id), db="names")
            self._put_row(txn, ShardRow(shard_id, name, state, locker, _now(), pool_name, []))
            return (name, shard_id)
        return self._run_write(create)

    def update_state(self, name: str, new_state: ShardState, *, locker: Optional[uuid.UUID],
                     expect_states: Optional[list[ShardState]] = None,
                     expect_locker: Optional[uuid.UUID] = None, db: Optional[Transaction] = None) -> bool:
        def update(txn: Transaction) -> bool:
            row = self._row_by_name(txn, name)
            if (row is None or (expect_states is not None and row.state not in expect_states)
                    or (expect_locker is not None and row.locker != expect_locker)):
                return False
            self._put_row(txn, row._replace(state=new_state, locker=locker,
                                            locker_ts=_now() if locker is not None else None))
            return True
        return self._run_write(update, db)

    def delete_shard(self, name: str, pool_name: str) -> None:
        def delete(txn: Transaction) -> None:
            row = self._row_by_name(txn, name)
            if row is not None and row.pool_name == pool_name:
                txn.delete(_id_key(row.id), db="shards")
                txn.delete(name.encode(), db="names")
                txn.delete(_id_key(row.id), db="counts")
        self._run_write(delete)

    def move_pool(self, name: str, from_pool: str, to_pool: str) -> int:
        def move(txn: Transaction) -> int:
            row = self._row_by_name(txn, name)
            if row is None or row.state != ShardState.READONLY or row.pool_name != from_pool:
                return 0
            self._put_row(txn, row._replace(pool_name=to_pool))
            return 1
        return self._run_write(move)

    def add_mapped_host(self, name: str, host: str) -> Optional[set[str]]:
        def add(txn: Transaction) -> Optional[set[str]]:
            row = self._row_by_name(txn, name)
            if row is None:
                return None
            if host not in row.mapped_on_hosts:
                self._put_row(txn, row._replace(mapped_on_hosts=row.mapped_on_hosts + [host]))
            return set(row.mapped_on_hosts) | {host}
        return self._run_write(add)

    def count_present(self, name: str) -> int:
        with self._read() as txn:
            key = txn.get(name.encode(), db="names")
            count = txn.get(key, db="counts") if key is not None else None
            return _U64.unpack(count)[0] if count is not None else 0

    def stats(self) -> Stats:
        shards: dict[str, int] = {}
        with self._read() as txn:
            for row in self._rows(txn):
                shards[row.state.value] = shards.get(row.state.value, 0) + 1
            present = sum(_U64.unpack(v)[0] for _, v in txn.cursor(db="counts"))
        total, deleted = self.env.stat("sigs")["entries"], self.env.stat("deleted")["entries"]
        objects = {"present": present, "deleted": deleted, "inflight": total - present - deleted}
        return {"shards": shards, "objects": {k: v for k, v in objects.items() if v}}

    # -- objects --------------------------------------------------------------

    @staticmethod
    def _add_count(txn: Transaction, shard_id: int, delta: int) -> None:
        raw = txn.get(_id_key(shard_id), db="counts")
        count = (_U64.unpack(raw)[0] if raw is not None else 0) + delta
        txn.put(_id_key(shard_id), _U64.pack(count), db="counts")

    @staticmethod
    def check_db(db: object) -> None:
        if not isinstance(db, Transaction):
            raise TypeError(f"db must be an LMDB transaction (from SharedBase.transaction()), not {type(db).__name__}")
        if db.closed or not db.write:
            raise ValueError("db must be an open write transaction: use `with base.transaction() as db:`")

    def record(self, db: Transaction, shard_id: int, locker: uuid.UUID,
               ids: list[bytes]) -> Optional[dict[bytes, int]]:
        # One native loop without the GIL, in the transaction that checks the
        # fence: the shard's row starts as it does while ``locker`` holds it writable.
        fences = tuple(_fence(state, locker) for state in _WRITABLE)
        batch = b"".join(ids)
        owners = self._run_write(lambda txn: _shardmap.record_new(txn, shard_id, fences, batch), db)
        if owners is None:
            return None
        if (owners == shard_id).all():  # the usual batch: all ours
            return dict.fromkeys(ids, shard_id)
        return dict(zip(ids, owners.tolist()))

    def contains(self, obj_id: bytes) -> Optional[int]:
        return _shardmap.lookup_one(self.env, "sigs", obj_id)

    def contains_many(self, ids: np.ndarray) -> np.ndarray:
        return _shardmap.lookup_many(self.env, "sigs", ids)

    def get(self, obj_id: bytes) -> Optional[tuple[str, ShardState]]:
        with self._read() as txn:
            raw = txn.get(obj_id, db="sigs")
            if raw is None or raw[8] != SIG_PRESENT:
                return None
            row = self._row_by_id(txn, _SIG.unpack(raw)[0])
            return (row.name, row.state) if row else None

    def signatures_page(self, after: bytes, limit: int) -> list[bytes]:
        page: list[bytes] = []
        with self._read() as txn:
            cursor = txn.cursor(db="sigs")
            if after and not cursor.set_range(after + b"\0"):
                return page
            for key, value in cursor:  # from the first id, or from the one after ``after``
                if len(page) == limit:
                    break
                if value[8] == SIG_PRESENT:
                    page.append(key)
        return page

    def delete(self, obj_id: bytes) -> None:
        def delete(txn: Transaction) -> None:
            raw = txn.get(obj_id, db="sigs")
            if raw is None or raw[8] == SIG_DELETED:
                return
            shard_id, state = _SIG.unpack(raw)
            if state == SIG_PRESENT:
                self._add_count(txn, shard_id, -1)
            txn.put(obj_id, _SIG.pack(shard_id, SIG_DELETED), db="sigs")
            txn.put(obj_id, _id_key(shard_id), db="deleted")
        self._run_write(delete)

    def deleted_objects(self, pool_name: Optional[str]) -> list[tuple[bytes, str, ShardState, str]]:
        result = []
        with self._read() as txn:
            for obj_id, shard_key in txn.cursor(db="deleted"):
                row = self._row_by_id(txn, _U64.unpack(shard_key)[0])
                if row is not None and (pool_name is None or row.pool_name == pool_name):
                    result.append((obj_id, row.name, row.state, row.pool_name))
        # By pool and shard (then obj_id, the cursor's order: the sort is stable).
        result.sort(key=lambda entry: (entry[3], entry[1]))
        return result

    @staticmethod
    def list_shard_tables() -> list[str]:
        raise NotImplementedError("the LMDB backend has no shard tables: winery's write shards live on PostgreSQL")

    def clean_deleted(self, obj_id: bytes) -> None:
        def clean(txn: Transaction) -> None:
            if txn.delete(obj_id, db="deleted"):
                txn.delete(obj_id, db="sigs")
        self._run_write(clean)


_WRITABLE = (ShardState.WRITING, ShardState.IMPORTING)


def _fence(state: ShardState, locker: Optional[uuid.UUID]) -> bytes:
    """The first bytes of a shard's JSON row: the fields of the writers' fence.

    A row written with ``locker`` in a writable state starts with the fence of
    that state and locker, and no other row does (the locker's hex is followed
    by its closing quote). Rows written before the fence came first in their
    row have the name first: none of them is held by a live writer, since
    lockers are new for each process.
    """
    return b'{"state": %s, "locker": %s' % (
        json.dumps(state.value).encode(), json.dumps(locker.hex if locker else None).encode())


def _now() -> datetime:
    return datetime.fromtimestamp(time.time(), timezone.utc)
