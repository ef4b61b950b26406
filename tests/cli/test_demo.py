"""``rdirdb demo`` through the installed command."""

from __future__ import annotations

import os
import re

from rdirdb.rdir.store import Store


def test_demo_spreads_the_chunks_over_the_volumes(cli, tmp_path):
    """Whole batches went round-robin: 10,000 chunks on 2 volumes all landed on the first."""
    store_path = tmp_path / "demo"
    proc = cli("demo", "--count", "10000", "--volumes", "2", "--dir", store_path)
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "volume 127.0.0.1:6200: 5,000 chunks" in out and "volume 127.0.0.1:6201: 5,000 chunks" in out
    stats = cli.json("stats", store_path)["volumes"]
    assert sorted((v["volume"], v["records"]) for v in stats) == [("127.0.0.1:6200", 5000), ("127.0.0.1:6201", 5000)]
    listed = re.search(r"to_rebuild=([\d,]+)", out).group(1)
    assert 0 < int(listed.replace(",", "")) < 5000
    # its own directory: running it again is fine (and leaves it unlocked)
    assert cli("demo", "--count", "3000", "--volumes", "2", "--dir", store_path).returncode == 0
    with Store(store_path, readonly=True) as store:
        assert "lock" not in store.volume("127.0.0.1:6200").admin_show()


def test_demo_refuses_a_directory_that_is_not_its_own(cli, tmp_path):
    store_path = tmp_path / "real"
    with Store(store_path) as store:
        store.volume("127.0.0.1:6200", create=True).chunks.put_batch([("C" * 64, "B" * 32, "K" * 64, 1, "p", 1)])
    proc = cli("demo", "--count", "1000", "--dir", store_path)
    assert proc.returncode == 1
    assert proc.stderr.decode() == (
        f"rdirdb demo: {store_path} is not empty and is not a demo's store (it has no .rdirdb-demo file): the "
        "demo writes synthetic chunks, sets an incident and locks a volume; give a new or empty directory\n")
    with Store(store_path, readonly=True) as store:  # untouched
        assert store.volumes("rawx") == ["127.0.0.1:6200"]
        volume = store.volume("127.0.0.1:6200")
        assert volume.chunks.count() == 1 and volume.admin_show() == {}
    assert not (store_path / ".rdirdb-demo").exists()
    # an empty directory is fine
    (tmp_path / "empty").mkdir()
    assert cli("demo", "--count", "1000", "--volumes", "1", "--dir", tmp_path / "empty").returncode == 0


def test_demo_in_a_temporary_directory_and_usage(cli):
    proc = cli("demo", "--count", "3000", "--volumes", "3")
    assert proc.returncode == 0, proc.stderr.decode()
    temporary = re.match(r"store: (\S+) \(temporary\)", proc.stdout.decode()).group(1)
    assert "volume 127.0.0.1:6202: 1,000 chunks" in proc.stdout.decode()
    assert not os.path.exists(temporary)
    for flag in ("--count", "--volumes"):
        proc = cli("demo", flag, "0")
        assert proc.returncode == 2 and b"--count and --volumes must be positive" in proc.stderr
