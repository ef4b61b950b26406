"""The rdir wire protocol, independent of the HTTP stack.

``RdirApp.handle(method, path, query, body, req_id)`` returns a ``Response``;
the HTTP layer (``rdirdb.server.http``) only parses bytes and writes them back.
Route table, parameter parsing, validation and error bodies follow the OpenIO
rdir server (docs/server.md lists where we deliberately differ).
"""

from __future__ import annotations

import functools
import logging
import re
import string
from typing import Any, Callable, NamedTuple, TypeVar
from urllib.parse import quote, unquote_plus, unquote_to_bytes

import orjson

from rdirdb import errors
from rdirdb.rdir.backend import DEFAULT_LIMIT as DEFAULT_LIMIT  # the server's settings show them
from rdirdb.rdir.backend import MAX_LIMIT as MAX_LIMIT
from rdirdb.rdir.backend import listing_limit, parse_bool
from rdirdb.rdir.store import Store, Volume, volume_file_name
from rdirdb.server.commit import GroupCommit, Result
from rdirdb.server.fields import field
from rdirdb.server.repair import Handler, repair_routes

log = logging.getLogger("rdirdb.server")
T = TypeVar("T")

JSON = "application/json"
TEXT = "text/plain"

_LEADING_INT = re.compile(r"\s*[+-]?\d+")


class Response(NamedTuple):
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


NO_CONTENT = Response(204)
CREATED = Response(201)


class Deferred:
    """A response that comes later: a write waiting for the commit of its group
    (see rdirdb.server.commit). ``then(callback)`` gets it once it is there."""

    __slots__ = ("response", "_callback")

    def __init__(self) -> None:
        self.response: Response | None = None
        self._callback: Callable[[Response], None] | None = None

    def resolve(self, response: Response) -> None:
        self.response = response
        if self._callback is not None:
            self._callback(response)

    def then(self, callback: Callable[[Response], None]) -> None:
        if self.response is not None:
            callback(self.response)
        else:
            self._callback = callback


class HttpError(Exception):
    """An error reply: HTTP ``status``, and ``code`` for the body's "status" field.

    They differ only where the reference does it (unknown route, bad method).
    """

    def __init__(self, status: int, message: str, code: int | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = status if code is None else code
        self.details = details


def bad_request(message: str) -> HttpError:
    return HttpError(400, message)


def json_response(obj: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, orjson.dumps(obj), JSON, headers)


def error_response(exc: HttpError) -> Response:
    headers = (("Retry-After", "1"),) if exc.status == 503 else ()
    # A message may quote invalid UTF-8 of the request (lone surrogates): show it escaped.
    message = exc.message.encode("utf-8", "backslashreplace").decode("utf-8")
    return json_response({**(exc.details or {}), "status": exc.code, "message": message}, exc.status, headers)


def failure(exc: Exception, method: str, path: str) -> Response:
    """The answer to a request that raised ``exc``: the client's error, 503 when
    busy, else 500 (a bug or a storage failure, logged)."""
    if isinstance(exc, HttpError):
        return error_response(exc)
    if isinstance(exc, errors.ClientException):
        return error_response(HttpError(exc.http_status, errors.caller_message(exc) or exc.message,
                                        details=exc.details))
    if isinstance(exc, (errors.ReadersFullError, errors.LmdbBusyError)):
        log.warning("busy: %s", exc)
        return error_response(HttpError(503, str(exc)))
    message = errors.caller_message(exc)
    if message is not None:  # the engine's verdict on the request (a bad type)
        return error_response(bad_request(message))
    log.error("%s %s failed", method, path, exc_info=exc)
    return error_response(HttpError(500, f"Backend error: {exc}"))


# -- query string and body fields ---------------------------------------------


def parse_query(query: str) -> dict[str, str]:
    """Query parameters: the first ``name=value`` wins, a bare ``name`` is absent.

    Each ``&``-separated token is unescaped whole (``+`` is a space) before it is
    split at its first ``=``, as the reference does.
    """
    params: dict[str, str] = {}
    for token in query.split("&"):
        if "%" in token or "+" in token:  # like the reference: unescape, then split
            # Invalid UTF-8 stays visible (as lone surrogates): refused where it matters.
            token = unquote_plus(token, errors="surrogateescape")
        name, sep, value = token.partition("=")
        if sep:
            params.setdefault(name, value)
    return params


def parse_limit(value: str | int | None) -> int:
    """The page size of a query's text limit (read as strtoll: unparsable text is 0)
    or a body's int limit, by the rule of :func:`listing_limit`."""
    if isinstance(value, str):
        match = _LEADING_INT.match(value)
        value = int(match.group()) if match else 0
    return listing_limit(value)


def records_of(body: Any) -> list[Any]:
    """The records of a push/delete body: an object is a batch of one."""
    if body is None:
        raise bad_request("null body")
    if type(body) is dict:
        return [body]
    if type(body) is list:
        return body
    raise bad_request("Body must be a JSON array or object")


@functools.lru_cache(maxsize=4096)  # only valid ids are cached: a rejection raises
def check_volume_id(vol: str | None, what: str = "volume") -> str:
    """The volume id of the query: present, and one the store can hold (400 otherwise).

    The store maps every other id (``..``, ``/``, ...) to a name inside its directory,
    as the embedded client does.
    """
    if vol is None or not vol:
        raise bad_request(f"no {what} id")
    try:
        volume_file_name(vol)
    except errors.BadRequest as exc:
        raise bad_request(exc.message) from None
    return vol


def _listing_headers(truncated: bool, marker: str | None) -> tuple[tuple[str, str], ...]:
    if truncated and marker is not None:
        return (("x-oio-list-truncated", "true"), ("x-oio-list-marker", marker_header(marker)))
    return (("x-oio-list-truncated", "false"),)


# The x-oio-list-marker header carries the key a listing resumes after, and
# clients send it back unchanged as the ``marker`` parameter. A key travels as
# is, in UTF-8, as in the reference (a key always holds a '|'), unless a header
# cannot carry it: a control character (of a record stored before the id rule
# refused them) or a space at an end (header parsers strip it). Such a key
# travels percent-encoded, its '|' included, and a marker without '|' is decoded.
_MARKER_SAFE = "".join(c for c in string.punctuation if c not in "%|")
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f]|^ | $")


def marker_header(key: str) -> str:
    """The x-oio-list-marker value of ``key``; :func:`marker_param` restores the key."""
    if _HEADER_UNSAFE.search(key) is None:
        return key
    return quote(key.encode("utf-8", "surrogatepass"), safe=_MARKER_SAFE)


def marker_param(value: str) -> str:
    """The key of a ``marker`` parameter: as given, or decoded from :func:`marker_header`'s form."""
    if "|" in value or "%" not in value:
        return value
    try:
        return unquote_to_bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("marker is not valid UTF-8 text") from None


def meta2_volume_name(volume_id: str) -> str:
    """How /status names a meta2 volume: the first ':' becomes '-' (ip-port)."""
    return volume_id.replace(":", "-", 1)


def _json_route(handler: Handler, req: Request) -> Response:
    return json_response(handler(req.query, req.body))


# -- the application ------------------------------------------------------------


class Request(NamedTuple):
    method: str
    query: dict[str, str]
    body: Any  # the decoded JSON body, None when empty or null


class RdirApp:
    """Every route of the rdir server over one ``Store``.

    ``on_open(service_type, volume_id)`` is called when this process opens a
    volume for the first time (the server counts open volumes across workers).
    With a ``committer``, pushes and deletes are answered by a :class:`Deferred`
    once the group commit that holds them is done; without one, at once.
    """

    def __init__(
        self,
        store: Store,
        *,
        namespace: str = "OPENIO",
        service_id: str | None = None,
        config: dict[str, Any] | None = None,
        opened_count: Callable[[], int] | None = None,
        on_open: Callable[[str, str], None] | None = None,
        committer: GroupCommit | None = None,
    ) -> None:
        self.store = store
        self.committer = committer
        self.namespace = namespace
        self.service_id = service_id
        self.config = config or {}
        self._opened_count = opened_count or (lambda: store.opened_count)
        self._on_open = on_open
        get, post, delete = "GET", "POST", "DELETE"
        # path -> {method: handler}; everything else is 404 / 405.
        self.routes: dict[str, dict[str, Callable[[Request], Response | Deferred]]] = {
            "/info": {get: self.info},
            "/status": {get: self.status},
            "/config": {get: self.show_config},
            "/v1/status": {get: self.admin_show},
            "/v1/rdir/admin/show": {get: self.admin_show},
            "/v1/rdir/admin/lock": {post: self.admin_lock},
            "/v1/rdir/admin/unlock": {post: self.admin_unlock},
            "/v1/rdir/admin/incident": {get: self.incident_get, post: self.incident_set},
            "/v1/rdir/admin/clear": {post: self.admin_clear},
            "/v1/rdir/create": {post: self.create},
            "/v1/rdir/push": {post: self.push},
            "/v1/rdir/delete": {delete: self.delete},
            "/v1/rdir/fetch": {get: self.fetch, post: self.fetch},
            "/v1/rdir/status": {get: self.vol_status, post: self.vol_status},
            "/v1/rdir/meta2/count": {get: self.meta2_count},
            "/v1/rdir/meta2/create": {post: self.meta2_create},
            "/v1/rdir/meta2/push": {post: self.meta2_push},
            "/v1/rdir/meta2/delete": {post: self.meta2_delete},
            "/v1/rdir/meta2/fetch": {get: self.meta2_fetch, post: self.meta2_fetch},
        }
        # rdirdb's own routes (anti-entropy repair), next to OpenIO's.
        for path, handler in repair_routes(store, self._open).items():
            self.routes[path] = {post: functools.partial(_json_route, handler)}
        # The writes that go to the committer (answered by a Deferred), in their order.
        self.grouped: frozenset[tuple[str, str]] = frozenset(() if committer is None else (
            (post, "/v1/rdir/push"), (delete, "/v1/rdir/delete"),
            (post, "/v1/rdir/meta2/push"), (post, "/v1/rdir/meta2/delete"),
        ))

    def handle(self, method: str, path: str, query: str, body: bytes) -> Response | Deferred:
        """Answer one request (a write, later when it waits for a group commit); never raises."""
        try:
            methods = self.routes.get(path)
            if methods is None:
                raise HttpError(404, "Route not managed", code=400)
            # Like the reference: the body must be valid JSON whatever the method.
            try:
                payload = orjson.loads(body) if body else None
            except orjson.JSONDecodeError:
                raise bad_request("Invalid JSON") from None
            handler = methods.get(method)
            if handler is None:
                raise HttpError(405, "Bad method", code=400)
            return handler(Request(method, parse_query(query), payload))
        except Exception as exc:
            return failure(exc, method, path)

    # -- volumes --

    def _volume(self, req: Request, service_type: str = "rawx", *, create: bool = False) -> Volume:
        """The volume of the query's ``vol`` (400 if bad, 404 if absent and not ``create``)."""
        what = "volume" if service_type == "rawx" else "meta2"
        return self._open(check_volume_id(req.query.get("vol"), what), service_type, create)

    def _open(self, vol: str, service_type: str, create: bool = False) -> Volume:
        return self._opening(service_type, vol, self.store.volume, vol, service_type, create=create)

    def _write(
        self, req: Request, service_type: str, *, delete: bool = False, create: bool = False
    ) -> Response | Deferred:
        """A push or a delete: the body's records go to :meth:`Store.write` as
        parsed, or, checked the same way, to the group commit."""
        vol = check_volume_id(req.query.get("vol"), "volume" if service_type == "rawx" else "meta2")
        records = records_of(req.body)
        if self.committer is None:
            self._opening(service_type, vol, self.store.write, vol, service_type, records, delete=delete, create=create)
            return NO_CONTENT
        volume, batch = self._opening(
            service_type, vol, self.store.prepare_write, vol, service_type, records, delete=delete, create=create
        )
        deferred = Deferred()

        def done(result: Result) -> None:
            if isinstance(result, Exception):
                what = f"{service_type} {'delete' if delete else 'push'} to {vol!r}"
                deferred.resolve(failure(result, req.method, what))
            else:
                deferred.resolve(NO_CONTENT)

        self.committer.submit(volume, batch, done)
        return deferred

    def _opening(self, service_type: str, vol: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, telling ``on_open`` if it opened the volume."""
        before = self.store.opened_count
        result = fn(*args, **kwargs)
        if self._on_open is not None and self.store.opened_count != before:
            self._on_open(service_type, vol)
        return result

    # -- service --

    def info(self, req: Request) -> Response:
        text = f"namespace {self.namespace}\npath {self.store.path}\n"
        if self.service_id:
            text += f"service_id {self.service_id}\n"
        return Response(200, text.encode(), TEXT)

    def show_config(self, req: Request) -> Response:
        return json_response(self.config)

    def status(self, req: Request) -> Response:
        fmt = req.query.get("format") or "json"
        if fmt not in ("json", "prometheus"):
            raise bad_request(f"Unknown format: {fmt}")
        rawx = self.store.volumes("rawx")
        meta2 = self.store.volumes("meta2")
        if fmt == "json":
            body: dict[str, Any] = {"opened_db_count": self._opened_count()}
            if self.service_id:
                body["service_id"] = self.service_id
            body["meta2_volumes"] = [meta2_volume_name(v) for v in meta2]
            body["rawx_volumes"] = rawx
            return json_response(body)
        labels = f'namespace="{self.namespace}", service_id="{self.service_id or ""}"'
        lines = [
            f"rdir_opened_db{{{labels}}} {self._opened_count()}",
            f'rdir_db_count{{{labels}, type="meta2"}} {len(meta2)}',
            f'rdir_db_count{{{labels}, type="rawx"}} {len(rawx)}',
        ]
        if parse_bool(req.query.get("details")):
            for vol in meta2:
                try:
                    count = self._open(vol, "meta2").meta2.count()
                except Exception as exc:  # a broken volume must not hide the others
                    log.warning("cannot count meta2 volume %r: %s", vol, exc)
                    continue
                lines.append(
                    f'meta2_db_count{{namespace="{self.namespace}", '
                    f'rdir_service_id="{self.service_id or ""}", '
                    f'service_id="{meta2_volume_name(vol)}"}} {count}'
                )
        return Response(200, ("\n".join(lines) + "\n").encode(), TEXT)

    # -- admin (rawx volumes) --

    def admin_show(self, req: Request) -> Response:
        return json_response(self._volume(req).admin_show())

    def admin_lock(self, req: Request) -> Response:
        who = field(req.body, "who", str)  # the body is checked before the volume
        volume = self._volume(req, create=parse_bool(req.query.get("create")))
        volume.lock(who)
        return NO_CONTENT

    def admin_unlock(self, req: Request) -> Response:
        self._volume(req).unlock()
        return NO_CONTENT

    def incident_get(self, req: Request) -> Response:
        return json_response({"date": self._volume(req).incident})

    def incident_set(self, req: Request) -> Response:
        date = field(req.body, "date", int)
        volume = self._volume(req, create=parse_bool(req.query.get("create")))
        volume.set_incident(date)
        return NO_CONTENT

    def admin_clear(self, req: Request) -> Response:
        q = req.query
        result = self._volume(req).clear(
            all=parse_bool(q.get("all")),
            before_incident=parse_bool(q.get("before_incident")),
            repair=parse_bool(q.get("repair")),
        )
        return json_response(result)

    # -- chunks --

    def create(self, req: Request) -> Response:
        self._volume(req, create=True)
        return CREATED

    def push(self, req: Request) -> Response | Deferred:
        return self._write(req, "rawx", create=parse_bool(req.query.get("create")))

    def delete(self, req: Request) -> Response | Deferred:
        return self._write(req, "rawx", delete=True)

    def _listing(self, req: Request, legacy_body: bool) -> tuple[Volume, dict[str, Any], bool]:
        """The volume, the scan parameters and ``rebuild`` (query first, then legacy body)."""
        check_volume_id(req.query.get("vol"))
        body = req.body if legacy_body else None
        if body is not None and type(body) is not dict:
            raise bad_request("null body")
        body = body or {}
        q = req.query
        marker = q.get("marker")
        if marker is None:
            marker = field(body, "start_after", str, mandatory=False)
        if marker:
            marker = marker_param(marker)
        prefix = q.get("prefix")
        if prefix is None:
            prefix = field(body, "container_id", str, mandatory=False)
        limit = q.get("max", q.get("limit"))
        if limit is None:
            limit = field(body, "limit", int, mandatory=False)
        rebuild_param = q.get("rebuild")
        if rebuild_param is not None:
            rebuild = parse_bool(rebuild_param)
        else:
            rebuild = bool(field(body, "rebuild", bool, mandatory=False))
        volume = self._volume(req)
        # An empty marker or prefix means none (the reference skipped the first record).
        params = {"prefix": prefix or None, "marker": marker or None, "limit": parse_limit(limit)}
        return volume, params, rebuild

    def fetch(self, req: Request) -> Response:
        volume, params, rebuild = self._listing(req, legacy_body=True)
        incident = volume.rebuild_incident(rebuild)
        if incident is None:
            return json_response([], headers=_listing_headers(False, None))
        entries, truncated, marker = volume.chunks.fetch(**params, incident=incident, entries=True)
        # (cid, chunk, {content_id, mtime, path, version}) -> ["cid|chunk", {...}]
        items = [(cid + "|" + chunk, value) for cid, chunk, value in entries]
        return json_response(items, headers=_listing_headers(truncated, marker))

    def vol_status(self, req: Request) -> Response:
        volume, params, _ = self._listing(req, legacy_body=False)  # rebuild is ignored
        body, truncated, marker = volume.status_page(**params)
        return json_response(body, headers=_listing_headers(truncated, marker))

    # -- meta2 --

    def meta2_create(self, req: Request) -> Response:
        self._volume(req, "meta2", create=True)
        return CREATED

    def meta2_push(self, req: Request) -> Response | Deferred:
        return self._write(req, "meta2", create=parse_bool(req.query.get("create"), True))

    def meta2_delete(self, req: Request) -> Response | Deferred:
        records_of(req.body)  # as the reference: "null body" before the volume id
        return self._write(req, "meta2", delete=True)

    def _meta2_params(self, req: Request) -> dict[str, Any]:
        """prefix/marker/limit: from the body when there is one, else from the query."""
        check_volume_id(req.query.get("vol"), "meta2")
        if req.body is None:
            q = req.query
            prefix, marker, limit = q.get("prefix"), q.get("marker"), q.get("max", q.get("limit"))
        else:
            if type(req.body) is not dict:
                raise bad_request("null body")
            prefix = field(req.body, "prefix", str, mandatory=False)
            marker = field(req.body, "marker", str, mandatory=False)
            limit = field(req.body, "limit", int, mandatory=False)
        return {"prefix": prefix or None, "marker": marker or None, "limit": parse_limit(limit)}

    def meta2_fetch(self, req: Request) -> Response:
        params = self._meta2_params(req)
        records, truncated, _ = self._volume(req, "meta2").meta2.fetch(**params)
        return json_response({"records": records, "truncated": truncated})

    def meta2_count(self, req: Request) -> Response:
        prefix = self._meta2_params(req)["prefix"]
        count = self._volume(req, "meta2").meta2.count(prefix)
        return json_response({"count": count, "prefix": prefix} if prefix else {"count": count})

