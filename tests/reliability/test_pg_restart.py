"""SharedBase across a PostgreSQL server restart, on a throwaway cluster.

The machine's PostgreSQL is shared with other test sessions, so this starts its own
cluster (tests/pg.py: initdb on a free port, as asyncpg's test harness does), restarts it while a
SharedBase is in use, and checks: calls during the outage fail clearly (psycopg's
OperationalError, no hang), the pool recovers once the server is back, and no object is
recorded twice or lost.
"""

from __future__ import annotations

import os
import time

import pytest

from rdirdb.sharedbase import SharedBase, init_schema
from tests.pg import throwaway_cluster

psycopg = pytest.importorskip("psycopg")


@pytest.fixture(scope="module")
def cluster():
    with throwaway_cluster() as cluster:
        yield cluster


def test_server_restart(cluster):
    init_schema(cluster.dsn)
    base = SharedBase(cluster.dsn, application_name="restart-test", active_pool_name="pool-a", max_size=2)
    try:
        before = [os.urandom(32) for _ in range(300)]
        base.record_new_obj_ids(None, before)
        shard = base.locked_shard_id

        cluster.pg_ctl("stop")
        during = [os.urandom(32) for _ in range(50)]
        start = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            base.record_new_obj_ids(None, during)
        assert time.monotonic() - start < 30  # a clear failure, not a hang

        cluster.pg_ctl("start")
        after = [os.urandom(32) for _ in range(300)]
        for _ in range(5):  # the pool drops its dead connections
            try:
                base.record_new_obj_ids(None, after)
                break
            except psycopg.OperationalError:
                time.sleep(0.2)
        else:
            pytest.fail("SharedBase did not recover after the restart")
        # Every id exactly once, in the shard this instance holds; nothing of the failed call.
        assert all(base.contains(obj_id) == shard for obj_id in before + after)
        assert not any(base.contains(obj_id) for obj_id in during)
        with psycopg.connect(cluster.dsn) as conn:
            (rows,) = conn.execute("SELECT count(*) FROM signature2shard").fetchone()
        assert rows == len(before) + len(after)
    finally:
        base.close()
