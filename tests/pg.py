"""PostgreSQL for the tests, in one place.

``pg_root_dsn`` (session) is the DSN of a server the tests may create databases
in: ``RDIRDB_TEST_PG_DSN`` when given (CI sets it to the machine's server), else
a throwaway cluster started for the session (initdb on a free port, as asyncpg's
test harness does; as the ``postgres`` user when run as root, since initdb
refuses root). Without either, the PostgreSQL cases are skipped, or fail when
``RDIRDB_REQUIRE_PG=1``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
TIMEOUT = 60


def _as_postgres(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def can_start_cluster() -> bool:
    return bool(BIN) and (os.geteuid() != 0 or shutil.which("runuser") is not None)


class Cluster:
    """A PostgreSQL cluster of its own under ``root``, trust auth on 127.0.0.1."""

    def __init__(self, root: str) -> None:
        self.bin = BIN[-1]
        self.data = os.path.join(root, "data")
        self.port = _free_port()
        os.makedirs(self.data)
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
            shutil.chown(self.data, "postgres")
        self.run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, tool: str, *args: str) -> None:
        # No pipes: the server started by pg_ctl would hold them open.
        subprocess.run(_as_postgres([os.path.join(self.bin, tool), *args]), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=TIMEOUT)

    def pg_ctl(self, action: str) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = os.path.join(self.data, "server.log")
        self.run("pg_ctl", "-D", self.data, "-l", log, "-o", options, "-m", "fast", "-w", "-t", "30", action)


@contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """A started cluster, stopped and removed afterwards (skips when none can start)."""
    if not can_start_cluster():
        unavailable("no PostgreSQL server binaries to start a throwaway cluster")
    # Not under pytest's temporary directory: the postgres user must be able to reach it.
    root = tempfile.mkdtemp(prefix="rdirdb-pg-")
    os.chmod(root, 0o755)
    try:
        cluster = Cluster(root)
        cluster.pg_ctl("start")
        try:
            yield cluster
        finally:
            cluster.pg_ctl("stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def unavailable(message: str) -> None:
    if os.environ.get("RDIRDB_REQUIRE_PG") == "1":
        pytest.fail(f"{message} (RDIRDB_REQUIRE_PG=1)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_root_dsn() -> Iterator[str]:
    """The DSN of a PostgreSQL server the tests create their databases in."""
    dsn = os.environ.get("RDIRDB_TEST_PG_DSN")
    if dsn:
        yield dsn
        return
    with throwaway_cluster() as cluster:
        yield cluster.dsn


@pytest.fixture(scope="module")
def pg_admin(pg_root_dsn: str) -> Iterator[object]:
    """A connection to the server, for creating and dropping databases."""
    conn = admin_connect(pg_root_dsn)
    yield conn
    conn.close()


def with_dbname(dsn: str, dbname: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    return make_conninfo(**{**conninfo_to_dict(dsn), "dbname": dbname})


def admin_connect(dsn: str):  # -> psycopg.Connection
    import psycopg

    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=5)
    except Exception as error:
        unavailable(f"PostgreSQL unreachable at {dsn}: {error}")


def create_db(admin, label: str) -> str:
    """A new database named after ``label``; returns its name."""
    name = f"rdirdb_{label}_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_db(admin, name: str) -> None:
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
