"""Which batch size the bulk tools should feed the engine, measured on a growing volume.

    python benches/batch_size.py [--size 2000000] [--sizes 1000,10000,50000,100000]
                                 [--order sorted,random,copy] [--reps 3] [--writemap|--no-writemap]

``rdirdb import``, ``import-leveldb`` and ``chunk_copy_vol`` read their
source in key order, so their batches append at the end of the volume
(MDB_APPEND); the demo and indexers push records in random order. For each
order and batch size this loads ``--size`` records (dicts, as the tools pass
them) into a fresh volume (``db_sync`` off unless ``--sync``) and prints records/s over the
whole load and over its last tenth (the rate at scale), and the CPU time per
record (user + system, steadier than wall time on a shared machine). Batch
sizes take turns within each repetition; figures are medians.

``copy`` times ``RdirClient.chunk_copy_vol`` of a ``--size`` volume between
two local ``rdirdb serve`` processes (one worker each; the pages it reads are
its batches, at most 10,000 records, the servers' page limit); its CPU column
is the destination server's.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from growth import batches as random_batches  # noqa: E402

from rdirdb import RdirClient  # noqa: E402
from rdirdb.rdir.store import Store  # noqa: E402
from server_bench_util import BenchServer, cpu_seconds  # noqa: E402


def records(size: int, order: str) -> list[dict]:
    """``size`` records of the growth bench, in random or in key order."""
    out = [r for batch in random_batches(size, 100_000) for r in batch]
    if order == "sorted":
        out.sort(key=lambda r: (r["container_id"], r["chunk_id"]))
    return out


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load(data: list[dict], batch: int, workdir: str, writemap: bool | None, sync: bool) -> tuple[float, float, float]:
    """records/s of the whole load and of the batches of its last tenth; CPU
    microseconds per record of the whole load."""
    path = tempfile.mkdtemp(dir=workdir)
    try:
        with Store(path, sync=sync, writemap=writemap) as store:
            chunks = store.volume("vol", create=True).chunks
            tenth = len(data) - len(data) // 10
            total = last = 0.0
            last_records = 0
            cpu0 = cpu()
            for start in range(0, len(data), batch):
                t0 = time.perf_counter()
                written = chunks.put_batch(data[start:start + batch])
                spent = time.perf_counter() - t0
                total += spent
                if start >= tenth:
                    last += spent
                    last_records += written
            cpu_us = (cpu() - cpu0) * 1e6 / len(data)
            assert chunks.count() == len(data)
        return len(data) / total, last_records / last, cpu_us
    finally:
        shutil.rmtree(path, ignore_errors=True)


def copy(data: list[dict], batch: int, source: BenchServer, workdir: str) -> tuple[float, float, float]:
    """records/s of chunk_copy_vol into a fresh server (no last tenth: nan);
    the destination's CPU microseconds per record."""
    dest = BenchServer.rdirdb(1, db=tempfile.mkdtemp(dir=workdir))
    try:
        with RdirClient({"rdir_hosts": [f"127.0.0.1:{source.port}"]}) as client:
            cpu0, t0 = cpu_seconds(dest.proc.pid), time.perf_counter()
            copied = client.chunk_copy_vol("vol", dests=[f"127.0.0.1:{dest.port}"], batch_size=batch)
            seconds, cpu_us = time.perf_counter() - t0, (cpu_seconds(dest.proc.pid) - cpu0) * 1e6 / len(data)
        assert copied == len(data)
        return len(data) / seconds, float("nan"), cpu_us
    finally:
        dest.stop()
        shutil.rmtree(dest.db, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2_000_000, help="records per load (default 2,000,000)")
    parser.add_argument("--sizes", default="1000,10000,50000,100000", help="batch sizes to compare")
    parser.add_argument("--order", default="sorted,random,copy", help="record orders: sorted, random, copy")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sync", action="store_true", help="durable commits (default: db_sync off)")
    parser.add_argument("--writemap", action=argparse.BooleanOptionalAction, default=None,
                        help="open the volume with MDB_WRITEMAP (default: the Store's default)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    writemap = args.writemap
    print(f"{args.size:,} records per load, db_sync {'on' if args.sync else 'off'}, writemap "
          f"{'default' if writemap is None else writemap}, medians of {args.reps}")
    workdir = tempfile.mkdtemp(prefix="rdirdb-batch-")
    try:
        for order in args.order.split(","):
            data = records(args.size, "random" if order == "random" else "sorted")
            rates: dict[int, list[tuple[float, float, float]]] = {b: [] for b in sizes}
            source = BenchServer.rdirdb(1) if order == "copy" else None
            try:
                if source:
                    with RdirClient({"rdir_hosts": [f"127.0.0.1:{source.port}"]}) as client:
                        for start in range(0, len(data), 10_000):
                            client.chunk_push_batch("vol", data[start:start + 10_000], create=True)
                for rep in range(args.reps):
                    for b in sizes[rep % len(sizes):] + sizes[:rep % len(sizes)]:
                        rates[b].append(copy(data, b, source, workdir) if source
                                        else load(data, b, workdir, writemap, args.sync))
            finally:
                if source:
                    source.stop()
            print(f"\n== {order} order: records/s")
            print(f"{'batch':>10} {'whole load':>12} {'last tenth':>12} {'CPU us/record':>14}")
            for b in sizes:
                whole, last, cpu_us = (statistics.median(r[i] for r in rates[b]) for i in range(3))
                print(f"{b:>10,} {whole:>12,.0f} {last:>12,.0f} {cpu_us:>14.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
