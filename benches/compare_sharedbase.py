"""rdirdb's SharedBase against winery's own, on the same PostgreSQL, in one run.

    make peer-test        # once: the virtualenv with winery's SharedBase (.venv-peer)
    python3 benches/compare_sharedbase.py [--ids 50000] [--batch 1000] [--lookups 2000]

winery's SharedBase comes from swh-objstorage 7.4.1, in the virtualenv that
``make peer-test`` builds (``.venv-peer``, or $RDIRDB_PEER_PYTHON). This
script starts itself there with ``--winery``, as a peer that measures what it
is asked to, and alternates between the two sides batch by batch: the machine
is shared and its load swings, and paired measurements see the same swings.
Each side has a fresh database created from $RDIRDB_BENCH_PG_DSN (default:
the tests' server), with its own schema (winery's files for winery's).

Measured: record_new_obj_ids of ``--ids`` new ids in batches of ``--batch``,
one transaction each (the median batch, and the median of the paired
ratios); contains of present and absent ids; get; rdirdb's contains_many per
id; the LMDB backend's contains.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_DSN = os.environ.get("RDIRDB_BENCH_PG_DSN",
                        os.environ.get("RDIRDB_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"))

# (label, our key, winery's key, target ratio winery/rdirdb time)
TARGETS = [
    ("contains (hit)", "contains_hit", "contains_hit", 1.5),
    ("contains (miss)", "contains_miss", "contains_miss", 1.5),
    ("get", "get", "get", None),
    ("contains_many per id", "contains_many", "contains_hit", 20.0),
    ("LMDB contains", "lmdb_contains", "contains_hit", 100.0),
]
RECORD_TARGET = 3.0


def ids_for(label: str, n: int) -> list[bytes]:
    return [hashlib.sha256(f"{label}-{i}".encode()).digest() for i in range(n)]


def per_call(fn, args: list, chunks: int = 10) -> float:
    """Seconds per call of ``fn``: the best chunk of ``args`` (after a short
    warm-up), so that a burst of load elsewhere does not decide the figure."""
    for a in args[:50]:
        fn(a)
    size = max(1, len(args) // chunks)
    best = float("inf")
    for i in range(0, len(args), size):
        chunk = args[i:i + size]
        start = time.perf_counter()
        for a in chunk:
            fn(a)
        best = min(best, (time.perf_counter() - start) / len(chunk))
    return best


@contextmanager
def scratch_database(label: str):
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"rdirdb_bench_{label}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield make_conninfo(**{**conninfo_to_dict(PG_DSN), "dbname": name})
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Side:
    """One SharedBase under measurement: ``record(ids)`` times one batch."""

    def __init__(self, base, record) -> None:
        self.base, self._record = base, record

    def record(self, ids: list[bytes]) -> float:
        start = time.perf_counter()
        self._record(ids)
        return time.perf_counter() - start

    def lookups(self, n_ids: int, n_lookups: int) -> dict[str, float]:
        hits = random.Random(1).sample(ids_for("record", n_ids), n_lookups)
        misses = ids_for("miss", n_lookups)
        assert all(self.base.contains(i) for i in hits[:10]) and not any(self.base.contains(i) for i in misses[:10])
        return {"contains_hit": per_call(self.base.contains, hits),
                "contains_miss": per_call(self.base.contains, misses),
                "get": per_call(self.base.get, hits)}


# -- winery's side (a peer process under the interpreter that has swh-objstorage) -----


@contextmanager
def winery_side():
    import psycopg
    from swh.core.db.db_utils import get_sql_for_package, swh_set_db_module, swh_set_db_version
    from swh.objstorage.backends.winery.sharedbase import SharedBase

    with scratch_database("winery") as dsn:
        # winery's own schema files, as `swh db init` runs them.
        files = get_sql_for_package("objstorage:winery") + get_sql_for_package("swh.core.db")
        with psycopg.connect(dsn) as conn:
            for path in sorted(files, key=lambda p: p.name):
                conn.execute(path.read_text())
        swh_set_db_module(dsn, "objstorage:winery")
        swh_set_db_version(dsn, SharedBase.current_version)
        base = SharedBase(base_dsn=dsn, application_name="bench", active_pool_name="bench")

        def record(ids):
            with base.pool.connection() as db, db.transaction():
                base.record_new_obj_ids(db, ids)

        base.locked_shard  # lock (create) the shard outside the timing
        try:
            yield Side(base, record)
        finally:
            base.pool.close()


def winery_main() -> None:
    """Answers one JSON request per line of stdin: record a batch, or measure lookups."""
    from importlib.metadata import version

    with winery_side() as side:
        print(json.dumps({"version": version("swh-objstorage")}), flush=True)
        for line in sys.stdin:
            request = json.loads(line)
            if request["op"] == "record":
                answer = side.record([bytes.fromhex(i) for i in request["ids"]])
            else:
                answer = side.lookups(request["n_ids"], request["n_lookups"])
            print(json.dumps(answer), flush=True)


class WineryPeer:
    """The --winery process, driven from here."""

    def __init__(self, python: str) -> None:
        self.proc = subprocess.Popen([python, __file__, "--winery"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ""})
        self.version = self._answer()["version"]

    def _answer(self):
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"winery's peer process ended (exit {self.proc.returncode}); see its stderr above")
        return json.loads(line)

    def ask(self, **request):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def record(self, ids: list[bytes]) -> float:
        return self.ask(op="record", ids=[i.hex() for i in ids])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(60)


def peer_python() -> str:
    python = os.environ.get("RDIRDB_PEER_PYTHON") or str(ROOT / ".venv-peer" / "bin" / "python")
    if not Path(python).exists():
        sys.exit(f"no {python}: run `make peer-test` (or set $RDIRDB_PEER_PYTHON) for winery's SharedBase")
    return python


# -- rdirdb's side ---------------------------------------------------------------------


@contextmanager
def rdirdb_side():
    from rdirdb import SharedBase
    from rdirdb.sharedbase import init_schema

    with scratch_database("rdirdb") as dsn:
        init_schema(dsn)
        with SharedBase(dsn, application_name="bench", active_pool_name="bench") as base:
            def record(ids):
                with base.transaction() as db:
                    base.record_new_obj_ids(db, ids)

            base.locked_shard
            yield Side(base, record)


def contains_many_per_id(base, n_ids: int) -> float:
    import numpy as np

    many = np.array(ids_for("record", n_ids)[: n_ids // 2] + ids_for("miss", n_ids // 2), dtype="S32")
    base.contains_many(many[:100])
    start = time.perf_counter()
    found = base.contains_many(many)
    elapsed = time.perf_counter() - start
    assert np.count_nonzero(found) == n_ids // 2
    return elapsed / len(many)


def lmdb_figures(n_ids: int, n_lookups: int) -> dict[str, float]:
    import numpy as np

    from rdirdb import SharedBase

    with tempfile.TemporaryDirectory() as tmp, SharedBase(f"lmdb://{tmp}", active_pool_name="bench") as base:
        ids = ids_for("record", n_ids)
        with base.transaction() as db:
            base.record_new_obj_ids(db, ids)
        hits = random.Random(1).sample(ids, min(len(ids), 20 * n_lookups))
        start = time.perf_counter()
        base.contains_many(np.array(ids, dtype="S32"))
        return {"lmdb_contains": per_call(base.contains, hits),
                "lmdb_contains_many": (time.perf_counter() - start) / len(ids)}


def fmt(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds >= 0.1 else f"{seconds * 1e6:9.2f} us"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=50_000, help="ids recorded, per side")
    parser.add_argument("--batch", type=int, default=1_000, help="ids per recording transaction")
    parser.add_argument("--lookups", type=int, default=2_000, help="single lookups per figure")
    parser.add_argument("--winery", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.winery:
        winery_main()
        return 0

    winery = WineryPeer(peer_python())
    print(f"PostgreSQL: {PG_DSN}; winery's SharedBase: swh-objstorage {winery.version}")
    print(f"{args.ids} new ids per side, recorded in batches of {args.batch} (one transaction each), "
          f"alternating sides batch by batch; {args.lookups} lookups per figure\n")
    try:
        with rdirdb_side() as ours:
            ids = ids_for("record", args.ids)
            pairs = []
            for n, i in enumerate(range(0, args.ids, args.batch)):
                batch = ids[i:i + args.batch]
                if n % 2:  # each side goes first half of the time
                    theirs = winery.record(batch)
                    pairs.append((ours.record(batch), theirs))
                else:
                    mine = ours.record(batch)
                    pairs.append((mine, winery.record(batch)))
            figures = ours.lookups(args.ids, args.lookups)
            figures["contains_many"] = contains_many_per_id(ours.base, args.ids)
            theirs = winery.ask(op="lookups", n_ids=args.ids, n_lookups=args.lookups)
    finally:
        winery.close()
    figures.update(lmdb_figures(args.ids, args.lookups))

    ours_batch = statistics.median(p[0] for p in pairs)
    theirs_batch = statistics.median(p[1] for p in pairs)
    paired = statistics.median(t / o for o, t in pairs)
    verdict = "ok" if paired >= RECORD_TARGET else "MISSED"
    print(f"{'operation':24} {'rdirdb':>13} {'winery':>13} {'speed-up':>9} {'target':>7}")
    print(f"{'batch record':24} {fmt(ours_batch):>13} {fmt(theirs_batch):>13} {theirs_batch / ours_batch:8.1f}x "
          f"{f'>={RECORD_TARGET:g}x':>7} (median of the {len(pairs)} paired ratios: {paired:.2f}x) {verdict}")
    for label, key, winery_key, target in TARGETS:
        ratio = theirs[winery_key] / figures[key]
        mark = "" if target is None else ("ok" if ratio >= target else "MISSED")
        print(f"{label:24} {fmt(figures[key]):>13} {fmt(theirs[winery_key]):>13} {ratio:8.1f}x "
              f"{f'>={target:g}x' if target else '':>7} {mark}")
    print(f"{'LMDB contains_many/id':24} {fmt(figures['lmdb_contains_many']):>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
