"""``rdirdb stats``, and the flags every store subcommand shares."""

from __future__ import annotations

import pytest

from rdirdb.rdir.store import Store


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "store"
    with Store(path) as store:
        store.volume("127.0.0.1:6200", create=True).chunks.put_batch(
            [(f"{i % 11:064X}", "C" * 32, f"{i:064X}", i, f"p{i}", 1) for i in range(5000)])
        store.volume("vol/with space", create=True)
        store.volume("127.0.0.1:6120", "meta2", create=True).meta2.put_batch(
            [{"container_url": f"NS/a/{i}", "container_id": "AB"} for i in range(10)])
    return path


def test_stats_json(cli, store_path):
    volumes = {(v["type"], v["volume"]): v for v in cli.json("stats", store_path)["volumes"]}
    assert set(volumes) == {("rawx", "127.0.0.1:6200"), ("rawx", "vol/with space"), ("meta2", "127.0.0.1:6120")}
    big = volumes[("rawx", "127.0.0.1:6200")]
    assert big["records"] == 5000 and volumes[("meta2", "127.0.0.1:6120")]["records"] == 10
    assert big["psize"] == 4096 and big["depth"] >= 2 and big["branch_pages"] >= 1
    assert big["leaf_pages"] == sum(db["leaf_pages"] for db in big["databases"].values())
    assert sum(db["entries"] for name, db in big["databases"].items() if name != "admin") == 5000
    assert big["disk_bytes"] >= big["used_bytes"] > 5000 * 40
    assert big["map_size"] >= big["used_bytes"]
    assert volumes[("rawx", "vol/with space")]["records"] == 0


def test_stats_table_and_flags(cli, store_path):
    proc = cli("stats", "--db-path", store_path, "--type", "meta2")
    assert proc.returncode == 0, proc.stderr.decode()
    header, *rows = proc.stdout.decode().splitlines()
    assert header.split() == ["TYPE", "VOLUME", "RECORDS", "DISK", "MAP", "USED", "DEPTH", "BRANCH", "LEAF",
                              "OVERFLOW", "PSIZE"]
    assert [r.split()[:3] for r in rows] == [["meta2", "127.0.0.1:6120", "10"]]
    assert cli("stats", store_path, "--volume", "nope").returncode == 1
    assert cli("stats", store_path.parent / "missing").returncode == 1
    assert cli("stats").returncode == 2
    assert cli("stats", store_path, "--db-path", store_path).returncode == 2


@pytest.mark.parametrize("command", ["import-leveldb", "export", "import", "stats"])
def test_help_and_bad_flags(cli, command):
    proc = cli(command, "--help")
    assert proc.returncode == 0 and b"--db-path" in proc.stdout and b"--json" in proc.stdout
    assert cli(command, "--no-such-flag").returncode == 2
