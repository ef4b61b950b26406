"""The client's own behaviour: defaults, arrays, fetch options, retries, meta2 ids."""

from __future__ import annotations

import hashlib
import random
import threading
from unittest import mock

import numpy as np
import pytest

from rdirdb import RdirClient
from rdirdb.rdir.client import CHUNK_DEFAULTS, RdirBackend, cid_from_name
from rdirdb.errors import BadRequest, NotFound, OioTimeout, ServerException

from .conftest import entry, hexid, key, make_record


def fetch(client, vol, **kwargs):
    return list(client.chunk_fetch(vol, **kwargs))


@pytest.fixture
def filled(client, vol):
    records = sorted((make_record(mtime=i) for i in range(23)), key=key)
    client.chunk_push_batch(vol, records, create=True)
    return vol, records


def test_needs_a_db_path():
    with pytest.raises(ValueError, match="db_path"):
        RdirClient({})


@pytest.mark.parametrize("value, durable", [(None, True), (True, True), ("yes", True), ("false", False), (0, False)])
@pytest.mark.embedded_only
def test_db_sync(tmp_path, value, durable):
    conf = {"db_path": str(tmp_path)} if value is None else {"db_path": str(tmp_path), "db_sync": value}
    with RdirClient(conf) as client:
        assert client.backend.store.sync is durable
        client.create("vol")
        assert client.backend.store.volume("vol").env.durable is durable


# -- chunk_push ---------------------------------------------------------------


def test_chunk_push_current_signature(client, vol):
    client.create(vol)
    client.chunk_push(vol, "CID", "CONTENT", "CHUNK", "obj", 7, mtime=12.7)
    assert fetch(client, vol) == [("CID", "CHUNK", {"content_id": "CONTENT", "mtime": 12, "path": "obj", "version": 7})]


def test_chunk_push_older_signature(client, vol):
    client.create(vol)
    client.chunk_push(vol, "CID", "CONTENT", "CHUNK", headers={"x": "y"}, mtime=3, path="obj", version="8")
    assert fetch(client, vol) == [("CID", "CHUNK", {"content_id": "CONTENT", "mtime": 3, "path": "obj", "version": 8})]


def test_chunk_push_defaults(client, vol):
    client.create(vol)
    client.chunk_push(vol, "CID", "CONTENT", "CHUNK")
    assert fetch(client, vol) == [("CID", "CHUNK", dict(CHUNK_DEFAULTS, content_id="CONTENT"))]
    assert CHUNK_DEFAULTS == {"mtime": 0, "path": "", "version": 0}


def test_chunk_push_rejects_two_paths(client, vol):
    client.create(vol)
    with pytest.raises(TypeError):
        client.chunk_push(vol, "CID", "CONTENT", "CHUNK", "obj", path="other")
    assert fetch(client, vol) == []


@pytest.mark.parametrize("field, value", [("mtime", "soon"), ("content_version", "v1"), ("content_version", [])])
def test_chunk_push_rejects_non_integers(client, vol, field, value):
    client.create(vol)
    with pytest.raises(BadRequest, match="Invalid type"):
        client.chunk_push(vol, "CID", "CONTENT", "CHUNK", "obj", **{field: value})
    assert fetch(client, vol) == []


@pytest.mark.parametrize("field, value", [("container_id", 5), ("chunk_id", None), ("path", b"obj")])
def test_chunk_push_rejects_wrong_types(client, vol, field, value):
    client.create(vol)
    with pytest.raises((BadRequest, TypeError)):
        client.chunk_push_batch(vol, [make_record(**{field: value})])
    assert fetch(client, vol) == []


def test_overwrite_replaces_the_record(client, vol):
    rec = make_record()
    client.chunk_push_batch(vol, [rec], create=True)
    newer = dict(rec, content_id=hexid(32), mtime=rec["mtime"] + 1, path="other", version=2)
    client.chunk_push_batch(vol, [newer])
    assert fetch(client, vol) == [entry(newer)]


def test_duplicate_keys_in_a_batch_last_wins(client, vol):
    rec = make_record()
    last = dict(rec, path="last")
    client.chunk_push_batch(vol, [rec, last], create=True)
    assert fetch(client, vol) == [entry(last)]


@pytest.mark.embedded_only
def test_lock_owner_is_checked_before_the_volume_is_created(client, vol):
    with pytest.raises(TypeError):
        client.admin_lock(vol, None, create=True)
    with pytest.raises(BadRequest):
        client.admin_lock(vol, "", create=True)
    assert client.backend.store.volumes() == []


# -- arrays -------------------------------------------------------------------


def test_fetch_array_pages(client, filled, requests):
    vol, records = filled
    arrays = list(client.chunk_fetch_array(vol, limit=10))
    assert [len(a) for a in arrays] == [10, 10, 3]
    assert requests["chunk_array_page"] == 3
    rows = np.concatenate(arrays)
    assert [(r["container_id"].decode(), r["chunk_id"].decode()) for r in rows] == [
        (r["container_id"], r["chunk_id"]) for r in records
    ]
    assert list(rows["mtime"]) == [r["mtime"] for r in records]


def test_fetch_array_rebuild_without_incident_is_empty(client, filled, requests):
    vol, _ = filled
    arrays = list(client.chunk_fetch_array(vol, rebuild=True))
    assert [len(a) for a in arrays] == [0]
    assert requests["chunk_array_page"] == 1


def test_fetch_array_rebuild(client, filled):
    vol, records = filled
    client.admin_incident_set(vol, 4)
    rows = np.concatenate(list(client.chunk_fetch_array(vol, rebuild=True, limit=2)))
    assert sorted(int(m) for m in rows["mtime"]) == [0, 1, 2, 3, 4]


def test_push_batch_of_a_structured_array(client, filled):
    vol, records = filled
    (array,) = client.chunk_fetch_array(vol)
    client.chunk_push_batch("copy", array, create=True)
    assert fetch(client, "copy") == [entry(r) for r in records]


def test_push_batch_of_a_text_structured_array(client, vol):
    records = sorted((make_record(mtime=i, path=f"é-{i}") for i in range(4)), key=key)
    array = np.array(
        [tuple(r[f] for f in ("container_id", "content_id", "chunk_id", "mtime", "path", "version")) for r in records],
        dtype=[("container_id", "U64"), ("content_id", "U32"), ("chunk_id", "U64"),
               ("mtime", "i4"), ("path", "U8"), ("version", "i8")],
    )
    client.chunk_push_batch(vol, array, create=True)
    assert fetch(client, vol) == [entry(r) for r in records]


# -- fetch options --------------------------------------------------------------


def test_shuffle_stays_within_pages(client, filled):
    vol, records = filled
    random.seed(1)
    got = fetch(client, vol, limit=5, shuffle=True)
    expected = [entry(r) for r in records]
    assert got != expected
    for start in range(0, len(expected), 5):
        assert sorted(got[start:start + 5], key=lambda e: f"{e[0]}|{e[1]}") == expected[start:start + 5]


def test_full_urls_and_old_format(client, filled):
    vol, records = filled
    rec = records[0]
    value = entry(rec)[2]
    assert fetch(client, vol, full_urls=True)[0] == (rec["container_id"], f"http://{vol}/{rec['chunk_id']}", value)
    assert fetch(client, vol, old_format=True)[0] == (rec["container_id"], rec["content_id"], rec["chunk_id"], value)


def test_chunk_search(client, filled):
    vol, records = filled
    target = records[7]
    assert client.chunk_search(vol, target["chunk_id"], limit=4) == [entry(target)]
    assert client.chunk_search(vol, "nothing") == []


@pytest.mark.parametrize("limit, pages", [(0, 11), (-1, 11), (None, 11), (20_000, 2)])
def test_chunk_limit_default_and_cap(client, vol, requests, limit, pages):
    records = [(f"{i:064X}", "C", "K", 1, "p", 1) for i in range(10_001)]
    client.chunk_push_batch(vol, records, create=True)
    assert sum(1 for _ in client.chunk_fetch(vol, limit=limit)) == 10_001
    assert requests["chunk_page"] == pages


def test_status_max_is_capped(client, vol, requests):
    client.chunk_push_batch(vol, [(f"{i:064X}", "C", "K", 1, "p", 1) for i in range(10_001)], create=True)
    assert client.status(vol, max=50_000)["chunk"] == {"total": 10_001}
    assert requests["status_page"] == 2


def test_paging_during_writes_never_repeats_or_reorders(client, vol):
    # Each page is its own snapshot; markers make the listing move forward only.
    client.chunk_push_batch(vol, [(f"{i:064X}", "C", f"{i:064X}", 1, "p", 1) for i in range(0, 4000, 2)], create=True)
    def writer():
        for start in range(1, 4000, 200):
            client.chunk_push_batch(vol, [(f"{i:064X}", "C", f"{i:064X}", 1, "p", 1) for i in range(start, start + 200, 2)])

    thread = threading.Thread(target=writer)
    thread.start()
    keys = [f"{cid}|{chunk}" for cid, chunk, _ in client.chunk_fetch(vol, limit=50)]
    thread.join()
    assert keys == sorted(set(keys))
    assert set(keys) >= {f"{i:064X}|{i:064X}" for i in range(0, 4000, 2)}
    assert len(list(client.chunk_fetch(vol))) == 4000


# -- retries ------------------------------------------------------------------------


@pytest.fixture
def flaky():
    backend = mock.create_autospec(RdirBackend, instance=True)
    with mock.patch("rdirdb.rdir.client.time.sleep") as sleep:
        yield RdirClient({}, backend=backend), backend, sleep


def test_network_errors_are_retried(flaky):
    client, backend, sleep = flaky
    page = [("C", "K", {"content_id": "X", "mtime": 1, "path": "p", "version": 1})]
    backend.chunk_page.side_effect = [OioTimeout("t"), OioTimeout("t"), (page, False, None)]
    assert list(client.chunk_fetch("vol")) == page
    assert sleep.call_args_list == [mock.call(0.0), mock.call(1.0)]


def test_retries_are_bounded(flaky):
    client, backend, _ = flaky
    backend.status_page.side_effect = OioTimeout("t")
    with pytest.raises(OioTimeout):
        client.status("vol", max_attempts=2)
    assert backend.status_page.call_count == 2


def test_other_errors_are_not_retried(flaky):
    client, backend, sleep = flaky
    backend.chunk_page.side_effect = NotFound("DB not found")
    with pytest.raises(NotFound):
        list(client.chunk_fetch("vol"))
    assert backend.chunk_page.call_count == 1
    assert not sleep.called


# -- meta2 ids ------------------------------------------------------------------------


def test_cid_from_name():
    assert cid_from_name("acct", "ct") == hashlib.sha256(b"acct\x00ct").hexdigest().upper()
    assert cid_from_name("é", "c") == hashlib.sha256("é\x00c".encode()).hexdigest().upper()


def test_meta2_delete_by_path_derives_the_id():
    backend = mock.create_autospec(RdirBackend, instance=True)
    RdirClient({}, backend=backend).meta2_index_delete("vol", container_path="NS/acct/a/b")
    backend.meta2_delete.assert_called_once_with(
        "vol", [{"container_url": "NS/acct/a/b", "container_id": cid_from_name("acct", "a/b")}]
    )


def test_meta2_delete_by_id_finds_the_path(client, vol):
    urls = [f"NS/acct/c{i:04d}" for i in range(2500)]
    client.backend.meta2_push(
        vol, [{"container_url": u, "container_id": cid_from_name("acct", u[8:]), "mtime": 0} for u in urls]
    )
    client.meta2_index_delete(vol, container_id=cid_from_name("acct", "c2100"))
    remaining = [r["container_url"] for r in client.meta2_index_fetch_all(vol)]
    assert remaining == [u for u in urls if u != "NS/acct/c2100"]
    client.meta2_index_delete(vol, container_id="0" * 64)  # unknown: nothing to delete
    assert len(client.meta2_index_fetch_all(vol)) == 2499


def test_meta2_delete_needs_a_path_or_an_id(client, vol):
    with pytest.raises(ValueError):
        client.meta2_index_delete(vol)
    with pytest.raises(BadRequest):
        client.meta2_index_delete(vol, container_path="no-slashes")


def test_meta2_extra_data(client, vol):
    client.meta2_index_push(vol, "NS/a/c", "CID", 5, extra_data='{"k": 1}')
    assert client.meta2_index_fetch(vol)["records"] == [
        {"container_url": "NS/a/c", "container_id": "CID", "mtime": 5, "extra_data": '{"k": 1}'}
    ]


def test_meta2_fetch_all_with_prefix(client, vol):
    urls = [f"NS/{a}/c{i}" for a in ("a", "b") for i in range(7)]
    client.backend.meta2_push(vol, [{"container_url": u, "container_id": "C", "mtime": 0} for u in urls])
    got = client.meta2_index_fetch_all(vol, prefix="NS/b/", limit=3)
    assert [r["container_url"] for r in got] == urls[7:]


@pytest.mark.parametrize("field, value", [("container_id", ""), ("chunk_id", ""), ("chunk_id", "x\nA"),
                                          ("container_id", "a\x01b"), ("chunk_id", "\x7f")])
def test_both_paths_refuse_the_same_ids(client, vol, field, value):
    """The one id rule of the native validator, in process and through a server."""
    with pytest.raises(BadRequest, match=field):
        client.chunk_push_batch(vol, [make_record(), make_record(**{field: value})], create=True)
    with pytest.raises(NotFound):
        client.admin_show(vol)  # not even created


def test_paging_over_ids_a_header_carries_with_care(client, vol):
    """Non-ASCII ids (raw UTF-8 in the marker header) and spaces at the ends of a key."""
    records = [make_record(container_id=cid, chunk_id=chunk) for cid, chunk in [
        ("C", "é0"), ("C", "é1"), ("C", "ß é"), ("C", "end "), (" lead", "x"), ("é", "ü"), ("é", "ü ")]]
    client.chunk_push_batch(vol, records, create=True)
    expected = sorted((entry(r) for r in records), key=lambda e: f"{e[0]}|{e[1]}".encode())
    assert fetch(client, vol, limit=1) == expected
    assert client.status(vol, max=1)["chunk"]["total"] == len(records)


def test_a_truncated_page_without_a_marker_is_an_error_not_a_loop():
    backend = mock.create_autospec(RdirBackend, instance=True)
    backend.chunk_page.return_value = ([("c", "k", {})], True, None)
    with pytest.raises(ServerException, match="marker"):
        list(RdirClient({}, backend=backend).chunk_fetch("vol"))
    assert backend.chunk_page.call_count == 1


def test_fetch_array_pages_share_one_dtype(client, vol):
    """Issue 14: pages whose ids and paths differ in length still concatenate."""
    records = [make_record(chunk_id="k" * n, path="p" * n, content_id="C" * (n % 64)) for n in (1, 100, 511)]
    client.chunk_push_batch(vol, records, create=True)
    arrays = list(client.chunk_fetch_array(vol, limit=1))
    assert len(arrays) == 3 and len({a.dtype for a in arrays}) == 1
    empty, _, _ = client.backend.chunk_array_page(vol, prefix=None, marker=None, limit=None, rebuild=True)
    assert len(empty) == 0 and empty.dtype == arrays[0].dtype
    rows = np.concatenate(arrays)
    assert sorted(r.decode() for r in rows["chunk_id"]) == sorted(r["chunk_id"] for r in records)
    assert sorted(r.decode() for r in rows["path"]) == sorted(r["path"] for r in records)
