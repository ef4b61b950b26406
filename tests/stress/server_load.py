"""The HTTP server under a bounded concurrent load from several client processes.

``run(clients, ops)`` starts a 2-worker server on loopback; each client process does ``ops``
requests on its own kept-alive connection: batch pushes into one shared volume and into its
own, deletes of records it pushed, full fetches of the shared volume. Afterwards, for every
volume: status total == records fetched == what the clients were acknowledged (pushed and
not deleted), and no request got anything but its success code.

``PYTHONPATH=src python tests/stress/server_load.py [--clients 8] [--ops 2000]``
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from urllib.parse import urlencode

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from tests.server.helpers import Server  # noqa: E402

SHARED = "load-shared"


@dataclasses.dataclass
class Figures:
    clients: int
    requests: int = 0
    pushed: int = 0
    deleted: int = 0
    fetches: int = 0
    records: dict = dataclasses.field(default_factory=dict)  # volume -> (acked, fetched, status total)
    seconds: float = 0.0
    errors: list = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _call(conn, method, path, params, body=None):
    data = None if body is None else json.dumps(body, separators=(",", ":"))
    conn.request(method, path + "?" + urlencode(params), body=data,
                 headers={"Content-Type": "application/json"} if data else {})
    resp = conn.getresponse()
    return resp.status, resp.getheaders(), resp.read()


def pages(conn, path, vol, size):
    """The JSON pages of a listing route, following ``x-oio-list-marker``."""
    marker = None
    for _ in range(10_000):
        params = {"vol": vol, "max": str(size), **({"marker": marker} if marker else {})}
        status, headers, body = _call(conn, "GET", path, params)
        if status != 200:
            raise RuntimeError(f"{path} {vol}: {status} {body[:200]!r}")
        yield json.loads(body)
        headers = {k.lower(): v for k, v in headers}
        if headers.get("x-oio-list-truncated") != "true":
            return
        marker = headers["x-oio-list-marker"]
    raise RuntimeError(f"{path}: too many pages")


def fetch_all(conn, vol):
    """Every key of a chunk volume."""
    return [key for page in pages(conn, "/v1/rdir/fetch", vol, 500) for key, _ in page]


def status_total(conn, vol):
    """The chunk total of a volume, summed over its status pages."""
    return sum(page["chunk"]["total"] for page in pages(conn, "/v1/rdir/status", vol, 10_000))


def _client(host, port, index, ops, seed, deadline, out):
    rng = random.Random(seed)
    conn = http.client.HTTPConnection(host, port, timeout=30)
    own = f"load-{index}"
    live = {SHARED: {}, own: {}}  # vol -> {key: record}
    fig = {"requests": 0, "pushed": 0, "deleted": 0, "fetches": 0, "errors": []}
    try:
        for n in range(ops):
            if time.monotonic() > deadline:
                break
            vol = rng.choice((SHARED, own))
            action = rng.random()
            if action < 0.6 or not live[vol]:
                batch = [{"container_id": f"{index:02X}{rng.randrange(8):062X}", "content_id": "C" * 32,
                          "chunk_id": f"{index:04X}{n:06X}{i:054X}", "mtime": n, "path": f"p{n}",
                          "version": 1} for i in range(rng.randint(1, 20))]
                status, _, body = _call(conn, "POST", "/v1/rdir/push", {"vol": vol, "create": "true"}, batch)
                if status == 204:
                    live[vol].update((r["container_id"] + "|" + r["chunk_id"], r) for r in batch)
                    fig["pushed"] += len(batch)
            elif action < 0.8:
                keys = rng.sample(sorted(live[vol]), min(len(live[vol]), rng.randint(1, 10)))
                gone = [{"container_id": k.split("|")[0], "chunk_id": k.split("|")[1]} for k in keys]
                status, _, body = _call(conn, "DELETE", "/v1/rdir/delete", {"vol": vol}, gone)
                if status == 204:
                    for k in keys:
                        del live[vol][k]
                    fig["deleted"] += len(keys)
            else:
                status, body = 200, b""
                fetch_all(conn, SHARED)  # raises on a bad answer
                fig["fetches"] += 1
            fig["requests"] += 1
            if status not in (200, 204):
                fig["errors"].append(f"client {index}: {status} {body[:200]!r}")
                break
    except Exception as exc:  # noqa: BLE001 (reported to the parent)
        fig["errors"].append(f"client {index}: {type(exc).__name__}: {exc}")
    finally:
        conn.close()
    out.put((index, fig, {vol: sorted(keys) for vol, keys in live.items()}))


def run(clients: int = 4, ops: int = 300, workers: int = 2, timeout: float = 60.0, seed: int = 7) -> Figures:
    fig = Figures(clients)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rdir-load-") as tmp:
        db = os.path.join(tmp, "db")
        os.mkdir(db)
        srv = Server(db, workers=workers).wait_ready()
        try:
            ctx = multiprocessing.get_context("fork")
            out = ctx.Queue()
            deadline = time.monotonic() + timeout
            procs = [ctx.Process(target=_client, args=(srv.host, srv.port, i, ops, seed + i, deadline, out))
                     for i in range(clients)]
            for p in procs:
                p.start()
            expected: dict[str, set] = {}
            for _ in procs:
                index, client_fig, live = out.get(timeout=timeout + 30)
                for key in ("requests", "pushed", "deleted", "fetches"):
                    setattr(fig, key, getattr(fig, key) + client_fig[key])
                fig.errors += client_fig["errors"]
                for vol, keys in live.items():
                    expected.setdefault(vol, set()).update(keys)
            for p in procs:
                p.join(30)
            if time.monotonic() > deadline:
                fig.errors.append(f"the clients did not finish within {timeout:.0f} s")
            conn = srv.connection()
            for vol, keys in sorted(expected.items()):
                fetched = fetch_all(conn, vol)
                total = status_total(conn, vol)
                fig.records[vol] = (len(keys), len(fetched), total)
                if not (set(fetched) == keys and len(fetched) == len(keys) == total):
                    fig.errors.append(f"{vol}: acked {len(keys)}, fetched {len(fetched)} "
                                      f"({len(set(fetched) ^ keys)} differ), status total {total}")
            conn.close()
        finally:
            if srv.stop() not in (0,):
                fig.errors.append(f"server exit code {srv.proc.returncode}")
    fig.seconds = time.monotonic() - started
    return fig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--ops", type=int, default=2000)
    args = parser.parse_args()
    fig = run(args.clients, args.ops, timeout=600)
    print(fig)
    return 0 if fig.ok else 1


if __name__ == "__main__":
    sys.exit(main())
