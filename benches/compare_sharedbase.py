"""rdirdb's SharedBase against winery's own, on the same PostgreSQL, in one run.

    python3 benches/compare_sharedbase.py [--ids 50000] [--lookups 2000]

winery's SharedBase comes from swh-objstorage (the ``peer`` extra). It pins
its own dependencies, so it is best installed into a separate virtualenv:

    python3 -m venv .venv-peer
    .venv-peer/bin/pip install "swh-objstorage==7.4.1"

This script finds that interpreter through $RDIRDB_PEER_PYTHON (default
``.venv-peer/bin/python``; else the current one if it imports swh.objstorage)
and runs itself there with ``--winery`` to measure winery. Each side gets a
fresh database created from $RDIRDB_BENCH_PG_DSN (default: the tests' server).

Measured: one transaction recording N new ids; contains of present and absent
ids; get; rdirdb's contains_many per id; the LMDB backend's contains.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
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
    ("batch record", "record", "record", 3.0),
    ("contains (hit)", "contains_hit", "contains_hit", 1.5),
    ("contains (miss)", "contains_miss", "contains_miss", 1.5),
    ("get", "get", "get", None),
    ("contains_many per id", "contains_many", "contains_hit", 20.0),
    ("LMDB contains", "lmdb_contains", "contains_hit", 100.0),
]


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


def measure(base, record, n_ids: int, n_lookups: int) -> dict[str, float]:
    """The common measurements; ``record(ids)`` records ids in one transaction."""
    ids = ids_for("record", n_ids)
    base.locked_shard  # lock (create) the shard outside the timing
    start = time.perf_counter()
    record(ids)
    results = {"record": time.perf_counter() - start}
    hits = random.Random(1).sample(ids, n_lookups)
    misses = ids_for("miss", n_lookups)
    results["contains_hit"] = per_call(base.contains, hits)
    results["contains_miss"] = per_call(base.contains, misses)
    results["get"] = per_call(base.get, hits)
    assert all(base.contains(i) for i in hits[:10]) and not any(base.contains(i) for i in misses[:10])
    return results


# -- winery's side (runs under the peer interpreter) -----------------------------------


def winery_main(n_ids: int, n_lookups: int) -> None:
    try:
        import systemd.daemon  # noqa: F401
    except ImportError:
        # winery imports systemd.daemon.notify at module level (for its
        # services); systemd-python needs libsystemd headers to build. The
        # SharedBase never calls it.
        import types

        module, daemon = types.ModuleType("systemd"), types.ModuleType("systemd.daemon")
        daemon.notify = lambda *args, **kwargs: None
        module.daemon = daemon
        sys.modules.update({"systemd": module, "systemd.daemon": daemon})
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

        results = measure(base, record, n_ids, n_lookups)
        base.pool.close()
    from importlib.metadata import version

    print(json.dumps({"version": version("swh-objstorage"), "results": results}))


def run_winery(n_ids: int, n_lookups: int) -> tuple[dict | None, str]:
    """winery's figures from the peer interpreter, or None and why not."""
    default = ROOT / ".venv-peer" / "bin" / "python"
    python = os.environ.get("RDIRDB_PEER_PYTHON") or (str(default) if default.exists() else None)
    if python is None:
        try:
            import swh.objstorage  # noqa: F401

            python = sys.executable
        except ImportError:
            return None, ("swh-objstorage is not installed (no $RDIRDB_PEER_PYTHON, no .venv-peer, "
                          "not importable here): winery's figures are missing")
    proc = subprocess.run([python, __file__, "--winery", "--ids", str(n_ids), "--lookups", str(n_lookups)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    if proc.returncode != 0:
        return None, f"winery's run failed under {python}:\n{proc.stderr[-2000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report["results"], f"swh-objstorage {report['version']} (under {python})"


# -- rdirdb's side --------------------------------------------------------------------------


def rdirdb_main(n_ids: int, n_lookups: int) -> dict[str, float]:
    import numpy as np

    from rdirdb import SharedBase
    from rdirdb.sharedbase import init_schema

    with scratch_database("rdirdb") as dsn:
        init_schema(dsn)
        base = SharedBase(dsn, application_name="bench", active_pool_name="bench")

        def record(ids):
            with base.transaction() as db:
                base.record_new_obj_ids(db, ids)

        results = measure(base, record, n_ids, n_lookups)
        many = np.array(ids_for("record", n_ids)[: n_ids // 2] + ids_for("miss", n_ids // 2), dtype="S32")
        base.contains_many(many[:100])
        start = time.perf_counter()
        found = base.contains_many(many)
        results["contains_many"] = (time.perf_counter() - start) / len(many)
        assert np.count_nonzero(found) == n_ids // 2
        base.close()
    with tempfile.TemporaryDirectory() as tmp:
        base = SharedBase(f"lmdb://{tmp}", active_pool_name="bench")
        ids = ids_for("record", n_ids)
        with base.transaction() as db:
            base.record_new_obj_ids(db, ids)
        hits = random.Random(1).sample(ids, min(len(ids), 20 * n_lookups))
        results["lmdb_contains"] = per_call(base.contains, hits)
        start = time.perf_counter()
        base.contains_many(np.array(ids, dtype="S32"))
        results["lmdb_contains_many"] = (time.perf_counter() - start) / len(ids)
        base.close()
    return results


def best(into: dict[str, float], results: dict[str, float]) -> dict[str, float]:
    for key, value in results.items():
        into[key] = min(value, into.get(key, value))
    return into


def fmt(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds >= 0.1 else f"{seconds * 1e6:9.2f} us"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=50_000, help="ids recorded in one transaction")
    parser.add_argument("--lookups", type=int, default=2_000, help="single lookups per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each side; the best figure counts")
    parser.add_argument("--winery", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.winery:
        winery_main(args.ids, args.lookups)
        return 0

    print(f"PostgreSQL: {PG_DSN}; {args.ids} ids per batch, {args.lookups} lookups per figure, "
          f"best of {args.rounds} interleaved rounds")
    ours: dict[str, float] = {}
    winery: dict[str, float] | None = {}
    for _ in range(args.rounds):
        # Interleaved, each on a fresh database: both sides see the same machine load.
        best(ours, rdirdb_main(args.ids, args.lookups))
        if winery is not None:
            theirs, winery_note = run_winery(args.ids, args.lookups)
            winery = best(winery, theirs) if theirs is not None else None
    print(f"winery: {winery_note}\n")
    print(f"{'operation':24} {'rdirdb':>13} {'winery':>13} {'speed-up':>9} {'target':>7}")
    failed = 0
    for label, key, winery_key, target in TARGETS:
        theirs = winery[winery_key] if winery else None
        ratio = theirs / ours[key] if theirs else None
        verdict = "" if target is None or ratio is None else ("ok" if ratio >= target else "MISSED")
        failed += verdict == "MISSED"
        print(f"{label:24} {fmt(ours[key]):>13} {fmt(theirs) if theirs else 'n/a':>13} "
              f"{f'{ratio:8.1f}x' if ratio else 'n/a':>9} {f'>={target:g}x' if target else '':>7} {verdict}")
    print(f"{'LMDB contains_many/id':24} {fmt(ours['lmdb_contains_many']):>13}")
    if winery is None:
        print("\nNo comparison: winery's SharedBase could not be measured (see above).")
    elif failed:
        print(f"\n{failed} target(s) missed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
