"""``rdirdb export`` / ``rdirdb import``: round trips, filters, corrupted dumps."""

from __future__ import annotations

import json

import pytest

from rdirdb.rdir.store import Store

from .conftest import staging_leftovers
from .test_leveldb import stored

BIG = 12_345  # more than one read page and one write batch


@pytest.fixture
def source(tmp_path):
    """A store with two rawx volumes (admin keys on one) and a meta2 volume."""
    path = tmp_path / "source"
    with Store(path) as store:
        vol = store.volume("127.0.0.1:6200", create=True)
        vol.chunks.put_batch([
            (f"{i % 7:064X}", f"{i:032X}", f"{10**6 + i:064X}", 1_700_000_000 + i, f"obj/{i}", i % 3)
            for i in range(BIG)
        ])
        vol.admin_set("incident_date", "1700000500")
        vol.lock("rebuilder on host-1")
        store.volume("127.0.0.1:6201", create=True).chunks.put_batch(
            [("cid", "c", "http://127.0.0.1:6201/chunk", 0, "é ü \u2603", 1)])  # text key, non-ASCII
        store.volume("vol/with space", create=True)  # empty; its id is percent-encoded on disk
        store.volume("127.0.0.1:6120", "meta2", create=True).meta2.put_batch([
            {"container_url": "NS/a/c1", "container_id": "AB" * 32, "mtime": 5, "extra_data": None},
            {"container_url": "NS/a/c2", "container_id": "x", "extra_data": "{\"k\":1}"},
        ])
    return path


def admin_of(path, volume_id):
    with Store(path, readonly=True) as store:
        return store.volume(volume_id).admin_show()


def test_round_trip_through_a_file(cli, source, tmp_path):
    dump, target = tmp_path / "all.jsonl", tmp_path / "target"
    proc = cli("export", "--db-path", source, "-o", dump)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().split()[:4] == ["TYPE", "VOLUME", "RECORDS", "ADMIN"]

    report = cli.json("import", "--db-path", target, "-i", dump)
    assert report["records"] == BIG + 3
    assert {v["volume"]: v["records"] for v in report["volumes"]} == {
        "127.0.0.1:6200": BIG, "127.0.0.1:6201": 1, "vol/with space": 0, "127.0.0.1:6120": 2}
    assert stored(target) == stored(source)
    assert admin_of(target, "127.0.0.1:6200") == {"incident_date": "1700000500", "lock": "rebuilder on host-1"}
    assert staging_leftovers(target) == []


def test_round_trip_through_a_pipe_with_filters(cli, source, tmp_path):
    proc = cli("export", "--db-path", source, "--type", "rawx", "--volume", "127.0.0.1:6201")
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.splitlines()
    assert len(lines) == 5  # header, volume, 1 record, end, checksum
    assert json.loads(lines[-1]).keys() == {"checksum"}
    assert b"127.0.0.1:6201" in proc.stderr  # the report goes to stderr when stdout is the dump

    target = tmp_path / "target"
    imported = cli("import", "--db-path", target, input=proc.stdout)
    assert imported.returncode == 0, imported.stderr.decode()
    assert stored(target) == {("rawx", "127.0.0.1:6201"): stored(source)[("rawx", "127.0.0.1:6201")]}

    again = cli("import", "--db-path", target, input=proc.stdout)
    assert again.returncode == 1 and b"already exists" in again.stderr
    assert cli("export", "--db-path", source, "--type", "meta2", "--volume", "127.0.0.1:6201").returncode == 1
    assert cli("export", "--db-path", tmp_path / "missing").returncode == 1
    proc = cli("export", "--db-path", source, "-o", tmp_path / "no-dir" / "dump.jsonl")
    assert proc.returncode == 1 and b"cannot write" in proc.stderr
    assert cli("export", "--db-path", source, "--type", "nope").returncode == 2


def corrupt_digit(data: bytes) -> bytes:
    """Change one digit of an mtime in the last volume's records: still valid JSON."""
    at = data.rindex(b'"mtime":') + len(b'"mtime":')
    return data[:at] + (b"9" if data[at:at + 1] != b"9" else b"8") + data[at + 1:]


@pytest.mark.parametrize("damage, message", [
    (corrupt_digit, b"checksum mismatch"),
    (lambda d: d.replace(b'"records":2', b'"records":3'), b"checksum mismatch"),
    (lambda d: d.replace(b'{"end":"127.0.0.1:6120"', b'{"end":"127.0.0.1:6120'), b"checksum mismatch"),
    (lambda d: d[: d.rindex(b"\n", 0, -1) + 1], b"truncated"),  # the checksum line is lost
    (lambda d: d[:-40], b"truncated"),
    (lambda d: d + b'{"volume":"x","type":"rawx"}\n', b"truncated or corrupted"),
])
def test_corrupted_dump_imports_nothing(cli, source, tmp_path, damage, message):
    dump = tmp_path / "all.jsonl"
    assert cli("export", "--db-path", source, "-o", dump).returncode == 0
    dump.write_bytes(damage(dump.read_bytes()))
    target = tmp_path / "target"
    proc = cli("import", "--db-path", target, "-i", dump)
    assert proc.returncode == 1
    assert message in proc.stderr
    with Store(target, readonly=True) as store:
        assert store.volumes("rawx") == store.volumes("meta2") == []
    assert staging_leftovers(target) == []


def test_import_usage_errors(cli, tmp_path):
    assert cli("import").returncode == 2
    proc = cli("import", "--db-path", tmp_path / "s", "-i", tmp_path / "missing.jsonl")
    assert proc.returncode == 1 and b"No such file or directory" in proc.stderr
    proc = cli("import", "--db-path", tmp_path / "s", input=b"")
    assert proc.returncode == 1 and b"truncated" in proc.stderr
    proc = cli("import", "--db-path", tmp_path / "s", input=b'{"format":"other"}\n{"checksum":"0"}\n')
    assert proc.returncode == 1
