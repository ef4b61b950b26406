"""The PostgreSQL connection pool: opened on first use, released when a
SharedBase is dropped without close(), as winery's code drops them."""

import gc
import threading
import time

import psycopg
import pytest
from sb_helpers import obj_id

from rdirdb import SharedBase
from rdirdb.errors import ClosedError


def connections(dsn: str, application_name: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                            (application_name,)).fetchone()[0]


def wait_for_connections(dsn: str, application_name: str, expected: int) -> int:
    for _ in range(100):
        if (count := connections(dsn, application_name)) == expected:
            break
        time.sleep(0.05)
    return count


@pytest.fixture
def pg_dsn(pg_module_dsn):
    return pg_module_dsn


def test_pool_opens_on_first_use(pg_dsn):
    with SharedBase(pg_dsn, application_name="lazy-pool") as base:
        assert connections(pg_dsn, "lazy-pool") == 0
        assert base.contains(obj_id(1)) is None
        assert connections(pg_dsn, "lazy-pool") == 1
    assert wait_for_connections(pg_dsn, "lazy-pool", 0) == 0
    with pytest.raises(ClosedError):
        base.contains(obj_id(1))


def use_unclosed(dsn: str, application_name: str) -> SharedBase:
    base = SharedBase(dsn, application_name=application_name, active_pool_name="pool-a")
    with base.transaction() as db:
        base.record_new_obj_ids(db, [obj_id(1)])
    assert base.contains(obj_id(1)) is not None
    return base


def test_dropped_base_releases_its_connections(pg_dsn):
    """As winery drops them: no close(), the last reference goes away."""
    base = use_unclosed(pg_dsn, "dropped")
    assert connections(pg_dsn, "dropped") >= 1
    del base
    assert wait_for_connections(pg_dsn, "dropped", 0) == 0


class _Collect:
    """A maintenance task of psycopg_pool: its worker threads run ``run()``."""

    def __init__(self) -> None:
        self.done = threading.Event()

    def run(self) -> None:
        gc.collect()
        self.done.set()


def test_base_collected_in_its_own_pools_worker(pg_dsn):
    """The collector may run in any thread, the pool's own workers included,
    which cannot join themselves: psycopg_pool's __del__ then raised "cannot
    join current thread" (a PytestUnraisableExceptionWarning, an error under
    our filterwarnings). The SharedBase here is garbage only the collector
    finds (a reference cycle), collected in one of its pool's workers (the
    test reaches them through the pool's task queue, psycopg_pool's internals)."""
    base = use_unclosed(pg_dsn, "collected")
    base.cycle = base
    tasks = base.pool._tasks
    del base
    task = _Collect()
    tasks.put(task)
    assert task.done.wait(30)
    assert wait_for_connections(pg_dsn, "collected", 0) == 0
