"""pytest-benchmark: bulk insert and one page scan, rdirdb next to its ceiling and a py-lmdb baseline.

Each insert round writes a fresh 10,000-record batch (random order) into a
volume that already holds 100,000 records; each scan round reads the page
after a marker in the middle of the volume.
"""

import pytest

from compare_common import PAGE, STATUS_PAGE, baseline_page, baseline_put, encode
from conftest import ROUNDS
from rdirdb import _ceiling


def _rounds(benchmark, fn, batches):
    """Run ``fn(batch)`` once per batch, each batch a round of its own."""
    todo = iter(batches)
    benchmark.pedantic(fn, setup=lambda: ((next(todo),), {}), rounds=ROUNDS, iterations=1)


@pytest.mark.benchmark(group="insert 10,000")
@pytest.mark.parametrize("volume", [True, False], ids=["sync", "nosync"], indirect=True)
def test_put_batch(benchmark, volume, dataset):
    _rounds(benchmark, volume.chunks.put_batch, dataset[1])
    assert volume.chunks.count() == len(dataset[0]) + 10_000 * ROUNDS


@pytest.mark.benchmark(group="insert 10,000")
@pytest.mark.parametrize("volume", [True, False], ids=["sync", "nosync"], indirect=True)
def test_raw_insert_ceiling(benchmark, volume, dataset):
    packed = [_ceiling.pack(*encode(batch)) for batch in dataset[1][:ROUNDS]]
    _rounds(benchmark, lambda records: _ceiling.raw_insert(volume.chunks.stamps, records, batch=10_000), packed)


@pytest.mark.benchmark(group="insert 10,000")
@pytest.mark.parametrize("baseline_env", [True, False], ids=["sync", "nosync"], indirect=True)
def test_put_baseline(benchmark, baseline_env, dataset):
    _rounds(benchmark, lambda batch: baseline_put(baseline_env, batch), dataset[1])


@pytest.mark.benchmark(group="page of 1,000")
def test_fetch_page(benchmark, volume, marker):
    page, truncated, _ = benchmark(volume.chunks.fetch, marker=marker, limit=PAGE)
    assert len(page) == PAGE and truncated


@pytest.mark.benchmark(group="page of 1,000")
def test_fetch_page_baseline(benchmark, baseline_env, marker):
    page, truncated, _ = benchmark(baseline_page, baseline_env, marker, PAGE)
    assert len(page) == PAGE and truncated


@pytest.mark.benchmark(group="status page of 10,000")
def test_status_page(benchmark, volume, marker):
    total, _, _, truncated, _ = benchmark(volume.chunks.status, marker=marker, limit=STATUS_PAGE)
    assert total == STATUS_PAGE and truncated
