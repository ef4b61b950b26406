"""No client input makes the protocol layer answer 500 (in-process, no sockets)."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("orjson")

from rdirdb.server.app import RdirApp  # noqa: E402
from rdirdb.rdir.store import Store  # noqa: E402

ROUTES = [
    ("GET", "/v1/status"), ("GET", "/v1/rdir/admin/show"), ("POST", "/v1/rdir/admin/lock"),
    ("POST", "/v1/rdir/admin/unlock"), ("GET", "/v1/rdir/admin/incident"),
    ("POST", "/v1/rdir/admin/incident"), ("POST", "/v1/rdir/admin/clear"), ("POST", "/v1/rdir/create"),
    ("POST", "/v1/rdir/push"), ("DELETE", "/v1/rdir/delete"), ("GET", "/v1/rdir/fetch"),
    ("POST", "/v1/rdir/fetch"), ("GET", "/v1/rdir/status"), ("GET", "/v1/rdir/meta2/count"),
    ("POST", "/v1/rdir/meta2/create"), ("POST", "/v1/rdir/meta2/push"), ("POST", "/v1/rdir/meta2/delete"),
    ("GET", "/v1/rdir/meta2/fetch"), ("GET", "/status"), ("GET", "/info"), ("GET", "/config"),
]
FIELDS = ["container_id", "content_id", "chunk_id", "mtime", "path", "version", "container_url",
          "extra_data", "who", "date", "start_after", "limit", "rebuild", "prefix", "marker"]
PARAMS = ["vol", "create", "marker", "prefix", "max", "limit", "rebuild", "all", "before_incident",
          "repair", "format", "details"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
    st.text(max_size=20), st.sampled_from(["v", "A" * 64, "a|b", "", "0", "true", "x" * 600]),
)
records = st.dictionaries(st.sampled_from(FIELDS), scalars, max_size=8)
bodies = st.one_of(
    st.none(), records, st.lists(records, max_size=4), scalars,
    st.lists(scalars, max_size=3), st.binary(max_size=20),
)


def encode(body) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    return json.dumps(body).encode()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("fuzz"), sync=False)
    app = RdirApp(store)
    app.handle("POST", "/v1/rdir/create", "vol=v", b"")
    app.handle("POST", "/v1/rdir/meta2/create", "vol=v", b"")
    yield app
    store.close()


@settings(max_examples=300)
@given(
    route=st.sampled_from(ROUTES),
    params=st.dictionaries(st.sampled_from(PARAMS), st.one_of(st.sampled_from(["v", "", "1", "0", "yes"]), st.text(max_size=12)), max_size=5),
    body=bodies,
)
def test_no_client_input_is_a_500(app, route, params, body):
    method, path = route
    query = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in params.items())
    reply = app.handle(method, path, query, encode(body))
    assert reply.status < 500, (reply.status, reply.body)
    if reply.status >= 400:
        error = json.loads(reply.body)
        assert error["status"] in (400, reply.status) and error["message"]
