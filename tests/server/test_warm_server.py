"""The server's workers warm each volume they open (Store(warm=True)): its pages in use end up
mapped in the worker, read ahead of the writes."""

from __future__ import annotations

import time

import pytest

from rdirdb import Environment
from tests.server.helpers import chunk_record
from tests.test_warm import resident

pytestmark = pytest.mark.skipif(
    __import__("os").uname().sysname != "Linux", reason="reads the worker's /proc/<pid>/smaps")


def test_a_worker_maps_the_volume_it_opens(start_server, tmp_path):
    db = tmp_path / "db"
    db.mkdir()
    server = start_server("--service-id", "warm", db_path=str(db))
    assert server.request("POST", "/v1/rdir/create", params={"vol": "v"}).status == 201
    for _ in range(4):  # ~4 MB of records
        assert server.request("POST", "/v1/rdir/push", params={"vol": "v"},
                              json_body=[chunk_record() | {"path": "p" * 600} for _ in range(1500)]).status == 204
    server.stop()
    data = str(db / "rawx" / "v" / "data.mdb")
    with Environment(db / "rawx" / "v", databases=["chunk_bin"], readonly=True) as env:
        in_use = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    server = start_server("--service-id", "warm", db_path=str(db))  # a new worker, the volume not open yet
    with open(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children") as f:
        (worker,) = map(int, f.read().split())
    assert resident(data, worker) == 0
    assert server.request("GET", "/v1/rdir/fetch", params={"vol": "v", "max": 1}).status == 200
    deadline = time.monotonic() + 30
    while resident(data, worker) < in_use and time.monotonic() < deadline:
        time.sleep(0.05)
    assert resident(data, worker) >= in_use
