"""The reference server's conformance catalogue (§9.1, §9.2, §9.4) over raw HTTP."""

from __future__ import annotations

import time

import pytest

from tests.server.helpers import chunk_record, fetch_item, meta2_record, new_volume, random_hex

ALL_ROUTES = [
    "/status", "/config", "/v1/status",
    *(f"/v1/rdir/admin/{a}" for a in ("show", "lock", "unlock", "incident", "clear")),
    *(f"/v1/rdir/{a}" for a in ("create", "push", "delete", "fetch", "status")),
    *(f"/v1/rdir/meta2/{a}" for a in ("create", "push", "delete", "fetch")),
]


def fetch(server, vol, **params):
    reply = server.request("GET", "/v1/rdir/fetch", {"vol": vol, **params})
    assert reply.status == 200, reply
    return reply.json


def vol_status(server, vol, **params):
    reply = server.request("GET", "/v1/rdir/status", {"vol": vol, **params})
    assert reply.status == 200, reply
    return reply.json


# -- §9.1 TestRdirServer ----------------------------------------------------------


def test_status(server):
    reply = server.request("GET", "/status")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert "meta2_volumes" in reply.json and "rawx_volumes" in reply.json
    assert server.request("GET", "/config").status == 200


def test_status_prometheus(server):
    reply = server.request("GET", "/status", {"format": "prometheus"})
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/plain"
    assert b"rdir_db_count" in reply.body and b"meta2_db_count" not in reply.body


def test_status_prometheus_details(server):
    vol = "127.0.0.1:" + str(6000 + int(random_hex(3), 16) % 1000)
    assert server.request("POST", "/v1/rdir/meta2/push", {"vol": vol}, meta2_record()).status == 204
    reply = server.request("GET", "/status", {"format": "prometheus", "details": "true"})
    assert reply.status == 200
    text = reply.body.decode()
    assert "rdir_db_count" in text
    name = vol.replace(":", "-", 1)
    assert f'meta2_db_count{{namespace="OPENIO", rdir_service_id="rdir-shared", service_id="{name}"}} 1' in text


def test_status_unknown_format(server):
    reply = server.request("GET", "/status", {"format": "xml"})
    assert reply.status == 400 and reply.json["message"] == "Unknown format: xml"


def test_explicit_create(server):
    vol, rec = new_volume(), chunk_record()
    assert server.request("POST", "/v1/rdir/push", {"vol": vol}, rec).status == 404
    assert server.request("GET", "/v1/rdir/fetch").status == 400
    assert server.request("GET", "/v1/rdir/fetch", {"vol": vol}, body="this is not json").status == 400
    assert server.request("GET", "/v1/rdir/fetch", {"vol": vol}).status == 404
    assert server.request("POST", "/v1/rdir/create").status == 400
    assert server.request("POST", "/v1/rdir/create", {"vol": vol}).status == 201
    assert server.request("GET", "/v1/status", {"vol": vol}).status == 200
    assert fetch(server, vol) == []
    assert server.request("POST", "/v1/rdir/push", {"vol": vol}, rec).status == 204
    assert fetch(server, vol) == [fetch_item(rec)]
    assert server.request("DELETE", "/v1/rdir/delete").status == 400
    assert server.request("DELETE", "/v1/rdir/delete", {"vol": ""}).status == 400
    assert server.request("DELETE", "/v1/rdir/delete", {"vol": vol}, rec).status == 204
    assert fetch(server, vol) == []


def test_implicit_create(server):
    vol, rec = new_volume(), chunk_record()
    assert server.request("POST", "/v1/rdir/push", {"vol": vol}, rec).status == 404
    assert server.request("POST", "/v1/rdir/push", {"vol": vol, "create": True}, rec).status == 204
    assert fetch(server, vol) == [fetch_item(rec)]


def test_push_several_chunks(server):
    vol, recs = new_volume(), [chunk_record() for _ in range(3)]
    assert server.request("POST", "/v1/rdir/push", {"vol": vol}, recs).status == 404
    assert server.request("POST", "/v1/rdir/push", {"vol": vol, "create": True}, recs).status == 204
    assert fetch(server, vol) == sorted(fetch_item(r) for r in recs)
    assert server.request("DELETE", "/v1/rdir/delete", {"vol": vol}, recs).status == 204
    assert fetch(server, vol) == []


@pytest.mark.parametrize("missing", ["container_id", "chunk_id", "content_id", "mtime", "path", "version"])
def test_push_missing_fields(server, missing):
    vol = new_volume()
    assert server.request("POST", "/v1/rdir/push", json_body=chunk_record()).status == 400
    assert server.request("POST", "/v1/rdir/create", {"vol": vol}).status == 201
    rec = chunk_record()
    del rec[missing]
    reply = server.request("POST", "/v1/rdir/push", {"vol": vol}, rec)
    assert reply.status == 400
    assert reply.json == {"status": 400, "message": f"Missing field [{missing}]"}
    assert fetch(server, vol) == []


def test_lock_unlock(server):
    vol, who = new_volume(), "rebuilder on " + random_hex(4)
    assert server.request("POST", "/v1/rdir/admin/lock", {"vol": vol}, {}).status == 400
    assert server.request("POST", "/v1/rdir/admin/lock", {"vol": vol}, {"who": who}).status == 404
    assert server.request("POST", "/v1/rdir/create", {"vol": vol}).status == 201
    assert server.request("POST", "/v1/rdir/admin/lock", json_body={}).status == 400
    assert server.request("POST", "/v1/rdir/admin/lock", {"vol": vol}, {}).status == 400
    assert server.request("POST", "/v1/rdir/admin/lock", {"vol": vol}, {"who": who}).status == 204
    assert server.request("POST", "/v1/rdir/admin/lock", {"vol": vol}, {"who": who}).status == 204
    reply = server.request("POST", "/v1/rdir/admin/lock", {"vol": vol}, {"who": "other"})
    assert reply.status == 403
    assert reply.json["message"] == "Already locked by " + who
    assert server.request("GET", "/v1/rdir/admin/show", {"vol": vol}).json == {"lock": who}
    assert server.request("POST", "/v1/rdir/admin/unlock", {"vol": vol}).status == 204
    assert server.request("GET", "/v1/rdir/admin/show", {"vol": vol}).json == {}
    assert server.request("POST", "/v1/rdir/admin/unlock", {"vol": vol}).status == 204


def test_lock_create_and_empty_who(server):
    vol = new_volume()
    reply = server.request("POST", "/v1/rdir/admin/lock", {"vol": vol, "create": "1"}, {"who": ""})
    assert reply.status == 400 and reply.json["message"] == "'who' not set"
    reply = server.request("POST", "/v1/rdir/admin/lock", {"vol": vol}, {"who": 3})
    assert reply.status == 400 and reply.json["message"] == "Invalid type for field [who]"
    assert server.request("POST", "/v1/rdir/admin/lock", {"vol": vol, "create": "1"}, {"who": "w"}).status == 204
    assert server.request("GET", "/v1/rdir/admin/show", {"vol": vol}).json == {"lock": "w"}


@pytest.mark.parametrize(
    "flags, expected",
    [
        ({"all": True}, {"removed": 1, "repaired": 0, "errors": 0}),
        ({"repair": True}, {"removed": 0, "repaired": 1, "errors": 0}),
    ],
)
def test_rdir_clear_and_lock(server, flags, expected):
    vol, rec = new_volume(), chunk_record()
    assert server.request("POST", "/v1/rdir/admin/clear", flags).status == 400
    assert server.request("POST", "/v1/rdir/push", {"vol": vol, "create": True}, rec).status == 204
    assert server.request("POST", "/v1/rdir/admin/lock", {"vol": vol}, {"who": "w"}).status == 204
    reply = server.request("POST", "/v1/rdir/admin/clear", {"vol": vol, **flags})
    assert reply.status == 403 and reply.json["message"] == "Already locked by w"
    assert server.request("POST", "/v1/rdir/admin/unlock", {"vol": vol}).status == 204
    reply = server.request("POST", "/v1/rdir/admin/clear", {"vol": vol, **flags})
    assert reply.status == 200
    assert reply.body == (
        b'{"removed":%d,"repaired":%d,"errors":%d}'
        % (expected["removed"], expected["repaired"], expected["errors"])
    )
    assert server.request("GET", "/v1/rdir/admin/show", {"vol": vol}).json == {}


def test_rdir_clear_with_before_incident(server):
    vol, now = new_volume(), int(time.time())
    old, new = chunk_record(mtime=now - 10), chunk_record(mtime=now + 10)
    assert server.request("POST", "/v1/rdir/admin/clear", {"before_incident": True}).status == 400
    assert server.request("POST", "/v1/rdir/push", {"vol": vol, "create": True}, old).status == 204
    assert server.request("POST", "/v1/rdir/admin/incident", {"vol": vol}, {"date": now}).status == 204
    assert server.request("POST", "/v1/rdir/push", {"vol": vol}, new).status == 204
    assert server.request("POST", "/v1/rdir/admin/lock", {"vol": vol}, {"who": "w"}).status == 204
    assert server.request("POST", "/v1/rdir/admin/clear", {"vol": vol, "before_incident": True}).status == 403
    assert server.request("POST", "/v1/rdir/admin/unlock", {"vol": vol}).status == 204
    reply = server.request("POST", "/v1/rdir/admin/clear", {"vol": vol, "before_incident": True})
    assert reply.json == {"removed": 1, "repaired": 0, "errors": 0}
    assert fetch(server, vol) == [fetch_item(new)]
    assert server.request("GET", "/v1/rdir/admin/incident", {"vol": vol}).json == {"date": 0}


def test_vol_status(server):
    vol, now = new_volume(), int(time.time())
    rec, rec2 = chunk_record(mtime=now - 10), chunk_record(mtime=now + 10)
    cid, cid2 = rec["container_id"], rec2["container_id"]
    assert server.request("POST", "/v1/rdir/status").status == 400
    assert server.request("POST", "/v1/rdir/status", {"vol": vol}).status == 404
    assert server.request("POST", "/v1/rdir/create", {"vol": vol}).status == 201
    assert vol_status(server, vol) == {"chunk": {"total": 0}, "container": {}}
    assert server.request("POST", "/v1/rdir/push", {"vol": vol}, rec).status == 204
    assert vol_status(server, vol) == {"chunk": {"total": 1}, "container": {cid: {"total": 1}}}
    assert server.request("POST", "/v1/rdir/admin/incident", {"vol": vol}, {"date": now}).status == 204
    assert server.request("GET", "/v1/rdir/admin/incident", {"vol": vol}).json == {"date": now}
    assert vol_status(server, vol) == {
        "chunk": {"total": 1, "to_rebuild": 1},
        "container": {cid: {"total": 1, "to_rebuild": 1}},
        "rebuild": {"incident_date": now},
    }
    assert server.request("POST", "/v1/rdir/push", {"vol": vol}, rec2).status == 204
    assert vol_status(server, vol) == {
        "chunk": {"total": 2, "to_rebuild": 1},
        "container": {cid: {"total": 1, "to_rebuild": 1}, cid2: {"total": 1}},
        "rebuild": {"incident_date": now},
    }
    assert server.request("POST", "/v1/rdir/admin/clear", {"vol": vol}).status == 200
    assert vol_status(server, vol) == {
        "chunk": {"total": 2},
        "container": {cid: {"total": 1}, cid2: {"total": 1}},
    }


# -- §9.2 a fresh server per test ------------------------------------------------


def test_fresh_status(start_server):
    srv = start_server("--service-id", "rdir-7", workers=2)
    expected = {"opened_db_count": 0, "service_id": "rdir-7", "meta2_volumes": [], "rawx_volumes": []}
    assert srv.request("GET", "/status").json == expected
    vol = new_volume()
    assert srv.request("POST", "/v1/rdir/create", {"vol": vol}).status == 201
    expected.update(opened_db_count=1, rawx_volumes=[vol])
    for _ in range(6):  # whichever worker answers, the count covers them all
        assert srv.request("GET", "/status").json == expected
    assert srv.request("POST", "/v1/rdir/meta2/create", {"vol": "10.0.0.1:6120"}).status == 201
    expected.update(opened_db_count=2, meta2_volumes=["10.0.0.1-6120"])
    assert srv.request("GET", "/status").json == expected
    info = srv.request("GET", "/info")
    assert info.headers["content-type"] == "text/plain"
    assert info.body.decode() == f"namespace OPENIO\npath {srv.db_path}\nservice_id rdir-7\n"

    # after a restart nothing is open; prometheus details open the meta2 volumes to count them
    srv.stop()
    srv = start_server("--service-id", "rdir-7", db_path=srv.db_path)
    assert srv.request("GET", "/status").json == dict(expected, opened_db_count=0)
    text = srv.request("GET", "/status", {"format": "prometheus", "details": "1"}).body.decode()
    assert text.splitlines() == [
        'rdir_opened_db{namespace="OPENIO", service_id="rdir-7"} 0',
        'rdir_db_count{namespace="OPENIO", service_id="rdir-7", type="meta2"} 1',
        'rdir_db_count{namespace="OPENIO", service_id="rdir-7", type="rawx"} 1',
        'meta2_db_count{namespace="OPENIO", rdir_service_id="rdir-7", service_id="10.0.0.1-6120"} 0',
    ]
    assert srv.request("GET", "/status").json["opened_db_count"] == 1


def test_bad_routes(server):
    x = random_hex(4)
    for route in ALL_ROUTES:
        for variant in ("/" + route, route + "/", "/" + x + route, route + "/" + x, route + x):
            reply = server.request("GET", variant)
            assert reply.status == 404, variant
            assert reply.json == {"status": 400, "message": "Route not managed"}


BAD_METHODS = {
    "/status": ["POST", "DELETE"],
    "/config": ["DELETE"],
    "/info": ["POST"],
    "/v1/status": ["POST", "DELETE"],
    "/v1/rdir/admin/show": ["POST", "DELETE"],
    "/v1/rdir/admin/lock": ["GET", "DELETE"],
    "/v1/rdir/admin/unlock": ["GET", "DELETE"],
    "/v1/rdir/admin/incident": ["DELETE"],
    "/v1/rdir/admin/clear": ["GET", "DELETE"],
    "/v1/rdir/create": ["GET", "DELETE"],
    "/v1/rdir/push": ["GET", "DELETE"],
    "/v1/rdir/delete": ["GET", "POST"],
    "/v1/rdir/fetch": ["DELETE"],
    "/v1/rdir/status": ["DELETE"],
    "/v1/rdir/meta2/create": ["GET", "DELETE"],
    "/v1/rdir/meta2/push": ["GET", "DELETE"],
    "/v1/rdir/meta2/delete": ["GET", "DELETE"],
    "/v1/rdir/meta2/fetch": ["DELETE"],
    "/v1/rdir/meta2/count": ["POST", "DELETE"],
}


def test_bad_methods(server):
    for route, methods in BAD_METHODS.items():
        for method in methods:
            reply = server.request(method, route, {"vol": "v"})
            assert reply.status == 405, (method, route)
            assert reply.json == {"status": 400, "message": "Bad method"}


# -- §9.4 meta2 ------------------------------------------------------------------


def meta2_fetch(server, vol, **kwargs):
    reply = server.request("GET", "/v1/rdir/meta2/fetch", {"vol": vol}, **kwargs)
    assert reply.status == 200, reply
    return reply.json


def test_meta2_fetch_invalid_parameters(server):
    vol = new_volume()
    assert server.request("GET", "/v1/rdir/meta2/fetch", json_body={"rand": "random"}).status == 400
    assert server.request("GET", "/v1/rdir/meta2/fetch", {"vol": vol}, body="not json").status == 400
    assert server.request("GET", "/v1/rdir/meta2/fetch", {"vol": vol}).status == 404


def test_meta2_delete_and_create_invalid_parameters(server):
    rec = meta2_record()
    assert server.request("POST", "/v1/rdir/meta2/delete", json_body=rec).status == 400
    assert server.request("POST", "/v1/rdir/meta2/delete", {"vol": ""}, rec).status == 400
    reply = server.request("POST", "/v1/rdir/meta2/delete", {"vol": new_volume()})
    assert reply.status == 400 and reply.json["message"] == "null body"
    assert server.request("POST", "/v1/rdir/meta2/create").status == 400


@pytest.mark.parametrize("missing", ["container_url", "container_id"])
def test_meta2_push_missing_fields(server, missing):
    vol, rec = new_volume(), meta2_record()
    assert server.request("POST", "/v1/rdir/meta2/push", json_body=rec).status == 400
    assert server.request("POST", "/v1/rdir/meta2/create", {"vol": vol}).status == 201
    del rec[missing]
    assert server.request("POST", "/v1/rdir/meta2/push", {"vol": vol}, rec).status == 400
    assert meta2_fetch(server, vol, json_body={}) == {"records": [], "truncated": False}


def test_meta2_count(server):
    vol, rec = new_volume(), meta2_record()
    count = lambda: server.request("GET", "/v1/rdir/meta2/count", {"vol": vol}, {}).json  # noqa: E731
    assert server.request("POST", "/v1/rdir/meta2/create", {"vol": vol}).status == 201
    assert count() == {"count": 0}
    assert server.request("POST", "/v1/rdir/meta2/push", {"vol": vol}, rec).status == 204
    assert count() == {"count": 1}
    prefix = rec["container_url"][:5]
    reply = server.request("GET", "/v1/rdir/meta2/count", {"vol": vol, "prefix": prefix})
    assert reply.json == {"count": 1, "prefix": prefix}
    reply = server.request("GET", "/v1/rdir/meta2/count", {"vol": vol}, {"prefix": "zz"})
    assert reply.json == {"count": 0, "prefix": "zz"}
    assert server.request("POST", "/v1/rdir/meta2/delete", {"vol": vol}, rec).status == 204
    assert count() == {"count": 0}


def test_meta2_count_not_found(server):
    reply = server.request("GET", "/v1/rdir/meta2/count", {"vol": new_volume()}, {})
    assert reply.status == 404 and "not found" in reply.json["message"].lower()


def test_meta2_push_fetch_delete(server):
    vol = new_volume()
    assert server.request("POST", "/v1/rdir/meta2/create", {"vol": vol}).status == 201
    assert meta2_fetch(server, vol, json_body={}) == {"records": [], "truncated": False}
    one = meta2_record()
    assert server.request("POST", "/v1/rdir/meta2/push", {"vol": vol}, one).status == 204
    assert meta2_fetch(server, vol) == {"records": [{**one, "extra_data": None}], "truncated": False}
    several = [meta2_record() for _ in range(3)]
    several[0]["extra_data"] = "some data"
    assert server.request("POST", "/v1/rdir/meta2/push", {"vol": vol}, several).status == 204
    expected = sorted(({"extra_data": None, **r} for r in [one, *several]), key=lambda r: r["container_url"])
    assert meta2_fetch(server, vol) == {"records": expected, "truncated": False}
    assert server.request("POST", "/v1/rdir/meta2/delete", {"vol": vol}, [one, *several]).status == 204
    assert meta2_fetch(server, vol) == {"records": [], "truncated": False}
    assert server.request("POST", "/v1/rdir/meta2/delete", {"vol": vol}, meta2_record()).status == 204
    assert meta2_fetch(server, vol) == {"records": [], "truncated": False}
