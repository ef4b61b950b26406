"""Fixtures of the SharedBase tests: one base per backend.

PostgreSQL: the server named by RDIRDB_TEST_PG_DSN (default
postgresql://postgres@127.0.0.1:5432/test, trust auth). Each test module gets
a database of its own, created from that DSN and dropped afterwards; tests
empty its tables. When the server is unreachable the PostgreSQL cases are
skipped, or fail if RDIRDB_REQUIRE_PG=1 (CI).
"""

from __future__ import annotations

import os
import uuid

import pytest

from rdirdb.sharedbase import SharedBase, init_schema

PG_DSN = os.environ.get("RDIRDB_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["lmdb", "pg"]


def _with_dbname(dsn: str, dbname: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    return make_conninfo(**{**conninfo_to_dict(dsn), "dbname": dbname})


def _admin_connect():
    import psycopg

    try:
        return psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5)
    except Exception as error:
        message = f"PostgreSQL unreachable at {PG_DSN}: {error}"
        if os.environ.get("RDIRDB_REQUIRE_PG") == "1":
            pytest.fail(f"{message} (RDIRDB_REQUIRE_PG=1)", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="module")
def pg_server():
    """The admin connection; skips (or fails, in CI) without a server."""
    conn = _admin_connect()
    yield conn
    conn.close()


def _create_db(server, label: str) -> str:
    name = f"rdirdb_sb_{label}_{uuid.uuid4().hex[:8]}"
    server.execute(f'CREATE DATABASE "{name}"')
    return name


@pytest.fixture(scope="module")
def pg_empty_db(pg_server, request):
    """A fresh, empty database for this test module; yields its DSN."""
    name = _create_db(pg_server, request.module.__name__.rpartition(".")[2])
    yield _with_dbname(PG_DSN, name)
    pg_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_scratch_db(pg_server):
    """A fresh, empty database for one test; yields its DSN."""
    name = _create_db(pg_server, "scratch")
    yield _with_dbname(PG_DSN, name)
    pg_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
