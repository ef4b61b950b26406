"""RdirClient (embedded): chunk_push_batch, a full chunk_fetch and status, next to the ceilings.

A section of ``benches/compare.py`` (same records, same interleaved medians):

* ``chunk_push_batch`` of 10,000-record batches, as OpenIO-style dicts and as
  a numpy structured array, against ``_ceiling.raw_insert`` of the records
  already encoded and packed in one buffer (target >= 0.6x);
* a full ``chunk_fetch`` iteration (pages of 1,000, the default), against the
  baseline a user writes with py-lmdb: set_range + JSON pages (target >= 10x),
  and against its ceiling ``_ceiling.raw_entries``: the same entries, built by
  the same code straight from a cursor in one read transaction, taken by the
  same consumer loop;
* ``status`` over every chunk (pages of 1,000, the default), against
  ``_ceiling.raw_scan`` (target >= 0.3x).

No measured path can beat its ceiling: each ceiling does a strict part of the
path's work (docs/engine.md, "The benchmarks' ceilings").

Every store runs with sync off, so commits cost the same everywhere.
Alone: ``python benches/compare_client.py [n]``.
"""

from __future__ import annotations

import itertools
import sys
from typing import Any

import lmdb
import numpy as np

import compare_common as common
from rdirdb import _ceiling
from rdirdb.rdir.client import RdirClient

INCIDENT_SHARE = 0.5  # the incident date leaves half of the chunks "to rebuild"


def as_array(items: list[tuple]) -> np.ndarray:
    return np.array(items, dtype=[
        ("container_id", "S64"), ("content_id", "S32"), ("chunk_id", "S64"),
        ("mtime", "i8"), ("path", "S32"), ("version", "i8"),
    ])


def compare_client(n: int) -> list[tuple[str, float, str]]:
    """RdirClient, embedded: chunk_push_batch, full chunk_fetch, status"""
    own_workdir = common.WORK is None
    if own_workdir:
        common.WORK = common.Workdir()
    try:
        return _measure(n)
    finally:
        if own_workdir:
            common.WORK.close()
            common.WORK = None


def _measure(n: int) -> list[tuple[str, float, str]]:
    items = common.records(n)
    dicts = [dict(zip(common.FIELDS, t)) for t in items]
    array = as_array(items)
    common.packed(n)  # built before any clock starts

    def push(records: Any, clock: Any) -> None:
        with RdirClient({"db_path": common.WORK.fresh(), "db_sync": False}) as client:
            client.create("vol")
            with clock:
                for start in range(0, len(records), common.BATCH):
                    client.chunk_push_batch("vol", records[start:start + common.BATCH])

    pushes = common.median_rates(n, {
        "dicts": lambda clock: push(dicts, clock),
        "numpy": lambda clock: push(array, clock),
        "ceiling": lambda clock: common.raw_insert(n, False, clock),
    }, common.REPS)
    del dicts, array

    incident = sorted(t[3] for t in items)[int(n * INCIDENT_SHARE)]
    with RdirClient({"db_path": common.WORK.fresh(), "db_sync": False}) as client, \
            lmdb.open(common.WORK.fresh(), map_size=common.BASELINE_MAP_SIZE, sync=False) as env:
        for batch in common.batches(items):
            client.chunk_push_batch("vol", batch, create=True)
        client.admin_incident_set("vol", incident)
        common.baseline_load(env, items)
        volume_env = client.backend.store.volume("vol").env

        def fetch() -> int:
            return sum(1 for _ in client.chunk_fetch("vol"))

        def fetch_ceiling() -> int:
            return sum(1 for _ in _ceiling.raw_entries(volume_env))

        def status() -> int:
            return client.status("vol")["chunk"]["total"]

        # The ceiling makes the same entries, in the same order (one at a time: a
        # million entries held at once would take gigabytes).
        assert all(a == b for a, b in itertools.zip_longest(client.chunk_fetch("vol"),
                                                             _ceiling.raw_entries(volume_env)))
        assert fetch() == fetch_ceiling() == status() == common.baseline_pages(env) == n
        scans = common.median_rates(n, {
            "fetch": lambda clock: common.timed(clock, fetch),
            "entries": lambda clock: common.timed(clock, fetch_ceiling),
            "baseline": lambda clock: common.timed(clock, common.baseline_pages, env),
            "status": lambda clock: common.timed(clock, status),
            "raw": lambda clock: common.timed(clock, _ceiling.raw_scan, volume_env),
        }, common.REPS)

    ratio = common.ratio
    return [
        ("client chunk_push_batch, dicts", pushes["dicts"], f"{ratio(pushes['dicts'], pushes['ceiling'], 0.6)} ceiling"),
        ("client chunk_push_batch, numpy", pushes["numpy"], f"{ratio(pushes['numpy'], pushes['ceiling'], 0.6)} ceiling"),
        ("ceiling raw_insert (nosync)", pushes["ceiling"], ""),
        ("client chunk_fetch, pages of 1,000", scans["fetch"],
         f"{ratio(scans['fetch'], scans['baseline'], 10)} baseline, {ratio(scans['fetch'], scans['entries'])} ceiling"),
        ("ceiling raw_entries", scans["entries"], ""),
        ("baseline set_range+JSON pages", scans["baseline"], ""),
        ("client status, pages of 1,000", scans["status"], f"{ratio(scans['status'], scans['raw'], 0.3)} raw scan"),
        ("ceiling raw_scan", scans["raw"], ""),
    ]


if __name__ == "__main__":
    for label, rate, note in compare_client(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000):
        print(f"  {label:<40} {rate:>14,.0f} rec/s  {note}")
