"""The reference server's tests (§9.1, §9.4) that apply to an embedded store, through the client.

Not applicable here, because they test the HTTP layer or the process (the
server issue covers them): 9.1 #1-3 (/status, /config, prometheus), the
non-JSON body steps of #4 and #24, 9.2 (#13-15) and 9.3 (#16-23). A request
"without vol" is a call with ``volume=None`` (TypeError) and ``vol=""`` an
empty volume id (BadRequest).
"""

from __future__ import annotations

import pytest

from rdirdb.errors import BadRequest, Forbidden, NotFound

from .conftest import entry, make_meta2_record, make_record

REQUIRED = ("container_id", "chunk_id", "path", "version")


def fetch(client, vol, **kwargs):
    return list(client.chunk_fetch(vol, **kwargs))


# -- 9.1 TestRdirServer --------------------------------------------------------


def test_explicit_create(client, vol):
    rec = make_record()
    with pytest.raises(NotFound):
        client.chunk_push_batch(vol, [rec])
    with pytest.raises(TypeError):
        fetch(client, None)
    with pytest.raises(NotFound):
        fetch(client, vol)
    with pytest.raises(BadRequest):
        client.create("")
    client.create(vol)
    assert client.admin_show(vol) == {}
    assert fetch(client, vol) == []
    client.chunk_push_batch(vol, [rec])
    assert fetch(client, vol) == [entry(rec)]
    with pytest.raises(TypeError):
        client.chunk_delete(None, rec["container_id"], rec["content_id"], rec["chunk_id"])
    with pytest.raises(BadRequest):
        client.chunk_delete("", rec["container_id"], rec["content_id"], rec["chunk_id"])
    client.chunk_delete(vol, rec["container_id"], rec["content_id"], rec["chunk_id"])
    assert fetch(client, vol) == []


def test_implicit_create(client, vol):
    rec = make_record()
    with pytest.raises(NotFound):
        client.chunk_push_batch(vol, [rec])
    client.chunk_push_batch(vol, [rec], create=True)
    assert fetch(client, vol) == [entry(rec)]


def test_push_several_chunks(client, vol):
    records = [make_record() for _ in range(3)]
    with pytest.raises(NotFound):
        client.chunk_push_batch(vol, records)
    client.chunk_push_batch(vol, records, create=True)
    assert fetch(client, vol) == sorted(entry(r) for r in records)
    client.chunk_delete_batch(vol, records)
    assert fetch(client, vol) == []


@pytest.mark.parametrize("missing", REQUIRED)
def test_push_missing_fields(client, vol, missing):
    with pytest.raises(TypeError):
        client.chunk_push_batch(None, [make_record()])
    client.create(vol)
    rec = make_record()
    del rec[missing]
    with pytest.raises(BadRequest):
        client.chunk_push_batch(vol, [rec])
    assert fetch(client, vol) == []


def test_lock_unlock(client, vol):
    with pytest.raises(BadRequest):
        client.admin_lock(vol, "", create=True)
    with pytest.raises(NotFound):
        client.admin_lock(vol, "tester")
    client.create(vol)
    with pytest.raises(TypeError):
        client.admin_lock(None, "tester")
    with pytest.raises(BadRequest):
        client.admin_lock(vol, "")
    client.admin_lock(vol, "tester")
    with pytest.raises(Forbidden) as raised:
        client.admin_lock(vol, "someone else")
    assert raised.value.message == "Already locked by tester"
    client.admin_unlock(vol)
    client.admin_lock(vol, "someone else")


@pytest.mark.parametrize(
    "flags, result",
    [
        ({"clear_all": True}, {"removed": 1, "repaired": 0, "errors": 0}),
        ({"repair": True}, {"removed": 0, "repaired": 1, "errors": 0}),
    ],
)
def test_rdir_clear_and_lock(client, vol, flags, result):
    rec = make_record()
    with pytest.raises(TypeError):
        client.admin_clear(None, **flags)
    client.chunk_push_batch(vol, [rec], create=True)
    client.admin_lock(vol, "tester")
    with pytest.raises(Forbidden):
        client.admin_clear(vol, **flags)
    assert fetch(client, vol) == [entry(rec)]
    client.admin_unlock(vol)
    assert client.admin_clear(vol, **flags) == result
    assert fetch(client, vol) == ([] if flags.get("clear_all") else [entry(rec)])


def test_rdir_clear_with_before_incident(client, vol):
    t0 = 1_700_000_000
    with pytest.raises(TypeError):
        client.admin_clear(None, before_incident=True)
    old = make_record(mtime=t0)
    client.chunk_push_batch(vol, [old], create=True)
    client.admin_incident_set(vol, t0)
    new = make_record(mtime=t0 + 1)
    client.chunk_push_batch(vol, [new])
    client.admin_lock(vol, "tester")
    with pytest.raises(Forbidden):
        client.admin_clear(vol, before_incident=True)
    client.admin_unlock(vol)
    assert client.admin_clear(vol, before_incident=True) == {"removed": 1, "repaired": 0, "errors": 0}
    assert fetch(client, vol) == [entry(new)]
    assert client.admin_incident_get(vol) == 0


def test_vol_status(client, vol):
    t0 = 1_700_000_000
    with pytest.raises(TypeError):
        client.status(None)
    with pytest.raises(NotFound):
        client.status(vol)
    client.create(vol)
    assert client.status(vol) == {"chunk": {"total": 0}, "container": {}}
    rec = make_record(mtime=t0)
    cid = rec["container_id"]
    client.chunk_push_batch(vol, [rec])
    assert client.status(vol) == {"chunk": {"total": 1}, "container": {cid: {"total": 1}}}
    client.admin_incident_set(vol, t0)
    assert client.status(vol) == {
        "chunk": {"total": 1, "to_rebuild": 1},
        "container": {cid: {"total": 1, "to_rebuild": 1}},
    }
    rec2 = make_record(mtime=t0 + 1)
    cid2 = rec2["container_id"]
    client.chunk_push_batch(vol, [rec2])
    assert client.status(vol) == {
        "chunk": {"total": 2, "to_rebuild": 1},
        "container": {cid: {"total": 1, "to_rebuild": 1}, cid2: {"total": 1}},
    }
    assert client.admin_clear(vol) == {"removed": 0, "repaired": 0, "errors": 0}
    assert client.status(vol) == {
        "chunk": {"total": 2},
        "container": {cid: {"total": 1}, cid2: {"total": 1}},
    }


# -- 9.4 TestRdirServerMeta2Ops ----------------------------------------------


def push_meta2(client, vol, rec):
    client.meta2_index_push(vol, rec["container_url"], rec["container_id"], rec["mtime"])


def test_meta2_fetch_invalid_parameters(client, vol):
    with pytest.raises(TypeError):
        client.meta2_index_fetch(None)
    with pytest.raises(NotFound):
        client.meta2_index_fetch(vol)


def test_meta2_delete_invalid_parameters(client, vol):
    rec = make_meta2_record()
    with pytest.raises(TypeError):
        client.meta2_index_delete(None, rec["container_url"], rec["container_id"])
    with pytest.raises(BadRequest):
        client.meta2_index_delete("", rec["container_url"], rec["container_id"])


def test_meta2_create_missing_parameters(client):
    with pytest.raises(TypeError):
        client.meta2_index_create(None)
    with pytest.raises(BadRequest):
        client.meta2_index_create("")


@pytest.mark.parametrize("missing", ["container_url", "container_id"])
def test_meta2_push_missing_fields(client, vol, missing):
    rec = make_meta2_record()
    with pytest.raises(TypeError):
        push_meta2(client, None, rec)
    client.meta2_index_create(vol)
    rec[missing] = None
    with pytest.raises(BadRequest):
        push_meta2(client, vol, rec)
    assert client.meta2_index_fetch(vol) == {"records": [], "truncated": False}


def test_meta2_push_without_mtime_is_rejected_by_the_client(client, vol):
    # The server makes mtime optional, but OpenIO's client sends int(mtime).
    rec = make_meta2_record()
    with pytest.raises(BadRequest):
        client.meta2_index_push(vol, rec["container_url"], rec["container_id"], None)


def test_meta2_count(client, vol):
    rec = make_meta2_record()
    client.meta2_index_create(vol)
    assert len(client.meta2_index_fetch_all(vol)) == 0
    push_meta2(client, vol, rec)
    assert len(client.meta2_index_fetch_all(vol)) == 1
    client.meta2_index_delete(vol, rec["container_url"], rec["container_id"])
    assert len(client.meta2_index_fetch_all(vol)) == 0


def test_meta2_count_not_found(client, vol):
    with pytest.raises(NotFound) as raised:
        client.meta2_index_fetch_all(vol)
    assert "not found" in str(raised.value).lower()


def test_meta2_create(client, vol):
    client.meta2_index_create(vol)
    assert client.meta2_index_fetch(vol) == {"records": [], "truncated": False}


def test_meta2_push(client, vol):
    rec = make_meta2_record()
    push_meta2(client, vol, rec)
    assert client.meta2_index_fetch(vol) == {
        "records": [dict(rec, extra_data=None)],
        "truncated": False,
    }


def test_meta2_push_several(client, vol):
    records = [make_meta2_record() for _ in range(3)]
    client.meta2_index_create(vol)
    for rec in records:
        push_meta2(client, vol, rec)
    expected = sorted((dict(r, extra_data=None) for r in records), key=lambda r: r["container_url"])
    assert client.meta2_index_fetch(vol) == {"records": expected, "truncated": False}
    for rec in records:
        client.meta2_index_delete(vol, rec["container_url"], rec["container_id"])
    assert client.meta2_index_fetch(vol) == {"records": [], "truncated": False}


def test_meta2_delete(client, vol):
    rec = make_meta2_record()
    client.meta2_index_create(vol)
    assert client.meta2_index_fetch(vol)["records"] == []
    client.meta2_index_delete(vol, rec["container_url"], rec["container_id"])
    assert client.meta2_index_fetch(vol)["records"] == []
