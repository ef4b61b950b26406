"""Fixtures: a shared server, and servers started on demand."""

from __future__ import annotations

import os
import signal

import pytest

pytest.importorskip("httptools")

from tests.server.helpers import Server  # noqa: E402


@pytest.fixture
def start_server(tmp_path):
    """Start servers on demand (``start_server(*args, workers=1, db_path=None)``); all are stopped."""
    servers: list[Server] = []

    def start(*args: str, workers: int = 1, db_path: str | None = None, ready: bool = True) -> Server:
        if db_path is None:
            db_path = str(tmp_path / f"db-{len(servers)}")
            os.makedirs(db_path)
        server = Server(db_path, *args, workers=workers, log_path=str(tmp_path / f"server-{len(servers)}.log"))
        servers.append(server)
        return server.wait_ready() if ready else server

    yield start
    for server in servers:
        try:
            server.stop(signal.SIGTERM, timeout=10)
        except Exception:
            server.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One shared server with two workers (the reference's TestRdirServer)."""
    db = tmp_path_factory.mktemp("shared") / "db"
    db.mkdir()
    srv = Server(str(db), "--service-id", "rdir-shared", workers=2).wait_ready()
    yield srv
    srv.stop()
