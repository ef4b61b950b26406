"""Fixtures of the SharedBase tests: one base per backend.

PostgreSQL: the server of tests/pg.py (RDIRDB_TEST_PG_DSN, else a throwaway
cluster). Each test module gets a database of its own, created there and
dropped afterwards; tests empty its tables.
"""

from __future__ import annotations

import pytest

from rdirdb.sharedbase import SharedBase, init_schema
from tests.pg import create_db, drop_db, with_dbname

BACKENDS = ["lmdb", "pg"]


@pytest.fixture(scope="module")
def pg_empty_db(pg_admin, pg_root_dsn, request):
    """A fresh, empty database for this test module; yields its DSN."""
    name = create_db(pg_admin, "sb_" + request.module.__name__.rpartition(".")[2])
    yield with_dbname(pg_root_dsn, name)
    drop_db(pg_admin, name)


@pytest.fixture
def pg_scratch_db(pg_admin, pg_root_dsn):
    """A fresh, empty database for one test; yields its DSN."""
    name = create_db(pg_admin, "sb_scratch")
    yield with_dbname(pg_root_dsn, name)
    drop_db(pg_admin, name)


@pytest.fixture(scope="module")
def pg_module_dsn(pg_empty_db):
    """The module's database with the SharedBase schema."""
    init_schema(pg_empty_db)
    return pg_empty_db


def _truncate(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE signature2shard, shards RESTART IDENTITY")


@pytest.fixture(params=BACKENDS)
def dsn(request, tmp_path):
    """An empty SharedBase: lmdb:///tmp/... or the module's PostgreSQL database."""
    if request.param == "lmdb":
        return f"lmdb://{tmp_path}/sharedbase"
    pg_dsn = request.getfixturevalue("pg_module_dsn")
    _truncate(pg_dsn)
    return pg_dsn


@pytest.fixture
def open_base(dsn):
    """Opens SharedBases on ``dsn`` (default pool ``pool-a``), closed after the test."""
    bases = []

    def open_base(active_pool_name: str | None = "pool-a", **kwargs) -> SharedBase:
        base = SharedBase(dsn, active_pool_name=active_pool_name, **kwargs)
        bases.append(base)
        return base

    yield open_base
    for base in bases:
        base.close()


@pytest.fixture
def base(open_base) -> SharedBase:
    return open_base()
