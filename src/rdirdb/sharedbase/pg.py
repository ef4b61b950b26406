"""PostgreSQL backend: winery's schema, through psycopg 3 and a bounded pool.

Every statement runs in autocommit (READ COMMITTED) unless it is given the
caller's transaction (``db``). State changes are single conditional UPDATEs,
so no row lock outlives a statement except the writer's fence (see record()).
"""

from __future__ import annotations

import contextlib
import struct
import threading
import uuid
from datetime import timedelta, timezone
from typing import Any, Iterator, Optional

import numpy as np
import psycopg
from psycopg import pq
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from rdirdb.errors import ClosedError, ShardBusy, ShardExists
from rdirdb.sharedbase.backend import Stats
from rdirdb.sharedbase.rows import ShardRow
from rdirdb.sharedbase.schema import check_version
from rdirdb.sharedbase.states import ShardState

Connection = psycopg.Connection[TupleRow]

_COLUMNS = "id, name, state, locker, locker_ts, pool_name, mapped_on_hosts_when_packed"

# How long a state change waits for a row another transaction holds (a writer
# mid-batch holds its shard's row) before reporting the shard busy.
LOCK_TIMEOUT = "5s"

_LOCK_ONE = """
UPDATE shards SET state = %(new)s, locker = %(locker)s, locker_ts = now()
WHERE id = (
    SELECT id FROM shards
    WHERE state = %(current)s
      AND COALESCE(array_length(mapped_on_hosts_when_packed, 1), 0) >= %(min_hosts)s
      AND (%(pool)s::text IS NULL OR pool_name = %(pool)s::text)
    ORDER BY id
    LIMIT 1
    FOR NO KEY UPDATE SKIP LOCKED
)
RETURNING name, id
"""

# The fence: the shard must still be ours and writable. FOR SHARE keeps it so
# until the caller's transaction ends: a release or a packer's state change
# waits for our commit, so it never misses rows we are writing.
_FENCE = """
SELECT id FROM shards
WHERE id = %(shard)s AND state IN ('writing', 'importing') AND locker = %(locker)s
FOR SHARE
"""

# The ids come sorted, and unnest feeds them to the INSERT in array order, so
# overlapping batches take index entries in the same order (no deadlocks). No
# ORDER BY: the input is already sorted, and sorting 50,000 ids spills to disk
# under the default work_mem. The EXISTS repeats the fence, so that a fenced
# writer inserts nothing even though the fence's answer is read afterwards.
_INSERT = """
INSERT INTO signature2shard (signature, shard, state)
SELECT sig, %(shard)s, 'present' FROM unnest(%(ids)b) AS sig
WHERE EXISTS (SELECT 1 FROM shards WHERE id = %(shard)s AND state IN ('writing', 'importing')
              AND locker = %(locker)s)
"""
# The usual batch is all new ids: a plain INSERT, which spares PostgreSQL a
# speculative insertion per row (about 15% of the batch, see
# docs/sharedbase.md). A batch with an id already there (present, a tombstone,
# or a racing writer's) fails on the primary key; then winery's ON CONFLICT
# form runs instead, which re-points a deleted row to our shard (a re-add).
_RECORD_NEW = _INSERT
_RECORD_ANY = _INSERT + """ON CONFLICT (signature) DO UPDATE SET shard = EXCLUDED.shard, state = EXCLUDED.state
    WHERE signature2shard.state = 'deleted'
"""

_OWNERS = "SELECT signature, shard FROM signature2shard WHERE signature = ANY(%(ids)b)"


class ObjIdArray:
    """obj_ids as a PostgreSQL bytea[] in binary format, built by numpy in one
    go: psycopg's list dumper runs Python code per element, which dominated
    the client side of a 50,000-id batch."""

    __slots__ = ("data",)

    _BYTEA_OID = 17
    _BYTEA_ARRAY_OID = 1001

    def __init__(self, ids: np.ndarray) -> None:
        n, size = ids.shape
        if n == 0:
            self.data = struct.pack(">iii", 0, 0, self._BYTEA_OID)
            return
        # Header: 1 dimension, no NULLs, element type, then length and lower bound.
        header = struct.pack(">iiiii", 1, 0, self._BYTEA_OID, n, 1)
        items = np.empty((n, 4 + size), dtype=np.uint8)
        items[:, :4] = np.frombuffer(struct.pack(">i", size), dtype=np.uint8)  # each item's length
        items[:, 4:] = ids
        self.data = header + items.tobytes()

    @classmethod
    def from_list(cls, ids: list[bytes]) -> "ObjIdArray":
        return cls(np.frombuffer(b"".join(ids), dtype=np.uint8).reshape(len(ids), -1))


class _ObjIdArrayDumper(Dumper):
    format = Format.BINARY
    oid = ObjIdArray._BYTEA_ARRAY_OID

    def dump(self, obj: ObjIdArray) -> bytes:
        return obj.data


psycopg.adapters.register_dumper(ObjIdArray, _ObjIdArrayDumper)


# The single-id reads, prepared once per connection and run straight on libpq:
# psycopg's cursor machinery costs about as much as the round trip itself.
_HOT = {
    b"rdirdb_contains": b"SELECT shard FROM signature2shard WHERE signature = $1 AND state = 'present'",
    b"rdirdb_get": b"SELECT s.name, s.state FROM signature2shard o JOIN shards s ON s.id = o.shard "
                   b"WHERE o.signature = $1 AND o.state = 'present'",
}
_BYTEA = [ObjIdArray._BYTEA_OID]
_UNDEFINED_STATEMENT = b"26000"  # invalid_sql_statement_name


def _prepare_hot(conn: Connection) -> None:
    for name, sql in _HOT.items():
        result = conn.pgconn.prepare(name, sql, _BYTEA)
        if result.status != pq.ExecStatus.COMMAND_OK:
            raise psycopg.errors.error_from_result(result)


def _row(values: TupleRow) -> ShardRow:
    id_, name, state, locker, locker_ts, pool_name, mapped = values
    # char(32) pads short names with blanks on output; names never end with one.
    # Timestamps in UTC, as the LMDB backend gives them (psycopg uses the session's zone).
    locker_ts = locker_ts.astimezone(timezone.utc) if locker_ts is not None else None
    return ShardRow(id_, name.rstrip(), ShardState(state), locker, locker_ts, pool_name, list(mapped))


def _close_pool(pool: ConnectionPool) -> None:
    """Close ``pool``, from any thread. The garbage collector can run in one of
    the pool's own worker threads (daemons), which cannot join themselves: a
    daemon thread hands the close to a new thread."""
    if threading.current_thread().daemon:
        threading.Thread(target=pool.close, name=f"{pool.name}-close", daemon=True).start()
    else:
        pool.close()


class PgBackend:
    # Locks and shard creations commit on their own connection, whatever
    # the caller's transaction does afterwards.
    locks_in_transaction = False

    def __init__(self, dsn: str, application_name: str, *, min_size: int = 0, max_size: int = 4) -> None:
        if max_size < 2:
            # A writer holds one connection for its transaction and may need
            # another to lock a shard.
            raise ValueError("the connection pool needs max_size >= 2")
        self.dsn = dsn
        self.application_name = application_name
        self._pool_size = (min_size, max_size)
        self._pool: Optional[ConnectionPool] = None
        self._pool_lock = threading.Lock()
        self._closed = False

    @property
    def pool(self) -> ConnectionPool:
        """The connection pool, opened on first use (as winery's), after a
        check of the schema version."""
        if self._pool is None:
            with self._pool_lock:
                if self._closed:
                    raise ClosedError("this SharedBase is closed")
                if self._pool is None:
                    self._pool = self._open_pool()
        return self._pool

    def _open_pool(self) -> ConnectionPool:
        kwargs: dict[str, Any] = {"application_name": self.application_name, "autocommit": True}
        # Checked before the pool exists: its connections prepare statements
        # on tables an empty or foreign database does not have.
        with psycopg.connect(self.dsn, **kwargs) as conn:
            check_version(conn)
        min_size, max_size = self._pool_size
        return ConnectionPool(
            conninfo=self.dsn,
            kwargs=kwargs,
            min_size=min_size,
            max_size=max_size,
            max_idle=60,
            configure=_prepare_hot,
            name=f"pool-{self.application_name}",
            open=True,
        )

    def close(self) -> None:
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            _close_pool(pool)

    # -- plumbing ------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, db: Optional[Connection] = None) -> Iterator[Connection]:
        if db is not None:
            yield db
            return
        with self.pool.connection() as conn, conn.transaction():
            yield conn

    @contextlib.contextmanager
    def _conn(self, db: Optional[Connection] = None) -> Iterator[Connection]:
        if db is not None:
            yield db
        else:
            with self.pool.connection() as conn:
                yield conn

    def _one(self, sql: str, params: Any = None, db: Optional[Connection] = None) -> Optional[TupleRow]:
        with self._conn(db) as conn:
            return conn.execute(sql, params).fetchone()

    def _all(self, sql: str, params: Any = None) -> list[TupleRow]:
        with self._conn() as conn:
            return conn.execute(sql, params).fetchall()

    # -- shards ----------------------------------------------------------------

    def shard_row(self, *, name: Optional[str] = None, id: Optional[int] = None,
                  db: Optional[Connection] = None) -> Optional[ShardRow]:
        column, value = ("name", name) if name is not None else ("id", id)
        row = self._one(f"SELECT {_COLUMNS} FROM shards WHERE {column} = %s", (value,), db)
        return _row(row) if row else None

    def select_shards(self, *, state: Optional[ShardState] = None, not_state: Optional[ShardState] = None,
                      stale_delay: Optional[timedelta] = None) -> list[ShardRow]:
        clauses: list[str] = []
        params: list[Any] = []
        if state is not None:
            clauses.append("state = %s")
            params.append(state.value)
        if not_state is not None:
            clauses.append("state != %s")
            params.append(not_state.value)
        if stale_delay is not None:
            # The server's clock, the one that wrote locker_ts.
            clauses.append("locker IS NOT NULL AND locker_ts < now() - %s")
            params.append(stale_delay)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return [_row(r) for r in self._all(f"SELECT {_COLUMNS} FROM shards {where} ORDER BY id", params)]

    def lock_one(self, current: ShardState, new: ShardState, min_hosts: int, from_pool: Optional[str],
                 locker: uuid.UUID) -> Optional[tuple[str, int]]:
        row = self._one(_LOCK_ONE, {"new": new.value, "locker": locker, "current": current.value,
                                    "min_hosts": min_hosts, "pool": from_pool})
        return (row[0].rstrip(), row[1]) if row else None

    def create(self, name: str, state: ShardState, locker: uuid.UUID, pool_name: str) -> tuple[str, int]:
        try:
            row = self._one(
                "INSERT INTO shards (name, state, locker, locker_ts, pool_name) "
                "VALUES (%s, %s, %s, now(), %s) RETURNING name, id",
                (name, state.value, locker, pool_name))
        except psycopg.errors.UniqueViolation:
            raise ShardExists(f"a shard named {name!r} already exists") from None
        assert row is not None  # an INSERT ... RETURNING that succeeded
        return (row[0].rstrip(), row[1])

    def update_state(self, name: str, new_state: ShardState, *, locker: Optional[uuid.UUID],
                     expect_states: Optional[list[ShardState]] = None,
                     expect_locker: Optional[uuid.UUID] = None, db: Optional[Connection] = None) -> bool:
        sql = ("UPDATE shards SET state = %(new)s, locker = %(locker)s, "
               "locker_ts = CASE WHEN %(locker)s::uuid IS NULL THEN NULL ELSE now() END "
               "WHERE name = %(name)s")
        if expect_states is not None:
            sql += " AND state = ANY(%(states)s::shard_state[])"
        if expect_locker is not None:
            sql += " AND locker = %(expect_locker)s"
        params = {"new": new_state.value, "locker": locker, "name": name,
                  "states": [s.value for s in expect_states or ()], "expect_locker": expect_locker}
        if db is not None:  # the caller's transaction, the caller's lock timeout
            return db.execute(sql, params).rowcount == 1
        with self.pool.connection() as conn:
            try:
                with conn.transaction():
                    conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                    return conn.execute(sql, params).rowcount == 1
            except psycopg.errors.LockNotAvailable:
                raise ShardBusy(f"shard {name!r} is busy: another transaction holds its row") from None

    def delete_shard(self, name: str, pool_name: str) -> None:
        with self._conn() as conn:
            conn.execute("DELETE FROM shards WHERE name = %s AND pool_name = %s", (name, pool_name))

    def move_pool(self, name: str, from_pool: str, to_pool: str) -> int:
        with self._conn() as conn:
            return conn.execute(
                "UPDATE shards SET pool_name = %s WHERE state = 'readonly' AND name = %s AND pool_name = %s",
                (to_pool, name, from_pool)).rowcount

    def add_mapped_host(self, name: str, host: str) -> Optional[set[str]]:
        # One atomic UPDATE: concurrent hosts wait for each other instead of
        # failing as winery's SELECT ... SKIP LOCKED does.
        row = self._one(
            "UPDATE shards SET mapped_on_hosts_when_packed = CASE "
            "WHEN %(host)s = ANY(mapped_on_hosts_when_packed) THEN mapped_on_hosts_when_packed "
            "ELSE array_append(mapped_on_hosts_when_packed, %(host)s) END "
            "WHERE name = %(name)s RETURNING mapped_on_hosts_when_packed",
            {"host": host, "name": name})
        return set(row[0]) if row else None

    def list_shard_tables(self) -> list[str]:
        # winery's query: the visible ordinary tables named shard_*, but its template.
        rows = self._all(
            "SELECT c.relname FROM pg_catalog.pg_class c "
            "LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname <> 'pg_catalog' AND n.nspname !~ '^pg_toast' "
            "AND n.nspname <> 'information_schema' AND pg_catalog.pg_table_is_visible(c.oid) "
            "AND c.relname ~ '^shard_' AND c.relname <> 'shard_template' ORDER BY c.relname")
        return [name.removeprefix("shard_") for (name,) in rows]

    def count_present(self, name: str) -> int:
        row = self._one(
            "SELECT COUNT(*) FROM signature2shard WHERE state = 'present' "
            "AND shard = (SELECT id FROM shards WHERE name = %s)", (name,))
        assert row is not None  # an aggregate without GROUP BY: one row
        return int(row[0])

    def stats(self) -> Stats:
        shards: dict[str, int] = dict(self._all("SELECT state::text, COUNT(*) FROM shards GROUP BY state"))
        objects: dict[str, int] = dict(self._all("SELECT state::text, COUNT(*) FROM signature2shard GROUP BY state"))
        return {"shards": shards, "objects": objects}

    # -- objects ---------------------------------------------------------------

    @staticmethod
    def check_db(db: Any) -> None:
        if not isinstance(db, psycopg.Connection):
            raise TypeError(f"db must be a psycopg connection (from SharedBase.transaction()), not {type(db).__name__}")
        if db.info.transaction_status != pq.TransactionStatus.INTRANS:
            # In autocommit the fence would not outlive its own statement.
            raise ValueError("db must be in an open transaction: use `with base.transaction() as db:`")

    def record(self, db: Connection, shard_id: int, locker: uuid.UUID,
               ids: list[bytes]) -> Optional[dict[bytes, int]]:
        """Record ``ids`` (sorted, unique) into our shard in ``db``'s transaction.

        One round trip (a pipeline) when every id is new; one more when some
        were already there, to insert the rest and read the owners. None when
        the fence fails: nothing written.
        """
        params = {"shard": shard_id, "locker": locker, "ids": ObjIdArray.from_list(ids)}
        inserted: Optional[psycopg.Cursor] = None
        with db.pipeline():
            fence = db.execute(_FENCE, params)
            try:
                with db.transaction():  # a savepoint: a conflict undoes this statement only
                    inserted = db.execute(_RECORD_NEW, params)
            except psycopg.errors.UniqueViolation:
                inserted = None
        if fence.fetchone() is None:
            return None
        if inserted is not None:  # no conflict: all ours
            return dict.fromkeys(ids, shard_id)
        with db.pipeline():
            db.execute(_RECORD_ANY, params)
            # A statement of its own: under READ COMMITTED it sees the rows of
            # racing writers the INSERT waited for.
            found = db.execute(_OWNERS, params, binary=True)
        owners: dict[bytes, int] = dict(found.fetchall())
        return {i: owners[i] for i in ids if i in owners}

    def _hot(self, statement: bytes, obj_id: bytes, binary: bool) -> Optional[tuple[Any, ...]]:
        """The first row of a prepared hot statement, None when there is none."""
        conn = self.pool.getconn()
        try:
            result = conn.pgconn.exec_prepared(statement, [obj_id], [1], 1 if binary else 0)
            if result.error_field(pq.DiagnosticField.SQLSTATE) == _UNDEFINED_STATEMENT:
                # psycopg runs DEALLOCATE ALL after a rollback (record()'s
                # savepoint on a conflict, a caller's) once it has prepared
                # statements of its own: prepare ours again.
                _prepare_hot(conn)
                result = conn.pgconn.exec_prepared(statement, [obj_id], [1], 1 if binary else 0)
        finally:
            self.pool.putconn(conn)
        if result.status != pq.ExecStatus.TUPLES_OK:
            raise psycopg.errors.error_from_result(result)
        if result.ntuples == 0:
            return None
        return tuple(result.get_value(0, i) for i in range(result.nfields))

    def contains(self, obj_id: bytes) -> Optional[int]:
        row = self._hot(b"rdirdb_contains", obj_id, binary=True)
        return int.from_bytes(row[0], "big") if row else None

    def contains_many(self, ids: np.ndarray) -> np.ndarray:
        with self._conn() as conn:
            found = dict(conn.execute(
                "SELECT signature, shard FROM signature2shard WHERE signature = ANY(%b) AND state = 'present'",
                (ObjIdArray(ids),), binary=True).fetchall())
        keys = [row.tobytes() for row in ids]
        return np.fromiter((found.get(k, 0) for k in keys), dtype=np.int64, count=len(keys))

    def get(self, obj_id: bytes) -> Optional[tuple[str, ShardState]]:
        # One statement: the owner and its state from the same snapshot.
        row = self._hot(b"rdirdb_get", obj_id, binary=False)
        return (row[0].decode().rstrip(), ShardState(row[1].decode())) if row else None

    def signatures_page(self, after: bytes, limit: int) -> list[bytes]:
        rows = self._all(
            "SELECT signature FROM signature2shard WHERE state = 'present' AND signature > %b "
            "ORDER BY signature LIMIT %s", (after, limit))
        return [bytes(r[0]) for r in rows]

    def delete(self, obj_id: bytes) -> None:
        with self._conn() as conn:
            conn.execute("UPDATE signature2shard SET state = 'deleted' WHERE signature = %b", (obj_id,))

    def deleted_objects(self, pool_name: Optional[str]) -> list[tuple[bytes, str, ShardState, str]]:
        rows = self._all(
            "SELECT o.signature, s.name, s.state, s.pool_name FROM signature2shard o "
            "JOIN shards s ON s.id = o.shard WHERE o.state = 'deleted' "
            "AND (%(pool)s::text IS NULL OR s.pool_name = %(pool)s::text) "
            # winery's order, nothing more: within a shard, the database's
            # (in practice the order of deletion), which winery's tests expect.
            "ORDER BY s.pool_name, s.name",
            {"pool": pool_name})
        return [(bytes(sig), name.rstrip(), ShardState(state), pool) for sig, name, state, pool in rows]

    def clean_deleted(self, obj_id: bytes) -> None:
        with self._conn() as conn:
            conn.execute("DELETE FROM signature2shard WHERE state = 'deleted' AND signature = %b", (obj_id,))
