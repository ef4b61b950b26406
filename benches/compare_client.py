"""RdirClient (embedded) next to the raw ceiling and a plain `lmdb`-package rdir.

``compare_client(n)`` measures, on one volume of ``n`` chunks:

* chunk_push_batch, records/s (batches of ``batch`` records, as dicts and as a
  numpy structured array), against ``_rdir.raw_insert`` of pre-encoded pairs;
* a full chunk_fetch iteration (default page size), against the baseline: the
  rdir a user would write with the PyPI ``lmdb`` package (text keys
  ``chunk|cid|chunk``, compact JSON values);
* status over every chunk (with an incident set), against ``_rdir.raw_scan``.

Every store runs with sync off, so commits cost the same everywhere.
Run: ``python benches/compare_client.py [n]``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import Any, Callable, Iterator

import numpy as np

from rdirdb import _rdir
from rdirdb._lmdb import Environment
from rdirdb.client import RdirClient

FIELDS = ("container_id", "content_id", "chunk_id", "mtime", "path", "version")
CHUNKS_PER_CONTAINER = 1000
INCIDENT = 500  # half of the chunks are "to rebuild"
READS = 3  # runs of each read measure; the best counts
TARGETS = {  # measure: (reference, minimum ratio)
    "push_batch (dicts)": ("raw_insert", 0.6),
    "push_batch (numpy)": ("raw_insert", 0.6),
    "chunk_fetch": ("baseline fetch", 10.0),
    "status": ("raw_scan", 0.3),
}


def make_tuples(n: int) -> list[tuple]:
    """``n`` chunk records with canonical ids, in no particular key order."""
    return [
        (f"{i // CHUNKS_PER_CONTAINER:064X}", f"{i // 3:032X}", f"{(i * 2654435761) % (1 << 64):064X}",
         i % 1000, f"obj-{i // 3}", 1)
        for i in range(n)
    ]


def timed(run: Callable[[], int], repeat: int = 1) -> float:
    """Records per second of the best of ``repeat`` runs of ``run``, which
    returns how many records it handled (reads repeat: the first one also pays
    for faulting the map's pages in)."""
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        count = run()
        best = max(best, count / (time.perf_counter() - start))
    return best


def batches(records: Any, size: int) -> Iterator[Any]:
    for start in range(0, len(records), size):
        yield records[start:start + size]


# -- the lmdb-package baseline -------------------------------------------------


def baseline(path: str, tuples: list[tuple], batch: int) -> dict[str, float]:
    import lmdb

    env = lmdb.open(path, map_size=1 << 36, sync=False, metasync=False)

    def push() -> int:
        for part in batches(tuples, batch):
            with env.begin(write=True) as txn:
                for cid, content, chunk, mtime, chunk_path, version in part:
                    value = {"content_id": content, "mtime": mtime, "path": chunk_path, "version": version}
                    txn.put(f"chunk|{cid}|{chunk}".encode(), json.dumps(value, separators=(",", ":")).encode())
        return len(tuples)

    def fetch() -> Iterator[tuple[str, str, dict]]:
        with env.begin() as txn:
            cursor = txn.cursor()
            cursor.set_range(b"chunk|")
            for key, value in cursor:
                if not key.startswith(b"chunk|"):
                    break
                cid, chunk = key[6:].decode().split("|")
                yield cid, chunk, json.loads(value)

    def status() -> int:
        containers: dict[str, list[int]] = {}
        for cid, _, value in fetch():
            counters = containers.setdefault(cid, [0, 0])
            counters[0] += 1
            counters[1] += value["mtime"] <= INCIDENT
        return sum(c[0] for c in containers.values())

    try:
        return {
            "baseline push": timed(push),
            "baseline fetch": timed(lambda: sum(1 for _ in fetch()), READS),
            "baseline status": timed(status, READS),
        }
    finally:
        env.close()


# -- the raw ceilings ------------------------------------------------------------


def raw(path: str, tuples: list[tuple], batch: int) -> dict[str, float]:
    keys = [_rdir.encode_chunk_key(t[0], t[2])[1] for t in tuples]
    values = [_rdir.encode_chunk_value(t[1], t[3], t[4], t[5]) for t in tuples]
    with Environment(path, databases=_rdir.CHUNK_DATABASES, sync=False) as env:
        insert = timed(lambda: (_rdir.raw_insert(env, keys, values, batch), len(keys))[1])
        return {"raw_insert": insert, "raw_scan": timed(lambda: _rdir.raw_scan(env), READS)}


# -- the client -----------------------------------------------------------------------


def client_figures(path: str, tuples: list[tuple], batch: int) -> dict[str, float]:
    dicts = [dict(zip(FIELDS, t)) for t in tuples]
    array = np.array(tuples, dtype=[
        ("container_id", "S64"), ("content_id", "S32"), ("chunk_id", "S64"),
        ("mtime", "i8"), ("path", "S32"), ("version", "i8"),
    ])
    with RdirClient({"db_path": path, "db_sync": False}) as client:
        client.create("numpy")
        client.create("vol")

        def push(volume: str, records: Any) -> int:
            for part in batches(records, batch):
                client.chunk_push_batch(volume, part)
            return len(records)

        figures = {
            "push_batch (numpy)": timed(lambda: push("numpy", array)),
            "push_batch (dicts)": timed(lambda: push("vol", dicts)),
        }
        del dicts, array
        figures["chunk_fetch"] = timed(lambda: sum(1 for _ in client.chunk_fetch("vol")), READS)
        figures["chunk_fetch (limit 10000)"] = timed(
            lambda: sum(1 for _ in client.chunk_fetch("vol", limit=10000)), READS
        )
        client.admin_incident_set("vol", INCIDENT)
        figures["status"] = timed(lambda: client.status("vol")["chunk"]["total"], READS)
        figures["status (max 10000)"] = timed(lambda: client.status("vol", max=10000)["chunk"]["total"], READS)
        return figures


def compare_client(n: int = 1_000_000, batch: int = 10_000, path: str | None = None) -> dict[str, float]:
    """Measure and print the figures (records/s) and their ratios to the targets."""
    tuples = make_tuples(n)
    with tempfile.TemporaryDirectory(dir=path) as tmp:
        figures = client_figures(os.path.join(tmp, "client"), tuples, batch)
        figures.update(baseline(os.path.join(tmp, "baseline"), tuples, batch))
        if hasattr(_rdir, "raw_insert") and hasattr(_rdir, "raw_scan"):
            figures.update(raw(os.path.join(tmp, "raw"), tuples, batch))
    print(f"RdirClient, embedded: {n:,} chunks, batches of {batch:,}")
    for name, rate in figures.items():
        line = f"  {name:28s} {rate:>14,.0f} records/s"
        reference, target = TARGETS.get(name, (None, None))
        if reference in figures:
            ratio = rate / figures[reference]
            verdict = "ok" if ratio >= target else "BELOW TARGET"
            line += f"   {ratio:6.2f}x {reference} (target >= {target}x: {verdict})"
        print(line)
    return figures


if __name__ == "__main__":
    compare_client(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
