"""SharedBase on PostgreSQL when its connections die, and SharedBase under bad input.

Faults: a pool connection is terminated (``pg_terminate_backend``) in the middle of a
``record_new_obj_ids`` or ``lock_one_shard`` transaction. To hit the middle every time, another
session holds an EXCLUSIVE lock on the table the statement writes, the statement waits for it,
and the waiting backend is terminated. The operation must fail with a clear psycopg
OperationalError (not hang, not half write); the same call again succeeds on a fresh
connection of the pool; no object is recorded twice or lost, no shard locked twice.
Idle pool connections terminated all at once: each call fails clearly or succeeds, and the
pool recovers within a few calls.

Bad input (both backends): obj_ids that are not 32 bytes or not bytes, unknown states: a
TypeError or ValueError, and nothing written.

A PostgreSQL restart runs on a throwaway cluster: test_pg_restart.py.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rdirdb.sharedbase import SharedBase, ShardState, init_schema

psycopg = pytest.importorskip("psycopg")

from tests.pg import create_db, drop_db, with_dbname  # noqa: E402

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def pg_dsn(pg_admin, pg_root_dsn):
    name = create_db(pg_admin, "sb_faults")
    dsn = with_dbname(pg_root_dsn, name)
    init_schema(dsn)
    yield dsn
    drop_db(pg_admin, name)


@pytest.fixture
def pg_base(pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE signature2shard, shards RESTART IDENTITY")
    app = f"rel-faults-{uuid.uuid4().hex[:8]}"
    base = SharedBase(pg_dsn, application_name=app, active_pool_name="pool-a", max_size=4)
    yield base
    base.close()


def ids(n: int, salt: int = 0) -> list[bytes]:
    return [os.urandom(24) + (salt * 1_000_000 + i).to_bytes(8, "big") for i in range(n)]


def backends(admin, base, waiting: bool = False) -> list[int]:
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
        + (" AND wait_event_type = 'Lock'" if waiting else ""), (base.application_name,)).fetchall()
    return [pid for (pid,) in rows]


def terminate_while_blocked(admin, dsn, base, table: str, call):
    """Run ``call()`` while ``table`` is locked; terminate its backend once it waits; return
    (what it raised, seconds it took)."""
    outcome: dict = {}

    def run():
        started = time.monotonic()
        try:
            outcome["result"] = call()
        except BaseException as exc:  # noqa: BLE001 (reported to the test)
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - started

    with psycopg.connect(dsn) as blocker:
        blocker.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        deadline = time.monotonic() + TIMEOUT
        while not (waiting := backends(admin, base, waiting=True)):
            assert time.monotonic() < deadline and thread.is_alive(), f"never blocked: {outcome}"
            time.sleep(0.01)
        for pid in waiting:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "the call hangs after its connection was terminated"
        blocker.rollback()
    assert "error" in outcome, f"the call succeeded on a terminated connection: {outcome}"
    return outcome["error"], outcome["seconds"]


def assert_recorded_once(dsn, base, expected: list[bytes]) -> None:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT signature, count(*) FROM signature2shard GROUP BY signature").fetchall()
    assert all(count == 1 for _, count in rows)
    assert sorted(bytes(sig) for sig, _ in rows) == sorted(expected)
    assert base.count_objects() == len(expected)
    owner = base.locked_shard_id
    assert all(base.contains(i) == owner for i in expected)


def test_terminated_inside_record_new_obj_ids(pg_admin, pg_dsn, pg_base):
    first = ids(500, 1)
    pg_base.record_new_obj_ids(None, first)  # the shard is locked, the pool warm
    batch = ids(2000, 2) + first[:100]  # new ids and ids already there
    error, seconds = terminate_while_blocked(
        pg_admin, pg_dsn, pg_base, "signature2shard", lambda: pg_base.record_new_obj_ids(None, batch))
    assert isinstance(error, psycopg.OperationalError), repr(error)
    assert seconds < TIMEOUT
    assert_recorded_once(pg_dsn, pg_base, first)  # nothing of the failed batch
    owners = pg_base.record_new_obj_ids(None, batch)  # the same call again: a fresh connection
    assert set(owners.values()) == {pg_base.locked_shard_id}
    assert_recorded_once(pg_dsn, pg_base, first + batch[:2000])


def test_terminated_at_commit_of_a_caller_transaction(pg_admin, pg_dsn, pg_base):
    batch = ids(300, 3)
    with pytest.raises(psycopg.OperationalError):
        with pg_base.transaction() as db:
            pg_base.record_new_obj_ids(db, batch)
            pg_admin.execute("SELECT pg_terminate_backend(%s)", (db.info.backend_pid,))
    assert pg_base.count_objects() == 0
    pg_base.record_new_obj_ids(None, batch)
    assert_recorded_once(pg_dsn, pg_base, batch)


def test_terminated_inside_lock_one_shard(pg_admin, pg_dsn, pg_base):
    name, shard_id = pg_base.create_shard(ShardState.STANDBY)
    error, seconds = terminate_while_blocked(
        pg_admin, pg_dsn, pg_base, "shards",
        lambda: pg_base.lock_one_shard(ShardState.STANDBY, ShardState.PACKING))
    assert isinstance(error, psycopg.OperationalError), repr(error)
    assert pg_base.get_shard_state(name) == ShardState.STANDBY  # not half locked
    assert pg_base.lock_one_shard(ShardState.STANDBY, ShardState.PACKING) == (name, shard_id)
    assert pg_base.lock_one_shard(ShardState.STANDBY, ShardState.PACKING) is None  # not twice
    assert pg_base.get_shard_state(name) == ShardState.PACKING


def test_every_pool_connection_terminated(pg_admin, pg_dsn, pg_base):
    recorded = ids(200, 4)
    pg_base.record_new_obj_ids(None, recorded)
    pids = backends(pg_admin, pg_base)
    assert pids
    for pid in pids:
        pg_admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    time.sleep(0.1)
    failures = 0
    more = ids(200, 5)
    for _ in range(10):  # each call fails clearly or succeeds; the pool recovers
        try:
            pg_base.record_new_obj_ids(None, more)
            assert pg_base.contains(recorded[0]) == pg_base.locked_shard_id
            break
        except psycopg.OperationalError:
            failures += 1
    else:
        pytest.fail("the pool did not recover after 10 calls")
    assert failures <= len(pids)
    assert_recorded_once(pg_dsn, pg_base, recorded + more)


# -- bad input, both backends --------------------------------------------------------------

BAD_IDS = st.one_of(
    st.binary(max_size=31), st.binary(min_size=33, max_size=64), st.text(min_size=32, max_size=32),
    st.integers(), st.none(), st.floats(), st.lists(st.integers(0, 255), min_size=32, max_size=32),
)
BAD_STATES = st.one_of(st.text(max_size=12).filter(lambda s: s not in {x.value for x in ShardState}),
                       st.integers(), st.none(), st.binary(max_size=8))


@pytest.fixture(params=["lmdb", "pg"])
def any_base(request, tmp_path):
    if request.param == "lmdb":
        dsn = f"lmdb://{tmp_path}/sharedbase"
    else:
        dsn = request.getfixturevalue("pg_dsn")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE signature2shard, shards RESTART IDENTITY")
    with SharedBase(dsn, active_pool_name="pool-a") as base:
        yield base


def _everything(base) -> tuple:
    return (base.stats(), list(base.list_shards()), list(base.list_signatures()),
            list(base.deleted_objects()))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bad_input_writes_nothing(any_base, data):
    base = any_base
    base.record_new_obj_ids(None, [b"\x01" * 32])
    before = _everything(base)
    bad_id = data.draw(BAD_IDS)
    bad_state = data.draw(BAD_STATES)
    calls = [
        lambda: base.record_new_obj_ids(None, [b"\x02" * 32, bad_id]),
        lambda: base.record_new_obj_id(None, bad_id),
        lambda: base.delete(bad_id),
        lambda: base.clean_deleted_object(bad_id), lambda: base.contains_many([b"\x02" * 32, bad_id]),
        lambda: base.lock_one_shard(bad_state, ShardState.PACKING),
        lambda: base.lock_one_shard(ShardState.STANDBY, bad_state),
        lambda: base.create_shard(bad_state),
        lambda: base.set_shard_state(bad_state, name=base.locked_shard),
        lambda: base.release_locked_shard(bad_state),
    ]
    for call in calls:
        with pytest.raises((TypeError, ValueError)) as info:
            call()
        assert str(info.value), "an error without a message"
    # Lookups, as winery's: bytes of another size are simply not found.
    for lookup in (base.contains, base.get):
        if isinstance(bad_id, bytes):
            assert lookup(bad_id) is None
        else:
            with pytest.raises(TypeError, match="obj_id must be bytes"):
                lookup(bad_id)
    assert _everything(base) == before
