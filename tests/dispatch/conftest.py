"""Registry fixtures: every dispatch test runs on the file and the PostgreSQL backend.

PostgreSQL comes from ``RDIRDB_TEST_PG_DSN``; each test module gets a fresh
database. An unreachable server skips the PostgreSQL cases, unless
``RDIRDB_REQUIRE_PG=1`` (CI), where it fails them.
"""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from rdirdb.rdir.registry import Registry, Service, open_registry

PG_DSN = os.environ.get("RDIRDB_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="module")
def pg_dsn():
    """A DSN to a database created for this module, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    from psycopg.conninfo import make_conninfo

    try:
        admin = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("RDIRDB_REQUIRE_PG") == "1":
            pytest.fail(f"PostgreSQL required (RDIRDB_REQUIRE_PG=1) but unreachable at {PG_DSN}: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {PG_DSN}: {exc}")
    name = f"rdirdb_dispatch_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield make_conninfo(PG_DSN, dbname=name)
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def _registry_url(request, tmp_path) -> str:
    if request.param == "file":
        return f"file://{tmp_path}/registry.json"
    dsn = request.getfixturevalue("pg_dsn")
    with open_registry(dsn):  # creates the schema
        pass
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE rdirdb_registry.services, rdirdb_registry.assignments")
    return dsn


@pytest.fixture(params=["file", "pg"])
def registry_url(request, tmp_path) -> str:
    """The URL of an empty registry of each backend."""
    return _registry_url(request, tmp_path)


@pytest.fixture
def registry(registry_url) -> Registry:
    with open_registry(registry_url) as reg:
        yield reg


def build_topology(
    registry: Registry, dcs: int = 3, racks: int = 2, hosts: int = 2, rdir_per_host: int = 2, rawx_per_host: int = 3
) -> None:
    """Register rdir and rawx services on every disk of ``dcs x racks x hosts`` machines."""
    port = 6000
    for d in range(dcs):
        for r in range(racks):
            for h in range(hosts):
                ip = f"10.{d}.{r}.{h}"
                for kind, count in (("rdir", rdir_per_host), ("rawx", rawx_per_host)):
                    for k in range(count):
                        port += 1
                        registry.register(
                            Service(kind, f"{kind}-{d}{r}{h}{k}", f"{ip}:{port}", f"dc{d}.rack{r}.host{h}.{kind}{k}")
                        )


def takes_lock_within(url: str, seconds: float) -> bool:
    """Whether another handle gets the assignment lock within ``seconds`` (from a thread)."""
    got = threading.Event()

    def take():
        with open_registry(url) as other, other.assignment_lock():
            got.set()

    threading.Thread(target=take, daemon=True).start()
    return got.wait(seconds)
