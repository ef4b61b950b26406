"""What benches/compare.py and its sections share: the records, the clock, the
contenders that are not rdirdb's (the raw-LMDB ceiling, the py-lmdb baseline).

Every figure is records/s, the median of ``REPS`` runs, each insert on a fresh
temporary directory; the contenders get the same records in the same random
order, 10,000 per transaction.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import statistics
import tempfile
import time
from array import array
from functools import lru_cache

import lmdb

from rdirdb import _ceiling, _rdir
from rdirdb.rdir.store import Store

BATCH = 10_000
PAGE = 1_000
STATUS_PAGE = 10_000
CHUNKS_PER_CONTAINER = 500  # 1,000,000 chunks: 2,000 containers
MTIME = 1_700_000_000
BASELINE_MAP_SIZE = 32 << 30  # a user sizes the map once, generously
FIELDS = _rdir.CHUNK_DTYPE_FIELDS

REPS = 3
Row = tuple  # (label, records_per_s or None, note)


# -- data ----------------------------------------------------------------------


@lru_cache(maxsize=1)
def records(n: int) -> list[tuple[str, str, str, int, str, int]]:
    """n OpenIO-shaped records ``(container_id, content_id, chunk_id, mtime, path, version)``
    in random order; two chunks per content, as small objects get on one rawx.

    The tuples and every object in them are built in their final order, as a
    client's batch would be: shuffling a built list, or taking the mtimes from
    a list of int objects made in another order, scatters the records in
    memory, and a writer then spends most of its time waiting for cache misses
    (reading such a batch was 45% slower).
    """
    rng = random.Random(42)
    containers = [
        hashlib.sha256(f"AUTH_demo\0bucket-{i}".encode()).hexdigest().upper()
        for i in range(max(1, n // CHUNKS_PER_CONTAINER))
    ]
    chunk_hex = rng.randbytes(32 * n).hex().upper()
    content_hex = rng.randbytes(16 * (n // 2 + 1)).hex().upper()
    # An array, not a list: mtimes[i] makes its int object here, next to its tuple.
    mtimes = array("q", (MTIME + rng.randrange(86_400 * 365) for _ in range(n)))
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


@lru_cache(maxsize=1)
def packed(n: int) -> _ceiling.Packed:
    """The stored keys and values of ``records(n)`` in one buffer, for the insert ceiling."""
    return _ceiling.pack(*encoded(n))


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


# What a Clock reads: the wall clock, or with ``--clock cpu`` the CPU time of
# this process (user + system, every thread), which the load of other
# processes on a shared machine disturbs much less; it leaves out the waits
# of a synced commit, so it is for the nosync and read rows only.
TIMERS = {"wall": time.perf_counter, "cpu": time.process_time}
TIMER = TIMERS["wall"]


class Clock:
    """Seconds spent inside ``with clock:`` blocks (setup and cleanup stay outside)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> None:
        self.start = TIMER()

    def __exit__(self, *exc: object) -> None:
        self.seconds += TIMER() - self.start


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


# -- the ceiling and the baseline ---------------------------------------------------


def raw_insert(n: int, sync: bool, clock: Clock) -> None:
    """The insert ceiling: the records already encoded, packed in one buffer."""
    records = packed(n)
    with Store(WORK.fresh(), sync=sync) as store:
        index = store.volume("vol", create=True).chunks.stamps
        with clock:
            _ceiling.raw_insert(index, records, batch=BATCH)
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


def timed(clock: Clock, fn, *args) -> None:
    with clock:
        fn(*args)


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
