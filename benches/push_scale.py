"""HTTP pushes into a volume that already holds many records (issue 13, item 4).

Fills one chunk volume with ``--records`` random records in process (keys
spread over the whole key space, as wrk's random pushes are: each push then
lands in the middle of the tree, where a commit copies the most pages), serves
it with ``rdirdb serve --no-fsync`` (the durability of OpenIO's C server), and
measures single-record pushes with wrk at 8 and 64 keep-alive connections (a
Lua script, one random record per request), then batch pushes of 1,000-record
bodies from one keep-alive connection. As a control measured in the same
runs, single pushes also go to an empty volume of the same server: how much
the volume's size costs. Each figure is the median of ``--rounds`` runs,
next to the C server's figures measured earlier on this machine class
(docs/server.md) and their ratio. Loopback only, every run bounded.

    python benches/push_scale.py [--records 300000] [--rounds 3] [--seconds 5]
    python benches/push_scale.py --records 10000000 --db /var/tmp/vol10m   # kept for reruns
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time

import orjson

from server_bench_util import PUSH_LUA, BenchServer, call, lua, wrk

# OpenIO's C rdir server (LevelDB, no fsync) on this machine class: docs/server.md, issue 13.
C_SERVER = {"single, 8 connections": 21_000.0, "batch records": 180_000.0}
FILL_BATCH = 10_000


def random_records(rnd: random.Random, first: int, n: int) -> list[tuple]:
    return [
        ("%064X" % rnd.getrandbits(256), "%032X" % i, "%064X" % rnd.getrandbits(256), 1_700_000_000 + i % 1000,
         f"obj-{i}", 1)
        for i in range(first, first + n)
    ]


def fill(db: str, records: int) -> None:
    from rdirdb.rdir.store import Store

    marker = os.path.join(db, f".filled-{records}")
    if os.path.exists(marker):
        print(f"volume of {records:,} records already in {db}", flush=True)
        return
    rnd = random.Random(13)
    started = time.perf_counter()
    with Store(db, sync=False) as store:
        chunks = store.volume("vol", create=True).chunks
        for first in range(0, records, FILL_BATCH):
            chunks.put_batch(random_records(rnd, first, min(FILL_BATCH, records - first)))
    open(marker, "w").close()
    print(f"filled {records:,} random records in {time.perf_counter() - started:.0f} s", flush=True)


def batch_bodies(count: int) -> list[bytes]:
    rnd = random.Random(31)
    return [
        orjson.dumps([
            {"container_id": c, "content_id": o, "chunk_id": k, "mtime": m, "path": p, "version": v}
            for c, o, k, m, p, v in random_records(rnd, 10**9 + b * 1000, 1000)
        ])
        for b in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=300_000, help="records in the volume before the runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run (default %(default)s)")
    parser.add_argument("--batches", type=int, default=50, help="1,000-record bodies per batch run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--db", help="store directory, kept (default: a temporary one, removed)")
    args = parser.parse_args()
    db = args.db or tempfile.mkdtemp(prefix="rdirdb-push-scale-")
    os.makedirs(db, exist_ok=True)
    rates: dict[str, list[float]] = {
        "single, 8 connections": [], "single, 64 connections": [], "batch records": [],
        "empty volume, 8": [], "empty volume, 64": [],
    }
    try:
        fill(db, args.records)
        bodies = batch_bodies(args.batches)
        for r in range(args.rounds):
            server = BenchServer.rdirdb(args.workers, db=db)
            try:
                conn = server.connection()
                call(conn, "POST", f"/v1/rdir/create?vol=empty-{r}")
                conn.close()
                for n in (8, 64):
                    for vol, load in (("vol", f"single, {n} connections"), (f"empty-{r}", f"empty volume, {n}")):
                        result = wrk(server.port, lua(PUSH_LUA, vol=vol), args.seconds, connections=n,
                                     server_pid=server.proc.pid)
                        if result["errors"]:
                            raise SystemExit(f"{result['errors']} pushes failed")
                        rates[load].append(result["rate"])
                        print(f"round {r + 1}: single pushes to {vol}, {n:>2} connections: {result['rate']:>9,.0f}/s "
                              f"(mean latency {result['latency']}, server CPU {result['cpu_us']:.0f} us/push)",
                              flush=True)
                conn = server.connection()
                started = time.perf_counter()
                for body in bodies:
                    call(conn, "POST", "/v1/rdir/push?vol=vol", body)
                elapsed = time.perf_counter() - started
                conn.close()
                rates["batch records"].append(len(bodies) * 1000 / elapsed)
                print(f"round {r + 1}: batch pushes of 1,000 records, one connection: "
                      f"{rates['batch records'][-1]:>9,.0f} records/s", flush=True)
            finally:
                server.stop()
        print(f"\nvolume of {args.records:,} records, {args.workers} workers, --no-fsync; medians of {args.rounds}")
        print(f"{'load':<26}{'rdirdb':>12}{'C server':>12}{'ratio':>8}")
        for load, values in rates.items():
            if load.startswith("empty"):
                continue
            median = statistics.median(values)
            ref = C_SERVER.get(load)
            print(f"{load:<26}{median:>12,.0f}" + (f"{ref:>12,.0f}{median / ref:>8.2f}" if ref else f"{'-':>12}{'-':>8}"))
        for n in (8, 64):
            full, empty = (statistics.median(rates[k]) for k in (f"single, {n} connections", f"empty volume, {n}"))
            print(f"single pushes, {n} connections: {args.records:,}-record volume / empty volume = {full / empty:.2f}")
        print("The C server's figures were measured earlier on this machine class, on a 300,000-record volume\n"
              "(docs/server.md), not in this run.")
    finally:
        if not args.db:
            shutil.rmtree(db, ignore_errors=True)


if __name__ == "__main__":
    main()
