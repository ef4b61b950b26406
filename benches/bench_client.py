"""pytest-benchmark: RdirClient (embedded) push, full fetch and status on 100,000 chunks."""

from __future__ import annotations

import itertools

import pytest

from rdirdb.client import RdirClient

from compare_client import FIELDS, INCIDENT, make_tuples

N = 100_000
BATCH = 10_000


@pytest.fixture(scope="module")
def records():
    return [dict(zip(FIELDS, t)) for t in make_tuples(N)]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with RdirClient({"db_path": str(tmp_path_factory.mktemp("rdir")), "db_sync": False}) as c:
        yield c


@pytest.fixture(scope="module")
def filled(client, records):
    client.create("filled")
    for start in range(0, N, BATCH):
        client.chunk_push_batch("filled", records[start:start + BATCH])
    client.admin_incident_set("filled", INCIDENT)
    return "filled"


def test_chunk_push_batch(benchmark, client, records):
    volumes = (f"push-{i}" for i in itertools.count())

    def setup():
        volume = next(volumes)
        client.create(volume)
        return (volume,), {}

    def push(volume):
        for start in range(0, N, BATCH):
            client.chunk_push_batch(volume, records[start:start + BATCH])

    benchmark.pedantic(push, setup=setup, rounds=3)


def test_chunk_fetch_full(benchmark, client, filled):
    assert benchmark(lambda: sum(1 for _ in client.chunk_fetch(filled))) == N


def test_chunk_fetch_array_full(benchmark, client, filled):
    assert benchmark(lambda: sum(len(a) for a in client.chunk_fetch_array(filled))) == N


def test_status(benchmark, client, filled):
    assert benchmark(lambda: client.status(filled)["chunk"]["total"]) == N
