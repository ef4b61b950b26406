"""HTTP/1.1 on asyncio with httptools' parser (the stack benches/http_stacks.py chose).

One ``HttpProtocol`` per connection. Requests are answered in order as soon as
their body is complete; the handler is synchronous (LMDB calls are short and
release nothing to wait for), so pipelined requests need no queue.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from http import HTTPStatus
from typing import Callable

import httptools

from rdirdb.server.app import HttpError, Response, error_response

log = logging.getLogger("rdirdb.server")
access_log = logging.getLogger("rdirdb.server.access")

Handler = Callable[[str, str, str, bytes], Response]

_REASONS = {s.value: s.phrase for s in HTTPStatus}


_id_prefix = ""
_id_counter = itertools.count()


def _new_id_prefix() -> None:
    global _id_prefix, _id_counter
    _id_prefix = "rdir-" + os.urandom(8).hex()
    _id_counter = itertools.count()


_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)  # each worker its own prefix


def new_request_id() -> str:
    """A random per-process prefix and a counter: unique, with no syscall per request."""
    return f"{_id_prefix}{next(_id_counter):08x}"


def render(response: Response, req_id: str, keep_alive: bool, head: bool = False) -> bytes:
    """The bytes of one response: status line, headers, body (none for a HEAD request)."""
    status = response.status
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"]
    if response.content_type:
        lines.append(f"Content-Type: {response.content_type}\r\n")
    if status not in (204, 304):
        lines.append(f"Content-Length: {len(response.body)}\r\n")
    lines.append(f"x-oio-req-id: {req_id}\r\n")
    for name, value in response.headers:
        lines.append(f"{name}: {value.replace(chr(13), '%0D').replace(chr(10), '%0A')}\r\n")
    if not keep_alive:
        lines.append("Connection: close\r\n")
    lines.append("\r\n")
    # UTF-8 like the reference (a marker is a raw key); never a line break: no header injection
    head_bytes = "".join(lines).encode("utf-8", "surrogateescape")
    return head_bytes + (b"" if head or status in (204, 304) else response.body)


class ServerState:
    """What the connections of one worker share: limits, the handler, the live set."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body: int = 64 << 20,
        request_timeout: float = 30.0,
        keepalive_timeout: float = 60.0,
    ) -> None:
        self.handler = handler
        self.max_body = max_body
        self.request_timeout = request_timeout
        self.keepalive_timeout = keepalive_timeout
        self.connections: set[HttpProtocol] = set()
        self.closing = False
        self._sweeper: asyncio.TimerHandle | None = None
        # Deadlines are checked by one periodic sweep rather than by a timer per
        # request (two timers per request cost more than the request's routing).
        self.sweep_interval = min(1.0, request_timeout / 4, keepalive_timeout / 4)

    def add(self, conn: "HttpProtocol") -> None:
        self.connections.add(conn)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self.sweep_interval, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self.connections if c.deadline <= now]:
            conn.timed_out()
        self._sweeper = asyncio.get_running_loop().call_later(self.sweep_interval, self._sweep)


class HttpProtocol(asyncio.Protocol):
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.deadline = 0.0  # time.monotonic() after which the connection times out
        self.in_request = False
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.req_id: str | None = None
        self.body: list[bytes] = []
        self.body_size = 0
        self.too_large = False
        self.expect_continue = False

    # -- connection --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.deadline = time.monotonic() + self.state.keepalive_timeout
        self.state.add(self)
        if self.state.closing:  # accepted while shutting down
            self.shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        self.transport = None

    # A client that sends without reading answers must not grow our buffers.
    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(HttpError(400, "Upgrade not supported"))
        except httptools.HttpParserError as exc:
            if self.transport is not None and not self.too_large:
                self._fail(HttpError(400, f"Malformed HTTP request: {exc}"))

    def timed_out(self) -> None:
        self.deadline = float("inf")
        if self.in_request and not self.too_large:
            self._fail(HttpError(408, "Request timeout"))
        elif self.transport is not None:
            self.transport.close()  # an idle keep-alive connection, or a lingering one
            self.transport = None

    def _fail(self, exc: HttpError, *, linger: bool = False) -> None:
        """Answer an error the handler never saw, then close (the stream is out of sync).

        With ``linger`` the rest of the request is read and dropped before closing:
        closing with unread bytes would reset the connection and could destroy
        the answer before the client reads it.
        """
        if self.transport is None or self.too_large:
            return
        req_id = self.req_id or new_request_id()
        log.info("%s %d %s", req_id, exc.status, exc.message)
        self.transport.write(render(error_response(exc), req_id, keep_alive=False))
        if linger:
            self.too_large = True  # on_body drops, on_message_complete closes
        else:
            self.transport.close()
            self.transport = None

    def shutdown(self) -> None:
        """Close now if idle; otherwise the response in progress closes the connection."""
        if not self.in_request and self.transport is not None:
            self.transport.close()

    # -- httptools callbacks --

    def on_message_begin(self) -> None:
        self.in_request = True
        self._reset()
        self.deadline = time.monotonic() + self.state.request_timeout

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"x-oio-req-id":
            self.req_id = value.decode("utf-8", "surrogateescape")
        elif name == b"content-length" and value.strip().isdigit():
            if int(value) > self.state.max_body:  # refuse before the body arrives
                self._too_large()
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True

    def on_headers_complete(self) -> None:
        if self.expect_continue and not self.too_large and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for it

    def _too_large(self) -> None:
        self._fail(HttpError(413, f"Body larger than {self.state.max_body} bytes"), linger=True)

    def on_body(self, chunk: bytes) -> None:
        if self.too_large:
            return
        self.body_size += len(chunk)
        if self.body_size > self.state.max_body:
            self.body.clear()
            self._too_large()
            return
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        if self.transport is None:
            return
        if self.too_large:
            self.transport.close()
            self.transport = None
            return
        started = time.monotonic()
        req_id = self.req_id or new_request_id()
        method = self.parser.get_method().decode("latin-1")
        url = httptools.parse_url(self.url)
        path = url.path.decode("utf-8", "surrogateescape")
        query = url.query.decode("utf-8", "surrogateescape") if url.query else ""
        response = self.state.handler(method, path, query, b"".join(self.body))
        keep_alive = self.parser.should_keep_alive() and not self.state.closing
        self.transport.write(render(response, req_id, keep_alive, head=method == "HEAD"))
        if response.status >= 400:
            log.info("%s %s %s -> %d %s", req_id, method, path, response.status, response.body[:200])
        if access_log.isEnabledFor(logging.DEBUG):
            access_log.debug(
                "%s %s %s?%s %d %.3fms", req_id, method, path, query, response.status,
                (time.monotonic() - started) * 1000,
            )
        self.in_request = False
        if keep_alive:
            self.deadline = time.monotonic() + self.state.keepalive_timeout
        else:
            self.transport.close()
            self.transport = None
