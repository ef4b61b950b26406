"""Choose the server's HTTP stack by measurement.

Every candidate serves the same ``RdirApp`` (routing, JSON, engine) from ONE
process on loopback, so the differences are the stacks' own costs:

* ``httptools-uvloop``: our asyncio protocol over httptools' parser, on uvloop;
* ``httptools-asyncio``: the same protocol on the standard asyncio loop;
* ``aiohttp``: an aiohttp web application (on uvloop) with one catch-all route
  (``pip install aiohttp``; only this benchmark needs it).

Loads (wrk, 1 thread, 8 connections, bounded in seconds): single-record pushes
with random ids, and 1,000-record page fetches at random places; plus
sequential batch pushes of 1,000-record bodies over one connection.

    python benches/http_stacks.py [--seconds 5] [--stacks a,b,c]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import signal
import statistics
import sys

import orjson

from server_bench_util import (
    FETCH_LUA, PUSH_LUA, BenchServer, batch_push, call, chunk_batch, cpu_seconds, lua, wrk,
)

STACKS = ("httptools-uvloop", "httptools-asyncio", "aiohttp")
FETCH_CONTAINERS = 1000  # chunk_batch spreads the fetch volume over this many


def serve(stack: str, db: str, port: int) -> None:
    """Run one candidate in this process until SIGTERM."""
    import uvloop

    from rdirdb.server.app import RdirApp
    from rdirdb.server.http import HttpProtocol, ServerState
    from rdirdb.server.serve import tune_gc
    from rdirdb.rdir.store import Store

    tune_gc()  # as in `rdirdb serve`, for every stack
    app = RdirApp(Store(db, sync=False), service_id="bench")  # as `rdirdb serve`
    loop = asyncio.new_event_loop() if stack == "httptools-asyncio" else uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    if stack.startswith("httptools"):
        state = ServerState(app.handle)
        loop.run_until_complete(loop.create_server(lambda: HttpProtocol(state), "127.0.0.1", port))
    elif stack == "aiohttp":
        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            path, _, query = request.raw_path.partition("?")
            reply = app.handle(request.method, path, query, body)
            return web.Response(
                status=reply.status,
                body=reply.body or None,
                headers={**dict(reply.headers), **({"Content-Type": reply.content_type} if reply.content_type else {})},
            )

        web_app = web.Application(client_max_size=32 << 20)
        web_app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(web_app, access_log=None)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    else:
        raise SystemExit(f"unknown stack {stack!r}")
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.run_forever()


def measure(stack: str, seconds: float, batches: int) -> dict[str, float]:
    server = BenchServer([sys.executable, __file__, "serve", stack, "{db}", "{port}"])
    try:
        conn = server.connection()
        call(conn, "POST", "/v1/rdir/create?vol=push")
        conn.close()
        bodies = [orjson.dumps(chunk_batch(i * 1000, 1000, FETCH_CONTAINERS)) for i in range(batches)]
        cpu = cpu_seconds(server.proc.pid)
        batch_s = batch_push(server, "fetch", bodies)
        batch_cpu = cpu_seconds(server.proc.pid) - cpu
        push = wrk(server.port, lua(PUSH_LUA, vol="push"), seconds, server_pid=server.proc.pid)
        fetch = wrk(
            server.port, lua(FETCH_LUA, vol="fetch", max=1000, cids=FETCH_CONTAINERS - 10), seconds,
            server_pid=server.proc.pid,
        )
    finally:
        server.stop()
    if push["errors"] or fetch["errors"]:
        raise RuntimeError(f"{stack}: non-2xx answers: {push['errors']} push, {fetch['errors']} fetch")
    return {
        "push_rps": push["rate"],
        "push_cpu_us": push["cpu_us"],
        "batch_records_s": batches * 1000 / batch_s,
        "batch_cpu_us": batch_cpu / batches * 1e6,
        "fetch_pages_s": fetch["rate"],
        "fetch_cpu_us": fetch["cpu_us"],
    }


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run (default %(default)s)")
    parser.add_argument("--batches", type=int, default=100, help="1,000-record bodies pushed (default %(default)s)")
    parser.add_argument("--stacks", default=",".join(STACKS))
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; medians are shown")
    args = parser.parse_args()
    stacks = [s for s in args.stacks.split(",") if s != "aiohttp" or importlib.util.find_spec("aiohttp")]
    if len(stacks) < len(args.stacks.split(",")):
        print("aiohttp skipped: pip install aiohttp")
    runs: dict[str, list[dict]] = {stack: [] for stack in stacks}
    for _ in range(args.rounds):  # interleaved, so a noisy moment hits every stack
        for stack in stacks:
            runs[stack].append(measure(stack, args.seconds, args.batches))
    print(f"medians of {args.rounds} round(s); cpu = server CPU microseconds per request")
    print(f"{'stack':<20}{'push req/s':>11}{'cpu':>7}{'batch rec/s':>13}{'cpu':>8}{'pages/s':>9}{'cpu':>7}")
    for stack, results in runs.items():
        m = {k: statistics.median(r[k] for r in results) for k in results[0]}
        print(
            f"{stack:<20}{m['push_rps']:>11,.0f}{m['push_cpu_us']:>7.0f}{m['batch_records_s']:>13,.0f}"
            f"{m['batch_cpu_us']:>8.0f}{m['fetch_pages_s']:>9,.0f}{m['fetch_cpu_us']:>7.0f}"
        )


if __name__ == "__main__":
    main()
