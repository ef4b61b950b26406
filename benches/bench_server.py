"""Benchmark the rdir HTTP server over loopback, and say where the time goes.

Starts ``rdirdb serve`` itself (``--workers``, default one per CPU) on a free
127.0.0.1 port and measures:

1. concurrent single-record pushes: wrk, 8 connections, random ids (Lua);
2. batch pushes of 1,000-record bodies, one connection (this also fills a
   ``--records`` chunk volume, 300,000 by default);
3. a full chunk_fetch of that volume with 10,000-record pages over raw HTTP,
   each page decoded with ``json.loads`` like OpenIO's Python client;
4. concurrent 1,000-record page fetches at random places: wrk, 8 connections.

Then it times, in this process, the parts of one request of each kind: HTTP
parsing (httptools) and rendering, JSON (decode the body / build and encode the
answer), the engine call, and the rest of the handler (routing, validation).
Every load is bounded in count or seconds. Needs wrk (Debian: apt-get install wrk).

    python benches/bench_server.py [--workers N] [--seconds 5] [--records 300000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Callable

import httptools
import orjson

from server_bench_util import FETCH_LUA, PUSH_LUA, BenchServer, batch_push, call, chunk_batch, full_fetch, lua, wrk

CONTAINERS = 1000  # the filled volume spreads its chunks over this many containers

# For scale: the OpenIO C server (LevelDB) on this machine class (issue 4).
REFERENCE = {
    "push": "21,000 req/s",
    "batch": "180,000 records/s",
    "full": "250,000 records/s",
    "pages": "580 pages/s",
}


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def bench_http(workers: int, seconds: float, records: int) -> None:
    server = BenchServer.rdirdb(workers)
    try:
        conn = server.connection()
        call(conn, "POST", "/v1/rdir/create?vol=wrk")
        conn.close()

        section(f"single-record pushes: wrk, 8 connections, {seconds:.0f} s, {workers} worker(s)")
        push = wrk(server.port, lua(PUSH_LUA, vol="wrk"), seconds, server_pid=server.proc.pid)
        print(f"{push['rate']:>12,.0f} records/s  (mean latency {push['latency']}, {push['errors']} errors, "
              f"server CPU {push['cpu_us']:.0f} us/request)   reference {REFERENCE['push']}")

        section(f"batch pushes: {records // 1000} bodies of 1,000 records, one connection")
        bodies = [orjson.dumps(chunk_batch(i * 1000, 1000, CONTAINERS)) for i in range(records // 1000)]
        elapsed = batch_push(server, "full", bodies)
        print(f"{len(bodies) * 1000 / elapsed:>12,.0f} records/s  ({elapsed:.2f} s)"
              f"   reference {REFERENCE['batch']}")

        section(f"full chunk_fetch of {records:,} records, 10,000-record pages, JSON decoded")
        count, requests, elapsed = full_fetch(server, "full", 10000)
        assert count == records, (count, records)
        print(f"{count / elapsed:>12,.0f} records/s  ({requests} requests, {elapsed:.2f} s)"
              f"   reference {REFERENCE['full']}")

        section(f"1,000-record page fetches: wrk, 8 connections, {seconds:.0f} s")
        fetch = wrk(
            server.port, lua(FETCH_LUA, vol="full", max=1000, cids=CONTAINERS - 10), seconds,
            server_pid=server.proc.pid,
        )
        print(f"{fetch['rate']:>12,.0f} pages/s = {fetch['rate'] * 1000:,.0f} records/s  "
              f"(mean latency {fetch['latency']}, {fetch['errors']} errors, "
              f"server CPU {fetch['cpu_us']:.0f} us/page)   reference {REFERENCE['pages']}")
        if push["errors"] or fetch["errors"]:
            raise SystemExit("some requests failed")
    finally:
        server.stop()


# -- where the time goes ------------------------------------------------------------


class _Collector:
    """The smallest httptools callback object: keeps the URL and the body."""

    def __init__(self) -> None:
        self.url = b""
        self.body: list[bytes] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)


def _mean_us(fn: Callable[[object], object], items: list) -> float:
    """Mean microseconds of ``fn(item)`` over ``items``."""
    started = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - started) / len(items) * 1e6


def _parse(raw: bytes) -> None:
    collector = _Collector()
    parser = httptools.HttpRequestParser(collector)
    parser.feed_data(raw)
    httptools.parse_url(collector.url)


def _push_bodies(first: int, n: int, count: int) -> list[bytes]:
    """``count`` push bodies of ``n`` records (one object when n == 1), all ids distinct."""
    bodies = []
    for k in range(count):
        batch = chunk_batch(first + k * n, n, CONTAINERS)
        bodies.append(orjson.dumps(batch[0] if n == 1 else batch))
    return bodies


def bench_breakdown() -> None:
    from rdirdb.server.app import RdirApp
    from rdirdb.server.http import render
    from rdirdb.server.serve import tune_gc
    from rdirdb.rdir.store import Store

    section("where the time goes, per request, one process (microseconds)")
    tune_gc()  # as in the server's workers
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp, sync=False)
        app = RdirApp(store)
        # "v" serves the requests, "e" (filled alike) the engine alone: same bodies, same tree
        for vol in ("v", "e"):
            app.handle("POST", "/v1/rdir/create", f"vol={vol}", b"")
            for i in range(0, 20000, 1000):
                store.volume(vol).chunks.put_batch(chunk_batch(i, 1000, 20))
        chunks = store.volume("v").chunks

        for label, n, count in (("push, 1 record", 1, 3000), ("push, 1,000 records", 1000, 30)):
            bodies = _push_bodies(10**7 + n * 10**4, n, count)  # fresh ids: every push inserts
            json_us = _mean_us(orjson.loads, bodies)
            batches = [b if n > 1 else [b] for b in map(orjson.loads, bodies)]
            engine_us = _mean_us(store.volume("e").chunks.put_batch, batches)
            raws = [b"POST /v1/rdir/push?vol=v HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(b), b) for b in bodies]
            http_us = _mean_us(_parse, raws) + _mean_us(lambda r: render(r, "rdir-0", True), [app.handle("GET", "/x", "", b"")] * count)
            total_us = _mean_us(lambda b: app.handle("POST", "/v1/rdir/push", "vol=v", b), bodies)
            rows.append((label, n, http_us, json_us, engine_us, total_us))

        for label, n, count in (("fetch, 1,000 records", 1000, 200), ("fetch, 10,000 records", 10000, 20)):
            query = f"vol=v&max={n}"
            raws = [b"GET /v1/rdir/fetch?%s HTTP/1.1\r\nHost: x\r\n\r\n" % query.encode()] * count
            response = app.handle("GET", "/v1/rdir/fetch", query, b"")
            http_us = _mean_us(_parse, raws) + _mean_us(lambda r: render(r, "rdir-0", True), [response] * count)
            engine_us = _mean_us(lambda _: chunks.fetch(limit=n, entries=True), range(count))
            page = chunks.fetch(limit=n, entries=True)[0]
            json_us = _mean_us(lambda _: orjson.dumps([(c + "|" + k, v) for c, k, v in page]), range(count))
            total_us = _mean_us(lambda _: app.handle("GET", "/v1/rdir/fetch", query, b""), range(count))
            rows.append((label, n, http_us, json_us, engine_us, total_us))
        store.close()

    print(f"{'request':<24}{'HTTP':>9}{'JSON':>9}{'engine':>9}{'other':>9}{'total':>9}{'records/s/core':>16}")
    for label, n, http_us, json_us, engine_us, handle_us in rows:
        other = max(handle_us - json_us - engine_us, 0.0)
        total = http_us + handle_us
        print(f"{label:<24}{http_us:>9.1f}{json_us:>9.1f}{engine_us:>9.1f}{other:>9.1f}{total:>9.1f}"
              f"{n / total * 1e6:>16,.0f}")
    print("HTTP = httptools parse + response render; JSON = decode the body (push) or build and\n"
          "encode the page (fetch); other = routing, validation, volume lookup. The socket and\n"
          "event-loop costs come on top: compare with the wrk figures above.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run (default %(default)s)")
    parser.add_argument("--records", type=int, default=300000, help="chunks of the fetched volume")
    parser.add_argument("--skip-http", action="store_true", help="only the per-request breakdown")
    args = parser.parse_args()
    if not args.skip_http:
        bench_http(args.workers, args.seconds, args.records)
    bench_breakdown()


if __name__ == "__main__":
    main()
