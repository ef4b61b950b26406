"""record_new_obj_ids on SharedBase's LMDB backend: one tree, or two side by side.

    python3 benches/sharedbase_record.py [--ids 100000] [--batch 1000] [--runs 5]
    python3 benches/sharedbase_record.py --against /path/to/other/tree/src

Each run opens a fresh LMDB SharedBase (``sync=False``: the commit's fsync is the
disk's, not the write path's) and records ``--ids`` new ids in batches of
``--batch``, one write transaction per batch, then the same ids again (every id
already present: each keeps its shard, nothing is written). Timed: the
``record_new_obj_ids`` call inside the transaction, and the whole transaction
with its commit. A run reports the median batch of each.

``--parts`` splits the call of this tree instead: the facade's checks and sort
of the ids, the native loop (``_shardmap.record_new``), and the returned dict.

With ``--against``, the runs of this tree and of the other one (its ``src``
directory, built in place) alternate, each in a process of its own, so that both
see the same swings of a shared machine; the report gives the medians over the
runs of each tree and the median of the paired ratios (other / this).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PHASES = ("new", "present")
MEASURES = ("call", "transaction")


def ids_for(label: str, n: int) -> list[bytes]:
    return [hashlib.sha256(f"{label}-{i}".encode()).digest() for i in range(n)]


def one_run(n_ids: int, batch: int) -> dict[str, float]:
    """Median milliseconds per batch, ``{"<phase> <measure>": ms}``, on a fresh base."""
    from rdirdb import SharedBase

    ids = ids_for("record", n_ids)
    batches = [ids[i:i + batch] for i in range(0, n_ids, batch)]
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="rdirdb-sb-bench-") as tmp:
        with SharedBase(f"lmdb://{tmp}", active_pool_name="bench", sync=False) as base:
            base.locked_shard  # lock (create) the shard outside the measurement
            for phase in PHASES:
                calls, txns = [], []
                for ids_batch in batches:
                    start = time.perf_counter()
                    with base.transaction() as db:
                        t0 = time.perf_counter()
                        owners = base.record_new_obj_ids(db, ids_batch)
                        calls.append(time.perf_counter() - t0)
                    txns.append(time.perf_counter() - start)
                    assert len(owners) == len(ids_batch)
                result[f"{phase} call"] = statistics.median(calls) * 1e3
                result[f"{phase} transaction"] = statistics.median(txns) * 1e3
            assert base.count_objects() == n_ids
    return result


def parts(n_ids: int, batch: int) -> dict[str, float]:
    """Median milliseconds per batch of each part of the call, ``{"<phase> <part>": ms}``."""
    from rdirdb import SharedBase, _shardmap
    from rdirdb.sharedbase.lmdb import _WRITABLE, _fence
    from rdirdb.sharedbase.states import check_obj_ids

    ids = ids_for("record", n_ids)
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="rdirdb-sb-bench-") as tmp:
        with SharedBase(f"lmdb://{tmp}", active_pool_name="bench", sync=False) as base:
            shard_id = base.locked_shard_id
            fences = tuple(_fence(state, base.locker) for state in _WRITABLE)
            for phase in PHASES:
                times: dict[str, list[float]] = {"facade": [], "native": [], "dict": []}
                for i in range(0, n_ids, batch):
                    with base.transaction() as db:
                        t0 = time.perf_counter()
                        checked = sorted(set(check_obj_ids(ids[i:i + batch])))
                        t1 = time.perf_counter()
                        owners = _shardmap.record_new(db, shard_id, fences, b"".join(checked))
                        t2 = time.perf_counter()
                        assert owners is not None
                        if (owners == shard_id).all():
                            dict.fromkeys(checked, shard_id)
                        else:
                            dict(zip(checked, owners.tolist()))
                        t3 = time.perf_counter()
                    for part, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                        times[part].append(seconds)
                for part, values in times.items():
                    result[f"{phase} {part}"] = statistics.median(values) * 1e3
    return result


def _run_in(src: Path, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, __file__, "--child", "--ids", str(args.ids), "--batch", str(args.batch)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ids", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--against", type=Path, metavar="SRC", help="the src/ of another built tree")
    parser.add_argument("--parts", action="store_true", help="split the call of this tree into its parts")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(args.ids, args.batch)))
        return
    if args.parts:
        runs = [parts(args.ids, args.batch) for _ in range(args.runs)]
        print(f"record_new_obj_ids on LMDB, its parts: {args.ids:,} ids in batches of {args.batch:,}, "
              f"medians of {args.runs} runs (ms per batch)")
        for key in runs[0]:
            print(f"{key:24}{statistics.median(r[key] for r in runs):10.3f}")
        return
    trees = {"this": SRC} | ({"other": args.against.resolve()} if args.against else {})
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(args.runs):
        for name, src in trees.items():
            runs[name].append(_run_in(src, args))
    print(f"record_new_obj_ids on LMDB: {args.ids:,} ids in batches of {args.batch:,}, "
          f"medians of {args.runs} runs (ms per batch)")
    for name, src in trees.items():
        print(f"  {name}: {src}")
    header = f"{'':24}" + "".join(f"{name:>10}" for name in trees) + ("    other/this" if args.against else "")
    print(header)
    for key in (f"{p} {m}" for p in PHASES for m in MEASURES):
        medians = [statistics.median(r[key] for r in runs[name]) for name in trees]
        line = f"{key:24}" + "".join(f"{m:10.3f}" for m in medians)
        if args.against:
            paired = statistics.median(o[key] / t[key] for o, t in zip(runs["other"], runs["this"]))
            line += f"    {paired:8.2f}x"
        print(line)


if __name__ == "__main__":
    main()
