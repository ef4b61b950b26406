"""Anti-entropy repair: what it moves and how long it takes (docs/reliability.md).

Two replicas of N chunk records (an rdirdb server each, on loopback) that differ in D
records: D/2 pushed to the first only, D/2 deleted from the second only. The stores are
loaded in process (embedded, sorted batches), then served; ``repair_hosts`` makes them
converge, and a second repair of the identical replicas must move nothing.

    PYTHONPATH=src python benches/repair.py                      # 1,000,000 records, 1,000 differ
    PYTHONPATH=src python benches/repair.py --records 100000 --reps 3

Prints, per run: seconds, ranges compared, entries listed (replicas -> repair), sent
(repair -> replicas), moved (both), and the same for the repair of identical replicas.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from rdirdb.rdir.repair import repair_hosts  # noqa: E402
from rdirdb.rdir.store import Store  # noqa: E402
from tests.server.helpers import Server  # noqa: E402

VOL = "bench-repair"
BATCH = 100_000


def _record(n: int) -> tuple[str, str, str, int, str, int]:
    return (f"{n % 10_000:064X}", "C" * 32, f"{n * 2654435761 % 2**64:064X}", n, f"obj-{n}", 1)


def _load(path: str, records: int, extra: range, deleted: list[int]) -> None:
    with Store(path, sync=False) as store:
        chunks = store.volume(VOL, create=True).chunks
        ns = sorted(range(records), key=lambda n: (_record(n)[0], _record(n)[2]))
        for i in range(0, len(ns), BATCH):
            chunks.put_batch([_record(n) for n in ns[i:i + BATCH]])
        if extra:
            chunks.put_batch([_record(n) for n in extra])
        if deleted:
            chunks.delete_batch([(_record(n)[0], _record(n)[2]) for n in deleted])


def run(records: int, differ: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="bench-repair-") as tmp:
        a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
        _load(a, records, range(records, records + differ // 2), [])
        _load(b, records, range(0), rng.sample(range(records), differ - differ // 2))
        servers = [Server(p, "--bind", "127.0.0.1:0").wait_ready() for p in (a, b)]
        try:
            hosts = [f"{s.host}:{s.port}" for s in servers]
            started = time.monotonic()
            first = repair_hosts(VOL, hosts)
            seconds = time.monotonic() - started
            started = time.monotonic()
            second = repair_hosts(VOL, hosts)
            idle = time.monotonic() - started
        finally:
            for s in servers:
                s.stop()
        with Store(a, readonly=True) as sa, Store(b, readonly=True) as sb:
            va, vb = sa.volume(VOL), sb.volume(VOL)
            assert va.stamps.digest([b"", None]) == vb.stamps.digest([b"", None])
            assert va.chunks.count() == vb.chunks.count() == records + differ // 2 - (differ - differ // 2)
    return {
        "seconds": seconds, "ranges": first.ranges_compared, "listed": first.records_listed,
        "sent": first.records_sent, "applied": first.records_applied, "moved": first.records_moved,
        "identical_seconds": idle, "identical_moved": second.records_moved,
        "identical_ranges": second.ranges_compared,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--differ", type=int, default=1_000)
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args()
    runs = [run(args.records, args.differ, seed) for seed in range(args.reps)]
    print(f"{args.records:,} records per replica, {args.differ:,} differing, {args.reps} run(s), medians:")
    for key in runs[0]:
        values = [r[key] for r in runs]
        med = statistics.median(values)
        print(f"  {key:<18} {med:,.3f}" if isinstance(med, float) and not med.is_integer() else f"  {key:<18} {med:,.0f}")
    ok = all(r["moved"] < 50_000 and r["identical_moved"] == 0 for r in runs)
    print("goal (moved < 50,000; identical replicas move 0):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
