"""Startup checks (§9.3 on our flags), the HTTP layer's limits and graceful shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import pytest

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


@pytest.mark.parametrize("args", [("--bind", "127.0.0.1:notaport"), ("--workers", "0")])
def test_bad_arguments_fail(start_server, args):
    srv = start_server(*args, ready=False)
    assert srv.wait_exit() != 0


def test_missing_db_path_argument_fails(tmp_path):
    import subprocess
    import sys

    from tests.server.helpers import SRC

    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.run(
        [sys.executable, "-m", "rdirdb.server"], env=env, capture_output=True, timeout=30
    )
    assert proc.returncode == 2 and b"--db-path" in proc.stderr


def test_second_identity_on_same_dir_refused(start_server):
    first = start_server()
    second = start_server(db_path=first.db_path, ready=False)  # another port: another identity
    assert second.wait_exit() == 1
    assert "belongs to rdir service" in second.output()
    assert first.request("GET", "/status").status == 200
    # the same service id may come back (a restart), on another port
    first.stop()
    again = start_server("--service-id", "svc", db_path=first.db_path, ready=False)
    assert again.wait_exit() == 1  # the dir belongs to HOST:PORT of the first one
    fresh = start_server("--service-id", "svc")
    fresh.stop()
    assert start_server("--service-id", "svc", db_path=fresh.db_path).request("GET", "/info").status == 200


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


def test_head_config_and_info(small):
    raw = raw_exchange(small, b"HEAD /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405 ") and b"Content-Length: 37" in head and body == b""
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


def test_register_adds_the_serve_subcommand():
    import argparse

    from rdirdb.server import cli

    parser = argparse.ArgumentParser(prog="rdirdb")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--db-path", "/nonexistent/rdir"])
    assert (args.bind, args.namespace, args.service_id, args.max_body_size) == (
        "127.0.0.1:6300", "OPENIO", None, 32 << 20,
    )
    assert args.handler is cli.run  # run in a subprocess by the other tests (it sets up logging)
    assert cli.add_parser is cli.register  # the name rdirdb.cli uses


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
