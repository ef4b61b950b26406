"""HTTP pushes into a volume that already holds many records (issue 13, item 4).

Fills one chunk volume with ``--records`` random records in process (keys
spread over the whole key space, as wrk's random pushes are: each push then
lands in the middle of the tree, where a commit copies the most pages), serves
it with ``rdirdb serve --no-fsync`` (the durability of OpenIO's C server), and
measures single-record pushes with wrk at 8 and 64 keep-alive connections (a
Lua script, one random record per request), then batch pushes of 1,000-record
bodies from one keep-alive connection. As a control measured in the same
runs, single pushes also go to an empty volume of the same server: how much
the volume's size costs. Each round starts the server anew and gives it
``--warmup`` seconds of single pushes, not measured, before the measured
runs. Each figure is the median of ``--rounds`` runs.
Loopback only, every run bounded.

With ``--peer-binary``, OpenIO's C server (``oio-rdir-server``, built apart:
docs/server.md) runs the same loads in the same rounds, taking turns with
rdirdb, on a volume of its own filled with the same records over HTTP (batch
pushes of 10,000 records), and the ratios are of this run. Without it, the C
server's figures are the ones measured earlier on this machine class
(docs/server.md), and the script says so. The fills run under ``nice``
(``--fill-nice``), the measured runs do not.

    python benches/push_scale.py [--records 300000] [--rounds 3] [--seconds 5]
                                 [--peer-binary PATH/oio-rdir-server]
    python benches/push_scale.py --records 10000000 --db /var/tmp/vol10m   # kept for reruns
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import statistics
import tempfile
import time

import orjson

from server_bench_util import PUSH_LUA, BenchServer, call, lua, wrk

# OpenIO's C rdir server (LevelDB, no fsync) measured earlier on this machine class, on a
# 300,000-record volume (docs/server.md, issue 13): used when it is not run (--peer-binary).
C_SERVER = {"single, 8 connections": 21_000.0, "batch records": 180_000.0}
FILL_BATCH = 10_000
SINGLE = (8, 64)  # wrk connections
LOADS = (*(f"single, {n} connections" for n in SINGLE), "batch records", *(f"empty volume, {n}" for n in SINGLE))
PEER_DIR = "oio-rdir"  # the C server's db_path, inside the store directory


def random_records(rnd: random.Random, first: int, n: int) -> list[tuple]:
    return [
        ("%064X" % rnd.getrandbits(256), "%032X" % i, "%064X" % rnd.getrandbits(256), 1_700_000_000 + i % 1000,
         f"obj-{i}", 1)
        for i in range(first, first + n)
    ]


def fill_batches(records: int):
    """The volume's records, FILL_BATCH at a time (the same for both servers)."""
    rnd = random.Random(13)
    for first in range(0, records, FILL_BATCH):
        yield random_records(rnd, first, min(FILL_BATCH, records - first))


def as_body(batch: list[tuple]) -> bytes:
    return orjson.dumps([
        {"container_id": c, "content_id": o, "chunk_id": k, "mtime": m, "path": p, "version": v}
        for c, o, k, m, p, v in batch
    ])


def _fill_rdirdb(db: str, records: int, niceness: int) -> None:
    from rdirdb.rdir.store import Store

    os.nice(niceness)
    with Store(db, sync=False) as store:
        chunks = store.volume("vol", create=True).chunks
        for batch in fill_batches(records):
            chunks.put_batch(batch)


def fill(db: str, records: int, niceness: int, peer: str | None) -> None:
    """rdirdb's volume in process (a child process under ``nice``), then the C server's over HTTP."""
    marker = os.path.join(db, f".filled-{records}")
    if os.path.exists(marker):
        print(f"rdirdb's volume of {records:,} records already in {db}", flush=True)
    else:
        started = time.perf_counter()
        child = multiprocessing.get_context("fork").Process(target=_fill_rdirdb, args=(db, records, niceness))
        child.start()
        child.join()
        if child.exitcode:
            raise SystemExit(f"filling rdirdb's volume failed (exit {child.exitcode})")
        open(marker, "w").close()
        print(f"rdirdb: filled {records:,} random records in process in {time.perf_counter() - started:.0f} s",
              flush=True)
    if peer is None:
        return
    marker = os.path.join(db, f".filled-{PEER_DIR}-{records}")
    if os.path.exists(marker):
        print(f"the C server's volume of {records:,} records already in {db}", flush=True)
        return
    os.makedirs(os.path.join(db, PEER_DIR), exist_ok=True)
    server = BenchServer.oio_rdir(peer, os.path.join(db, PEER_DIR), nice=niceness)
    try:
        started = time.perf_counter()
        conn = server.connection()
        call(conn, "POST", "/v1/rdir/create?vol=vol")
        for batch in fill_batches(records):
            call(conn, "POST", "/v1/rdir/push?vol=vol", as_body(batch))
        conn.close()
    finally:
        server.stop()
    open(marker, "w").close()
    print(f"C server: filled {records:,} random records over HTTP (batches of {FILL_BATCH:,}) "
          f"in {time.perf_counter() - started:.0f} s", flush=True)


def batch_bodies(count: int) -> list[bytes]:
    rnd = random.Random(31)
    return [as_body(random_records(rnd, 10**9 + b * 1000, 1000)) for b in range(count)]


def measure(server: BenchServer, name: str, r: int, seconds: float, warmup: float, bodies: list[bytes],
            rates: dict[str, list[float]]) -> None:
    """One round of every load against ``server``, appended to ``rates``, after ``warmup``
    seconds of single pushes."""
    conn = server.connection()
    call(conn, "POST", f"/v1/rdir/create?vol=empty-{r}")
    conn.close()
    if warmup:  # not measured: every worker opens the volume (the server just started)
        wrk(server.port, lua(PUSH_LUA, vol="vol"), warmup, connections=SINGLE[0])
    for n in SINGLE:
        for vol, load in (("vol", f"single, {n} connections"), (f"empty-{r}", f"empty volume, {n}")):
            result = wrk(server.port, lua(PUSH_LUA, vol=vol), seconds, connections=n, server_pid=server.proc.pid)
            if result["errors"]:
                raise SystemExit(f"{name}: {result['errors']} pushes failed")
            rates[load].append(result["rate"])
            print(f"round {r + 1}, {name}: single pushes to {vol}, {n:>2} connections: {result['rate']:>9,.0f}/s "
                  f"(mean latency {result['latency']}, server CPU {result['cpu_us']:.0f} us/push)", flush=True)
    conn = server.connection()
    started = time.perf_counter()
    for body in bodies:
        call(conn, "POST", "/v1/rdir/push?vol=vol", body)
    elapsed = time.perf_counter() - started
    conn.close()
    rates["batch records"].append(len(bodies) * 1000 / elapsed)
    print(f"round {r + 1}, {name}: batch pushes of 1,000 records, one connection: "
          f"{rates['batch records'][-1]:>9,.0f} records/s", flush=True)


def report(args: argparse.Namespace, rates: dict[str, dict[str, list[float]]]) -> None:
    medians = {name: {load: statistics.median(v) for load, v in r.items()} for name, r in rates.items()}
    ours = medians["rdirdb"]
    ref = medians.get("C server", C_SERVER)
    print(f"\nvolume of {args.records:,} records, rdirdb with {args.workers} workers and --no-fsync; medians of "
          f"{args.rounds}; load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{'load':<26}{'rdirdb':>12}{'C server':>12}{'ratio':>8}")
    for load in LOADS:
        theirs = ref.get(load)
        print(f"{load:<26}{ours[load]:>12,.0f}" + (f"{theirs:>12,.0f}{ours[load] / theirs:>8.2f}" if theirs
                                                   else f"{'-':>12}{'-':>8}"))
    for name, m in medians.items():
        for n in SINGLE:
            print(f"{name}, single pushes, {n} connections: {args.records:,}-record volume / empty volume = "
                  f"{m[f'single, {n} connections'] / m[f'empty volume, {n}']:.2f}")
    if "C server" in medians:
        print("The C server ran in this run, taking turns with rdirdb (same records, same loads).")
    else:
        print("The C server's figures were measured earlier on this machine class, on a 300,000-record volume\n"
              "(docs/server.md), not in this run: give --peer-binary to run it here.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=300_000, help="records in the volume before the runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run (default %(default)s)")
    parser.add_argument("--batches", type=int, default=50, help="1,000-record bodies per batch run")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of single pushes, not measured, after each start (default %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--db", help="store directory, kept (default: a temporary one, removed)")
    parser.add_argument("--peer-binary", help="OpenIO's oio-rdir-server, run in the same rounds")
    parser.add_argument("--fill-nice", type=int, default=10, help="niceness of the fills (default %(default)s)")
    args = parser.parse_args()
    if args.peer_binary and not os.access(args.peer_binary, os.X_OK):
        raise SystemExit(f"--peer-binary {args.peer_binary}: not an executable file")
    db = args.db or tempfile.mkdtemp(prefix="rdirdb-push-scale-")
    os.makedirs(db, exist_ok=True)
    starts = {"rdirdb": lambda: BenchServer.rdirdb(args.workers, db=db)}
    if args.peer_binary:
        starts["C server"] = lambda: BenchServer.oio_rdir(args.peer_binary, os.path.join(db, PEER_DIR))
    rates = {name: {load: [] for load in LOADS} for name in starts}
    try:
        fill(db, args.records, args.fill_nice, args.peer_binary)
        bodies = batch_bodies(args.batches)
        names = list(starts)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:  # taking turns
                server = starts[name]()
                try:
                    measure(server, name, r, args.seconds, args.warmup, bodies, rates[name])
                finally:
                    server.stop()
        report(args, rates)
    finally:
        if not args.db:
            shutil.rmtree(db, ignore_errors=True)


if __name__ == "__main__":
    main()
