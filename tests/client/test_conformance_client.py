"""OpenIO's client tests (§9.5, §9.6) against the embedded client.

Every listing test also checks the number of page requests: ceil(n / limit)
for n matches, 1 when nothing matches, which needs exact truncation. Not
applicable to an embedded store: copying a volume between rdir services and
write quorums (#67-71), and the legacy paging of a server that sends no
listing headers (#73-74 test the HTTP transport; the paging loop itself is
tested below with a scripted backend).
"""

from __future__ import annotations

import itertools
import math
import random
from unittest import mock

import pytest

from rdirdb.rdir.client import RdirBackend, RdirClient

from .conftest import hexid


@pytest.fixture
def fixture(client, vol, request):
    """The reference fixture: 4 containers, 2-4 objects each, 2-4 chunks per object.

    A chunk id ends in "0" when its mtime <= the incident date ("to rebuild").
    """
    rng = random.Random(request.node.name)
    incident = rng.randrange(2, 15)
    client.create(vol)
    client.admin_clear(vol, clear_all=True)
    expected = []
    for _ in range(4):
        cid = hexid(64, rng)
        for i in range(rng.randrange(2, 5)):
            content_id = hexid(32, rng)
            for _ in range(rng.randrange(2, 5)):
                mtime = rng.randrange(0, 17)
                chunk_id = hexid(63, rng) + ("0" if mtime <= incident else "1")
                client.chunk_push(vol, cid, content_id, chunk_id, f"obj-{i}", 1, mtime=mtime)
                value = {"content_id": content_id, "mtime": mtime, "path": f"obj-{i}", "version": 1}
                expected.append((cid, chunk_id, value))
    expected.sort(key=lambda e: f"{e[0]}|{e[1]}")
    return rng, incident, expected


def pages(n: int, limit: int) -> int:
    return math.ceil(n / limit) if n else 1


def pick_options(rng, expected, container_id, start_after, rebuild):
    """The listing options of a test and the entries they select, filtered by hand."""
    options = {}
    selected = [e for e in expected if not rebuild or e[1].endswith("0")]
    if container_id:
        cid = rng.choice(expected)[0]
        options["container_id"] = cid
        selected = [e for e in selected if e[0] == cid]
    if start_after:
        pool = selected or expected
        marker = "|".join(rng.choice(pool)[:2])
        options["start_after"] = marker
        selected = [e for e in selected if f"{e[0]}|{e[1]}" > marker]
    return options, selected


# Every combination of the catalogue's variants (#34-50 and #51-66): page size
# (default or 2), a container prefix, a start marker, and rebuild / an incident.
CASES = list(itertools.product([None, 2], [False, True], [False, True], [False, True]))


@pytest.mark.parametrize("limit, container_id, start_after, rebuild", CASES)
def test_chunk_fetch(client, vol, fixture, requests, limit, container_id, start_after, rebuild):
    rng, incident, expected = fixture
    options, selected = pick_options(rng, expected, container_id, start_after, rebuild)
    if rebuild:
        client.admin_incident_set(vol, incident)
        options["rebuild"] = True
    if limit:
        options["limit"] = limit
    assert list(client.chunk_fetch(vol, **options)) == selected
    assert requests["chunk_page"] == pages(len(selected), limit or 1000)


def test_chunk_fetch_with_rebuild_no_incident(client, vol, fixture, requests):
    assert list(client.chunk_fetch(vol, rebuild=True)) == []
    assert requests["chunk_page"] == 1




@pytest.mark.parametrize("max_, prefix, marker, incident_set", CASES)
def test_chunk_status(client, vol, fixture, requests, max_, prefix, marker, incident_set):
    rng, incident, expected = fixture
    options, selected = pick_options(rng, expected, prefix, marker, False)
    options = {
        {"container_id": "prefix", "start_after": "marker"}[name]: value
        for name, value in options.items()
    }
    if incident_set:
        client.admin_incident_set(vol, incident)
    if max_:
        options["max"] = max_
    chunk = {"total": len(selected)}
    containers: dict = {}
    for cid, chunk_id, _ in selected:
        counters = containers.setdefault(cid, {"total": 0})
        counters["total"] += 1
        if incident_set and chunk_id.endswith("0"):
            counters["to_rebuild"] = counters.get("to_rebuild", 0) + 1
    if incident_set:
        chunk["to_rebuild"] = sum(1 for e in selected if e[1].endswith("0"))
    assert client.status(vol, **options) == {"chunk": chunk, "container": containers}
    assert requests["status_page"] == pages(len(selected), max_ or 1000)


def test_batch_push_delete_chunks(client, vol, fixture):
    _, _, expected = fixture
    batch = [
        {"container_id": hexid(64), "content_id": hexid(32), "chunk_id": hexid(64),
         "path": f"obj-{i}", "version": 1, "mtime": i}
        for i in range(20)
    ]
    client.chunk_push_batch(vol, batch)
    assert len(list(client.chunk_fetch(vol))) == len(expected) + 20
    client.chunk_delete_batch(vol, batch)
    assert list(client.chunk_fetch(vol)) == expected


# -- 9.6 unit tests, against a mocked backend ---------------------------------


@pytest.fixture
def mocked():
    backend = mock.create_autospec(RdirBackend, instance=True)
    return RdirClient({}, backend=backend), backend


def test_fetch_follows_markers(mocked):
    client, backend = mocked
    value = {"content_id": "C", "mtime": 10, "path": "p", "version": 1}
    backend.chunk_page.side_effect = [
        ([("cid1", "chunk1", value), ("cid2", "chunk2", value)], True, "cid2|chunk2"),
        ([("cid3", "chunk3", value)], False, None),
    ]
    assert [e[:2] for e in client.chunk_fetch("volume", limit=2)] == [
        ("cid1", "chunk1"), ("cid2", "chunk2"), ("cid3", "chunk3")
    ]
    assert backend.chunk_page.call_args_list == [
        mock.call("volume", marker=None, prefix=None, limit=2, rebuild=False),
        mock.call("volume", marker="cid2|chunk2", prefix=None, limit=2, rebuild=False),
    ]


def test_volume_create(mocked):
    client, backend = mocked
    client.meta2_index_create("volid")
    backend.create.assert_called_once_with("volid", "meta2")


def test_volume_fetch(mocked):
    client, backend = mocked
    client.meta2_index_fetch("volid", prefix="ns/acct/ct")
    backend.meta2_page.assert_called_once_with("volid", prefix="ns/acct/ct", marker=None, limit=4096)


def test_volume_push(mocked):
    client, backend = mocked
    client.meta2_index_push("volid", "ns/acct/ct", "CID", 2874884.47)
    backend.meta2_push.assert_called_once_with(
        "volid",
        [{"container_url": "ns/acct/ct", "container_id": "CID", "mtime": 2874884, "extra_data": None}],
    )


def test_volume_delete(mocked):
    client, backend = mocked
    client.meta2_index_delete("volid", "ns/acct/ct", "CID")
    backend.meta2_delete.assert_called_once_with(
        "volid", [{"container_url": "ns/acct/ct", "container_id": "CID"}]
    )
