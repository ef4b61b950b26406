"""Helpers of the server benchmarks: start a server, drive it with wrk, page through it.

Loopback only; every load is bounded in requests and in seconds.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")

# wrk scripts: each connection makes random 64-hex ids (push) or random markers (fetch).
PUSH_LUA = r"""
local counter = 0
local hex = function(n)
  local t = {}
  for i = 1, n / 8 do t[i] = string.format("%08X", math.random(0, 0x7fffffff)) end
  return table.concat(t)
end
setup = function(thread) thread:set("seed", math.random(1, 1e9)) end
init = function(args) math.randomseed(seed or os.time()) end
request = function()
  counter = counter + 1
  local body = '{"container_id":"' .. hex(64) .. '","content_id":"' .. hex(32) ..
    '","chunk_id":"' .. hex(64) .. '","mtime":' .. (1700000000 + counter) ..
    ',"path":"obj-' .. counter .. '","version":1}'
  return wrk.format("POST", "/v1/rdir/push?vol=@VOL@", {["Content-Type"] = "application/json"}, body)
end
"""

FETCH_LUA = r"""
setup = function(thread) thread:set("seed", math.random(1, 1e9)) end
init = function(args) math.randomseed(seed or os.time()) end
request = function()
  -- start at a random container among the first @CIDS@ (see chunk_batch): full pages
  local marker = string.format("%064X", math.random(0, @CIDS@ - 1))
  return wrk.format("GET", "/v1/rdir/fetch?vol=@VOL@&max=@MAX@&marker=" .. marker)
end
"""


def lua(script: str, **values: Any) -> str:
    for name, value in values.items():
        script = script.replace(f"@{name.upper()}@", str(value))
    return script


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BenchServer:
    """A server subprocess: ``argv`` runs it with {db}, {port} and {conf} substituted.

    ``files`` (name: text, {db} and {port} substituted) are written first into
    the directory {conf}, a temporary one removed at :meth:`stop`: the
    configuration files of a server that reads its port from a file.
    """

    def __init__(self, argv: list[str], db: str | None = None, files: dict[str, str] | None = None) -> None:
        self.own_db = db is None
        self.db = db or tempfile.mkdtemp(prefix="rdirdb-bench-")
        self.port = free_port()
        self.conf = tempfile.mkdtemp(prefix="rdirdb-bench-conf-")
        for name, text in (files or {}).items():
            with open(os.path.join(self.conf, name), "w") as f:
                f.write(text.format(db=self.db, port=self.port))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
        argv = [a.format(db=self.db, port=self.port, conf=self.conf) for a in argv]
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.log.seek(0)
        raise RuntimeError(f"server did not start: {self.log.read().decode(errors='replace')}")

    @classmethod
    def rdirdb(cls, workers: int, db: str | None = None, args: tuple[str, ...] = ("--no-fsync",)) -> "BenchServer":
        """``rdirdb serve``; by default with the reference server's durability (no fsync)."""
        argv = [sys.executable, "-m", "rdirdb.server", "--db-path", "{db}", "--bind", "127.0.0.1:{port}",
                "--workers", str(workers), "--service-id", "bench", "--log-level", "WARNING", *args]
        return cls(argv, db)

    @classmethod
    def oio_rdir(cls, binary: str, db: str, nice: int = 0) -> "BenchServer":
        """OpenIO's C rdir server (``oio-rdir-server``, LevelDB written without fsync), built
        apart (docs/server.md), on the store directory ``db``: its namespace (``BENCH``) is
        declared in a configuration file of its own, not the system's; ``-q``: no access log;
        ``nice``: its niceness."""
        files = {
            "sds.conf": "[BENCH]\nconscience=127.0.0.1:1\n",
            "rdir.conf": "[rdir-server]\nnamespace=BENCH\ndb_path={db}\nbind_addr=127.0.0.1\n"
                         "bind_port={port}\nservice_id=bench\n",
        }
        argv = ["nice", "-n", str(nice), binary, "-q", "-O", "SysConfig=off", "-O", "Config={conf}/sds.conf",
                "{conf}/rdir.conf"]
        return cls(argv, db, files)

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.conf, ignore_errors=True)
        if self.own_db:
            shutil.rmtree(self.db, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of ``pid`` and its live children, from /proc.

    On a shared machine throughput follows the neighbours' load; CPU time per
    request is a much steadier measure of a stack's own cost.
    """
    tick = os.sysconf("SC_CLK_TCK")
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids = [pid, *map(int, f.read().split())]
    except OSError:
        pids = [pid]
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


def call(conn: http.client.HTTPConnection, method: str, url: str, body: bytes | None = None):
    conn.request(method, url, body=body, headers={"Content-Type": "application/json"} if body else {})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status >= 300:
        raise RuntimeError(f"{method} {url}: {resp.status} {data[:200]!r}")
    return resp, data


def chunk_batch(start: int, n: int, cids: int = 1000) -> list[dict[str, Any]]:
    """n records, spread over ``cids`` containers, with distinct chunk ids."""
    return [
        {
            "container_id": "%064X" % ((i * 2654435761) % cids),
            "content_id": "%032X" % i,
            "chunk_id": "%064X" % (i * 40503 + 7),
            "mtime": 1700000000 + i % 1000,
            "path": f"obj-{i}",
            "version": 1,
        }
        for i in range(start, start + n)
    ]


def batch_push(server: BenchServer, vol: str, bodies: list[bytes]) -> float:
    """Push pre-encoded bodies sequentially on one connection; returns seconds."""
    conn = server.connection()
    call(conn, "POST", f"/v1/rdir/create?vol={vol}")
    started = time.perf_counter()
    for body in bodies:
        call(conn, "POST", f"/v1/rdir/push?vol={vol}", body)
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def full_fetch(server: BenchServer, vol: str, page: int) -> tuple[int, int, float]:
    """Page through a volume like OpenIO's client (JSON decoded); (records, requests, seconds)."""
    conn = server.connection()
    records = requests = 0
    marker = ""
    started = time.perf_counter()
    while True:
        url = f"/v1/rdir/fetch?vol={vol}&max={page}" + (f"&marker={marker}" if marker else "")
        resp, data = call(conn, "GET", url)
        requests += 1
        records += len(json.loads(data))
        if resp.getheader("x-oio-list-truncated") != "true":
            break
        marker = resp.getheader("x-oio-list-marker")
    elapsed = time.perf_counter() - started
    conn.close()
    return records, requests, elapsed


_WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_TOTAL = re.compile(r"(\d+) requests in")
_WRK_ERRORS = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_WRK_LATENCY = re.compile(r"Latency\s+([\d.]+\w+)")


def wrk(
    port: int, lua: str, seconds: float, connections: int = 8, threads: int = 1, server_pid: int | None = None
) -> dict[str, Any]:
    """Run wrk against 127.0.0.1:port; returns requests/s, total, errors, mean latency,
    and with ``server_pid`` the server's CPU microseconds per request."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install -y wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
    cpu_before = cpu_seconds(server_pid) if server_pid else 0.0
    try:
        out = subprocess.run(
            ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "-s", f.name,
             f"http://127.0.0.1:{port}/"],
            capture_output=True, text=True, timeout=seconds + 30, check=True,
        ).stdout
    finally:
        os.unlink(f.name)
    errors = _WRK_ERRORS.search(out)
    total = int(_WRK_TOTAL.search(out).group(1))
    return {
        "rate": float(_WRK_RATE.search(out).group(1)),
        "total": total,
        "errors": int(errors.group(1)) if errors else 0,
        "latency": _WRK_LATENCY.search(out).group(1),
        "cpu_us": (cpu_seconds(server_pid) - cpu_before) / max(total, 1) * 1e6 if server_pid else None,
    }
