"""Servers register themselves; the dispatcher assigns volumes; the client finds them."""

from __future__ import annotations

import signal
import time

import pytest

from rdirdb.rdir.client import RdirClient
from rdirdb.rdir.dispatcher import RdirDispatcher
from rdirdb.errors import VolumeException
from rdirdb.rdir.registry import Service, open_registry
from tests.server.helpers import Server

from .conftest import entry, make_record


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def cluster(tmp_path):
    url = f"file://{tmp_path}/registry.json"
    servers = []
    for i in range(2):
        db = tmp_path / f"rdir-{i}"
        db.mkdir()
        servers.append(Server(str(db), "--registry", url, "--location", f"dc1.rack{i}.host{i}.0",
                              "--heartbeat", "0.2", "--service-id", f"rdir-{i}", workers=1))
    for server in servers:
        server.wait_ready()
    yield url, servers
    for server in servers:
        server.stop(signal.SIGTERM)


def test_servers_register_and_the_client_resolves_volumes(cluster):
    url, servers = cluster
    registry = open_registry(url)
    assert wait_for(lambda: len(registry.services("rdir")) == 2)
    rdir = {s.id: s for s in registry.services("rdir")}
    assert rdir["rdir-0"].addr == f"{servers[0].host}:{servers[0].port}"
    assert rdir["rdir-1"].location == "dc1.rack1.host1.0"
    assert rdir["rdir-0"].stats["opened_db_count"] == 0

    registry.register(Service(type="rawx", id="rawx-1", addr="127.0.0.1:6201", location="dc1.rack0.host9.0"))
    client = RdirClient({"registry": url})
    with pytest.raises(VolumeException):
        client.create("rawx-1")  # not assigned yet
    RdirDispatcher({"registry": url}).assign_all_rawx(replicas=2)
    assert sorted(registry.get_assignment("rawx-1")) == ["rdir-0", "rdir-1"]

    records = [make_record() for _ in range(10)]
    client.chunk_push_batch("rawx-1", records, create=True)
    assert sorted(client.chunk_fetch("rawx-1")) == sorted(entry(r) for r in records)
    # Both replicas have the records, and report the opened volume at the next beat.
    for server in servers:
        host = f"{server.host}:{server.port}"
        assert len(list(client.chunk_fetch("rawx-1", rdir_hosts=[host]))) == 10
    # (One beat may carry the volume's file before the worker that opened it has counted it.)
    assert wait_for(lambda: all(s.stats["rawx_volumes"] == ["rawx-1"] and s.stats["opened_db_count"] >= 1
                                for s in registry.services("rdir")))
    client.close()
