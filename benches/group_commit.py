"""Durable single pushes with group commit: the server with and without fsync.

Starts ``rdirdb serve`` twice per round (``--no-fsync``, then ``--fsync``,
the default), each on a fresh store, and loads it with wrk: 8, then 64
keep-alive connections, each posting one random record per request (Lua).
Rounds alternate the two modes, so that the machine's load weighs on both
alike; it prints each run, the medians, and the ratio fsync / no-fsync of the
medians at each connection count (the goal of issue 11: >= 0.5 at 64). A
synced commit is on disk after two flushes (LMDB's data pages, then its meta
page, flushed by the next commit under load), so the ratio follows the disk's
flush latency: each round also times ``fdatasync`` of a 4 KiB write next to
the store, over blocks the file has (a durable volume writes zeros ahead of
its pages for that) and past its end.
Needs wrk (``make bench-deps``). Loopback only; every run is bounded in time.

    python benches/group_commit.py [--rounds 3] [--seconds 5] [--workers N] [--volumes N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from server_bench_util import PUSH_LUA, BenchServer, call, lua, wrk

MODES = {"no-fsync": ("--no-fsync",), "fsync": ("--fsync",)}  # fsync: the default


def push_script(volumes: int) -> str:
    """wrk's script: each request pushes one record to volume wrk1 to wrk<volumes>, at random."""
    script = lua(PUSH_LUA, vol="wrk1")
    if volumes > 1:
        script = script.replace('"/v1/rdir/push?vol=wrk1"', f'"/v1/rdir/push?vol=wrk" .. math.random(1, {volumes})')
        assert "math.random(1, " in script
    return script


def run(mode: str, workers: int, connections: list[int], seconds: float, volumes: int = 1) -> dict[int, dict]:
    server = BenchServer.rdirdb(workers, args=MODES[mode])
    try:
        conn = server.connection()
        for i in range(1, volumes + 1):
            call(conn, "POST", f"/v1/rdir/create?vol=wrk{i}")
        conn.close()
        results = {}
        for n in connections:
            result = wrk(server.port, push_script(volumes), seconds, connections=n, server_pid=server.proc.pid)
            if result["errors"]:
                raise SystemExit(f"{mode}, {n} connections: {result['errors']} requests failed")
            print(f"  {mode:<9} {n:>3} connections: {result['rate']:>9,.0f} pushes/s  "
                  f"(mean latency {result['latency']}, server CPU {result['cpu_us']:.0f} us/push)", flush=True)
            results[n] = result
        return results
    finally:
        server.stop()


def flush_latency(count: int = 200, grow: bool = False) -> tuple[float, float]:
    """Median milliseconds, and mean CPU microseconds, of a 4 KiB write and its
    ``fdatasync`` in the temp dir: over blocks the file has (what a durable
    volume's zeros ahead give its commits), or past its end (``grow``)."""
    with tempfile.NamedTemporaryFile(prefix="rdirdb-bench-") as f:
        if not grow:
            f.write(b"\0" * (count * 4096))
            f.flush()
            os.fsync(f.fileno())
        times = []
        cpu = time.process_time()
        for i in range(count):
            started = time.perf_counter()
            os.pwrite(f.fileno(), b"x" * 4096, i * 4096)
            os.fdatasync(f.fileno())
            times.append(time.perf_counter() - started)
        cpu = time.process_time() - cpu
    return statistics.median(times) * 1000, cpu / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run (default %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--connections", default="8,64", help="comma-separated (default %(default)s)")
    parser.add_argument("--volumes", type=int, default=1,
                        help="each push goes to one of this many volumes, at random (default %(default)s)")
    args = parser.parse_args()
    connections = [int(n) for n in args.connections.split(",")]
    rates: dict[tuple[str, int], list[float]] = {(m, n): [] for m in MODES for n in connections}
    flushes, growing = [], []
    for r in range(args.rounds):
        (ms, cpu), (grow_ms, grow_cpu) = flush_latency(), flush_latency(grow=True)
        flushes.append(ms)
        growing.append(grow_ms)
        print(f"round {r + 1} of {args.rounds} ({args.workers} workers, {args.volumes} volumes, "
              f"{args.seconds:.0f} s per run; "
              f"fdatasync of 4 KiB: {ms:.2f} ms, {cpu:.0f} us CPU; growing the file: {grow_ms:.2f} ms, "
              f"{grow_cpu:.0f} us CPU)")
        for mode in MODES:
            for n, result in run(mode, args.workers, connections, args.seconds, args.volumes).items():
                rates[mode, n].append(result["rate"])
    print(f"\nmedians of {args.rounds} rounds, single-record pushes/s (fdatasync of 4 KiB: "
          f"{statistics.median(flushes):.2f} ms, growing the file: {statistics.median(growing):.2f} ms)")
    print(f"{'connections':>11}{'no-fsync':>12}{'fsync':>12}{'fsync / no-fsync':>18}")
    for n in connections:
        plain, synced = statistics.median(rates["no-fsync", n]), statistics.median(rates["fsync", n])
        print(f"{n:>11}{plain:>12,.0f}{synced:>12,.0f}{synced / plain:>18.2f}")


if __name__ == "__main__":
    main()
