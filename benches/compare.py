"""rdirdb next to a raw-LMDB ceiling and a plain py-lmdb baseline, in one run.

    python benches/compare.py [--n 1000000] [--reps 3] [--json FILE]

Every figure is records/s, the median of ``--reps`` runs, each insert on a
fresh temporary directory. The three contenders get the same records in the
same random order, 10,000 per transaction:

* rdirdb: ``ChunkIndex.put_batch`` on Python tuples, ``fetch`` pages of 1,000
  with markers (Python records out), ``status(limit=10000)`` pages.
* ceiling: ``rdirdb._rdir.raw_insert`` / ``raw_scan``, C loops over the same
  pre-encoded keys and values (no Python object per record).
* baseline: what a user writes with the ``lmdb`` package: text keys
  ``chunk|<cid>|<chunk>``, compact JSON values, ``txn.put`` in the given
  order; pages by ``cursor.set_range`` + ``json.loads`` + key split.

The report is a list of sections; a section is a function ``f(n)`` returning
rows ``(label, records_per_s, note)``. ``benches/compare_client.py`` may add
one (``compare_client(n)``); it is appended when importable.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from functools import lru_cache

import lmdb

import rdirdb
from rdirdb import _rdir
from rdirdb.rdir.backend import pages
from rdirdb.rdir.store import Store

BATCH = 10_000
PAGE = 1_000
STATUS_PAGE = 10_000
CHUNKS_PER_CONTAINER = 500  # 1,000,000 chunks: 2,000 containers
MTIME = 1_700_000_000
BASELINE_MAP_SIZE = 32 << 30  # a user sizes the map once, generously

REPS = 3
Row = tuple  # (label, records_per_s or None, note)


# -- data ----------------------------------------------------------------------


@lru_cache(maxsize=1)
def records(n: int) -> list[tuple[str, str, str, int, str, int]]:
    """n OpenIO-shaped records ``(container_id, content_id, chunk_id, mtime, path, version)``
    in random order; two chunks per content, as small objects get on one rawx.

    The tuples are built in their final order, as a client's batch would be
    (shuffling a built list would scatter them in memory and add cache misses).
    """
    rng = random.Random(42)
    containers = [
        hashlib.sha256(f"AUTH_demo\0bucket-{i}".encode()).hexdigest().upper()
        for i in range(max(1, n // CHUNKS_PER_CONTAINER))
    ]
    chunk_hex = rng.randbytes(32 * n).hex().upper()
    content_hex = rng.randbytes(16 * (n // 2 + 1)).hex().upper()
    mtimes = [MTIME + rng.randrange(86_400 * 365) for _ in range(n)]
    order = list(range(n))
    rng.shuffle(order)
    out = []
    for i in order:
        j = i // 2
        out.append((
            containers[j % len(containers)],
            content_hex[32 * j:32 * j + 32],
            chunk_hex[64 * i:64 * i + 64],
            mtimes[i],
            f"obj-{j}",
            1,
        ))
    return out


def batches(items: list) -> list[list]:
    return [items[i:i + BATCH] for i in range(0, len(items), BATCH)]


def encode(items: list) -> tuple[list[bytes], list[bytes]]:
    """The engine's stored keys and values of ``items``, in the same order."""
    keys = [_rdir.encode_chunk_key(cid, chunk)[1] for cid, _, chunk, _, _, _ in items]
    values = [_rdir.encode_chunk_value(content, mtime, path, version)
              for _, content, _, mtime, path, version in items]
    return keys, values


@lru_cache(maxsize=1)
def encoded(n: int) -> tuple[list[bytes], list[bytes]]:
    return encode(records(n))


# -- measuring -----------------------------------------------------------------


class Workdir:
    """Fresh temporary directories under one root, removed at exit."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="rdirdb-compare-")

    def fresh(self) -> str:
        return tempfile.mkdtemp(dir=self.root)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


WORK: Workdir | None = None


class Clock:
    """Seconds spent inside ``with clock:`` blocks (setup and cleanup stay outside)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self.start


def median_rates(n: int, contenders: dict, reps: int) -> dict[str, float]:
    """records/s (median) of each ``name: fn(clock)``; the repetitions are
    interleaved so that noise on the machine hits every contender alike."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            clock = Clock()
            fn(clock)
            times[name].append(clock.seconds)
    return {name: n / statistics.median(t) for name, t in times.items()}


def ratio(a: float, b: float, target: float | None = None) -> str:
    text = f"{a / b:.2f}x"
    if target is not None:
        text += f" (target >= {target:g}x: {'ok' if a / b >= target else 'MISSED'})"
    return text


# -- contenders: insert ----------------------------------------------------------


def rdirdb_insert(n: int, sync: bool, clock: Clock) -> None:
    with Store(WORK.fresh(), sync=sync) as store:
        chunks = store.volume("vol", create=True).chunks
        with clock:
            for batch in batches(records(n)):
                chunks.put_batch(batch)
    shutil.rmtree(store.path)


def raw_insert(n: int, sync: bool, clock: Clock) -> None:
    keys, values = encoded(n)
    with Store(WORK.fresh(), sync=sync) as store:
        env = store.volume("vol", create=True).env
        with clock:
            _rdir.raw_insert(env, keys, values, batch=BATCH)
    shutil.rmtree(store.path)


def _text_key(cid: str, chunk: str) -> bytes:
    return f"chunk|{cid}|{chunk}".encode()


def baseline_put(env: lmdb.Environment, batch: list) -> None:
    """One batch in one transaction, the way a user writes it with py-lmdb."""
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    with env.begin(write=True) as txn:
        for cid, content, chunk, mtime, path, version in batch:
            value = {"content_id": content, "mtime": mtime, "path": path, "version": version}
            txn.put(_text_key(cid, chunk), dumps(value).encode())


def baseline_load(env: lmdb.Environment, items: list) -> None:
    for batch in batches(items):
        baseline_put(env, batch)


def baseline_insert(n: int, sync: bool, clock: Clock) -> None:
    path = WORK.fresh()
    env = lmdb.open(path, map_size=BASELINE_MAP_SIZE, sync=sync, metasync=sync)
    with clock:
        baseline_load(env, records(n))
    env.close()
    shutil.rmtree(path)


def insert_section(n: int) -> list[Row]:
    """Bulk insert: random order, 10,000 records per transaction."""
    rows = []
    encoded(n)  # the records and their encoding are built before any clock starts
    for sync in (True, False):
        rates = median_rates(n, {
            "rdirdb": lambda clock: rdirdb_insert(n, sync, clock),
            "ceiling": lambda clock: raw_insert(n, sync, clock),
            "baseline": lambda clock: baseline_insert(n, sync, clock),
        }, REPS)
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


def timed(clock: Clock, fn, *args) -> None:
    with clock:
        fn(*args)


def rdirdb_pages(chunks) -> int:
    return sum(len(page) for page in pages(chunks.fetch, limit=PAGE))


def baseline_page(env: lmdb.Environment, marker: str | None, limit: int):
    """One page the way a user writes it: set_range past the marker, JSON, split."""
    start = b"chunk|" + (marker.encode() if marker else b"")
    page = []
    with env.begin() as txn:
        cur = txn.cursor()
        if not cur.set_range(start):
            return page, False, None
        if marker and cur.key() == start:
            cur.next()
        for key, value in cur:
            if not key.startswith(b"chunk|"):
                break
            if len(page) == limit:
                return page, True, f"{page[-1][0]}|{page[-1][1]}"
            _, cid, chunk = key.decode().split("|", 2)
            v = json.loads(value)
            page.append((cid, chunk, v["content_id"], v["mtime"], v["path"], v["version"]))
    return page, False, None


def baseline_pages(env: lmdb.Environment) -> int:
    total, marker, truncated = 0, None, True
    while truncated:
        page, truncated, marker = baseline_page(env, marker, PAGE)
        total += len(page)
    return total


def rdirdb_status(chunks) -> int:
    total, marker, truncated = 0, None, True
    while truncated:
        count, _, _, truncated, marker = chunks.status(marker=marker, limit=STATUS_PAGE)
        total += count
    return total


def scan_section(n: int) -> list[Row]:
    """Scans over every record: pages of 1,000 with markers, status pages, raw walk."""
    with Store(WORK.fresh(), sync=False) as store:
        volume = store.volume("vol", create=True)
        for batch in batches(records(n)):
            volume.chunks.put_batch(batch)
        with lmdb.open(WORK.fresh(), map_size=BASELINE_MAP_SIZE, sync=False, metasync=False) as env:
            baseline_load(env, records(n))
            assert rdirdb_pages(volume.chunks) == baseline_pages(env) == rdirdb_status(volume.chunks) == n
            rates = median_rates(n, {
                "pages": lambda clock: timed(clock, rdirdb_pages, volume.chunks),
                "baseline": lambda clock: timed(clock, baseline_pages, env),
                "status": lambda clock: timed(clock, rdirdb_status, volume.chunks),
                "raw": lambda clock: timed(clock, _rdir.raw_scan, volume.env),
            }, REPS)
    return [
        ("scan rdirdb fetch pages of 1,000", rates["pages"],
         f"{ratio(rates['pages'], rates['baseline'], 10)} baseline, "
         f"{ratio(rates['pages'], rates['raw'])} raw scan"),
        ("scan baseline set_range+JSON pages", rates["baseline"], ""),
        ("status rdirdb pages of 10,000", rates["status"], f"{ratio(rates['status'], rates['raw'])} raw scan"),
        ("scan ceiling raw_scan", rates["raw"], ""),
    ]


# -- report ----------------------------------------------------------------------

SECTIONS = [insert_section, scan_section]
try:
    from compare_client import compare_client  # another engineer's section, optional
except ModuleNotFoundError as exc:
    if exc.name != "compare_client":
        raise
else:
    SECTIONS.append(compare_client)


def main(argv: list[str] | None = None) -> int:
    global WORK, REPS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="records (default 1,000,000)")
    parser.add_argument("--reps", type=int, default=REPS, help="repetitions; medians are printed")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    REPS = args.reps
    WORK = Workdir()
    print(f"rdirdb {rdirdb.__version__} (liblmdb {'.'.join(map(str, rdirdb.lmdb_version()))}), "
          f"py-lmdb {lmdb.__version__}; n={args.n:,}, medians of {REPS}, {os.cpu_count()} CPUs")
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
        WORK.close()
    print(f"\n({time.perf_counter() - started:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "reps": REPS, "rows": report}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
