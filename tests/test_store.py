"""The store: volume file names, lifecycle, admin keys, the meta2 index."""

from __future__ import annotations

import multiprocessing
import re
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rdirdb.errors import BadRequest, ClosedError, Forbidden, NotFound
from rdirdb.rdir.store import Store, volume_file_name, volume_id_from_file_name

volume_ids = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                     min_size=1, max_size=25)  # 25 * 9 escaped bytes < 255


@given(volume_ids)
def test_volume_names_are_safe_and_reversible(vol):
    name = volume_file_name(vol)
    assert "/" not in name and name not in (".", "..") and not name.startswith(".")
    assert volume_id_from_file_name(name) == vol


@pytest.mark.parametrize("vol", ["..", ".", "../../etc", "/etc/passwd", "a/../b"])
def test_traversal_stays_inside(store, vol):
    store.volume(vol, create=True)
    root = os.path.realpath(store.path)
    for dirpath, dirnames, _ in os.walk(root):
        assert os.path.realpath(dirpath).startswith(root)
    assert vol in store.volumes()


@pytest.mark.parametrize("vol, error", [("", BadRequest), ("a\x00b", BadRequest), (7, TypeError),
                                        ("x" * 300, BadRequest)])
def test_bad_volume_ids(store, vol, error):
    with pytest.raises(error):
        store.volume(vol, create=True)
    assert store.volumes() == []


def test_unknown_volume_and_service_type(store):
    with pytest.raises(NotFound, match="DB not found"):
        store.volume("absent")
    with pytest.raises(BadRequest, match="unknown service type"):
        store.volume("v", "rdir", create=True)


def test_listing_and_open_count(tmp_path):
    with Store(tmp_path) as store:
        store.volume("127.0.0.1:6004", create=True)
        store.volume("b", create=True)
        store.volume("127.0.0.1:6120", "meta2", create=True)
        assert store.opened_count == 3
    with Store(tmp_path) as store:
        assert store.opened_count == 0
        assert store.volumes() == ["127.0.0.1:6004", "b"]
        assert store.volumes("meta2") == ["127.0.0.1:6120"]


def test_closed_store(tmp_path):
    store = Store(tmp_path)
    store.close()
    store.close()
    with pytest.raises(ClosedError):
        store.volume("v", create=True)


def test_admin_keys_and_lock(volume):
    assert volume.admin_show() == {}
    assert volume.incident == 0
    volume.admin_set("incident_date", "1234")
    volume.lock("rebuilder on host")
    volume.lock("rebuilder on host")  # idempotent for the same owner
    with pytest.raises(Forbidden, match="Already locked by rebuilder on host"):
        volume.lock("someone else")
    assert volume.admin_show() == {"incident_date": "1234", "lock": "rebuilder on host"}
    assert volume.incident == 1234
    volume.unlock()
    volume.lock("someone else")


def _race_for_lock(path, who, results):
    with Store(path) as store:
        vol = store.volume("v")
        try:
            vol.lock(who)
            results.put(who)
        except Forbidden:
            results.put(None)


def test_lock_is_atomic_across_processes(tmp_path):
    Store(tmp_path).volume("v", create=True).env.close()
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_race_for_lock, args=(tmp_path, f"p{i}", results)) for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    winners = [w for w in (results.get(timeout=10) for _ in procs) if w]
    assert len(winners) == 1
    with Store(tmp_path) as store:
        assert store.volume("v").admin_get("lock") == winners[0]


def test_meta2_index(store):
    meta2 = store.volume("127.0.0.1:6120", "meta2", create=True).meta2
    urls = [f"NS/acct/c{i}" for i in range(5)] + ["NS/other/x", "NS/" + "u" * 600]
    assert meta2.put_batch([{"container_url": u, "container_id": "%064X" % i, "mtime": i}
                            for i, u in enumerate(urls)]) == 7
    assert meta2.count() == 7 and meta2.count("NS/acct/") == 5
    page, truncated, _ = meta2.fetch(prefix="NS/acct/", limit=2)
    assert [r["container_url"] for r in page] == ["NS/acct/c0", "NS/acct/c1"] and truncated
    page, truncated, _ = meta2.fetch(prefix="NS/acct/", marker="NS/acct/c1", limit=3)
    assert [r["container_url"] for r in page] == ["NS/acct/c2", "NS/acct/c3", "NS/acct/c4"]
    assert not truncated  # exact: no record after the page
    # A marker that no longer exists skips nothing.
    page, _, _ = meta2.fetch(marker="NS/acct/c1x")
    assert page[0]["container_url"] == "NS/acct/c2"
    long_rec = meta2.fetch(prefix="NS/uu")[0][0]
    assert long_rec == {"container_id": "%064X" % 6, "container_url": urls[6], "extra_data": None, "mtime": 6}
    assert meta2.delete_batch(["NS/acct/c0", urls[6], "absent"]) == 2
    assert meta2.count() == 5
    with pytest.raises(BadRequest, match=r"missing field \[container_id\]"):
        meta2.put_batch([{"container_url": "NS/a/b", "container_id": "x"}, {"container_url": "NS/a/c"}])
    assert meta2.count() == 5


def test_snapshot_reads_one_state(store):
    """fetch and admin_show with a snapshot read the state it began in, page after page."""
    vol = store.volume("vol-s", create=True)
    meta2 = store.volume("vol-s", "meta2", create=True)
    before = [(f"{i:064X}", "C" * 32, f"{i:064X}", i, "p", 1) for i in range(5)]
    vol.chunks.put_batch(before)
    vol.admin_set("incident_date", "1")
    meta2.meta2.put_batch([{"container_url": f"NS/a/{i}", "container_id": "x"} for i in range(3)])
    with vol.snapshot() as txn, meta2.snapshot() as txn2:
        vol.chunks.delete_batch([(cid, chunk) for cid, _, chunk, *_ in before[:2]])
        vol.chunks.put_batch([("F" * 64, "C" * 32, "F" * 64, 9, "p", 1)])
        vol.admin_set("incident_date", "2")
        meta2.meta2.delete_batch(["NS/a/0"])
        marker, seen = None, []
        while True:  # pages of 2: each fetch reuses the snapshot, which stays open
            page, truncated, marker = vol.chunks.fetch(marker=marker, limit=2, txn=txn)
            seen += [r[0] for r in page]
            if not truncated:
                break
        assert seen == [r[0] for r in before]
        assert vol.admin_show(txn) == {"incident_date": "1"} and vol.admin_show() == {"incident_date": "2"}
        assert [r["container_url"] for r in meta2.meta2.fetch(txn=txn2)[0]] == ["NS/a/0", "NS/a/1", "NS/a/2"]
        assert len(vol.chunks.fetch()[0]) == 4  # without it: the current state
        with pytest.raises(ValueError, match="another environment"):
            meta2.meta2.fetch(txn=txn)
    with pytest.raises(ClosedError):
        vol.chunks.fetch(txn=txn)
    with pytest.raises(TypeError):
        vol.chunks.fetch(txn="not a transaction")


# -- the one write path ------------------------------------------------------------

GOOD_CHUNK = ("C" * 64, "AB", "K" * 64, 1, "p", 1)
BAD_CHUNK = ("a|b", "AB", "K", 1, "p", 1)


@pytest.mark.parametrize("service_type, bad", [
    ("rawx", [GOOD_CHUNK, BAD_CHUNK]),
    ("rawx", [GOOD_CHUNK, dict(zip(("container_id", "content_id", "chunk_id", "mtime", "path"), GOOD_CHUNK))]),
    ("meta2", [{"container_url": "NS/a/c", "container_id": "X"}, {"container_url": "", "container_id": "X"}]),
])
@pytest.mark.parametrize("delete", [False, True])
def test_write_refuses_a_bad_batch_before_creating_the_volume(store, service_type, bad, delete):
    if delete and service_type == "rawx":
        bad = [(GOOD_CHUNK[0], GOOD_CHUNK[2]), ("C" * 65, "x")]
    with pytest.raises((BadRequest, TypeError)):
        store.write("v", service_type, bad, delete=delete, create=True)
    assert store.volumes(service_type) == [] and store.opened_count == 0


def test_write_creates_only_when_asked(store):
    with pytest.raises(NotFound):
        store.write("v", "rawx", [GOOD_CHUNK])
    with pytest.raises(NotFound):
        store.write("v", "rawx", [(GOOD_CHUNK[0], GOOD_CHUNK[2])], delete=True)
    assert store.write("v", "rawx", [GOOD_CHUNK, GOOD_CHUNK], create=True) == 1
    assert store.write("v", "rawx", [(GOOD_CHUNK[0], GOOD_CHUNK[2])], delete=True) == 1
    assert store.write("m", "meta2", [{"container_url": "NS/a/c", "container_id": "X"}], create=True) == 1
    assert store.write("m", "meta2", [{"container_url": "NS/a/c", "container_id": "X"}], delete=True) == 1


def test_write_to_an_open_volume_touches_no_file(store, monkeypatch):
    store.write("v", "rawx", [GOOD_CHUNK], create=True)

    def no_file_system(*args, **kwargs):
        raise AssertionError("a write to an open volume looked at the file system")

    monkeypatch.setattr(os.path, "exists", no_file_system)
    monkeypatch.setattr(os, "stat", no_file_system)
    assert store.write("v", "rawx", [GOOD_CHUNK[:2] + ("L" * 64,) + GOOD_CHUNK[3:]]) == 1
    monkeypatch.undo()
    assert store.volume("v").chunks.count() == 2


def test_a_volume_id_that_is_not_utf8_is_a_bad_request(store):
    with pytest.raises(BadRequest, match="UTF-8"):
        store.volume("\ud800", create=True)
    with pytest.raises(BadRequest, match="UTF-8"):
        store.write("\udcff\udcfe", "rawx", [GOOD_CHUNK], create=True)
    assert store.volumes() == []


@pytest.mark.parametrize("vol", ["..", "/etc", "a\x01b", "fz\n", "a b", "é"])
def test_volume_ids_of_any_text_stay_inside(store, vol):
    """The rule of volume ids (docs/openapi.yaml): any non-empty UTF-8 text without NUL."""
    store.write(vol, "rawx", [GOOD_CHUNK], create=True)
    assert store.volumes() == [vol]
    assert os.listdir(os.path.join(store.path, "rawx")) == [volume_file_name(vol)]


@pytest.mark.parametrize("field, value, problem", [
    (0, "", "container_id is empty"),
    (2, "", "chunk_id is empty"),
    (2, "x\nA", "chunk_id contains the control character U+000A"),
    (0, "c\rd", "container_id contains the control character U+000D"),
    (2, "tab\there", "chunk_id contains the control character U+0009"),
    (2, "del\x7f", "chunk_id contains the control character U+007F"),
])
def test_the_id_rule(store, field, value, problem):
    """An id of a chunk key may be neither empty nor hold a control character."""
    record = list(GOOD_CHUNK)
    record[field] = value
    with pytest.raises(BadRequest, match=re.escape(f"record 1: {problem}")):
        store.write("v", "rawx", [GOOD_CHUNK, tuple(record)], create=True)
    assert store.volumes() == []
