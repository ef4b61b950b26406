"""A real ``rdirdb.server`` in a subprocess on 127.0.0.1, raw HTTP, and record factories."""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import signal
import subprocess
import time
from typing import Any
from urllib.parse import urlencode

from tests.entry_point import rdirdb_command, rdirdb_env

START_TIMEOUT = 60.0
_SERVING = re.compile(r"serving .* on http://([\d.]+):(\d+) with")


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self) -> Any:
        assert self.headers.get("content-type") == "application/json", self.headers
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.body[:200]!r}>"


class Server:
    """``rdirdb serve`` (the installed command) on a free port, logging to ``log_path``."""

    def __init__(self, db_path: str, *args: str, workers: int = 1, log_path: str | None = None):
        self.db_path = db_path
        self.log_path = log_path or os.path.join(os.path.dirname(db_path), f"server-{secrets.token_hex(3)}.log")
        cmd = rdirdb_command("serve", "--db-path", db_path, "--workers", workers)
        if not any(a.startswith("--bind") for a in args):
            cmd += ["--bind", "127.0.0.1:0"]
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen([*cmd, *args], stdout=self.log, stderr=subprocess.STDOUT, env=rdirdb_env())
        self.host, self.port = "127.0.0.1", 0

    def wait_ready(self) -> "Server":
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            match = _SERVING.search(self.output())
            if match:
                self.host, self.port = match.group(1), int(match.group(2))
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.02)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"server not ready after {START_TIMEOUT}s:\n{self.output()}")

    def output(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    # Upper bounds, not timings: a loaded 2-core machine has taken over 15 s to stop a server.
    def wait_exit(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.wait_exit(timeout)
        finally:
            self.log.close()

    def connection(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        query: str | None = None,
    ) -> Reply:
        """One request on a new connection; ``json_body`` is sent compact, like OpenIO's client."""
        if json_body is not None:
            body = json.dumps(json_body, separators=(",", ":"))
        url = path
        if params is not None:
            url += "?" + urlencode(params)
        elif query is not None:
            url += "?" + query
        conn = self.connection()
        try:
            conn.request(method, url, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()


# -- record factories (the reference tests' shapes) -------------------------------


def random_hex(n: int) -> str:
    return secrets.token_hex((n + 1) // 2)[:n].upper()


def new_volume() -> str:
    return "fake-" + random_hex(6)


def chunk_record(cid: str | None = None, mtime: int | None = None) -> dict[str, Any]:
    return {
        "container_id": cid or random_hex(64),
        "content_id": random_hex(32),
        "chunk_id": random_hex(64),
        "mtime": int(time.time()) if mtime is None else mtime,
        "path": "obj-" + random_hex(4),
        "version": 1,
    }


def fetch_item(rec: dict[str, Any]) -> list[Any]:
    return [
        f"{rec['container_id']}|{rec['chunk_id']}",
        {k: rec[k] for k in ("content_id", "mtime", "path", "version")},
    ]


def meta2_record(mtime: int | None = None) -> dict[str, Any]:
    alnum = lambda: secrets.token_hex(6)  # noqa: E731
    return {
        "container_id": random_hex(64),
        "container_url": f"{alnum()}/{alnum()}/{alnum()}",
        "mtime": int(time.time()) if mtime is None else mtime,
    }
