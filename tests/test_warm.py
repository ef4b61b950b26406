"""Environment.warm and Store(warm=True): a volume's pages read and mapped ahead of its writes.

Residency is read from /proc/<pid>/smaps: the resident size of the process's mapping of
``data.mdb``. A freshly opened environment has mapped only the pages its open read.
"""

from __future__ import annotations

import os
import platform
import threading
import time

import pytest

from rdirdb import Environment
from rdirdb.errors import ClosedError
from rdirdb.rdir.store import Store, warm_budget

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux's /proc/<pid>/smaps"),
    pytest.mark.skipif(
        tuple(int(x) for x in platform.release().split("-")[0].split(".")[:2]) < (5, 14),
        reason="MADV_POPULATE_READ and MADV_POPULATE_WRITE need Linux 5.14",
    ),
]

VALUE = os.urandom(3000)


def smaps_bytes(path: str, names: tuple[str, ...], pid: int | str = "self") -> int:
    """The sum of the ``names`` fields (e.g. ``Rss:``) of the mappings of ``path`` by the process ``pid``."""
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
                inside = len(fields) >= 6 and fields[5] == path
            elif inside and fields[0] in names:
                total += int(fields[1]) * 1024
    return total


def resident(path: str, pid: int | str = "self") -> int:
    """Bytes resident in the mappings of ``path`` by the process ``pid``."""
    return smaps_bytes(path, ("Rss:",), pid)


def fill(path, *, writemap: bool, mb: int = 8) -> None:
    with Environment(path, databases=["t"], writemap=writemap) as env, env.begin(write=True) as txn:
        for i in range(mb * 1024 * 1024 // len(VALUE)):
            txn.put(b"%08d" % i, VALUE, db="t")


def used(env: Environment) -> int:
    return (env.info()["last_pgno"] + 1) * env.stat()["psize"]


@pytest.mark.parametrize("writemap", [False, True])
def test_warm_maps_every_page_in_use(tmp_path, writemap):
    fill(tmp_path / "e", writemap=writemap)
    data = str(tmp_path / "e" / "data.mdb")
    with Environment(tmp_path / "e", databases=["t"], writemap=writemap) as env:
        before = resident(data)
        assert before < used(env) // 4  # the open read a few pages only
        assert env.warm() == used(env)
        assert resident(data) >= used(env)
        with env.begin() as txn:  # still the same environment
            assert txn.get(b"%08d" % 7, db="t") == VALUE


def test_warm_skips_an_environment_over_its_limit(tmp_path):
    fill(tmp_path / "e", writemap=False)
    data = str(tmp_path / "e" / "data.mdb")
    with Environment(tmp_path / "e", databases=["t"], readonly=True) as env:
        before = resident(data)
        assert env.warm(max_bytes=used(env) - 1) == 0
        assert resident(data) == before
        assert env.warm(max_bytes=used(env)) == used(env)  # a read-only map warms too


def test_warm_of_a_closed_environment_raises(tmp_path):
    env = Environment(tmp_path / "e", databases=["t"])
    env.close()
    with pytest.raises(ClosedError):
        env.warm()


def test_close_stops_a_warm_in_progress(tmp_path):
    fill(tmp_path / "e", writemap=True, mb=100)  # several steps of 32 MiB
    for _ in range(5):
        env = Environment(tmp_path / "e", databases=["t"], writemap=True)
        total = used(env)
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(env.warm()))
        thread.start()
        time.sleep(0.001)
        env.close()  # waits for the step under way, then the map is gone
        thread.join(30)
        assert not thread.is_alive()
        assert result and (result[0] == total or result[0] % (32 << 20) == 0 or result[0] == 0), result
        assert env.closed


def wait_resident(path: str, size: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while resident(path) < size and time.monotonic() < deadline:
        time.sleep(0.01)
    return resident(path)


def test_store_warms_each_volume_it_opens_in_a_thread(tmp_path):
    with Store(tmp_path, sync=False) as store:
        store.volume("v", create=True).chunks.put_batch([
            ("%064X" % i, "B" * 32, "%064X" % (i * 7919), i, "p" * 200, 1) for i in range(20_000)])
    data = str(tmp_path / "rawx" / "v" / "data.mdb")
    with Store(tmp_path, sync=False) as store:  # the default: no warming
        env = store.volume("v").env
        assert wait_resident(data, used(env), timeout=0.5) < used(env) // 4
    with Store(tmp_path, sync=False, warm=True) as store:
        env = store.volume("v").env
        assert wait_resident(data, used(env)) >= used(env)
        assert store.volume("v").chunks.count() == 20_000


def test_store_warms_volumes_within_its_budget(tmp_path, monkeypatch):
    records = [("%064X" % i, "B" * 32, "%064X" % (i * 7919), i, "p" * 200, 1) for i in range(10_000)]
    with Store(tmp_path, sync=False) as store:
        for name in ("a", "b"):
            store.volume(name, create=True).chunks.put_batch(records)
        size = used(store.volume("a").env)
        assert used(store.volume("b").env) == size
    monkeypatch.setattr("rdirdb.rdir.store.warm_budget", lambda: size * 3 // 2)  # one volume, not two
    with Store(tmp_path, sync=False, warm=True) as store:
        store.volume("a")
        assert wait_resident(str(tmp_path / "rawx" / "a" / "data.mdb"), size) >= size
        store.volume("b")  # over the budget that a left
        assert wait_resident(str(tmp_path / "rawx" / "b" / "data.mdb"), size, timeout=0.5) < size // 4


def test_warm_budget_is_half_the_available_memory():
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    assert abs(warm_budget() - available // 2) < available // 10  # it moves a little meanwhile
