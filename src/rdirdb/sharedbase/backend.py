"""What the SharedBase facade asks of a storage backend (``pg.py``, ``lmdb.py``).

The facade checks arguments and owns the semantics; a backend stores. ``DB`` is
the backend's transaction handle, the ``db`` that callers pass to
``record_new_obj_ids``: a psycopg connection in a transaction, or an LMDB
write transaction.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Optional, Protocol, TypedDict, TypeVar

import numpy as np
import numpy.typing as npt

from rdirdb.sharedbase.rows import ShardRow
from rdirdb.sharedbase.states import ShardState

DB = TypeVar("DB")


class Stats(TypedDict):
    """``SharedBase.stats()``: shards per state, objects per signature state."""

    shards: dict[str, int]
    objects: dict[str, int]


class Backend(Protocol[DB]):
    # True when a shard locked inside a caller's transaction is only locked if
    # that transaction commits (LMDB); False when locks commit on their own.
    locks_in_transaction: bool

    def close(self) -> None: ...

    def transaction(self, db: Optional[DB] = None) -> AbstractContextManager[DB]:
        """A transaction: ``db`` joined, else a new one (committed on success)."""
        ...

    def check_db(self, db: object) -> None:
        """TypeError or ValueError unless ``db`` is an open transaction of this backend."""
        ...

    # -- shards

    def shard_row(self, *, name: Optional[str] = None, id: Optional[int] = None,
                  db: Optional[DB] = None) -> Optional[ShardRow]: ...

    def select_shards(self, *, state: Optional[ShardState] = None, not_state: Optional[ShardState] = None,
                      stale_delay: Optional[timedelta] = None) -> list[ShardRow]:
        """Matching shards, in id order."""
        ...

    def lock_one(self, current: ShardState, new: ShardState, min_hosts: int, from_pool: Optional[str],
                 locker: uuid.UUID) -> Optional[tuple[str, int]]: ...

    def create(self, name: str, state: ShardState, locker: uuid.UUID, pool_name: str) -> tuple[str, int]: ...

    def update_state(self, name: str, new_state: ShardState, *, locker: Optional[uuid.UUID],
                     expect_states: Optional[list[ShardState]] = None,
                     expect_locker: Optional[uuid.UUID] = None, db: Optional[DB] = None) -> bool:
        """True when the shard was changed (it matched the expectations)."""
        ...

    def delete_shard(self, name: str, pool_name: str) -> None: ...

    def move_pool(self, name: str, from_pool: str, to_pool: str) -> int: ...

    def add_mapped_host(self, name: str, host: str) -> Optional[set[str]]: ...

    def count_present(self, name: str) -> int: ...

    def stats(self) -> Stats: ...

    def list_shard_tables(self) -> list[str]: ...

    # -- objects

    def record(self, db: DB, shard_id: int, locker: uuid.UUID, ids: list[bytes]) -> Optional[dict[bytes, int]]:
        """Record ``ids`` (sorted, unique) in shard ``shard_id`` within ``db``:
        the owner of each id, or None, writing nothing, when the shard is no
        longer ours (the fence)."""
        ...

    def contains(self, obj_id: bytes) -> Optional[int]: ...

    def contains_many(self, ids: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]: ...

    def get(self, obj_id: bytes) -> Optional[tuple[str, ShardState]]: ...

    def signatures_page(self, after: bytes, limit: int) -> list[bytes]: ...

    def delete(self, obj_id: bytes) -> None: ...

    def deleted_objects(self, pool_name: Optional[str]) -> list[tuple[bytes, str, ShardState, str]]: ...

    def clean_deleted(self, obj_id: bytes) -> None: ...
