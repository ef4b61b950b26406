"""The remote rdir backend: requests to rdir HTTP servers, with replicas.

Each volume lives on one or more rdir servers (its replicas). As OpenIO's
client does, reads (GET) try the replicas one after another until one answers,
and writes (POST, DELETE) go to every replica in parallel and succeed when
``write_quorum`` of them did. Connections are persistent and pooled per host.

Which servers hold a volume comes from ``rdir_hosts`` (configuration or per
call) or from a resolver, ``resolve(volume_id, service_type) -> [host:port]``,
which the dispatcher's registry provides.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode

import numpy as np

from rdirdb._rdir import CHUNK_DTYPE_FIELDS, chunk_array
from rdirdb.rdir.backend import ChunkEntry, Meta2Record, Page, RdirBackend, listing_limit
from rdirdb.errors import (
    BadRequest,
    ClientException,
    OioConnectionException,
    OioException,
    OioNetworkException,
    OioProtocolError,
    OioTimeout,
    VolumeException,
    from_status,
)

CONNECT_TIMEOUT = 2.0  # seconds, as OpenIO's client
READ_TIMEOUT = 30.0
POOL_SIZE = 32  # idle connections kept per host

Resolver = Callable[[str, str], Sequence[str]]


class _Pool:
    """Idle persistent HTTP connections to one host."""

    def __init__(self, host: str, connect_timeout: float, read_timeout: float) -> None:
        self.host = host
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self.closed = False  # then a connection is closed after its request, never kept

    def request(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """``(status, headers, body)``; a stale pooled connection is retried once."""
        for attempt in range(2):
            try:
                conn, reused = self._get()
            except socket.timeout as exc:
                raise OioTimeout(f"{self.host}: connect timed out") from exc
            except OSError as exc:
                raise OioConnectionException(f"{self.host}: {exc}") from exc
            try:
                conn.request(method, url, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if reused and attempt == 0:
                    continue  # the server closed an idle connection: try a fresh one
                raise OioConnectionException(f"{self.host}: {exc}") from exc
            except socket.timeout as exc:
                conn.close()
                raise OioTimeout(f"{self.host}: timed out") from exc
            except OSError as exc:
                conn.close()
                raise OioConnectionException(f"{self.host}: {exc}") from exc
            except http.client.HTTPException as exc:
                conn.close()
                raise OioProtocolError(f"{self.host}: {exc}") from exc
            if resp.will_close:
                conn.close()
            else:
                self._put(conn)
            return resp.status, resp.headers, data
        raise AssertionError("unreachable")

    def _get(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        host, _, port = self.host.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=self.connect_timeout)
        conn.connect()
        conn.sock.settimeout(self.read_timeout)
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, False

    def _put(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self.closed and len(self._idle) < POOL_SIZE:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _json_or_raw(status: int, headers: Any, data: bytes) -> Any:
    if not data:
        return None
    if headers.get("Content-Type", "").startswith("application/json"):
        try:
            return json.loads(data)
        except ValueError as exc:
            raise OioException(f"invalid JSON from the server: {exc}") from exc
    return data


class RemoteBackend(RdirBackend):
    """Serves the rdir API from rdir HTTP servers (see the module docstring)."""

    def __init__(
        self,
        *,
        rdir_hosts: Sequence[str] | None = None,
        resolve: Resolver | None = None,
        write_quorum: int = 1,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        if not rdir_hosts and resolve is None:
            raise ValueError("the remote mode needs rdir_hosts or a registry to resolve volumes")
        self.rdir_hosts = list(rdir_hosts or ())
        self.resolve = resolve
        self.write_quorum = write_quorum
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._pools: dict[str, _Pool] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="rdir-write")

    def close(self) -> None:
        # The pools stay, closed: a request still in flight (a replica's write
        # that a failed quorum did not wait for) closes its connection after it.
        with self._lock:
            self._closed = True
            pools = list(self._pools.values())
        for pool in pools:
            pool.close()
        self._executor.shutdown(wait=False)

    # -- requests -------------------------------------------------------------

    def _pool(self, host: str) -> _Pool:
        with self._lock:
            pool = self._pools.get(host)
            if pool is None:
                pool = self._pools[host] = _Pool(host, self.connect_timeout, self.read_timeout)
                pool.closed = self._closed
            return pool

    def hosts(self, volume: str, service_type: str, options: dict[str, Any]) -> list[str]:
        hosts = options.get("rdir_hosts") or self.rdir_hosts
        if not hosts and self.resolve is not None:
            hosts = self.resolve(volume, service_type)
        if not hosts:
            raise VolumeException(f"No rdir assigned to volume {volume}")
        return list(hosts)

    def request(
        self,
        volume: str,
        method: str,
        action: str,
        *,
        service_type: str = "rawx",
        params: dict[str, Any] | None = None,
        body: Any = None,
        create: bool = False,
        base: str | None = None,
        **options: Any,
    ) -> tuple[int, Any, Any]:
        """One rdir request to the volume's replicas: ``(status, headers, decoded body)``;
        the route is ``/v1/{base}/{action}``, ``base`` by default OpenIO's of the type."""
        if not isinstance(volume, str):
            raise TypeError(f"volume id must be str, not {type(volume).__name__}")
        query = {"vol": volume, **{k: v for k, v in (params or {}).items() if v is not None}}
        if create:
            query["create"] = "1"
        if base is None:
            base = "rdir/meta2" if service_type == "meta2" else "rdir"
        url = f"/v1/{base}/{action}?{urlencode(query)}"
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"x-oio-req-id": options.get("reqid") or uuid.uuid4().hex}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        hosts = self.hosts(volume, service_type, options)

        def send(host: str) -> tuple[int, Any, Any]:
            status, resp_headers, data = self._pool(host).request(method, url, payload, headers)
            decoded = _json_or_raw(status, resp_headers, data)
            if status >= 400:
                message = decoded.get("message", "") if isinstance(decoded, dict) else str(decoded)
                # The server's message as is (the same as the embedded client's);
                # which replica answered is kept aside.
                exc = from_status(status, message)
                exc.host = host  # type: ignore[attr-defined]
                raise exc
            return status, resp_headers, decoded

        errors: list[tuple[str, Exception]] = []
        result: tuple[int, Any, Any] | None = None
        if method in ("GET", "HEAD"):
            for host in hosts:
                try:
                    result = send(host)
                except (OioNetworkException, ClientException) as exc:
                    errors.append((host, exc))
                    continue
                self._check_quorum(errors, len(hosts), options, method)
                return result
            raise self._error(errors, method)
        futures = [(host, self._executor.submit(send, host)) for host in hosts]
        for host, future in futures:
            try:
                result = future.result()
            except (OioNetworkException, ClientException) as exc:
                errors.append((host, exc))
        self._check_quorum(errors, len(hosts), options, method)
        if result is None:
            raise self._error(errors, method)
        return result

    def _check_quorum(self, errors: list[tuple[str, Exception]], total: int, options: dict[str, Any],
                      method: str) -> None:
        """OpenIO's rule: fail when too few replicas answered for ``write_quorum``."""
        if not errors:
            return
        quorum = options.get("write_quorum", self.write_quorum)
        if (
            len(errors) >= total
            or (quorum <= 0 and len(errors) > -quorum)
            or (quorum > 0 and total - len(errors) < quorum)
        ):
            raise self._error(errors, method)

    @staticmethod
    def _error(errors: list[tuple[str, Exception]], method: str) -> Exception:
        """The error to raise for the replicas' errors: theirs when of one class."""
        classes = {type(exc) for _, exc in errors}
        if len(classes) == 1:
            return errors[0][1]
        detail = ", ".join(f"{host}: {exc}" for host, exc in errors)
        return OioException(f"Several errors encountered: {detail} {method}")

    # -- chunks ---------------------------------------------------------------

    def create(self, volume: str, service_type: str, **options: Any) -> None:
        self.request(volume, "POST", "create", service_type=service_type, **options)

    def chunk_push(self, volume: str, records: Any, *, create: bool, **options: Any) -> None:
        self.request(volume, "POST", "push", body=_chunk_dicts(records), create=create, **options)

    def chunk_delete(self, volume: str, keys: Any, **options: Any) -> None:
        body = [{"container_id": cid, "chunk_id": chunk} for cid, chunk in _key_pairs(keys)]
        self.request(volume, "DELETE", "delete", body=body, **options)

    def chunk_page(
        self, volume: str, *, prefix: str | None, marker: str | None, limit: int | None, rebuild: bool,
        **options: Any,
    ) -> tuple[list[ChunkEntry], bool, str | None]:
        params = {"max": listing_limit(limit), "prefix": prefix, "marker": marker,
                  "rebuild": "true" if rebuild else None}
        _, headers, body = self.request(volume, "GET", "fetch", params=params, **options)
        page = []
        for key, value in body or ():
            cid, _, chunk = key.partition("|")
            page.append((cid, chunk, value))
        return page, *_listing(headers)

    def chunk_array_page(
        self, volume: str, *, prefix: str | None, marker: str | None, limit: int | None, rebuild: bool,
        **options: Any,
    ) -> tuple[np.ndarray, bool, str | None]:
        page, truncated, marker = self.chunk_page(
            volume, prefix=prefix, marker=marker, limit=limit, rebuild=rebuild, **options
        )
        records = [(cid, v["content_id"], chunk, v["mtime"], v["path"], v["version"]) for cid, chunk, v in page]
        return chunk_array(records), truncated, marker

    def status_page(
        self, volume: str, *, prefix: str | None, marker: str | None, limit: int | None, **options: Any
    ) -> tuple[dict[str, Any], bool, str | None]:
        params = {"max": listing_limit(limit), "prefix": prefix, "marker": marker}
        _, headers, body = self.request(volume, "GET", "status", params=params, **options)
        return body, *_listing(headers)

    # -- admin ----------------------------------------------------------------

    def incident_set(self, volume: str, date: int, *, create: bool, **options: Any) -> None:
        self.request(volume, "POST", "admin/incident", body={"date": int(date)}, create=create, **options)

    def incident_get(self, volume: str, **options: Any) -> int:
        return int(self.request(volume, "GET", "admin/incident", **options)[2].get("date", 0))

    def lock(self, volume: str, who: str, *, create: bool, **options: Any) -> None:
        self.request(volume, "POST", "admin/lock", body={"who": who}, create=create, **options)

    def unlock(self, volume: str, **options: Any) -> None:
        self.request(volume, "POST", "admin/unlock", **options)

    def show(self, volume: str, **options: Any) -> dict[str, str]:
        return self.request(volume, "GET", "admin/show", **options)[2] or {}

    def clear(self, volume: str, *, all: bool, before_incident: bool, repair: bool, **options: Any) -> dict[str, int]:
        params = {"all": str(all), "before_incident": str(before_incident), "repair": str(repair)}
        result: dict[str, int] = self.request(volume, "POST", "admin/clear", params=params, **options)[2]
        return result

    # -- meta2 ----------------------------------------------------------------

    def meta2_clear(self, volume: str, **options: Any) -> dict[str, int]:
        # rdirdb's own route (OpenIO's rdir has no meta2 clear).
        result: dict[str, int] = self.request(volume, "POST", "clear", service_type="meta2", base="rdirdb/meta2",
                                              **options)[2]
        return result

    def meta2_push(self, volume: str, records: list[dict[str, Any]], **options: Any) -> None:
        self.request(volume, "POST", "push", service_type="meta2", body=records, create=True, **options)

    def meta2_delete(self, volume: str, records: list[dict[str, Any]], **options: Any) -> None:
        self.request(volume, "POST", "delete", service_type="meta2", body=records, **options)

    def meta2_page(
        self, volume: str, *, prefix: str | None, marker: str | None, limit: int | None, **options: Any
    ) -> Page[list[Meta2Record]]:
        params = {"prefix": prefix, "marker": marker, "limit": listing_limit(limit)}
        body = self.request(volume, "GET", "fetch", service_type="meta2", params=params, **options)[2]
        records = body["records"]
        # The wire has no meta2 marker: a page resumes after its last record.
        truncated = bool(body["truncated"] and records)
        return records, truncated, records[-1]["container_url"] if truncated else None


def remote_backend(conf: dict[str, Any], **kwargs: Any) -> RemoteBackend:
    """The backend of ``RdirClient(conf)`` without ``db_path``: ``rdir_hosts`` (a list,
    or comma-separated) or a ``registry`` URL (file:// or PostgreSQL) to find the
    servers of a volume; ``write_quorum`` (default 1); ``rdir_connection_timeout``
    and ``rdir_read_timeout`` in seconds."""
    hosts = conf.get("rdir_hosts") or kwargs.get("rdir_hosts") or ()
    if isinstance(hosts, str):
        hosts = [h.strip() for h in hosts.split(",") if h.strip()]
    resolve = None
    if conf.get("registry"):
        from rdirdb.rdir.registry import open_registry

        registry = open_registry(conf["registry"])

        def resolve(volume: str, service_type: str) -> list[str]:
            return [service.addr for service in registry.rdir_services(volume)]

    if not hosts and resolve is None:
        raise ValueError("conf needs 'db_path' (embedded), 'rdir_hosts' or 'registry' (remote)")
    return RemoteBackend(
        rdir_hosts=hosts,
        resolve=resolve,
        write_quorum=int(conf.get("write_quorum", 1)),
        connect_timeout=float(conf.get("rdir_connection_timeout", kwargs.get("connection_timeout", CONNECT_TIMEOUT))),
        read_timeout=float(conf.get("rdir_read_timeout", kwargs.get("read_timeout", READ_TIMEOUT))),
    )


def _listing(headers: Any) -> tuple[bool, str | None]:
    truncated = headers.get("x-oio-list-truncated", "false").lower() == "true"
    marker = headers.get("x-oio-list-marker") if truncated else None
    if marker is not None:
        # The server sends the key in UTF-8; http.client reads headers as Latin-1.
        marker = marker.encode("latin-1").decode("utf-8")
    return truncated, marker


def _chunk_dicts(records: Any) -> list[dict[str, Any]]:
    """The JSON body of a push, from dicts, tuples or a numpy structured array."""
    if isinstance(records, np.ndarray):
        return [{name: _json_value(r[name]) for name in CHUNK_DTYPE_FIELDS} for r in records]
    out = []
    for i, rec in enumerate(records):
        if isinstance(rec, tuple):
            if len(rec) != 6:
                raise BadRequest(f"record {i}: expected (container_id, content_id, chunk_id, mtime, path, version)")
            rec = dict(zip(CHUNK_DTYPE_FIELDS, rec))
        out.append(dict(rec))
    return out


def _json_value(value: Any) -> str | int:
    """A field of a numpy record as JSON has it: text (from UTF-8 bytes) or an int."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return int(value) if isinstance(value, np.integer) else str(value)


def _key_pairs(keys: Any) -> list[tuple[str, str]]:
    pairs = []
    for key in keys:
        if isinstance(key, tuple):
            pairs.append((key[0], key[1]))
        else:
            pairs.append((key["container_id"], key["chunk_id"]))
    return pairs
