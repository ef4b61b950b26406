"""pytest-benchmark: RdirClient (embedded) chunk_push_batch, a full chunk_fetch, status.

Each push round writes a fresh 10,000-record batch (random order, as dicts)
into a volume that already holds 100,000 records; fetch and status rounds go
over those 100,000 records with the default pages of 1,000.
"""

import pytest

from compare_common import FIELDS, MTIME
from conftest import ROUNDS
from rdirdb.rdir.client import RdirClient


@pytest.fixture
def client(tmp_path, dataset):
    """A client whose volume "vol" holds the preloaded records, an incident in their middle."""
    preload, _ = dataset
    with RdirClient({"db_path": str(tmp_path), "db_sync": False}) as c:
        c.create("vol")
        for start in range(0, len(preload), 10_000):
            c.chunk_push_batch("vol", [dict(zip(FIELDS, t)) for t in preload[start:start + 10_000]])
        c.admin_incident_set("vol", MTIME + 86_400 * 182)
        yield c


@pytest.mark.benchmark(group="client push 10,000")
def test_chunk_push_batch(benchmark, client, dataset):
    todo = iter([[dict(zip(FIELDS, t)) for t in batch] for batch in dataset[1][:ROUNDS]])
    benchmark.pedantic(
        lambda batch: client.chunk_push_batch("vol", batch),
        setup=lambda: ((next(todo),), {}), rounds=ROUNDS, iterations=1,
    )
    assert client.status("vol", max=10_000)["chunk"]["total"] == len(dataset[0]) + 10_000 * ROUNDS


@pytest.mark.benchmark(group="client full scan")
def test_chunk_fetch(benchmark, client, dataset):
    assert benchmark(lambda: sum(1 for _ in client.chunk_fetch("vol"))) == len(dataset[0])


@pytest.mark.benchmark(group="client full scan")
def test_chunk_fetch_array(benchmark, client, dataset):
    assert benchmark(lambda: sum(len(a) for a in client.chunk_fetch_array("vol"))) == len(dataset[0])


@pytest.mark.benchmark(group="client full scan")
def test_status(benchmark, client, dataset):
    result = benchmark(client.status, "vol")
    assert result["chunk"]["total"] == len(dataset[0]) and 0 < result["chunk"]["to_rebuild"] < len(dataset[0])
