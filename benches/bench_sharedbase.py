"""pytest-benchmark figures of rdirdb's SharedBase, on both backends.

    python3 -m pytest benches/bench_sharedbase.py --benchmark-only [--benchmark-disable-gc]

PostgreSQL: a scratch database on $RDIRDB_BENCH_PG_DSN (default: the tests'
server), skipped when unreachable. For winery's figures next to ours, run
benches/compare_sharedbase.py.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import uuid

import numpy as np
import pytest

from rdirdb import SharedBase

PG_DSN = os.environ.get("RDIRDB_BENCH_PG_DSN",
                        os.environ.get("RDIRDB_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"))
STORED = 20_000  # ids in the base before measuring lookups


def make_ids(label: str, n: int) -> list[bytes]:
    return [hashlib.sha256(f"{label}-{i}".encode()).digest() for i in range(n)]


@pytest.fixture(scope="module")
def pg_dsn():
    psycopg = pytest.importorskip("psycopg")
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from rdirdb.sharedbase import init_schema

    try:
        admin = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        pytest.skip(f"PostgreSQL unreachable at {PG_DSN}: {error}")
    name = f"rdirdb_bench_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(**{**conninfo_to_dict(PG_DSN), "dbname": name})
    init_schema(dsn)
    yield dsn
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="module", params=["lmdb", "pg"])
def base(request, tmp_path_factory):
    dsn = (f"lmdb://{tmp_path_factory.mktemp('sharedbase')}" if request.param == "lmdb"
           else request.getfixturevalue("pg_dsn"))
    with SharedBase(dsn, active_pool_name="bench") as base:
        with base.transaction() as db:
            base.record_new_obj_ids(db, make_ids("stored", STORED))
        yield base


@pytest.fixture(scope="module")
def hits():
    return itertools.cycle(make_ids("stored", STORED))


@pytest.fixture(scope="module")
def misses():
    return itertools.cycle(make_ids("missing", STORED))


@pytest.mark.benchmark(group="record")
@pytest.mark.parametrize("batch", [1_000, 5_000])
def test_record_batch(benchmark, base, batch):
    """One transaction recording ``batch`` new ids (winery's add_batch)."""
    batches = (make_ids(f"batch-{uuid.uuid4()}", batch) for _ in itertools.count())

    def record(ids):
        with base.transaction() as db:
            base.record_new_obj_ids(db, ids)

    benchmark.pedantic(record, setup=lambda: ((next(batches),), {}), rounds=20 if batch <= 1_000 else 5)


@pytest.mark.benchmark(group="contains")
def test_contains_hit(benchmark, base, hits):
    assert benchmark(lambda: base.contains(next(hits)))


@pytest.mark.benchmark(group="contains")
def test_contains_miss(benchmark, base, misses):
    assert benchmark(lambda: base.contains(next(misses))) is None


@pytest.mark.benchmark(group="get")
def test_get(benchmark, base, hits):
    assert benchmark(lambda: base.get(next(hits)))


@pytest.mark.benchmark(group="contains_many")
def test_contains_many_10k(benchmark, base):
    ids = np.array(make_ids("stored", 5_000) + make_ids("missing", 5_000), dtype="S32")
    found = benchmark(base.contains_many, ids)
    assert np.count_nonzero(found) == 5_000
