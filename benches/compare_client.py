"""RdirClient (embedded) next to the raw ceiling and a plain `lmdb`-package rdir.

``compare_client(n)`` measures, on one volume of ``n`` chunks:

* chunk_push_batch, records/s (batches of ``batch`` records, as dicts and as a
  numpy structured array), against ``_rdir.raw_insert`` of pre-encoded pairs;
* a full chunk_fetch iteration (default page size), against the baseline: the
  rdir a user would write with the PyPI ``lmdb`` package (text keys
  ``chunk|cid|chunk``, compact JSON values);
* status over every chunk (with an incident set), against ``_rdir.raw_scan``.

Every store runs with sync off, so commits cost the same everywhere. Writes
and reads run in interleaved rounds and the best round of each counts, so that
a busy machine slows the compared figures alike.
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
ROUNDS = 3  # rounds of reads; the first one also faults the map's pages in
TARGETS = {  # measure: (reference, minimum ratio)
    "push_batch (dicts)": ("raw_insert", 0.6),
    "push_batch (numpy)": ("raw_insert", 0.6),
    "chunk_fetch": ("baseline fetch", 10.0),
    "status": ("raw_scan", 0.3),
}

Reader = Callable[[], int]  # a read that returns how many records it handled


def make_tuples(n: int) -> list[tuple]:
    """``n`` chunk records with canonical ids, in no particular key order."""
    return [
        (f"{i // CHUNKS_PER_CONTAINER:064X}", f"{i // 3:032X}", f"{(i * 2654435761) % (1 << 64):064X}",
         i % 1000, f"obj-{i // 3}", 1)
        for i in range(n)
    ]


def rate(run: Reader) -> float:
    """Records per second of one run."""
    start = time.perf_counter()
    count = run()
    return count / (time.perf_counter() - start)


def batches(records: Any, size: int) -> Iterator[Any]:
    for start in range(0, len(records), size):
        yield records[start:start + size]


# Each store times its writes in rounds, each round into a fresh place, then
# offers its reads of what the first round wrote.


class Baseline:
    """The rdir of a user of the ``lmdb`` package."""

    def __init__(self, path: str, tuples: list[tuple], batch: int) -> None:
        import lmdb

        self.env = lmdb.open(path, map_size=1 << 36, max_dbs=ROUNDS + 1, sync=False, metasync=False)
        self.tuples, self.batch = tuples, batch

    def writers(self) -> dict[str, Callable[[int], int]]:
        return {"baseline push": self.push}

    def push(self, round_: int) -> int:
        db = self.env.open_db(f"round-{round_}".encode())
        for part in batches(self.tuples, self.batch):
            with self.env.begin(write=True, db=db) as txn:
                for cid, content, chunk, mtime, chunk_path, version in part:
                    value = {"content_id": content, "mtime": mtime, "path": chunk_path, "version": version}
                    txn.put(f"chunk|{cid}|{chunk}".encode(), json.dumps(value, separators=(",", ":")).encode())
        return len(self.tuples)

    def fetch(self) -> Iterator[tuple[str, str, dict]]:
        with self.env.begin(db=self.env.open_db(b"round-0")) as txn:
            cursor = txn.cursor()
            cursor.set_range(b"chunk|")
            for key, value in cursor:
                if not key.startswith(b"chunk|"):
                    break
                cid, chunk = key[6:].decode().split("|")
                yield cid, chunk, json.loads(value)

    def status(self) -> int:
        containers: dict[str, list[int]] = {}
        for cid, _, value in self.fetch():
            counters = containers.setdefault(cid, [0, 0])
            counters[0] += 1
            counters[1] += value["mtime"] <= INCIDENT
        return sum(c[0] for c in containers.values())

    def readers(self) -> dict[str, Reader]:
        return {"baseline fetch": lambda: sum(1 for _ in self.fetch()), "baseline status": self.status}

    def close(self) -> None:
        self.env.close()


class Raw:
    """The engine's C loops over pre-encoded records: the ceiling."""

    def __init__(self, path: str, tuples: list[tuple], batch: int) -> None:
        self.path, self.batch = path, batch
        self.keys = [_rdir.encode_chunk_key(t[0], t[2])[1] for t in tuples]
        self.values = [_rdir.encode_chunk_value(t[1], t[3], t[4], t[5]) for t in tuples]
        self.envs: list[Environment] = []

    def writers(self) -> dict[str, Callable[[int], int]]:
        return {"raw_insert": self.insert}

    def insert(self, round_: int) -> int:
        env = Environment(os.path.join(self.path, str(round_)), databases=_rdir.CHUNK_DATABASES, sync=False)
        self.envs.append(env)
        _rdir.raw_insert(env, self.keys, self.values, self.batch)
        return len(self.keys)

    def readers(self) -> dict[str, Reader]:
        return {"raw_scan": lambda: _rdir.raw_scan(self.envs[0])}

    def close(self) -> None:
        for env in self.envs:
            env.close()


class Client:
    """RdirClient, embedded."""

    def __init__(self, path: str, tuples: list[tuple], batch: int) -> None:
        self.rdir = RdirClient({"db_path": path, "db_sync": False})
        self.batch = batch
        self.dicts = [dict(zip(FIELDS, t)) for t in tuples]
        self.array = np.array(tuples, dtype=[
            ("container_id", "S64"), ("content_id", "S32"), ("chunk_id", "S64"),
            ("mtime", "i8"), ("path", "S32"), ("version", "i8"),
        ])

    def push(self, volume: str, records: Any) -> int:
        self.rdir.create(volume)
        for part in batches(records, self.batch):
            self.rdir.chunk_push_batch(volume, part)
        return len(records)

    def writers(self) -> dict[str, Callable[[int], int]]:
        return {
            "push_batch (dicts)": lambda r: self.push(f"dicts-{r}", self.dicts),
            "push_batch (numpy)": lambda r: self.push(f"numpy-{r}", self.array),
        }

    def readers(self) -> dict[str, Reader]:
        rdir = self.rdir
        rdir.admin_incident_set("dicts-0", INCIDENT)
        return {
            "chunk_fetch": lambda: sum(1 for _ in rdir.chunk_fetch("dicts-0")),
            "chunk_fetch (limit 10000)": lambda: sum(1 for _ in rdir.chunk_fetch("dicts-0", limit=10000)),
            "status": lambda: rdir.status("dicts-0")["chunk"]["total"],
            "status (max 10000)": lambda: rdir.status("dicts-0", max=10000)["chunk"]["total"],
        }

    def close(self) -> None:
        self.rdir.close()


def compare_client(
    n: int = 1_000_000, batch: int = 10_000, path: str | None = None, write_rounds: int = 2
) -> dict[str, float]:
    """Measure and print the figures (records/s) and their ratios to the targets."""
    tuples = make_tuples(n)
    figures: dict[str, float] = {}
    kinds: list[type] = [Client, Baseline]
    if hasattr(_rdir, "raw_insert") and hasattr(_rdir, "raw_scan"):
        kinds.append(Raw)
    with tempfile.TemporaryDirectory(dir=path) as tmp:
        stores = [kind(os.path.join(tmp, kind.__name__), tuples, batch) for kind in kinds]
        try:
            for rounds, measures in ((write_rounds, "writers"), (ROUNDS, "readers")):
                runs = {name: run for store in stores for name, run in getattr(store, measures)().items()}
                for round_ in range(rounds):
                    for name, run in runs.items():
                        args = (round_,) if measures == "writers" else ()
                        figures[name] = max(figures.get(name, 0.0), rate(lambda: run(*args)))
        finally:
            for store in stores:
                store.close()
    report(n, batch, figures)
    return figures


def report(n: int, batch: int, figures: dict[str, float]) -> None:
    print(f"RdirClient, embedded: {n:,} chunks, batches of {batch:,}")
    for name, value in figures.items():
        line = f"  {name:28s} {value:>14,.0f} records/s"
        reference, target = TARGETS.get(name, (None, 0.0))
        if reference in figures:
            ratio = value / figures[reference]
            verdict = "ok" if ratio >= target else "BELOW TARGET"
            line += f"   {ratio:6.2f}x {reference} (target >= {target}x: {verdict})"
        print(line)


if __name__ == "__main__":
    compare_client(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
