"""Fixtures of the client tests: a client on a temporary store, records, request counts."""

from __future__ import annotations

import collections
import random
import time
from typing import Any

import pytest

from rdirdb.rdir.client import RdirClient

PAGE_REQUESTS = ("chunk_page", "chunk_array_page", "status_page", "meta2_page")


def hexid(n: int, rng: random.Random | None = None) -> str:
    return "".join((rng or random).choice("0123456789ABCDEF") for _ in range(n))


def make_record(**fields: Any) -> dict[str, Any]:
    """A chunk record as the reference tests build it (§9 helpers)."""
    record = {
        "container_id": hexid(64),
        "content_id": hexid(32),
        "chunk_id": hexid(64),
        "mtime": int(time.time()),
        "path": "obj-" + hexid(4),
        "version": 1,
    }
    record.update(fields)
    return record


def entry(record: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """What chunk_fetch yields for ``record``."""
    value = {k: record[k] for k in ("content_id", "mtime", "path", "version")}
    value["mtime"] = max(value["mtime"], 0)
    return record["container_id"], record["chunk_id"], value


def key(record: dict[str, Any]) -> str:
    return f"{record['container_id']}|{record['chunk_id']}"


def make_meta2_record() -> dict[str, Any]:
    alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
    url = "/".join("".join(random.choice(alnum) for _ in range(12)) for _ in range(3))
    return {"container_id": hexid(64), "container_url": url, "mtime": int(time.time())}


@pytest.fixture(scope="session")
def rdir_server(tmp_path_factory):
    """One rdir server (a subprocess on a free port) for the remote client."""
    from tests.server.helpers import Server

    db = tmp_path_factory.mktemp("remote") / "db"
    db.mkdir()
    server = Server(str(db), workers=1).wait_ready()
    yield server
    server.stop()


@pytest.fixture(params=["embedded", "remote"])
def client(request, tmp_path):
    """The same scenarios against the embedded engine and through an rdir server."""
    if request.param == "embedded":
        # Durability on power loss is not under test: skip the fsyncs.
        conf = {"db_path": str(tmp_path / "rdir"), "db_sync": False}
    else:
        if request.node.get_closest_marker("embedded_only"):
            pytest.skip("looks inside the embedded store")
        server = request.getfixturevalue("rdir_server")
        conf = {"rdir_hosts": [f"{server.host}:{server.port}"]}
    with RdirClient(conf) as c:
        yield c


@pytest.fixture
def vol() -> str:
    return "fake-" + hexid(6)


@pytest.fixture
def requests(client, monkeypatch) -> collections.Counter:
    """How many page requests the client sent to its backend, by method name."""
    counts: collections.Counter = collections.Counter()
    for name in PAGE_REQUESTS:
        original = getattr(client.backend, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(client.backend, name, counted)
    return counts
