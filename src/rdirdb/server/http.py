"""HTTP/1.1 on asyncio with httptools' parser (the stack benches/http_stacks.py chose).

One ``HttpProtocol`` per connection. The handler runs as soon as a request's
body is complete. It answers reads at once (LMDB calls are short and have
nothing to wait for); a write may be answered later, once the group commit that
holds it is done (a ``Deferred``). Answers go out in the order of the requests:
those that follow a waiting one wait in the connection's queue.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import deque
from http import HTTPStatus
from typing import Callable

import httptools

from rdirdb.server.app import Deferred, HttpError, Response, error_response

log = logging.getLogger("rdirdb.server")
access_log = logging.getLogger("rdirdb.server.access")

Handler = Callable[[str, str, str, bytes], "Response | Deferred"]

MAX_URL = 16 << 10  # longer request targets get 414 (a listing URL is at most a few KiB)
MAX_HEAD = 64 << 10  # a larger request line and headers get 431
LINGER = 1.0  # seconds a refused request's remaining bytes are read and dropped before closing
MAX_WAITING = 64  # answers a connection may owe before it stops reading (pipelined writes)

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
    """What the connections of one worker share: limits, the handler, the live set.

    ``grouped`` are the requests (method, path) that the handler may answer with a
    ``Deferred`` and that keep their order among themselves (the group commit's
    writes): one may be handled while another is still committing.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        max_body: int = 64 << 20,
        max_url: int = MAX_URL,
        max_head: int = MAX_HEAD,
        request_timeout: float = 30.0,
        keepalive_timeout: float = 60.0,
        grouped: frozenset[tuple[str, str]] = frozenset(),
    ) -> None:
        self.handler = handler
        self.grouped = grouped  # (method, path) of the writes that join a group commit
        self.max_body = max_body
        self.max_url = max_url
        self.max_head = max_head
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


class _Answer:
    """A request whose answer is owed, in a connection's queue."""

    __slots__ = ("response", "body", "req_id", "method", "path", "query", "keep_alive", "started")

    def __init__(self, req_id: str, method: str, path: str, query: str, keep_alive: bool, started: float) -> None:
        self.response: Response | None = None
        self.body: bytes | None = None  # a request not handled yet (behind a write)
        self.req_id = req_id
        self.method = method
        self.path = path
        self.query = query
        self.keep_alive = keep_alive
        self.started = started


class HttpProtocol(asyncio.Protocol):
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.deadline = 0.0  # time.monotonic() after which the connection times out
        self.receiving = False  # between the start of a request and its last byte
        self.waiting: deque[_Answer] = deque()  # requests received, answers not yet sent
        self.paused = False  # reading paused: too many answers owed
        self.write_paused = False  # reading paused: the client does not read its answers
        # httptools accumulates a header until it is complete: the bytes of a head
        # are also counted as they arrive, so that one that never ends is refused.
        self.in_head = True  # receiving a request line and headers (or waiting for one)
        self.head_received = 0
        self.discarding = False  # refused: what the client still sends is dropped
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers_size = 0
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

    @property
    def in_request(self) -> bool:
        """A request is being received, or its answer is owed."""
        return self.receiving or bool(self.waiting)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        self.transport = None
        self.waiting.clear()  # their writes still commit; nobody is left to answer
        # The parser refers back to this protocol: break the cycle, so that what the
        # connection held (a large body, a partial head) is freed now, not at the
        # next (rare, see serve.tune_gc) garbage collection.
        self.parser = None  # type: ignore[assignment]
        self._reset()

    # A client that sends without reading answers must not grow our buffers.
    def pause_writing(self) -> None:
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self.paused:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        if self.in_head:
            self.head_received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:  # our bug, not the client's
            log.exception("request handling failed")
            self._fail(HttpError(500, "Internal error while reading the request"))
        except httptools.HttpParserUpgrade:
            self._fail(HttpError(400, "Upgrade not supported"))
        except httptools.HttpParserError as exc:
            if self.transport is not None and not self.too_large:
                self._fail(HttpError(400, f"Malformed HTTP request: {exc}"))
        if self.in_head and self.head_received > self.state.max_head:  # all of it is the head
            self._head_too_large()

    def timed_out(self) -> None:
        self.deadline = float("inf")
        if self.receiving and not (self.too_large or self.discarding or self.waiting):
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
        if not self._answer_error(exc):
            return
        if linger:
            self.too_large = True  # on_body drops, on_message_complete closes
        elif self.transport is not None:
            self.transport.close()
            self.transport = None

    def _answer_error(self, exc: HttpError) -> bool:
        """Write the error answer, unless the request was already answered or the
        connection is gone; whether it was written. Behind answers still owed, it
        is queued, what the client sends next is dropped, and the connection
        closes once the queue is sent."""
        if self.transport is None or self.too_large or self.discarding:
            return False
        req_id = self.req_id or new_request_id()
        log.info("%s %d %s", req_id, exc.status, exc.message)
        if self.waiting:
            answer = _Answer(req_id, "", "", "", False, time.monotonic())
            answer.response = error_response(exc)
            self.waiting.append(answer)
            self.discarding = True
            return False
        self.transport.write(render(error_response(exc), req_id, keep_alive=False))
        return True

    def _refuse(self, exc: HttpError) -> None:
        """Answer a request refused before its headers ended, then drop what the client
        still sends for LINGER seconds before closing (an abrupt close would reset the
        connection, and the client might never read the answer)."""
        if not self._answer_error(exc):
            return
        self.discarding = True
        self._reset()
        self.deadline = time.monotonic() + LINGER

    def shutdown(self) -> None:
        """Close now if idle; otherwise the response in progress closes the connection."""
        if not self.in_request and self.transport is not None:
            self.transport.close()

    # -- httptools callbacks --

    def on_message_begin(self) -> None:
        self.receiving = True
        self._reset()
        self.deadline = time.monotonic() + self.state.request_timeout

    def on_url(self, url: bytes) -> None:
        if self.discarding:
            return
        self.url += url
        if len(self.url) > self.state.max_url:
            self._refuse(HttpError(414, f"URL longer than {self.state.max_url} bytes"))

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.discarding:
            return
        self.headers_size += len(name) + len(value) + 4  # ": " and CRLF
        if len(self.url) + self.headers_size > self.state.max_head:
            self._head_too_large()
            return
        name = name.lower()
        if name == b"x-oio-req-id":
            self.req_id = value.decode("utf-8", "surrogateescape")
        elif name == b"content-length" and value.strip().isdigit():
            if int(value) > self.state.max_body:  # refuse before the body arrives
                self._too_large()
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_received = 0
        if self.expect_continue and not (self.too_large or self.discarding) and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for it

    def _head_too_large(self) -> None:
        self._refuse(HttpError(431, f"Request line and headers larger than {self.state.max_head} bytes"))

    def _too_large(self) -> None:
        self._fail(HttpError(413, f"Body larger than {self.state.max_body} bytes"), linger=True)

    def on_body(self, chunk: bytes) -> None:
        if self.too_large or self.discarding:
            return
        self.body_size += len(chunk)
        if self.body_size > self.state.max_body:
            self.body.clear()
            self._too_large()
            return
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        self.in_head = True  # the next request's head, if any
        self.receiving = False
        if self.transport is None or self.discarding:
            return
        if self.too_large:
            self.transport.close()
            self.transport = None
            return
        method = self.parser.get_method().decode("latin-1")
        url = httptools.parse_url(self.url)
        answer = _Answer(
            self.req_id or new_request_id(),
            method,
            url.path.decode("utf-8", "surrogateescape"),
            url.query.decode("utf-8", "surrogateescape") if url.query else "",
            self.parser.should_keep_alive(),
            time.monotonic(),
        )
        body = b"".join(self.body)
        self.body = []  # not kept while the connection idles
        if self.waiting and ((answer.method, answer.path) not in self.state.grouped
                             or any(a.body is not None for a in self.waiting)):
            # Behind a write still committing: handled once that is answered, so
            # that what this connection sends is applied and read in its order
            # (another write joins the group at once: the group keeps the order).
            answer.body = body
            self.waiting.append(answer)
            if len(self.waiting) >= MAX_WAITING and not self.paused:
                self.paused = True
                self.transport.pause_reading()
            return
        self._handle(answer, body)

    def _handle(self, answer: _Answer, body: bytes, queued: bool = False) -> None:
        """Run the handler; send the answer, or queue it behind those still owed
        (``queued``: it is at the head of the queue already)."""
        # HEAD is GET without the body (render drops it, Content-Length stays GET's)
        result = self.state.handler("GET" if answer.method == "HEAD" else answer.method, answer.path,
                                    answer.query, body)
        if isinstance(result, Deferred):
            if not queued:
                self.waiting.append(answer)
            self.deadline = float("inf")  # the server owes the wait, not the client
            result.then(lambda response: self._answered(answer, response))
            return
        answer.response = result
        if queued:
            return  # _answered sends it
        if self.waiting:
            self.waiting.append(answer)
        else:
            self._send(answer)

    def _answered(self, answer: _Answer, response: Response) -> None:
        """A deferred answer is there: send it and what the queue can."""
        answer.response = response
        waiting = self.waiting
        while waiting and self.transport is not None:
            head = waiting[0]
            if head.response is not None:
                self._send(waiting.popleft())
            elif head.body is not None:  # a request received behind a write: its turn
                body, head.body = head.body, None
                self._handle(head, body, queued=True)
                if head.response is None:
                    return  # a write again: its commit calls back here
            else:
                return
        if self.paused and len(waiting) < MAX_WAITING // 2 and self.transport is not None:
            self.paused = False
            if not self.write_paused:
                self.transport.resume_reading()

    def _send(self, answer: _Answer) -> None:
        assert self.transport is not None and answer.response is not None
        response = answer.response
        keep_alive = answer.keep_alive and not self.state.closing
        self.transport.write(render(response, answer.req_id, keep_alive, head=answer.method == "HEAD"))
        if answer.method:  # (an error queued by _answer_error is logged there)
            if response.status >= 400:
                log.info("%s %s %s -> %d %s", answer.req_id, answer.method, answer.path, response.status,
                         response.body[:200])
            if access_log.isEnabledFor(logging.DEBUG):
                access_log.debug(
                    "%s %s %s?%s %d %.3fms", answer.req_id, answer.method, answer.path, answer.query,
                    response.status, (time.monotonic() - answer.started) * 1000,
                )
        if not keep_alive:
            self.transport.close()
            self.transport = None
        elif not self.in_request:
            self.deadline = time.monotonic() + self.state.keepalive_timeout
