"""``rdirdb import-leveldb`` on data directories written by plyvel in the reference's formats."""

from __future__ import annotations

import json

import pytest

from rdirdb.rdir.store import Store
from rdirdb.tools import leveldb as tool
from rdirdb.tools.common import CommandError

from .conftest import staging_leftovers

plyvel = pytest.importorskip("plyvel")

RAWX = "127.0.0.1:6200"
BIG = "127.0.0.1:6201"
BIG_COUNT = 23_456  # more than two write batches


def h(n: int, width: int = 64) -> str:
    return f"{n:0{width}X}"


def compact(obj: dict) -> bytes:
    """Compact UTF-8 JSON with '/' escaped, as the C server writes it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).replace("/", "\\/").encode()


def write_leveldb(path, entries: dict[bytes, bytes]) -> None:
    db = plyvel.DB(str(path), create_if_missing=True)
    with db.write_batch() as wb:
        for k, v in entries.items():
            wb.put(k, v)
    db.close()


@pytest.fixture
def data_dir(tmp_path):
    """An rdir db_path: (its path, the records expected per (type, volume id))."""
    root = tmp_path / "rdir"
    root.mkdir()
    expected: dict[tuple[str, str], dict] = {}

    # rawx volume: current and legacy keys, admin keys, malformed entries
    cid1, cid2 = h(1), h(2)
    url_chunk = f"http://{RAWX}/{h(77)}"  # oio-rdir-harass pushes full URLs
    entries = {
        f"chunk|{cid1}|{h(10)}".encode(): compact({"content_id": h(5, 32), "mtime": 1533039000, "path": "dir/a", "version": 3}),
        f"chunk|{cid1}|{h(11)}".encode(): compact({"content_id": h(5, 32), "path": "b", "version": 1}),  # mtime <= 0: omitted
        f"chunk|{cid2}|{url_chunk}".encode(): compact({"content_id": "c", "mtime": 7, "path": "é/ü", "version": 1600000000}),
        # legacy (2017-2021): content id in the key, rtime before 2018
        f"chunk|{cid2}|{h(6, 32)}|{h(20)}".encode(): compact(
            {"container_id": cid2, "content_id": h(6, 32), "chunk_id": h(20), "mtime": 100, "rtime": 200}),
        f"chunk|{cid2}|{h(6, 32)}|{h(21)}".encode(): compact(
            {"container_id": cid2, "content_id": h(6, 32), "chunk_id": h(21), "mtime": 300}),
        # the 2015-2017 Python servers: rtime alone; path and version as content_path/content_version
        f"chunk|{cid2}|{h(7, 32)}|{h(22)}".encode(): compact({"rtime": 400}),
        f"chunk|{cid2}|{h(7, 32)}|{h(23)}".encode(): compact(
            {"mtime": 500, "content_path": "old/x", "content_version": 2, "chunk_size": 10}),
        # legacy key of a chunk that also has a current key: the current one wins
        f"chunk|{cid1}|{h(9, 32)}|{h(10)}".encode(): compact(
            {"container_id": cid1, "content_id": h(9, 32), "chunk_id": h(10), "mtime": 5}),
        b"admin|incident_date": b"1533039131",
        b"admin|lock": b"rebuilder on host-1",
        # malformed
        f"chunk|{cid1}|{h(12)}".encode(): b"not json",
        f"chunk|{cid1}|{h(13)}".encode(): compact({"content_id": "x", "mtime": 1, "version": 1}),  # no path
        f"chunk|{cid1}|{h(14)}".encode(): compact({"content_id": "x", "path": "p", "version": "1"}),  # engine rejects
        b"chunk|a|b|c|d": b"{}",
        f"chunk|{cid1}|".encode() + b"\xff": compact({"content_id": "x", "path": "p", "version": 1}),
        b"weird|key": b"1",
    }
    write_leveldb(root / RAWX, entries)
    expected[("rawx", RAWX)] = {
        (cid1, h(10)): (h(5, 32), 1533039000, "dir/a", 3),
        (cid1, h(11)): (h(5, 32), 0, "b", 1),
        (cid2, url_chunk): ("c", 7, "é/ü", 1600000000),
        (cid2, h(20)): (h(6, 32), 200, "", 0),
        (cid2, h(21)): (h(6, 32), 300, "", 0),
        (cid2, h(22)): (h(7, 32), 400, "", 0),
        (cid2, h(23)): (h(7, 32), 500, "old/x", 2),
    }

    # a bigger rawx volume, current keys only
    big = {}
    entries = {}
    for i in range(BIG_COUNT):
        cid, chunk, content = h(i % 50), h(10_000 + i), h(i // 3, 32)
        entries[f"chunk|{cid}|{chunk}".encode()] = compact(
            {"content_id": content, "mtime": 1_700_000_000 + i, "path": f"obj-{i // 3}", "version": 1})
        big[(cid, chunk)] = (content, 1_700_000_000 + i, f"obj-{i // 3}", 1)
    write_leveldb(root / BIG, entries)
    expected[("rawx", BIG)] = big

    # meta2 databases: named by address (first ':' -> '-') and by service id
    for name, volume in (("meta2-127.0.0.1-6120", "127.0.0.1:6120"), ("meta2-OPENIO-meta2-1", "OPENIO-meta2-1")):
        records = {
            "NS/acct/ct1": {"container_id": h(31), "container_url": "NS/acct/ct1", "extra_data": None, "mtime": 12},
            "NS/acct/ct2": {"container_id": h(32), "container_url": "NS/acct/ct2", "extra_data": "{\"a\":1}", "mtime": 0},
        }
        write_leveldb(root / name, {f"container|{u}".encode(): compact(r) for u, r in records.items()})
        expected[("meta2", volume)] = records

    (root / "rdir.conf").write_text("not a database\n")
    return root, expected


def stored(store_path) -> dict[tuple[str, str], dict]:
    """Every record of every volume, read back with fetch."""
    out = {}
    with Store(store_path, readonly=True) as store:
        for vid in store.volumes("rawx"):
            records, marker = {}, None
            while True:
                page, truncated, marker = store.volume(vid).chunks.fetch(marker=marker, limit=1000)
                for cid, content, chunk, mtime, path, version in page:
                    records[(cid, chunk)] = (content, mtime, path, version)
                if not truncated:
                    break
            out[("rawx", vid)] = records
        for vid in store.volumes("meta2"):
            page, truncated, _ = store.volume(vid, "meta2").meta2.fetch(limit=100)
            assert not truncated
            out[("meta2", vid)] = {r["container_url"]: r for r in page}
    return out


def test_import_every_format_record_by_record(cli, data_dir, tmp_path):
    root, expected = data_dir
    store_path = tmp_path / "store"
    report = cli.json("import-leveldb", root, "--db-path", store_path, "--skip-bad")

    assert stored(store_path) == expected
    with Store(store_path, readonly=True) as store:
        vol = store.volume(RAWX)
        assert vol.admin_show() == {"incident_date": "1533039131", "lock": "rebuilder on host-1"}
        assert vol.incident == 1533039131
        assert store.volume(BIG).admin_show() == {}

    by_volume = {v["volume"]: v for v in report["volumes"]}
    assert set(by_volume) == {RAWX, BIG, "127.0.0.1:6120", "OPENIO-meta2-1"}
    main = by_volume[RAWX]
    assert (main["entries"], main["records"], main["legacy"], main["duplicates"], main["skipped"]) == (16, 7, 5, 1, 6)
    assert main["admin"] == {"incident_date": "1533039131", "lock": "rebuilder on host-1"}
    reasons = {s["key"]: s["reason"] for s in main["skipped_samples"]}
    assert "not UTF-8 JSON" in reasons[f"chunk|{h(1)}|{h(12)}"]
    assert "chunk_id is not UTF-8" in reasons[f"chunk|{h(1)}|\\xff"]
    assert "no path" in reasons[f"chunk|{h(1)}|{h(13)}"]
    assert "version" in reasons[f"chunk|{h(1)}|{h(14)}"]
    assert by_volume[BIG]["records"] == BIG_COUNT
    assert by_volume["127.0.0.1:6120"]["leveldb"] == "meta2-127.0.0.1-6120"
    assert report["ignored_files"] == ["rdir.conf"]
    assert staging_leftovers(store_path) == []


def test_human_report_and_meta2_override(cli, data_dir, tmp_path):
    root, _ = data_dir
    store_path = tmp_path / "store"
    proc = cli("import-leveldb", root, "--db-path", store_path, "--meta2-volume", "meta2-OPENIO-meta2-1=10.0.0.1:6121",
               "--skip-bad")
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert out.splitlines()[0].split()[:3] == ["TYPE", "VOLUME", "LEVELDB"]
    assert "incident_date=1533039131" in out and "skipped in 127.0.0.1:6200: 'weird|key'" in out
    assert "ignored: rdir.conf" in out
    with Store(store_path, readonly=True) as store:
        assert store.volumes("meta2") == ["10.0.0.1:6121", "127.0.0.1:6120"]


def test_bad_entries_fail_the_import_unless_skip_bad(cli, data_dir, tmp_path):
    """It used to skip them and exit 0."""
    root, _ = data_dir
    store_path = tmp_path / "store"
    proc = cli("import-leveldb", root, "--db-path", store_path)
    assert proc.returncode == 1 and proc.stdout == b""
    err = proc.stderr.decode()
    assert err.startswith("rdirdb import-leveldb: 6 entries cannot be imported (")
    assert "the value is not UTF-8 JSON" in err and "nothing was imported (--skip-bad imports the others" in err
    with Store(store_path, readonly=True) as store:
        assert store.volumes("rawx") == store.volumes("meta2") == []
    assert staging_leftovers(store_path) == []
    # a clean data directory needs no flag
    clean = tmp_path / "clean"
    clean.mkdir()
    (root / BIG).rename(clean / BIG)
    assert cli.json("import-leveldb", clean, "--db-path", store_path)["volumes"][0]["records"] == BIG_COUNT


def test_existing_volume_refused_and_store_untouched(cli, data_dir, tmp_path):
    root, expected = data_dir
    store_path = tmp_path / "store"
    with Store(store_path) as store:
        store.volume("127.0.0.1:6120", "meta2", create=True).meta2.put_batch(
            [{"container_url": "other", "container_id": "AB"}])
    proc = cli("import-leveldb", root, "--db-path", store_path)
    assert proc.returncode == 1
    assert "already exists" in proc.stderr.decode()
    assert stored(store_path) == {("meta2", "127.0.0.1:6120"): {
        "other": {"container_url": "other", "container_id": "AB", "extra_data": None, "mtime": 0}}}
    assert staging_leftovers(store_path) == []


def test_count_mismatch_imports_nothing(data_dir, tmp_path, monkeypatch):
    root, _ = data_dir
    store_path = tmp_path / "store"
    real = tool.record_count
    monkeypatch.setattr(tool, "record_count", lambda vol: real(vol) + (vol.volume_id == BIG))
    with pytest.raises(CommandError, match=rf"'{BIG}' holds 23,457, expected 23,456; nothing was imported"):
        tool.migrate(str(root), str(store_path))
    with Store(store_path, readonly=True) as store:
        assert store.volumes("rawx") == store.volumes("meta2") == []
    assert staging_leftovers(store_path) == []


def test_database_in_use(cli, data_dir, tmp_path):
    root, _ = data_dir
    db = plyvel.DB(str(root / RAWX))  # holds LevelDB's lock, like a running rdir
    try:
        proc = cli("import-leveldb", root, "--db-path", tmp_path / "store")
    finally:
        db.close()
    assert proc.returncode == 1
    assert "still using it" in proc.stderr.decode()
    with Store(tmp_path / "store", readonly=True) as store:
        assert store.volumes("rawx") == []


def test_usage_and_missing_directory(cli, tmp_path):
    assert cli("import-leveldb").returncode == 2
    assert cli("import-leveldb", tmp_path, "--db-path", tmp_path / "s", "--meta2-volume", "x").returncode == 2
    proc = cli("import-leveldb", tmp_path / "nope", "--db-path", tmp_path / "s")
    assert proc.returncode == 1 and "cannot read" in proc.stderr.decode()
    proc = cli("import-leveldb", tmp_path, "--db-path", tmp_path / "s")
    assert proc.returncode == 1 and "no LevelDB database" in proc.stderr.decode()


@pytest.mark.parametrize("name, volume", [
    ("meta2-127.0.0.1-6120", "127.0.0.1:6120"),
    ("meta2-[::1]:6120", "[::1]:6120"),  # '[::1]:6120' with its first ':' replaced
    ("meta2-[-:1]:6120", "[::1]:6120"),
    ("meta2-OPENIO-meta2-1", "OPENIO-meta2-1"),
    ("meta2-host.example-6120", "host.example-6120"),
])
def test_meta2_volume_ids(name, volume):
    assert tool.meta2_volume_id(name) == volume
