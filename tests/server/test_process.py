"""Startup checks (§9.3 on our flags), the HTTP layer's limits and graceful shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import pytest

from rdirdb.server.cli import CPUS, MAX_WORKERS_PER_CPU
from rdirdb.server.http import MAX_HEAD, MAX_URL
from tests.server.helpers import chunk_record, fetch_item, new_volume


def raw_exchange(server, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes (or the timeout)."""
    with socket.create_connection((server.host, server.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except socket.timeout:
            pass
        return b"".join(chunks)


# -- startup ------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_path",
    [
        lambda tmp: str(tmp / "x" / "y" / "not_found"),
        lambda tmp: (tmp / "a-file").write_text("magic") and str(tmp / "a-file"),
    ],
    ids=["not-found", "not-a-dir"],
)
def test_bad_db_path_fails(start_server, tmp_path, make_path):
    srv = start_server(db_path=make_path(tmp_path), ready=False)
    assert srv.wait_exit() == 1
    assert "cannot start" in srv.output()


def test_unwritable_db_path_fails(start_server, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    # root writes anywhere: then try a directory the kernel refuses (like the reference's /var)
    candidates = [str(ro), "/proc/sys"]
    path = next((p for p in candidates if os.path.isdir(p) and not os.access(p, os.W_OK)), None)
    if path is None:
        pytest.skip("no unwritable directory here")
    srv = start_server(db_path=path, ready=False)
    assert srv.wait_exit() == 1
    assert "not readable, writable and searchable" in srv.output()


def test_bad_bind_fails(start_server):
    srv = start_server("--bind", "127.0.0.1:notaport", ready=False)
    assert srv.wait_exit() == 2
    assert "invalid --bind" in srv.output()


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--workers", "0"), ("--workers", "-3"), ("--workers", "1000"),
        ("--workers", str(MAX_WORKERS_PER_CPU * CPUS + 1)),
        ("--request-timeout", "0"), ("--request-timeout", "-1"), ("--request-timeout", "nan"),
        ("--keepalive-timeout", "0"), ("--keepalive-timeout", "inf"),
        ("--shutdown-timeout", "-1"), ("--heartbeat", "0"), ("--heartbeat", "x"),
        ("--max-body-size", "0"),
    ],
)
def test_bad_flags_are_refused_with_their_name(start_server, flag, value):
    srv = start_server(f"{flag}={value}", ready=False)
    assert srv.wait_exit() == 2
    assert f"error: argument {flag}: " in srv.output()
    assert "Traceback" not in srv.output()


def test_python_m_rdirdb_server_runs_the_same_command(tmp_path):
    """``python -m rdirdb.server`` (documented) parses the same flags as ``rdirdb serve``."""
    import subprocess
    import sys

    from tests.entry_point import rdirdb_env

    proc = subprocess.run([sys.executable, "-m", "rdirdb.server"], env=rdirdb_env(), capture_output=True, timeout=30)
    assert proc.returncode == 2 and b"--db-path" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "rdirdb.server", "--db-path", str(tmp_path), "--heartbeat", "0"],
                          env=rdirdb_env(), capture_output=True, timeout=30)
    assert proc.returncode == 2 and b"argument --heartbeat" in proc.stderr


def test_second_identity_on_same_dir_refused(start_server):
    first = start_server()
    second = start_server(db_path=first.db_path, ready=False)  # another port: another identity
    assert second.wait_exit() == 1
    assert "being served by another rdirdb server" in second.output()
    assert first.request("GET", "/status").status == 200
    # the same service id may come back (a restart), on another port
    first.stop()
    again = start_server("--service-id", "svc", db_path=first.db_path, ready=False)
    assert again.wait_exit() == 1  # the dir belongs to HOST:PORT of the first one
    fresh = start_server("--service-id", "svc")
    fresh.stop()
    assert start_server("--service-id", "svc", db_path=fresh.db_path).request("GET", "/info").status == 200


def test_second_server_with_the_same_identity_is_refused(start_server):
    """It used to start, and its stop deleted the first one's .rdir-run: the first then
    reported opened_db_count 0 forever."""
    first = start_server("--service-id", "svc")
    vol = new_volume()
    assert first.request("POST", "/v1/rdir/create", {"vol": vol}).status == 201
    assert first.request("GET", "/status").json["opened_db_count"] == 1
    second = start_server("--service-id", "svc", db_path=first.db_path, ready=False)
    assert second.wait_exit() == 1
    assert f"{first.db_path} is being served by another rdirdb server (rdir service 'svc')" in second.output()
    assert os.path.isdir(os.path.join(first.db_path, ".rdir-run"))
    assert first.request("GET", "/status").json["opened_db_count"] == 1
    first.stop()
    assert start_server("--service-id", "svc", db_path=first.db_path).request("GET", "/info").status == 200


def test_service_id_defaults_to_the_bound_address(start_server):
    srv = start_server()
    addr = f"{srv.host}:{srv.port}"
    assert f"service_id {addr}\n" in srv.request("GET", "/info").body.decode()
    assert srv.request("GET", "/status").json["service_id"] == addr
    prometheus = srv.request("GET", "/status", {"format": "prometheus"}).body.decode()
    assert f'service_id="{addr}"' in prometheus and 'service_id=""' not in prometheus
    with open(os.path.join(srv.db_path, ".rdir-identity")) as f:
        assert json.load(f) == {"type": "rdir", "service": addr, "namespace": "OPENIO"}


def test_port_in_use_fails(start_server):
    first = start_server()
    second = start_server("--bind", f"127.0.0.1:{first.port}", ready=False)
    assert second.wait_exit() == 1
    assert "cannot bind" in second.output()


# -- the HTTP layer ---------------------------------------------------------------


@pytest.fixture
def small(start_server):
    return start_server("--max-body-size", "2000", "--request-timeout", "1", "--keepalive-timeout", "2")


def test_body_too_large_is_413(small):
    vol = new_volume()
    assert small.request("POST", "/v1/rdir/create", {"vol": vol}).status == 201
    recs = [chunk_record() for _ in range(20)]
    reply = small.request("POST", "/v1/rdir/push", {"vol": vol}, recs)
    assert reply.status == 413 and reply.json["status"] == 413
    # chunked, with no Content-Length: counted as it arrives
    body = json.dumps(recs).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 500]), body[i : i + 500]) for i in range(0, len(body), 500))
    raw = raw_exchange(
        small,
        b"POST /v1/rdir/push?vol=%s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n"
        % (vol.encode(), chunked),
    )
    assert raw.startswith(b"HTTP/1.1 413 ")
    assert small.request("GET", "/v1/rdir/fetch", {"vol": vol}).json == []
    assert small.request("POST", "/v1/rdir/push", {"vol": vol}, recs[:2]).status == 204


def test_malformed_request_is_400(small):
    raw = raw_exchange(small, b"GARBAGE\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert b'"status":400' in raw


def test_slow_request_times_out_with_408(small):
    started = time.monotonic()
    raw = raw_exchange(small, b"POST /v1/rdir/create?vol=v HTTP/1.1\r\nContent-Length: 10\r\n\r\n{", timeout=10)
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 5


def test_idle_connection_is_closed(small):
    started = time.monotonic()
    assert raw_exchange(small, b"", timeout=10) == b""
    assert 1.5 < time.monotonic() - started < 8


@pytest.mark.parametrize("split", [False, True], ids=["one-send", "two-sends"])
def test_too_large_head_is_431_and_too_long_url_is_414(small, split):
    big_header = b"GET /info HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEAD + 1000) + b"\r\n\r\n"
    many_headers = b"GET /info HTTP/1.1\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 90) for i in range(800)) + b"\r\n"
    long_url = b"GET /info?" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    for request, status, message in ((big_header, 431, b"Request line and headers larger than"),
                                     (many_headers, 431, b"Request line and headers larger than"),
                                     (long_url, 414, b"URL longer than %d bytes" % MAX_URL)):
        with socket.create_connection((small.host, small.port), timeout=5) as sock:
            if split:  # the head ends in a later read than the one that crossed the limit
                sock.sendall(request[:MAX_HEAD - 100])
                time.sleep(0.1)
            sock.sendall(request[MAX_HEAD - 100 if split else 0:])
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        assert raw.startswith(b"HTTP/1.1 %d " % status) and message in raw, raw[:300]
        assert b"callback error" not in raw
    # just under the limits: served
    url = b"/v1/rdir/fetch?vol=nope&marker=" + b"m" * (MAX_URL - 100)
    raw = raw_exchange(small, b"GET %s HTTP/1.1\r\nHost: x\r\nX-Pad: %s\r\nConnection: close\r\n\r\n"
                       % (url, b"p" * (MAX_HEAD - MAX_URL - 200)))
    assert raw.startswith(b"HTTP/1.1 404 "), raw[:300]


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"), reason="no /proc")
def test_huge_header_is_refused_early_and_costs_no_memory(start_server):
    """A 20 MB header: the worker refuses it after its first 64 KiB and keeps no memory
    (without a limit its RSS grew by the header's size and stayed there)."""
    srv = start_server()
    (worker,) = _children(srv.proc.pid)
    assert srv.request("GET", "/info").status == 200  # the worker is warm
    before = _rss_kib(worker)
    sent = 0
    with socket.create_connection((srv.host, srv.port), timeout=10) as sock:
        try:
            sock.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\nX-Big: ")
            while sent < 20 << 20:
                sock.sendall(b"a" * (1 << 20))
                sent += 1 << 20
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused, dropped, then closed
        time.sleep(0.2)
        grown = _rss_kib(worker) - before
    assert grown < 8 << 10, f"worker RSS grew by {grown} KiB after {sent >> 20} MiB of header"
    assert srv.request("GET", "/info").status == 200
    assert "431 Request line and headers larger than" in srv.output()


def test_keep_alive_pipelining_and_request_id(small):
    vol = new_volume()
    requests = (
        b"POST /v1/rdir/create?vol=%s HTTP/1.1\r\nHost: x\r\nx-oio-req-id: my-req-1\r\n\r\n"
        b"GET /v1/rdir/fetch?vol=%s HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (vol.encode(), vol.encode())
    )
    raw = raw_exchange(small, requests)
    assert raw.count(b"HTTP/1.1 ") == 3
    first, second, third = raw.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"201 ") and b"x-oio-req-id: my-req-1\r\n" in first
    assert second.startswith(b"200 ") and b"x-oio-req-id: rdir-" in second and second.endswith(b"[]")
    assert third.startswith(b"404 ") and b"Connection: close" in third
    assert "my-req-1" not in small.output()  # successes are not logged at INFO
    assert "/nope -> 404" in small.output()


def test_query_decoding(small):
    vol = "a b+c"
    assert small.request("POST", "/v1/rdir/create", query="vol=a+b%2Bc&vol=ignored").status == 201
    assert small.request("GET", "/status").json["rawx_volumes"] == [vol]
    assert small.request("GET", "/v1/rdir/admin/show", query="vol&vol=a%20b%2bc").json == {}


# -- shutdown -----------------------------------------------------------------


def test_sigterm_loses_no_acknowledged_write(start_server):
    srv = start_server("--service-id", "svc", workers=2)
    vol = new_volume()
    assert srv.request("POST", "/v1/rdir/create", {"vol": vol}).status == 201
    acked: list[dict] = []
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            rec = chunk_record()
            try:
                reply = srv.request("POST", "/v1/rdir/push", {"vol": vol}, rec)
            except OSError:
                return
            if reply.status == 204:
                acked.append(rec)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    # one request half-sent when SIGTERM arrives: it is still answered
    pending = chunk_record()
    body = json.dumps(pending).encode()
    sock = socket.create_connection((srv.host, srv.port), timeout=10)
    sock.sendall(b"POST /v1/rdir/push?vol=%s HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (vol.encode(), len(body), body[:10]))
    time.sleep(0.2)
    srv.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    time.sleep(0.3)
    sock.sendall(body[10:])
    answer = sock.recv(65536)
    sock.close()
    assert srv.wait_exit() == 0
    assert time.monotonic() - signalled < 5  # no connection kept it waiting (the limit is 10 s)
    stop.set()
    for t in threads:
        t.join(10)
    assert answer.startswith(b"HTTP/1.1 204 ") and b"Connection: close" in answer
    acked.append(pending)
    assert len(acked) > 10

    again = start_server("--service-id", "svc", db_path=srv.db_path)
    items = again.request("GET", "/v1/rdir/fetch", {"vol": vol, "max": 10000}).json
    stored = {item[0] for item in items}
    missing = [r for r in acked if fetch_item(r)[0] not in stored]
    assert not missing


def test_head_answers_the_headers_of_get(small):
    for path in (b"/status", b"/info", b"/v1/rdir/fetch?vol=nope"):
        get = small.request("GET", path.decode())
        raw = raw_exchange(small, b"HEAD %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d " % get.status), (path, head)
        assert b"Content-Length: %d\r\n" % len(get.body) in head and body == b""
    # a route without GET: 405, headers only too
    raw = raw_exchange(small, b"HEAD /v1/rdir/push?vol=v HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405 ") and body == b""
    # keep-alive: the next request on the connection is read correctly
    raw = raw_exchange(small, b"HEAD /info HTTP/1.1\r\nHost: x\r\n\r\nGET /info HTTP/1.1\r\nHost: x\r\n"
                              b"Connection: close\r\n\r\n")
    assert raw.count(b"HTTP/1.1 200 ") == 2 and raw.endswith(b"path " + small.db_path.encode() + b"\nservice_id "
                                                             + f"{small.host}:{small.port}".encode() + b"\n")


def test_config_and_info(small):
    config = small.request("GET", "/config").json
    assert config["namespace"] == "OPENIO" and config["server.max_body_size"] == 2000
    assert small.request("GET", "/info").body.startswith(b"namespace OPENIO\npath ")


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"), reason="no /proc")
def test_dead_worker_is_replaced(start_server):
    srv = start_server(workers=2)
    time.sleep(1.2)  # older than the respawn guard
    workers = _children(srv.proc.pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = _children(srv.proc.pid)
        if len(now) == 2 and workers[0] not in now:
            break
        time.sleep(0.05)
    assert len(now) == 2 and workers[0] not in now
    for _ in range(4):
        assert srv.request("GET", "/status").status == 200
    assert srv.stop() == 0



def test_debug_logs_every_request_with_its_id(start_server):
    srv = start_server("--log-level", "debug")
    reply = srv.request("GET", "/status", headers={"x-oio-req-id": "trace-123"})
    assert reply.headers["x-oio-req-id"] == "trace-123"
    generated = srv.request("GET", "/info").headers["x-oio-req-id"]
    assert generated.startswith("rdir-") and generated != srv.request("GET", "/info").headers["x-oio-req-id"]
    deadline = time.monotonic() + 5
    while ("trace-123 GET /status" not in srv.output() or generated not in srv.output()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "trace-123 GET /status? 200" in srv.output()
    assert f"{generated} GET /info? 200" in srv.output()


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"), reason="no /proc")
def test_connections_spread_over_workers(start_server):
    srv = start_server(workers=2)
    time.sleep(0.3)  # workers up

    def sockets() -> list[int]:
        counts = []
        for pid in _children(srv.proc.pid):
            fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            counts.append(sum(fd.startswith("socket:") for fd in fds))
        return counts

    idle = sockets()
    # a burst, like wrk's: all 8 wait in the accept queue at once
    conns = [socket.create_connection((srv.host, srv.port), timeout=10) for _ in range(8)]
    try:
        for conn in conns:
            conn.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
        for conn in conns:
            assert conn.recv(65536).startswith(b"HTTP/1.1 200 ")
        served = [n - i for n, i in zip(sockets(), idle)]
        assert sum(served) == 8 and min(served) >= 2, served
    finally:
        for conn in conns:
            conn.close()


def test_serve_defaults_in_the_real_parser():
    from rdirdb.cli import build_parser
    from rdirdb.server import cli

    args = build_parser().parse_args(["serve", "--db-path", "/nonexistent/rdir"])
    assert (args.bind, args.namespace, args.service_id, args.max_body_size, args.workers) == (
        "127.0.0.1:6300", "OPENIO", None, 32 << 20, CPUS,
    )
    assert args.handler is cli.run  # run in a subprocess by the other tests (it sets up logging)


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"), reason="no /proc")
def test_workers_stop_when_the_master_is_killed(start_server):
    srv = start_server(workers=2)
    time.sleep(0.3)
    workers = _children(srv.proc.pid)
    assert len(workers) == 2
    srv.proc.kill()
    srv.proc.wait()

    def alive(pid: int) -> bool:  # a zombie waiting for a reaper is not alive
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rpartition(")")[2].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 10
    while any(map(alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(alive, workers))


def test_workers_write_one_volume_concurrently_past_map_growth(start_server):
    """Two workers, four writers, one volume grown well past its first 64 MiB map."""
    from concurrent.futures import ThreadPoolExecutor

    srv = start_server(workers=2)
    vol = new_volume()
    assert srv.request("POST", "/v1/rdir/create", {"vol": vol}).status == 201
    path = "p" * 200  # bigger records: fewer of them fill the map

    def push(batch: int) -> int:
        recs = [
            {"container_id": "%064X" % (batch * 7 + i % 7), "content_id": "C", "chunk_id": "%064X" % (batch * 10**6 + i),
             "mtime": 1, "path": path, "version": 1}
            for i in range(4000)
        ]
        return srv.request("POST", "/v1/rdir/push", {"vol": vol}, recs).status

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(push, range(40)))
    assert statuses == [204] * 40
    count, params = 0, {"vol": vol, "max": 10000}
    while True:
        reply = srv.request("GET", "/v1/rdir/status", params)
        count += reply.json["chunk"]["total"]
        if reply.headers["x-oio-list-truncated"] != "true":
            break
        params["marker"] = reply.headers["x-oio-list-marker"]
    assert count == 160000


# -- the processes: registry, orphans, SIGTERM at start ------------------------------


def test_sigterm_deregisters_from_the_registry(start_server, tmp_path):
    from rdirdb.rdir.registry import open_registry

    url = f"file://{tmp_path}/registry.json"
    srv = start_server("--service-id", "rdir-reg", "--registry", url, "--heartbeat", "0.2")
    deadline = time.monotonic() + 10
    with open_registry(url) as registry:
        while not registry.services("rdir") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [s.id for s in registry.services("rdir")] == ["rdir-reg"]
        assert srv.stop() == 0
        assert registry.services("rdir") == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serving_processes(db_path: str) -> list[int]:
    """Live processes (not zombies) whose command line names ``db_path``: the master
    and the workers it forked."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if db_path.encode() not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    continue
        except OSError:
            continue
        found.append(int(entry))
    return found


def _assert_all_gone(db_path: str, timeout: float) -> None:
    """Every process serving ``db_path`` exits within ``timeout`` (those left are killed)."""
    deadline = time.monotonic() + timeout
    while (alive := _serving_processes(db_path)) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"processes {alive} still serve {db_path} after {timeout} s"


def _wait_started(srv, moment: str) -> None:
    """Until the server's port accepts connections, or until its first worker exists."""
    deadline = time.monotonic() + 15
    while True:
        assert time.monotonic() < deadline and srv.proc.poll() is None, srv.output()
        if moment == "first-worker":
            try:
                if _children(srv.proc.pid):
                    return
            except FileNotFoundError:
                pass
        else:
            try:
                socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
                return
            except OSError:
                pass
        time.sleep(0.001)


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"), reason="no /proc")
@pytest.mark.parametrize("moment", ["port-open", "first-worker"])
def test_workers_stop_when_the_master_dies_in_their_first_moments(start_server, tmp_path, moment):
    """SIGTERM then SIGKILL to the master as soon as its port opens (or its first
    worker exists): its workers stop within about a second. They used to serve on for
    minutes, holding the port, when they read the master's pid after it had died."""
    port = _free_port()
    db = tmp_path / "db"
    db.mkdir()
    for attempt in range(3):
        srv = start_server("--bind", f"127.0.0.1:{port}", workers=2, db_path=str(db), ready=False)
        srv.port = port
        _wait_started(srv, moment)
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.kill()
        srv.proc.wait()
        _assert_all_gone(str(db), timeout=3)
    # the port and the directory are free: the next server starts
    assert start_server("--bind", f"127.0.0.1:{port}", db_path=str(db)).request("GET", "/info").status == 200


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"), reason="no /proc")
@pytest.mark.parametrize("when", ["first-worker", "after-0.3s", "after-1s"])
def test_sigterm_at_start_stops_every_worker(start_server, tmp_path, when):
    """As many workers as allowed, SIGTERM while the master is still starting them:
    every process stops (the master used to go on forking, and the late workers served on)."""
    db = tmp_path / "db"
    db.mkdir()
    srv = start_server(workers=MAX_WORKERS_PER_CPU * CPUS, db_path=str(db), ready=False)
    if when == "first-worker":
        _wait_started(srv, when)
    else:
        time.sleep(float(when.removeprefix("after-").removesuffix("s")))
    srv.proc.send_signal(signal.SIGTERM)
    try:
        code = srv.wait_exit(timeout=20)
    finally:
        _assert_all_gone(str(db), timeout=5)
    # 0 after a clean stop; killed outright when the signal came before the master set
    # its handler (it had forked nothing yet)
    assert code in (0, -signal.SIGTERM), srv.output()
    _assert_all_gone(str(db), timeout=5)
