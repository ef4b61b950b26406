"""Registry fixtures: every dispatch test runs on the file and the PostgreSQL backend.

PostgreSQL comes from tests/pg.py (RDIRDB_TEST_PG_DSN, else a throwaway
cluster); each test module gets a fresh database.
"""

from __future__ import annotations

import threading

import pytest

from rdirdb.rdir.registry import Registry, Service, open_registry
from tests.pg import create_db, drop_db, with_dbname


@pytest.fixture(scope="module")
def pg_dsn(pg_admin, pg_root_dsn):
    """A DSN to a database created for this module, dropped afterwards."""
    name = create_db(pg_admin, "dispatch")
    yield with_dbname(pg_root_dsn, name)
    drop_db(pg_admin, name)


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
