"""SharedBase across a PostgreSQL server restart, on a throwaway cluster.

The machine's PostgreSQL is shared with other test sessions, so this starts its own
cluster (initdb on a free port, as asyncpg's test harness does), restarts it while a
SharedBase is in use, and checks: calls during the outage fail clearly (psycopg's
OperationalError, no hang), the pool recovers once the server is back, and no object is
recorded twice or lost.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from rdirdb.sharedbase import SharedBase, init_schema

psycopg = pytest.importorskip("psycopg")

BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
TIMEOUT = 60


def _as_postgres(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
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


@pytest.fixture(scope="module")
def cluster():
    if not BIN or (os.geteuid() == 0 and shutil.which("runuser") is None):
        pytest.skip("no PostgreSQL server binaries to start a throwaway cluster")
    # Not under pytest's temporary directory: the postgres user must be able to reach it.
    root = tempfile.mkdtemp(prefix="rdirdb-pg-")
    os.chmod(root, 0o755)
    try:
        cluster = Cluster(root)
        cluster.pg_ctl("start")
        yield cluster
        cluster.pg_ctl("stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


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
