"""docs/openapi.yaml matches the server, and every route survives bad input over real HTTP.

The spec is checked against ``RdirApp.routes`` (paths and methods) and against the names
app.py reads from the query and bodies, so they cannot drift. The fuzz draws requests from
the spec (its operations, query parameters and body fields) and sends them as raw bytes to a
running server: every answer is 2xx or 4xx, an error has the JSON body ``{"status",
"message"}``, a success code is one the spec documents, and a rejected request changes
nothing (the whole store is fetched before and after: /status, every volume's records and admin
keys, and meta2 records).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

yaml = pytest.importorskip("yaml")

import rdirdb.server.app as app_module  # noqa: E402
from rdirdb.server.app import RdirApp  # noqa: E402
from rdirdb.rdir.store import Store  # noqa: E402
from tests.server.helpers import Server, chunk_record, meta2_record  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC_PATH = os.path.join(ROOT, "docs", "openapi.yaml")
METHODS = ("get", "post", "delete", "put", "patch")


def load_spec() -> dict[str, Any]:
    with open(SPEC_PATH) as f:
        return yaml.safe_load(f)


SPEC = load_spec()


def resolve(node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = SPEC
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method.upper(), op) for path, item in SPEC["paths"].items()
            for method, op in item.items() if method in METHODS]


OPERATIONS = operations()


def query_names(op: dict[str, Any]) -> list[str]:
    return [resolve(p)["name"] for p in op.get("parameters", [])]


def schema_fields(schema: Any) -> set[str]:
    """Every property name of a schema, through $ref, oneOf and array items."""
    schema = resolve(schema)
    names = set(schema.get("properties", {}))
    for sub in schema.get("oneOf", []):
        names |= schema_fields(sub)
    if "items" in schema:
        names |= schema_fields(schema["items"])
    return names


def body_fields(op: dict[str, Any]) -> list[str]:
    body = op.get("requestBody")
    return sorted(schema_fields(body["content"]["application/json"]["schema"])) if body else []


# -- the spec against the code ------------------------------------------------------------


def test_spec_is_valid_openapi():
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(load_spec())


def test_spec_lists_every_route_and_method(tmp_path):
    with Store(tmp_path / "store", map_size=1 << 20) as store:
        routes = {path: sorted(methods) for path, methods in RdirApp(store).routes.items()}
    spec = {path: sorted(m.upper() for m in item if m in METHODS) for path, item in SPEC["paths"].items()}
    assert spec == routes


def test_spec_names_every_parameter_and_field_the_code_reads():
    with open(app_module.__file__) as f:
        source = f.read()
    read_query = set(re.findall(r"\bq(?:uery)?\.get\(\"(\w+)\"", source))
    read_fields = set(re.findall(r"(?:field|_key_part)\([\w.]+, \"(\w+)\"", source))
    read_fields |= set(re.findall(r"obj\[\"(\w+)\"\]", source))
    documented_query = {name for _, _, op in OPERATIONS for name in query_names(op)}
    documented_fields = {name for _, _, op in OPERATIONS for name in body_fields(op)}
    assert read_query and read_fields
    assert read_query - documented_query == set()
    assert read_fields - documented_fields == set()


def test_every_operation_documents_its_errors():
    for path, method, op in OPERATIONS:
        responses = op["responses"]
        assert any(code.startswith("2") for code in responses), (method, path)
        assert "default" in responses, (method, path)
        for code, response in responses.items():
            if code[0] in "45" or code == "default":
                schema = resolve(response)["content"]["application/json"]["schema"]
                assert resolve(schema)["required"] == ["status", "message"], (method, path, code)


# -- raw HTTP -----------------------------------------------------------------------------


def raw_request(srv: Server, method: str, target: bytes, body: bytes | None) -> tuple[int, dict[str, str], bytes]:
    """One request as bytes on its own connection (any byte may go in the query)."""
    head = method.encode() + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    if body is not None:
        head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    with socket.create_connection((srv.host, srv.port), timeout=10) as sock:
        sock.sendall(head + b"\r\n" + (body or b""))
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    raw = b"".join(chunks)
    header, _, payload = raw.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, payload


def get_json(conn: http.client.HTTPConnection, path: str, **params: str) -> tuple[int, Any, str | None]:
    """A GET on a kept-alive connection (the snapshot's valid requests)."""
    conn.request("GET", path + "?" + urlencode(params))
    resp = conn.getresponse()
    payload = resp.read()
    return resp.status, (json.loads(payload) if payload else None), resp.getheader("x-oio-list-truncated")


def snapshot(srv: Server) -> Any:
    """Everything the store holds, as seen over HTTP (opened_db_count aside)."""
    with contextlib.closing(srv.connection()) as conn:
        return _snapshot(conn)


def _snapshot(srv: http.client.HTTPConnection) -> Any:
    status, body, _ = get_json(srv, "/status")
    assert status == 200
    body.pop("opened_db_count")
    state: dict[str, Any] = {"status": body}
    for vol in body["rawx_volumes"]:
        state["rawx", vol] = [get_json(srv, route, vol=vol, max="10000") for route in
                              ("/v1/rdir/fetch", "/v1/rdir/admin/show")]
    for vol in body["meta2_volumes"]:  # an id with ':' is listed with '-': then a 404, stable too
        state["meta2", vol] = get_json(srv, "/v1/rdir/meta2/fetch", vol=vol, max="10000")
    return state


# -- the server under fuzz ------------------------------------------------------------------

CHUNK_VOL, META2_VOL = "fz-chunks", "fz-meta2"
EVIL_VOLS: list[str | bytes] = [
    "", ".", "..", "../fz-chunks", "fz-chunks/..", "/etc/passwd", "a/b", "..\\..\\x", "%2e%2e",
    "x" * 300, "y" * 5000, "\x00", "bad\nvol", "\x7f", "é", "\udcff", b"\xff\xfe", b"\xc3",
    "fz-absent",
]


class Fuzzed:
    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.state = snapshot(srv)
        self.requests = self.rejected = 0

    def check(self, method: str, path: str, query: bytes, body: bytes | None) -> int:
        target = path.encode() + (b"?" + query if query else b"")
        status, headers, payload = raw_request(self.srv, method, target, body)
        what = f"{method} {target[:300]!r} body={body[:300] if body else body!r} -> {status} {payload[:300]!r}"
        self.requests += 1
        assert 200 <= status < 300 or 400 <= status < 500, what
        after = snapshot(self.srv)
        if status >= 400:
            self.rejected += 1
            assert headers.get("content-type") == "application/json", what
            error = json.loads(payload)
            assert type(error) is dict and set(error) == {"status", "message"}, what
            assert type(error["status"]) is int and type(error["message"]) is str, what
            assert after == self.state, f"a rejected request wrote: {what}"
        else:
            op = SPEC["paths"][path][method.lower()]
            assert str(status) in op["responses"], f"undocumented success: {what}"
            if path in ("/v1/rdir/fetch", "/v1/rdir/status"):
                assert headers.get("x-oio-list-truncated") in ("true", "false"), what
                if headers["x-oio-list-truncated"] == "true":
                    assert "x-oio-list-marker" in headers, what
        self.state = after
        return status


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    db = tmp_path_factory.mktemp("openapi") / "db"
    db.mkdir()
    srv = Server(str(db), "--max-body-size", "1048576").wait_ready()
    try:
        records = [chunk_record() for _ in range(5)]
        assert srv.request("POST", "/v1/rdir/push", {"vol": CHUNK_VOL, "create": "true"}, records).status == 204
        assert srv.request("POST", "/v1/rdir/admin/incident", {"vol": CHUNK_VOL}, {"date": 12}).status == 204
        assert srv.request("POST", "/v1/rdir/meta2/push", {"vol": META2_VOL},
                           [meta2_record() for _ in range(3)]).status == 204
        yield Fuzzed(srv)
    finally:
        srv.stop()


def encode_query(params: list[tuple[str, str | bytes, bool]]) -> bytes:
    """``name=value`` tokens; a value is percent-encoded, or sent raw when ``raw`` (bytes >= 0x80)."""
    tokens = []
    for name, value, raw in params:
        if raw:
            data = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
            data = bytes(b for b in data if b > 0x20 and b not in b"#&?%\x7f")  # keep the request line whole
        else:
            data = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
            data = quote(data, safe="").encode()
        tokens.append(quote(name.encode("utf-8", "surrogatepass"), safe="").encode() + b"=" + data)
    return b"&".join(tokens)


def encode_json(obj: Any) -> bytes:
    """JSON as UTF-8; a lone surrogate becomes invalid UTF-8 on the wire."""
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")


BOOLS = ["true", "false", "yes", "1", "0", "maybe", ""]
LIMITS = ["0", "-1", "1", "2", "12abc", "10000", "10001", "99999999999999999999999", "1e9", " 5", "0x10"]
HUGE_INTS = [2**63 - 1, 2**63, -(2**63), 2**64, 10**30]


def query_value(name: str) -> st.SearchStrategy:
    common = st.one_of(st.text(max_size=20), st.binary(max_size=8), st.sampled_from(EVIL_VOLS))
    special = {
        "vol": st.sampled_from([CHUNK_VOL, META2_VOL, *EVIL_VOLS]),
        "max": st.sampled_from(LIMITS), "limit": st.sampled_from(LIMITS),
        "format": st.sampled_from(["json", "prometheus", "xml", ""]),
    }.get(name, st.sampled_from(BOOLS) if name in ("create", "all", "before_incident", "repair",
                                                   "rebuild", "details") else st.nothing())
    return st.one_of(special, common) if not special.is_empty else common


def json_value() -> st.SearchStrategy:
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from(HUGE_INTS),
        st.floats(allow_nan=False), st.text(max_size=30),
        st.sampled_from(["", "A" * 65, "B" * 600, "C" * 1100, "line\nbreak", "\x00", "\udcff", "1"]),
    )
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=5), inner, max_size=3), max_leaves=5)


def body_strategy(fields: list[str]) -> st.SearchStrategy:
    record = st.fixed_dictionaries({}, optional={f: json_value() for f in fields}) if fields else st.dictionaries(
        st.text(max_size=5), json_value(), max_size=3)
    as_json = st.one_of(record, st.lists(record, max_size=4), json_value()).map(encode_json)
    raw = st.one_of(st.binary(max_size=40), st.sampled_from([
        b"", b"{", b"[1,", b"\xff", b'{"container_id": "\xff\xfe"}', b"null", b"[]", b"{}", b"[null]",
        b"\x00", b"1" * 40, b"[" * 5000]))
    return st.one_of(st.none(), as_json, raw)


@st.composite
def requests_of(draw, path: str, method: str, op: dict[str, Any]):
    names = query_names(op)
    chosen = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
    params = [(n, draw(query_value(n)), draw(st.booleans()) and draw(st.booleans())) for n in chosen]
    if draw(st.booleans()):  # a parameter given twice, or unknown
        params.append((draw(st.sampled_from([*names, "junk", ""])), draw(query_value("vol")), False))
    return method, path, encode_query(params), draw(body_strategy(body_fields(op)))


@pytest.mark.parametrize("path,method,op", OPERATIONS, ids=[f"{m}-{p}" for p, m, _ in OPERATIONS])
def test_fuzz_route_over_http(fuzzed, path, method, op):
    @settings(max_examples=15, suppress_health_check=list(HealthCheck), deadline=None)
    @given(requests_of(path, method, op))
    def run(request):
        fuzzed.check(*request)

    run()


# -- the named cases, for every operation ------------------------------------------------


def named_cases(path: str, op: dict[str, Any]) -> list[tuple[bytes, bytes | None]]:
    """(query, body) pairs: each bad input of the issue, on a volume that exists."""
    meta2 = "/meta2/" in path
    vol = META2_VOL if meta2 else CHUNK_VOL
    good = meta2_record() if meta2 else chunk_record()
    cases: list[tuple[bytes, bytes | None]] = [(b"", None), (b"vol=", b"")]
    for evil in EVIL_VOLS:
        cases.append((encode_query([("vol", evil, False)]), encode_json(good)))
        if not (isinstance(evil, str) and evil.isascii()):
            cases.append((encode_query([("vol", evil, True)]), None))
    q = encode_query([("vol", vol, False)])
    for limit in LIMITS:
        cases.append((q + b"&max=" + quote(limit).encode(), None))
    cases += [
        (q + b"&prefix=%ff%fe&marker=%c3", None),  # invalid UTF-8, percent-encoded
        (q + b"&prefix=\xff\xfe&marker=\xc3", None),  # and raw
        (q + b"&%ff=%fe", None),
        (q, b""), (q, b"\xff\xfe"), (q, b'"' + b"x" * 2_000_000 + b'"'), (q, b"[]"), (q, b"null"), (q, b"{}"), (q, b"[{}]"), (q, b"[[]]"), (q, b"7"),
        (q, b'"text"'), (q, encode_json({"who": 1, "date": "1", "limit": "9"})),
        (q, encode_json({**good, "container_id": "\udcff"})),
        (q, encode_json([good, {**good, "mtime": "1"}])),  # one bad record: nothing of the batch
        (q, encode_json([good, {**good, "container_id": 5}])),
        (q, encode_json({**good, "container_id": "A" * 65, "chunk_id": "B" * 512})),
        (q, encode_json({**good, "container_id": "x\ny"})),
        (q, encode_json({**good, "mtime": 1.0, "version": True})),
        (q, encode_json({**good, "mtime": 2**64})),
        (q, encode_json({"limit": 10**30, "start_after": 3, "container_id": [], "rebuild": "yes",
                         "prefix": {}, "marker": None})),
    ]
    return cases


@pytest.mark.parametrize("path,method,op", OPERATIONS, ids=[f"{m}-{p}" for p, m, _ in OPERATIONS])
def test_named_bad_inputs(fuzzed, path, method, op):
    for query, body in named_cases(path, op):
        fuzzed.check(method, path, query, body)


def test_unknown_routes_and_methods(fuzzed):
    for path, item in SPEC["paths"].items():
        for method in ("GET", "POST", "DELETE", "PUT"):
            if method.lower() not in item:
                assert fuzzed.check(method, path, b"vol=" + CHUNK_VOL.encode(), b"{}") == 405
    for path in ("/", "/v1/rdir/../admin/show", "/v1/rdir/fetch/", "/v1/rdir//fetch", "/v2/rdir/fetch",
                 "/v1/rdir/%66etch", "/\xff".encode("latin-1").decode("latin-1")):
        assert fuzzed.check("GET", path, b"vol=" + CHUNK_VOL.encode(), None) in (400, 404)
    # The body must be valid JSON before the method is checked (as the reference).
    assert fuzzed.check("PUT", "/v1/rdir/push", b"", b"{") == 400
