"""Our decisions on the reference's quirks (docs/server.md), listings and validation."""

from __future__ import annotations

import math
import os

import pytest

from rdirdb.rdir.store import Store
from tests.legacy import write_legacy_chunks
from tests.server.helpers import chunk_record, fetch_item, meta2_record, new_volume, random_hex

VOLUME_ROUTES = [
    ("GET", "/v1/status"),
    ("GET", "/v1/rdir/admin/show"),
    ("POST", "/v1/rdir/admin/unlock"),
    ("GET", "/v1/rdir/admin/incident"),
    ("POST", "/v1/rdir/admin/clear"),
    ("POST", "/v1/rdir/create"),
    ("POST", "/v1/rdir/push"),
    ("DELETE", "/v1/rdir/delete"),
    ("GET", "/v1/rdir/fetch"),
    ("GET", "/v1/rdir/status"),
    ("POST", "/v1/rdir/meta2/create"),
    ("POST", "/v1/rdir/meta2/push"),
    ("POST", "/v1/rdir/meta2/delete"),
    ("GET", "/v1/rdir/meta2/fetch"),
    ("GET", "/v1/rdir/meta2/count"),
]


@pytest.mark.parametrize("vol", ["", "a\x00b", "x" * 300])
def test_empty_or_unstorable_volume_is_400_everywhere(server, vol):
    body = chunk_record() | meta2_record()
    for method, route in VOLUME_ROUTES:
        reply = server.request(method, route, {"vol": vol, "create": "1"}, body)
        assert reply.status == 400, (method, route, reply)
        assert reply.json["status"] == 400
    status = server.request("GET", "/status").json
    assert vol not in status["rawx_volumes"] and vol not in status["meta2_volumes"]


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../../escape", "/abs/path", ".hidden", "a\nb", "10.0.0.1:6201 é%2F."])
def test_path_like_volume_ids_stay_inside_the_store(server, name):
    vol = name + random_hex(4) if name not in (".", "..") else name
    rec = chunk_record()
    assert server.request("POST", "/v1/rdir/push", {"vol": vol, "create": 1}, rec).status == 204
    assert server.request("GET", "/v1/rdir/fetch", {"vol": vol}).json == [fetch_item(rec)]
    assert vol in server.request("GET", "/status").json["rawx_volumes"]
    assert server.request("POST", "/v1/rdir/meta2/push", {"vol": vol}, meta2_record()).status == 204
    parent = os.path.dirname(server.db_path)
    assert [n for n in os.listdir(parent) if not n.endswith(".log")] == ["db"]  # nothing beside it
    assert sorted(os.listdir(server.db_path)) == [".rdir-identity", ".rdir-run", "meta2", "rawx"]


def test_unknown_route_and_json_before_method(server):
    reply = server.request("DELETE", "/status", body="{not json")
    assert reply.status == 400 and reply.json == {"status": 400, "message": "Invalid JSON"}
    reply = server.request("DELETE", "/status", body="{}")
    assert reply.status == 405


def test_create_defaults_rawx_false_meta2_true(server):
    vol = new_volume()
    assert server.request("POST", "/v1/rdir/push", {"vol": vol}, chunk_record()).status == 404
    assert server.request("POST", "/v1/rdir/meta2/push", {"vol": vol, "create": "false"}, meta2_record()).status == 404
    assert server.request("POST", "/v1/rdir/meta2/push", {"vol": vol}, meta2_record()).status == 204
    assert server.request("DELETE", "/v1/rdir/meta2/delete", {"vol": vol}, meta2_record()).status == 405


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("mtime", "1", "Invalid type for field [mtime]"),
        ("mtime", 1.0, "Invalid type for field [mtime]"),
        ("mtime", True, "Invalid type for field [mtime]"),
        ("version", "1", "Invalid type for field [version]"),
        ("container_id", 12, "Invalid type for field [container_id]"),
        ("chunk_id", ["x"], "Invalid type for field [chunk_id]"),
        ("path", None, "Missing field [path]"),
    ],
)
def test_bad_field_rejects_the_whole_batch(server, name, value, message):
    vol = new_volume()
    good, bad = chunk_record(), chunk_record()
    bad[name] = value
    reply = server.request("POST", "/v1/rdir/push", {"vol": vol, "create": 1}, [good, bad])
    assert reply.status == 400 and reply.json == {"status": 400, "message": message}
    assert server.request("GET", "/v1/rdir/fetch", {"vol": vol}).status == 404  # not even created


@pytest.mark.parametrize(
    "name, length",
    [("container_id", 65), ("content_id", 65), ("chunk_id", 512), ("path", 1088)],
)
def test_too_long_ids_are_400_not_truncated(server, name, length):
    vol = new_volume()
    assert server.request("POST", "/v1/rdir/create", {"vol": vol}).status == 201
    rec = chunk_record()
    ok = dict(rec, **{name: "A" * (length - 1)})
    assert server.request("POST", "/v1/rdir/push", {"vol": vol}, ok).status == 204
    too_long = dict(chunk_record(), **{name: "B" * length})
    reply = server.request("POST", "/v1/rdir/push", {"vol": vol}, [chunk_record(), too_long])
    assert reply.status == 400, reply
    assert reply.json["status"] == 400
    assert server.request("GET", "/v1/rdir/fetch", {"vol": vol}).json == [fetch_item(ok)]


@pytest.mark.parametrize(
    "body, message",
    [
        ('"text"', "Body must be a JSON array or object"),
        ("12", "Body must be a JSON array or object"),
        ("[1]", "Not an object"),
        ("[[]]", "Not an object"),
        ("null", "null body"),
        ("", "null body"),
    ],
)
def test_push_body_shapes(server, body, message):
    reply = server.request("POST", "/v1/rdir/push", {"vol": new_volume(), "create": 1}, body=body)
    assert reply.status == 400 and reply.json == {"status": 400, "message": message}


def test_delete_checks_optional_field_types(server):
    vol, rec = new_volume(), chunk_record()
    assert server.request("POST", "/v1/rdir/push", {"vol": vol, "create": 1}, rec).status == 204
    key = {"container_id": rec["container_id"], "chunk_id": rec["chunk_id"]}
    reply = server.request("DELETE", "/v1/rdir/delete", {"vol": vol}, dict(key, mtime="x"))
    assert reply.status == 400 and reply.json["message"] == "Invalid type for field [mtime]"
    assert server.request("DELETE", "/v1/rdir/delete", {"vol": vol}, key).status == 204
    assert server.request("GET", "/v1/rdir/fetch", {"vol": vol}).json == []
    assert server.request("DELETE", "/v1/rdir/delete", {"vol": new_volume()}, key).status == 404


def test_push_overwrites_and_zero_mtime(server):
    vol, rec = new_volume(), chunk_record(mtime=-5)
    assert server.request("POST", "/v1/rdir/push", {"vol": vol, "create": 1}, rec).status == 204
    assert server.request("GET", "/v1/rdir/fetch", {"vol": vol}).json == [fetch_item(dict(rec, mtime=0))]
    rec2 = dict(rec, path="other", version=7, mtime=3, extra="ignored")
    assert server.request("POST", "/v1/rdir/push", {"vol": vol}, rec2).status == 204
    assert server.request("GET", "/v1/rdir/fetch", {"vol": vol}).json == [fetch_item(rec2)]


# -- listings ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def listed(server):
    """A volume of 3 containers x 4 chunks; chunk ids end in 0 when mtime <= incident 10."""
    vol, recs = new_volume(), []
    for _ in range(3):
        cid = random_hex(64)
        for i in range(4):
            mtime = [0, 5, 15, 20][i]
            rec = chunk_record(cid, mtime)
            rec["chunk_id"] = rec["chunk_id"][:63] + ("0" if mtime <= 10 else "1")
            recs.append(rec)
    assert server.request("POST", "/v1/rdir/push", {"vol": vol, "create": 1}, recs).status == 204
    return vol, sorted(recs, key=lambda r: (r["container_id"], r["chunk_id"]))


def fetch_all(server, vol, limit, **params):
    """Every page, following the listing headers; returns (items, requests)."""
    items, requests = [], 0
    while True:
        reply = server.request("GET", "/v1/rdir/fetch", {"vol": vol, "max": limit, **params})
        requests += 1
        assert reply.status == 200, reply
        items += reply.json
        assert len(reply.json) <= limit
        if reply.headers["x-oio-list-truncated"] != "true":
            assert "x-oio-list-marker" not in reply.headers
            return items, requests
        params["marker"] = reply.headers["x-oio-list-marker"]


@pytest.mark.parametrize("limit", [1, 2, 5, 12, 1000])
@pytest.mark.parametrize("rebuild", [False, True])
@pytest.mark.parametrize("with_prefix", [False, True])
@pytest.mark.parametrize("with_marker", [False, True])
def test_fetch_pages_exactly(server, listed, limit, rebuild, with_prefix, with_marker):
    vol, recs = listed
    incident = 10
    assert server.request("POST", "/v1/rdir/admin/incident", {"vol": vol}, {"date": incident}).status == 204
    expected = [fetch_item(r) for r in recs]
    params = {}
    if rebuild:
        params["rebuild"] = "True"
        expected = [e for e in expected if e[1]["mtime"] <= incident]
    if with_prefix:
        params["prefix"] = recs[5]["container_id"]
        expected = [e for e in expected if e[0].startswith(params["prefix"])]
    if with_marker:
        params["marker"] = f"{recs[6]['container_id']}|{recs[6]['chunk_id']}"
        expected = [e for e in expected if e[0] > params["marker"]]
    items, requests = fetch_all(server, vol, limit, **params)
    assert items == expected
    assert requests == (math.ceil(len(expected) / limit) if expected else 1)


def test_fetch_rebuild_without_incident_is_empty(server, listed):
    vol, _ = listed
    assert server.request("POST", "/v1/rdir/admin/clear", {"vol": vol}).status == 200
    reply = server.request("GET", "/v1/rdir/fetch", {"vol": vol, "rebuild": "yes"})
    assert reply.json == [] and reply.headers["x-oio-list-truncated"] == "false"


def test_fetch_legacy_body_and_query_precedence(server, listed):
    vol, recs = listed
    expected = [fetch_item(r) for r in recs]
    reply = server.request("POST", "/v1/rdir/fetch", {"vol": vol}, {"limit": 3, "start_after": expected[0][0]})
    assert reply.json == expected[1:4] and reply.headers["x-oio-list-truncated"] == "true"
    assert reply.headers["x-oio-list-marker"] == expected[3][0]
    reply = server.request("POST", "/v1/rdir/fetch", {"vol": vol, "max": 2}, {"limit": 3})
    assert reply.json == expected[:2]
    reply = server.request("POST", "/v1/rdir/fetch", {"vol": vol}, {"container_id": recs[0]["container_id"]})
    assert reply.json == expected[:4]
    reply = server.request("POST", "/v1/rdir/fetch", {"vol": vol}, {"limit": "3"})
    assert reply.status == 400 and reply.json["message"] == "Invalid type for field [limit]"
    reply = server.request("POST", "/v1/rdir/fetch", {"vol": vol}, [1])
    assert reply.status == 400 and reply.json["message"] == "null body"


def test_empty_marker_and_prefix_do_not_skip(server, listed):
    vol, recs = listed
    expected = [fetch_item(r) for r in recs]
    assert server.request("GET", "/v1/rdir/fetch", {"vol": vol, "marker": "", "prefix": ""}).json == expected
    # a marker that is a strict prefix of a key does not skip that key
    marker = expected[4][0][:-1]
    assert server.request("GET", "/v1/rdir/fetch", {"vol": vol, "marker": marker}).json == expected[4:]


@pytest.mark.parametrize("value, count", [("0", 12), ("-3", 12), ("abc", 12), ("5xyz", 5), ("", 12)])
def test_limit_parsing(server, listed, value, count):
    vol, _ = listed
    assert len(server.request("GET", "/v1/rdir/fetch", {"vol": vol, "limit": value}).json) == count


def test_limit_is_capped_at_10000(server):
    vol = new_volume()
    recs = [chunk_record("C" * 64) for _ in range(10001)]
    assert server.request("POST", "/v1/rdir/push", {"vol": vol, "create": 1}, recs).status == 204
    reply = server.request("GET", "/v1/rdir/fetch", {"vol": vol, "max": 50000})
    assert len(reply.json) == 10000 and reply.headers["x-oio-list-truncated"] == "true"
    reply = server.request("GET", "/v1/rdir/fetch", {"vol": vol})
    assert len(reply.json) == 1000
    reply = server.request("GET", "/v1/rdir/status", {"vol": vol, "max": 50000})
    assert reply.json["chunk"] == {"total": 10000} and reply.headers["x-oio-list-truncated"] == "true"


def test_status_pages_sum_up(server, listed):
    vol, recs = listed
    incident = 10
    assert server.request("POST", "/v1/rdir/admin/incident", {"vol": vol}, {"date": incident}).status == 204
    total = rebuild = requests = 0
    containers: dict[str, int] = {}
    params = {"vol": vol, "max": 5}
    while True:
        reply = server.request("GET", "/v1/rdir/status", params)
        requests += 1
        body = reply.json
        assert body["rebuild"] == {"incident_date": incident}
        total += body["chunk"]["total"]
        rebuild += body["chunk"]["to_rebuild"]
        for cid, counts in body["container"].items():
            containers[cid] = containers.get(cid, 0) + counts["total"]
        if reply.headers["x-oio-list-truncated"] != "true":
            break
        params["marker"] = reply.headers["x-oio-list-marker"]
    assert (total, rebuild, requests) == (12, 6, 3)
    assert containers == {r["container_id"]: 4 for r in recs}


def test_meta2_fetch_exact_limit_and_markers(server):
    vol = new_volume()
    recs = sorted(({**meta2_record(), "extra_data": None} for _ in range(5)), key=lambda r: r["container_url"])
    assert server.request("POST", "/v1/rdir/meta2/push", {"vol": vol}, recs).status == 204
    page = server.request("GET", "/v1/rdir/meta2/fetch", {"vol": vol, "limit": 2}).json
    assert page == {"records": recs[:2], "truncated": True}
    page = server.request("GET", "/v1/rdir/meta2/fetch", {"vol": vol, "limit": 3, "marker": recs[1]["container_url"]}).json
    assert page == {"records": recs[2:5], "truncated": False}
    # the body wins over the query; an empty marker skips nothing
    page = server.request("POST", "/v1/rdir/meta2/fetch", {"vol": vol, "limit": 1}, {"marker": ""}).json
    assert page == {"records": recs, "truncated": False}
    # a marker that no longer exists does not lose the record after it
    gone = recs[2]["container_url"]
    assert server.request("POST", "/v1/rdir/meta2/delete", {"vol": vol}, recs[2]).status == 204
    page = server.request("GET", "/v1/rdir/meta2/fetch", {"vol": vol, "marker": gone}).json
    assert page == {"records": recs[3:], "truncated": False}
    prefix = recs[4]["container_url"][:12]
    page = server.request("GET", "/v1/rdir/meta2/fetch", {"vol": vol, "prefix": prefix}).json
    assert page["records"] == [r for r in recs if r["container_url"].startswith(prefix)]


def test_clear_ends_unlocked_as_the_reference(server):
    """docs/compatibility.md, quirk 9: a clear always ends with the volume unlocked."""
    vol = new_volume()
    assert server.request("POST", "/v1/rdir/push", {"vol": vol, "create": 1}, chunk_record()).status == 204
    assert server.request("POST", "/v1/rdir/admin/lock", {"vol": vol}, {"who": "admin_clear"}).status == 204
    assert server.request("POST", "/v1/rdir/admin/clear", {"vol": vol, "all": "1"}).json["removed"] == 1
    assert server.request("GET", "/v1/rdir/admin/show", {"vol": vol}).json == {}


def test_incident_errors(server):
    vol = new_volume()
    assert server.request("GET", "/v1/rdir/admin/incident", {"vol": vol}).status == 404
    assert server.request("POST", "/v1/rdir/admin/incident", {"vol": vol}, {"date": 5}).status == 404
    reply = server.request("POST", "/v1/rdir/admin/incident", {"vol": vol}, {"date": "5"})
    assert reply.status == 400 and reply.json["message"] == "Invalid type for field [date]"
    assert server.request("POST", "/v1/rdir/admin/incident", {"vol": vol, "create": "on"}, {"date": 5}).status == 204
    assert server.request("GET", "/v1/rdir/admin/incident", {"vol": vol}).json == {"date": 5}
    assert server.request("GET", "/v1/rdir/admin/show", {"vol": vol}).json == {"incident_date": "5"}


def test_concurrent_lockers_one_winner(start_server):
    """Workers race on the lock in one LMDB write transaction: exactly one owner wins."""
    from concurrent.futures import ThreadPoolExecutor

    srv = start_server(workers=2)
    vol = new_volume()
    assert srv.request("POST", "/v1/rdir/create", {"vol": vol}).status == 201
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(
            lambda i: srv.request("POST", "/v1/rdir/admin/lock", {"vol": vol}, {"who": f"w{i}"}), range(32)
        ))
    winners = [i for i, r in enumerate(replies) if r.status == 204]
    assert len(winners) == 1
    assert {r.status for r in replies} == {204, 403}
    assert srv.request("GET", "/v1/rdir/admin/show", {"vol": vol}).json == {"lock": f"w{winners[0]}"}


def test_listing_marker_header_with_unicode_and_no_line_breaks(server):
    vol = new_volume()
    recs = [chunk_record("C" * 64) for _ in range(3)]
    for i, rec in enumerate(recs):
        rec["chunk_id"] = f"é{i}-ß-" + rec["chunk_id"]
    assert server.request("POST", "/v1/rdir/push", {"vol": vol, "create": 1}, recs).status == 204
    first = recs[0]
    reply = server.request("GET", "/v1/rdir/fetch", {"vol": vol, "max": 1})
    assert reply.status == 200 and reply.headers["x-oio-list-truncated"] == "true"
    marker = reply.headers["x-oio-list-marker"].encode("latin-1").decode("utf-8")  # raw UTF-8 on the wire
    assert marker == f"{first['container_id']}|{first['chunk_id']}"
    bad = dict(chunk_record(), chunk_id="a\r\nx-injected: 1")
    reply = server.request("POST", "/v1/rdir/push", {"vol": vol}, bad)
    assert reply.status == 400 and "chunk_id" in reply.json["message"]


@pytest.mark.parametrize("create", [False, True])
def test_engine_invalid_batch_is_400_for_an_absent_volume_and_creates_nothing(server, create):
    vol = new_volume()
    bad = [chunk_record(), dict(chunk_record(), container_id="a|b")]
    reply = server.request("POST", "/v1/rdir/push", {"vol": vol, "create": int(create)}, bad)
    assert reply.status == 400 and "|" in reply.json["message"]
    reply = server.request("DELETE", "/v1/rdir/delete", {"vol": vol}, [{"container_id": "C" * 65, "chunk_id": "x"}])
    assert reply.status == 400
    assert vol not in server.request("GET", "/status").json["rawx_volumes"]
    assert server.request("DELETE", "/v1/rdir/delete", {"vol": vol}, [{"container_id": "C", "chunk_id": "x"}]).status == 404


def test_bad_meta2_batch_creates_nothing(server):
    vol = "127.0.0.1:" + new_volume()
    bad = {"container_url": "NS/a/" + "u" * 2000, "container_id": "X"}
    assert server.request("POST", "/v1/rdir/meta2/push", {"vol": vol}, [bad]).status == 400
    assert server.request("GET", "/v1/rdir/meta2/fetch", {"vol": vol}).status == 404


def test_openio_style_paging_lists_a_store_written_before_the_id_rule(server):
    """Issue 14: a line break in a chunk id no longer corrupts the marker header."""
    vol, cid = new_volume(), random_hex(64)
    chunks = ["x\nA", "x!", "x$", "y"]
    with Store(server.db_path) as store:
        write_legacy_chunks(store.volume(vol, create=True), [(cid, "AB", c, 1, "p", 1) for c in chunks])
    for route in ("/v1/rdir/fetch", "/v1/rdir/status"):
        seen, marker, total = [], None, 0
        while True:  # as OpenIO's client does: the header goes back unchanged as the marker
            reply = server.request("GET", route, {"vol": vol, "max": 1, **({"marker": marker} if marker else {})})
            assert reply.status == 200, reply
            if route.endswith("fetch"):
                seen += [key for key, _ in reply.json]
            else:
                total += reply.json["chunk"]["total"]
            if reply.headers["x-oio-list-truncated"] != "true":
                break
            marker = reply.headers["x-oio-list-marker"]
            assert marker.isascii() and marker.isprintable()
        assert seen == [f"{cid}|{c}" for c in chunks] if route.endswith("fetch") else total == 4


@pytest.mark.parametrize("route", VOLUME_ROUTES)
def test_a_volume_id_that_is_not_utf8_is_400(server, route):
    method, path = route
    reply = server.request(method, path, query="vol=%FF%FE&create=1",
                           body='{"container_id":"C","content_id":"X","chunk_id":"K","mtime":1,"path":"p",'
                                '"version":1,"container_url":"NS/a/c"}')
    assert reply.status == 400 and "UTF-8" in reply.json["message"], reply
    status = server.request("GET", "/status").json
    assert not any("\ufffd" in v for v in status["rawx_volumes"] + status["meta2_volumes"])


def test_engine_failures_are_500_with_a_log_line_and_mistakes_400(tmp_path, caplog):
    """A bug or a storage failure is never disguised as the client's mistake."""
    from rdirdb import errors
    from rdirdb.server.app import RdirApp

    with Store(tmp_path / "db") as store:
        app = RdirApp(store)
        vol = "v1"
        assert app.handle("POST", "/v1/rdir/create", f"vol={vol}", b"").status == 201
        index = store.volume(vol).chunks

        class Broken:
            def fetch(self, **kwargs):
                raise TypeError("an engine bug")

            def status(self, **kwargs):
                raise errors.CorruptedError("chunk value", -30796, "a stored chunk record cannot be decoded")

        store.volume(vol).chunks = Broken()
        with caplog.at_level("ERROR", logger="rdirdb.server"):
            for route in ("/v1/rdir/fetch", "/v1/rdir/status"):
                reply = app.handle("GET", route, f"vol={vol}", b"")
                assert reply.status == 500, (route, reply)
        assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 2
        store.volume(vol).chunks = index
        # The engine's verdicts on a request stay 400: a wrong type, a bad value.
        reply = app.handle("POST", "/v1/rdir/push", f"vol={vol}", b'{"container_id":1}')
        assert reply.status == 400 and b"Invalid type for field [container_id]" in reply.body
        reply = app.handle("GET", "/v1/rdir/fetch", f"vol={vol}&limit=x&prefix=" + "p" * 600, b"")
        assert reply.status == 400 and b"prefix" in reply.body
