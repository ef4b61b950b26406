"""Fixtures of the pytest-benchmark suite (``make bench``: ``pytest benches --benchmark-only``).

The suite stays out of ``make test``: pytest's ``testpaths`` is ``tests``, and
the files here are named ``bench_*.py`` (test functions inside), collected only
by the hook below when ``benches`` is given on the command line. Data come from ``compare_common.py``, so the
benchmarks and the comparison measure the same records.
"""

from pathlib import Path

import lmdb
import pytest

from compare_common import BASELINE_MAP_SIZE, baseline_load, batches, records
from rdirdb.rdir.store import Store

PRELOAD = 100_000  # records in a volume before the measured batches or pages
ROUNDS = 20  # fresh 10,000-record batches, one per measured insert


HERE = Path(__file__).resolve().parent


def _named(config) -> bool:
    """Whether the command line names this directory or something inside it."""
    paths = (Path(arg.split("::")[0]).resolve() for arg in config.invocation_params.args
             if not arg.startswith("-"))
    return any(p == HERE or HERE in p.parents for p in paths)


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and _named(parent.config):
        return pytest.Module.from_parent(parent, path=file_path)


@pytest.fixture(scope="session")
def dataset():
    """PRELOAD records to load first, then ROUNDS batches of 10,000 never seen, random order."""
    data = records(PRELOAD + 10_000 * (ROUNDS + 1))
    return data[:PRELOAD], batches(data[PRELOAD:])


@pytest.fixture
def volume(request, tmp_path, dataset):
    """A fresh rdirdb volume holding the PRELOAD records (``sync`` by indirect parameter)."""
    preload, _ = dataset
    with Store(tmp_path / "store", sync=getattr(request, "param", False)) as store:
        vol = store.volume("vol", create=True)
        for batch in batches(preload):
            vol.chunks.put_batch(batch)
        yield vol


@pytest.fixture
def baseline_env(request, tmp_path, dataset):
    """A py-lmdb environment holding the PRELOAD records as text keys and JSON."""
    sync = getattr(request, "param", False)
    with lmdb.open(str(tmp_path / "baseline"), map_size=BASELINE_MAP_SIZE, sync=sync, metasync=sync) as env:
        baseline_load(env, dataset[0])
        yield env


@pytest.fixture(scope="session")
def marker(dataset):
    """The marker ``cid|chunk`` of the middle preloaded record (listing order)."""
    keys = sorted(f"{cid}|{chunk}" for cid, _, chunk, *_ in dataset[0])
    return keys[len(keys) // 2]


