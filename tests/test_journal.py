"""The journal of a volume (rdirdb.rdir.journal): what it records, and recovery after a
crash that lost every page written after the restore point."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap

import pytest

from rdirdb._batch import journal_entries
from rdirdb.errors import BadRequest
from rdirdb.rdir import journal as journal_module
from rdirdb.rdir.journal import JOURNAL_DIR, RESTORE_POINT, meta_txnids, read_entries
from rdirdb.rdir.store import Store
from rdirdb.server.commit import commit_journaled


@pytest.fixture(autouse=True)
def restore_points_only_when_asked(monkeypatch):
    """No restore point from the journal's thread: the tests look at the file's offsets."""
    monkeypatch.setattr(journal_module, "CHECKPOINT_SECONDS", 1e9)


def record(i: int) -> dict:
    return {"container_id": f"{i * 7919:064X}", "content_id": f"{i:032X}", "chunk_id": f"{i * 104729:064X}",
            "mtime": 1_700_000_000 + i, "path": f"obj-{i}", "version": 1}


def write(store: Store, records: list[dict], *, delete: bool = False) -> list:
    vol, batch = store.prepare_write("v", "rawx", records, delete=delete, create=True)
    return commit_journaled(vol, [batch])


def listing(store: Store) -> list:
    return store.volume("v").chunks.fetch(limit=100_000)[0]


def test_the_journal_holds_what_the_commit_wrote(tmp_path):
    with Store(tmp_path, journal=True) as store:
        vol, batch = store.prepare_write("v", "rawx", [record(i) for i in range(5)], create=True)
        deletes = store.prepare_write("v", "rawx", [record(1)], delete=True)[1]
        assert commit_journaled(vol, [batch, deletes]) == [5, 1]
        journal = vol.journal
        assert journal is not None
        entries = list(read_entries(journal.path))
        assert len(entries) == 6 and batch.stamp < deletes.stamp
        # the newest entry of each key is what the volume holds: records, and the tombstone
        newest: dict = {}
        for key, stamp, value in entries:
            if key not in newest or stamp > newest[key][1]:
                newest[key] = (key, stamp, value)
        assert sorted(newest.values()) == sorted(vol.stamps.entries(None, None)[0])
        assert [e for e in entries if e[2] is None] == [e for e in entries if e[1] == deletes.stamp]
        data = journal_entries([batch, deletes])
        with open(journal.path, "rb") as f:
            assert f.read()[12:12 + len(data)] == data and journal.offset == 12 + len(data)


def test_a_batch_not_yet_written_has_nothing_to_journal(tmp_path):
    with Store(tmp_path, journal=True) as store:
        batch = store.prepare_write("v", "rawx", [record(1)], create=True)[1]
        with pytest.raises(ValueError, match="not yet written"):
            journal_entries([batch])


def test_a_commit_that_is_not_journaled_is_a_restore_point(tmp_path):
    with Store(tmp_path, journal=True) as store:
        vol = store.volume("v", create=True)
        vol.admin_set("k", "v")
        point = os.path.join(vol.env.path, JOURNAL_DIR, RESTORE_POINT)
        with open(point, "rb") as f:
            data = f.read()
        txnid = vol.env.info()["last_txnid"]
        assert max(meta_txnids(data[-2 * 4096:])) == txnid
    # closed: the file is flushed as it is, no restore point nor journal is left
    assert sorted(os.listdir(os.path.join(vol.env.path, JOURNAL_DIR))) == ["lock"]


def test_a_torn_record_ends_the_journal(tmp_path):
    with Store(tmp_path, journal=True) as store:
        write(store, [record(1)])
        write(store, [record(2)])
        journal = store.volume("v").journal
        end = journal.offset
        with open(journal.path, "rb") as f:
            whole = f.read()
    assert len(whole) > end and not whole[end:].strip(b"\0")  # written ahead: zeros
    for cut in (end - 1, end - 30):
        torn = tmp_path / "torn.log"
        torn.write_bytes(whole[:cut] + bytes(len(whole) - cut))
        assert len(list(read_entries(str(torn)))) == 1
    flipped = bytearray(whole)
    flipped[end - 3] ^= 0xFF
    (tmp_path / "flipped.log").write_bytes(bytes(flipped))
    assert len(list(read_entries(str(tmp_path / "flipped.log")))) == 1


def test_a_restore_point_starts_the_journal_again(tmp_path):
    """After a restore point the journal is written from its start with the next epoch:
    the older records after the new ones are never read back."""
    with Store(tmp_path, journal=True) as store:
        write(store, [record(i) for i in range(50)])  # a long first record
        journal = store.volume("v").journal
        epoch = journal.epoch
        journal.checkpoint()
        assert (journal.epoch, journal.offset) == (epoch + 1, 0)
        write(store, [record(100)])
        entries = list(read_entries(journal.path))
        assert len(entries) == 1 and entries[0][2] is not None and b"obj-100" in entries[0][2]


CRASH = textwrap.dedent("""
    import os, sys
    sys.path[:0] = [{tests!r}]
    from test_journal import record
    from rdirdb.rdir.store import Store
    from rdirdb.server.commit import commit_journaled
    import rdirdb.rdir.journal as journal
    journal.CHECKPOINT_SECONDS = 1e9  # one restore point: the first journaled commit's
    store = Store({path!r}, journal=True)
    for i in range(0, 3000, 100):
        vol, batch = store.prepare_write("v", "rawx", [record(j) for j in range(i, i + 100)], create=True)
        assert commit_journaled(vol, [batch]) == [100]
    vol, batch = store.prepare_write("v", "rawx", [record(j) for j in range(0, 3000, 3)], delete=True)
    assert commit_journaled(vol, [batch]) == [1000]
    print("acked", flush=True)
    os.kill(os.getpid(), 9)
""")


def test_recovery_after_losing_every_page_written_since_the_restore_point(tmp_path):
    """A SIGKILL after acknowledged journaled commits, then the meta pages and every page
    past the restore point's last one overwritten (what a power loss may leave): the
    first opener restores the meta pages, replays the journal, and every acknowledged
    write is there, deletes included."""
    tests = os.path.dirname(__file__)
    run = subprocess.run([sys.executable, "-c", CRASH.format(tests=tests, path=str(tmp_path))],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == -signal.SIGKILL and "acked" in run.stdout, run.stderr
    env_dir = next((tmp_path / "rawx").iterdir())
    journal_dir = env_dir / JOURNAL_DIR
    point = (journal_dir / RESTORE_POINT).read_bytes()  # noqa: F841 (kept for the meta pages)
    metas = point[-2 * 4096:]
    last_pg = max(struct.unpack_from("<Q", metas, page * 4096 + 136)[0] for page in (0, 1))
    with open(env_dir / "data.mdb", "r+b") as f:
        f.write(b"\xa5" * 2 * 4096)  # both meta pages lost
        size = os.fstat(f.fileno()).st_size
        f.seek((last_pg + 1) * 4096)
        f.write(b"\x5a" * min(size - (last_pg + 1) * 4096, 8 << 20))  # the pages after, lost too
    with pytest.raises(BadRequest, match="must be recovered"):
        Store(tmp_path, readonly=True).volume("v")
    with Store(tmp_path, journal=True) as store:
        listed = {row[2] for row in listing(store)}
        assert listed == {record(j)["chunk_id"] for j in range(3000) if j % 3}
        assert store.volume("v").chunks.count() == 2000
    assert sorted(os.listdir(journal_dir)) == ["lock"]


def test_a_store_without_journal_keeps_the_journal_of_a_journaled_volume(tmp_path):
    with Store(tmp_path, journal=True) as store:
        write(store, [record(1)])
    with Store(tmp_path) as store:  # the embedded default: durable, told nothing of journals
        vol = store.volume("v")
        assert vol.journal is not None
        store.write("v", "rawx", [record(2)])
        assert os.path.exists(os.path.join(vol.env.path, JOURNAL_DIR, RESTORE_POINT))
    with Store(tmp_path, sync=False) as store:
        assert store.volume("v").journal is None
        assert len(listing(store)) == 2


WRITER = textwrap.dedent("""
    import os, sys, time
    sys.path[:0] = [{tests!r}]
    from test_journal import record
    from rdirdb.rdir.store import Store
    from rdirdb.server.commit import commit_journaled
    import rdirdb.rdir.journal as journal
    journal.CHECKPOINT_SECONDS = 1e9  # its journal keeps every record
    store = Store({path!r}, journal=True)
    vol, batch = store.prepare_write("v", "rawx", [record(j) for j in range(100)], create=True)
    assert commit_journaled(vol, [batch]) == [100]
    print("written", flush=True)
    time.sleep(60)
""")

CLEARER = textwrap.dedent("""
    import os, sys
    from rdirdb.rdir.store import Store
    store = Store({path!r}, journal=True)
    assert store.volume("v").clear_records() == 100
    print("cleared", flush=True)
    if {crash}:
        os.kill(os.getpid(), 9)
    store.close()
""")


@pytest.mark.parametrize("crash", [True, False], ids=["crash", "close"])
def test_a_cleared_volume_stays_cleared_whatever_the_journals_of_others_hold(tmp_path, crash):
    """Another process's journal still holds records written before a clear (the writer
    is killed before its next restore point): after a crash (or a close) of the
    clearing process, recovery must not bring them back."""
    tests = os.path.dirname(__file__)
    writer = subprocess.Popen([sys.executable, "-c", WRITER.format(tests=tests, path=str(tmp_path))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "written"
        run = subprocess.run([sys.executable, "-c", CLEARER.format(path=str(tmp_path), crash=crash)],
                             capture_output=True, text=True, timeout=60)
        assert "cleared" in run.stdout, run.stderr
    finally:
        writer.kill()
        writer.wait()
        if writer.stdout is not None:
            writer.stdout.close()
    journals = [n for n in os.listdir(next((tmp_path / "rawx").iterdir()) / JOURNAL_DIR) if n.endswith(".log")]
    assert journals  # the writer's, with its 100 records
    with Store(tmp_path, journal=True) as store:
        assert store.volume("v").chunks.count() == 0


def test_the_map_grows_under_a_pinned_restore_point(tmp_path):
    with Store(tmp_path, journal=True, map_size=1 << 20) as store:
        for start in range(0, 20_000, 1000):
            assert write(store, [record(j) for j in range(start, start + 1000)]) == [1000]
            store.volume("v").journal.checkpoint()
        vol = store.volume("v")
        assert vol.env.info()["map_size"] > 1 << 20 and vol.chunks.count() == 20_000
    with Store(tmp_path, journal=True) as store:
        assert store.volume("v").chunks.count() == 20_000
