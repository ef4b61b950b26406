"""rdirdb next to a raw-LMDB ceiling and a plain py-lmdb baseline, in one run.

    python benches/compare.py [--n 1000000] [--reps 3] [--clock wall|cpu] [--json FILE]

Every figure is records/s, the median of ``--reps`` runs, each insert on a
fresh temporary directory. The three contenders get the same records in the
same random order, 10,000 per transaction:

* rdirdb: ``ChunkIndex.put_batch`` on Python tuples, ``fetch`` pages of 1,000
  with markers (Python records out), ``status(limit=10000)`` pages.
* ceiling: ``rdirdb._ceiling.raw_insert`` / ``raw_scan``, C loops over the same
  keys and values, already encoded and packed in one buffer for the insert (no
  validation, no encoding, no Python object per record: docs/engine.md, "The
  benchmarks' ceilings").
* baseline: what a user writes with the ``lmdb`` package: text keys
  ``chunk|<cid>|<chunk>``, compact JSON values, ``txn.put`` in the given
  order; pages by ``cursor.set_range`` + ``json.loads`` + key split.

The report is a list of sections; a section is a function ``f(n)`` returning
rows ``(label, records_per_s, note)``: the engine's here, the client's in
``benches/compare_client.py``. What they share is in ``compare_common.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import lmdb

import compare_common as common
import rdirdb
from compare_client import compare_client
from compare_common import (
    BASELINE_MAP_SIZE,
    PAGE,
    STATUS_PAGE,
    Clock,
    Row,
    baseline_load,
    baseline_pages,
    batches,
    median_rates,
    ratio,
    raw_insert,
    records,
    timed,
)
from rdirdb import _ceiling
from rdirdb.rdir.backend import pages
from rdirdb.rdir.store import Store

# -- contenders: insert ----------------------------------------------------------


def rdirdb_insert(n: int, sync: bool, clock: Clock) -> None:
    with Store(common.WORK.fresh(), sync=sync) as store:
        chunks = store.volume("vol", create=True).chunks
        with clock:
            for batch in batches(records(n)):
                chunks.put_batch(batch)
    shutil.rmtree(store.path)


def baseline_insert(n: int, sync: bool, clock: Clock) -> None:
    path = common.WORK.fresh()
    env = lmdb.open(path, map_size=BASELINE_MAP_SIZE, sync=sync, metasync=sync)
    with clock:
        baseline_load(env, records(n))
    env.close()
    shutil.rmtree(path)


def insert_section(n: int) -> list[Row]:
    """Bulk insert: random order, 10,000 records per transaction."""
    rows = []
    common.packed(n)  # the records and their encoding are built before any clock starts
    for sync in (True, False):
        rates = median_rates(n, {
            "rdirdb": lambda clock: rdirdb_insert(n, sync, clock),
            "ceiling": lambda clock: raw_insert(n, sync, clock),
            "baseline": lambda clock: baseline_insert(n, sync, clock),
        }, common.REPS)
        mode = "sync" if sync else "nosync"
        rows += [
            (f"insert rdirdb put_batch ({mode})", rates["rdirdb"],
             f"{ratio(rates['rdirdb'], rates['ceiling'], 0.8)} ceiling, "
             f"{ratio(rates['rdirdb'], rates['baseline'], 3)} baseline"),
            (f"insert ceiling raw_insert ({mode})", rates["ceiling"], ""),
            (f"insert baseline py-lmdb+JSON ({mode})", rates["baseline"], ""),
        ]
    return rows


# -- contenders: scans -----------------------------------------------------------


def rdirdb_pages(chunks) -> int:
    return sum(len(page) for page in pages(chunks.fetch, limit=PAGE))


def rdirdb_status(chunks) -> int:
    total, marker, truncated = 0, None, True
    while truncated:
        count, _, _, truncated, marker = chunks.status(marker=marker, limit=STATUS_PAGE)
        total += count
    return total


def scan_section(n: int) -> list[Row]:
    """Scans over every record: pages of 1,000 with markers, status pages, raw walk."""
    with Store(common.WORK.fresh(), sync=False) as store:
        volume = store.volume("vol", create=True)
        for batch in batches(records(n)):
            volume.chunks.put_batch(batch)
        with lmdb.open(common.WORK.fresh(), map_size=BASELINE_MAP_SIZE, sync=False, metasync=False) as env:
            baseline_load(env, records(n))
            assert rdirdb_pages(volume.chunks) == baseline_pages(env) == rdirdb_status(volume.chunks) == n
            rates = median_rates(n, {
                "pages": lambda clock: timed(clock, rdirdb_pages, volume.chunks),
                "baseline": lambda clock: timed(clock, baseline_pages, env),
                "status": lambda clock: timed(clock, rdirdb_status, volume.chunks),
                "raw": lambda clock: timed(clock, _ceiling.raw_scan, volume.env),
            }, common.REPS)
    return [
        ("scan rdirdb fetch pages of 1,000", rates["pages"],
         f"{ratio(rates['pages'], rates['baseline'], 10)} baseline, "
         f"{ratio(rates['pages'], rates['raw'])} raw scan"),
        ("scan baseline set_range+JSON pages", rates["baseline"], ""),
        ("status rdirdb pages of 10,000", rates["status"], f"{ratio(rates['status'], rates['raw'])} raw scan"),
        ("scan ceiling raw_scan", rates["raw"], ""),
    ]


# -- report ----------------------------------------------------------------------

SECTIONS = [insert_section, scan_section, compare_client]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="records (default 1,000,000)")
    parser.add_argument("--reps", type=int, default=common.REPS, help="repetitions; medians are printed")
    parser.add_argument("--clock", choices=sorted(common.TIMERS), default="wall",
                        help="time by the wall clock (default) or by this process's CPU time, "
                             "steadier on a loaded machine but blind to the waits of synced commits")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    common.REPS = args.reps
    common.TIMER = common.TIMERS[args.clock]
    common.WORK = common.Workdir()
    print(f"rdirdb {rdirdb.__version__} (liblmdb {'.'.join(map(str, rdirdb.lmdb_version()))}), "
          f"py-lmdb {lmdb.__version__}; n={args.n:,}, medians of {common.REPS}, {args.clock} clock, "
          f"{os.cpu_count()} CPUs")
    print(f"  {'':<40} {'records/s':>14}        ratios")
    report = []
    started = time.perf_counter()
    try:
        for section in SECTIONS:
            print(f"\n== {(section.__doc__ or section.__name__).strip().splitlines()[0]}")
            for label, rate, note in section(args.n):
                report.append({"section": section.__name__, "label": label, "records_per_s": rate, "note": note})
                shown = f"{rate:>14,.0f}" if rate is not None else f"{'-':>14}"
                print(f"  {label:<40} {shown} rec/s  {note}", flush=True)
    finally:
        common.WORK.close()
    print(f"\n({time.perf_counter() - started:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "reps": common.REPS, "clock": args.clock, "rows": report}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
