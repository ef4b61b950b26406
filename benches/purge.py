"""What a purge of tombstones costs when nothing has expired (docs/reliability.md).

A volume opened read-write purges its expired tombstones, and so does every round of
``rdirdb serve --repair-interval``. Before the tombstone floor, such a purge walked every
tombstone in a write transaction even when none had expired; now it reads the floor (a
stamp no tombstone is older than) and stops. One volume of N tombstones (deletes of
records never pushed, in sorted batches); medians of REPS runs of each, alternating, in
the same process:

* ``walk``: the former purge, the walk of every tombstone in a write transaction
  (``_purge_into`` called directly, with a cutoff nothing is below);
* ``floor``: ``Stamps.purge`` with the same cutoff, as an open or a round does it now.

    PYTHONPATH=src python benches/purge.py                    # 1,000,000 tombstones
    PYTHONPATH=src python benches/purge.py --tombstones 100000 --reps 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from rdirdb._repair import _purge_into  # noqa: E402
from rdirdb.rdir.store import Store  # noqa: E402

VOL = "bench-purge"
BATCH = 100_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tombstones", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Store(tmp, sync=False) as store:
        chunks = store.volume(VOL, create=True).chunks
        for start in range(0, args.tombstones, BATCH):
            chunks.delete_batch([(f"{n % 10_000:064X}", f"{n:064X}")
                                 for n in range(start, min(start + BATCH, args.tombstones))])
        stamps = chunks.stamps
        cutoff = 1  # nothing is below it
        assert stamps.tombstone_count() == args.tombstones
        stamps.purge(cutoff)  # sets the floor
        times: dict[str, list[float]] = {"walk": [], "floor": []}
        for _ in range(args.reps):
            t = time.perf_counter()
            assert chunks.env.write(_purge_into, stamps, cutoff) == 0
            times["walk"].append(time.perf_counter() - t)
            t = time.perf_counter()
            assert stamps.purge(cutoff) == 0
            times["floor"].append(time.perf_counter() - t)
        walk, floor = statistics.median(times["walk"]), statistics.median(times["floor"])
        print(f"{args.tombstones:,} tombstones, nothing expired, medians of {args.reps} runs:")
        print(f"  walk of every tombstone (before): {walk * 1000:10.3f} ms")
        print(f"  floor read (now):                 {floor * 1000:10.3f} ms")
        print(f"  ratio:                            {walk / floor:10.0f}x")


if __name__ == "__main__":
    main()
