"""``rdirdb export`` / ``rdirdb import``: round trips, filters, corrupted dumps."""

from __future__ import annotations

import json
import multiprocessing
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rdirdb.rdir.store import Store

from .conftest import staging_leftovers
from .test_leveldb import stored

BIG = 12_345  # more than one read page and one write batch
RDIRDB = Path(sys.executable).with_name("rdirdb")  # the installed entry point


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


# -- point in time: an export while a writer changes the volume ------------------------

GEN = 12_000  # records per generation: more than one read page
EXPORTS = 4
CHURN_VOLUME = "127.0.0.1:6300"


def generation(kind: str, n: int) -> list[dict]:
    """The records of generation ``n``: for each i, one key made of i and n."""
    if kind == "rawx":
        return [{"container_id": f"{i:064X}", "content_id": f"{n:032X}", "chunk_id": f"{n:08X}{i:056X}",
                 "mtime": n, "path": f"g{n}/{i}", "version": 1} for i in range(GEN)]
    return [{"container_url": f"NS/a/{i:06}-{n:08}", "container_id": f"{i:064X}", "mtime": n, "extra_data": None}
            for i in range(GEN)]


def index(vol):
    return vol.chunks if vol.service_type == "rawx" else vol.meta2


def churn(path, kind: str, ready, stop, steps) -> None:
    """Step n: add generation n+1, set the incident date to n+1 (rawx), delete generation n;
    each in its own transaction. ``steps`` counts the finished steps."""
    with Store(path, sync=False) as store:
        vol = store.volume(CHURN_VOLUME, kind)
        ready.set()
        n = 0
        while not stop.is_set():
            index(vol).put_batch(generation(kind, n + 1))
            if kind == "rawx":
                vol.admin_set("incident_date", str(n + 1))
            old = generation(kind, n)
            index(vol).delete_batch([r["container_url"] for r in old] if kind == "meta2" else old)
            n += 1
            steps.value = n


def states_that_existed(kind: str, admin: dict, gens: set[int]) -> bool:
    """Whether (incident date, generations present) is a state the writer went through."""
    if kind == "meta2":
        n = min(gens)
        return gens in ({n}, {n, n + 1})
    a = int(admin["incident_date"])
    return gens in ({a}, {a, a + 1}, {a - 1, a})


def dumped_generations(kind: str, dump: bytes) -> tuple[dict, set[int]]:
    """The admin keys and the generations of a one-volume dump; each generation must be whole."""
    lines = [json.loads(line) for line in dump.splitlines()]
    assert lines[1]["volume"] == CHURN_VOLUME and lines[-2]["records"] == len(lines) - 4
    records = lines[2:-2]
    gens = {r["mtime"] for r in records}
    expected = [r for n in sorted(gens) for r in generation(kind, n)]
    sort_key = (lambda r: (r["container_id"], r["chunk_id"])) if kind == "rawx" else (lambda r: r["container_url"])
    assert sorted(records, key=sort_key) == sorted(expected, key=sort_key), f"partial generations among {gens}"
    return lines[1]["admin"], gens


@pytest.mark.parametrize("kind", ["rawx", "meta2"])
def test_export_is_a_state_that_existed(cli, tmp_path, kind):
    path = tmp_path / "store"
    with Store(path) as store:
        vol = store.volume(CHURN_VOLUME, kind, create=True)
        index(vol).put_batch(generation(kind, 0))
        if kind == "rawx":
            vol.admin_set("incident_date", "0")
    ctx = multiprocessing.get_context("spawn")
    ready, stop, steps = ctx.Event(), ctx.Event(), ctx.Value("q", 0)
    writer = ctx.Process(target=churn, args=(path, kind, ready, stop, steps))
    writer.start()
    try:
        assert ready.wait(60)
        overlaps = []
        for e in range(EXPORTS):
            before = steps.value
            dump = tmp_path / f"dump-{e}.jsonl"
            proc = cli("export", "--db-path", path, "-o", dump)
            assert proc.returncode == 0, proc.stderr.decode()
            overlaps.append(steps.value - before)
            admin, gens = dumped_generations(kind, dump.read_bytes())
            assert states_that_existed(kind, admin, gens), (admin, gens)
    finally:
        stop.set()
        writer.join(60)
    assert writer.exitcode == 0
    assert sum(overlaps) >= EXPORTS, f"the writer hardly ran during the exports: {overlaps} steps"


def test_sigterm_during_an_export_frees_its_snapshot(tmp_path):
    """A terminated export leaves no reader slot behind: the writer reuses its pages at once.

    The test process plays the server: its environment stays open, so nothing
    clears a dead reader's slot for it (a killed reader pins every page freed
    after its snapshot: about 27 KiB per single-record commit, see
    benches/snapshot_growth.py).
    """
    path, dump = tmp_path / "store", tmp_path / "dump.jsonl"
    with Store(path, sync=False) as store:
        chunks = store.volume(CHURN_VOLUME, create=True).chunks
        for n in range(25):  # 300,000 records: an export of a few seconds
            chunks.put_batch(generation("rawx", n))
        with subprocess.Popen([RDIRDB, "export", "--db-path", path, "-o", dump]) as export:
            deadline = time.monotonic() + 60
            while not any(p.stat().st_size for p in tmp_path.glob(".dump.jsonl.*.partial")):
                assert export.poll() is None and time.monotonic() < deadline, "the export did not start writing"
                time.sleep(0.01)
            export.terminate()
            assert export.wait(60) == 128 + signal.SIGTERM
        assert list(tmp_path.glob(".dump.jsonl*")) == []  # the partial dump is removed

        data = path / "rawx" / CHURN_VOLUME / "data.mdb"
        size = data.stat().st_size
        for r in generation("rawx", 99)[:2_000]:  # 4,000 single-record commits: ~100 MiB if pinned
            chunks.put_batch([r])
            chunks.delete_batch([r])
        assert data.stat().st_size - size < 8 << 20
