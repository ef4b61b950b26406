"""Which batch size the bulk tools should feed the engine, measured on a growing volume.

    python benches/batch_size.py [--size 2000000] [--sizes 1000,10000,50000,100000]
                                 [--order sorted,random] [--reps 3] [--writemap|--no-writemap]

``rdirdb import``, ``import-leveldb`` and ``chunk_copy_vol`` read their
source in key order, so their batches append at the end of the volume
(MDB_APPEND); the demo and indexers push records in random order. For each
order and batch size this loads ``--size`` records (dicts, as the tools pass
them) into a fresh volume with ``db_sync`` off and prints records/s over the
whole load and over its last tenth (the rate at scale). Batch sizes take
turns within each repetition; figures are medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from growth import batches as random_batches  # noqa: E402

from rdirdb.rdir.store import DEFAULT_WRITEMAP, Store  # noqa: E402


def records(size: int, order: str) -> list[dict]:
    """``size`` records of the growth bench, in random or in key order."""
    out = [r for batch in random_batches(size, 100_000) for r in batch]
    if order == "sorted":
        out.sort(key=lambda r: (r["container_id"], r["chunk_id"]))
    return out


def load(data: list[dict], batch: int, workdir: str, writemap: bool) -> tuple[float, float]:
    """records/s of the whole load and of the batches of its last tenth."""
    path = tempfile.mkdtemp(dir=workdir)
    try:
        with Store(path, sync=False, writemap=writemap) as store:
            chunks = store.volume("vol", create=True).chunks
            tenth = len(data) - len(data) // 10
            total = last = 0.0
            last_records = 0
            for start in range(0, len(data), batch):
                t0 = time.perf_counter()
                written = chunks.put_batch(data[start:start + batch])
                spent = time.perf_counter() - t0
                total += spent
                if start >= tenth:
                    last += spent
                    last_records += written
            assert chunks.count() == len(data)
        return len(data) / total, last_records / last
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2_000_000, help="records per load (default 2,000,000)")
    parser.add_argument("--sizes", default="1000,10000,50000,100000", help="batch sizes to compare")
    parser.add_argument("--order", default="sorted,random", help="record orders: sorted, random")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--writemap", action=argparse.BooleanOptionalAction, default=None,
                        help="open the volume with MDB_WRITEMAP (default: the Store's default)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    writemap = DEFAULT_WRITEMAP if args.writemap is None else args.writemap
    print(f"{args.size:,} records per load, db_sync off, writemap {writemap}, medians of {args.reps}")
    workdir = tempfile.mkdtemp(prefix="rdirdb-batch-")
    try:
        for order in args.order.split(","):
            data = records(args.size, order)
            rates: dict[int, list[tuple[float, float]]] = {b: [] for b in sizes}
            for rep in range(args.reps):
                for b in sizes[rep % len(sizes):] + sizes[:rep % len(sizes)]:
                    rates[b].append(load(data, b, workdir, writemap))
            print(f"\n== {order} order: records/s")
            print(f"{'batch':>10} {'whole load':>12} {'last tenth':>12}")
            for b in sizes:
                whole = statistics.median(r for r, _ in rates[b])
                last = statistics.median(r for _, r in rates[b])
                print(f"{b:>10,} {whole:>12,.0f} {last:>12,.0f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
