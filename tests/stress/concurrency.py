"""Concurrency: writer and reader processes on one store at once.

* ``writers`` processes each write their own volume, while ``readers``
  processes (every other one with a read-only store) scan every volume in a loop. A reader's page is one read
  transaction, so it must see whole batches only and counts that never go down.
* two more writer processes share one volume, with a 1 MiB map and records
  big enough (600-byte paths) that both grow it while the other writes (LMDB serializes the writers; no error may reach
  the caller). They also rewrite a common set of keys (last writer wins).

Afterwards every volume is scanned: every batch whole, ``count()``, the scan
and ``status`` agree, and the shared keys exist once each.

:func:`hot_copy` copies a volume (``Environment.copy``) while a writer runs.

Usage: ``python tests/stress/concurrency.py [--writers 3 --readers 2 --batches 200]``
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

if not __package__:  # run as a script: make the `tests` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.stress.crash_harness import Outcome, show  # noqa: E402

SHARED_VOLUME = "shared"
SHARED_KEYS = 50


def _records(writer_id: str, batch: int, size: int, pad: int = 0) -> list[tuple]:
    """One batch; the path ends with the batch size (``pad`` bytes make records bigger)."""
    batch_id = f"{writer_id}-{batch:05d}"
    return [(f"ctr-{j % 7}", batch_id, f"{batch_id}-{j:04d}", batch, f"{'p' * pad}/{size}", 1)
            for j in range(size)]


def _shared_records(writer_id: str, batch: int) -> list[tuple]:
    return [("common", f"{writer_id}-{batch}", f"key-{j:03d}", batch, f"common/{SHARED_KEYS}", 1)
            for j in range(SHARED_KEYS)]


def writer(store_path: str, volume: str, writer_id: str, batches: int, size: int,
           shared: bool, queue) -> None:
    from rdirdb.rdir.store import Store

    errors = []
    try:
        with Store(store_path, map_size=1 << 20) as store:
            chunks = store.volume(volume, create=True).chunks
            for b in range(batches):
                chunks.put_batch(_records(writer_id, b, size, 600 if shared else 0))
                if shared and b % 5 == 0:
                    chunks.put_batch(_shared_records(writer_id, b))
    except Exception as exc:  # reported to the parent, which fails the run
        errors.append(f"writer {writer_id}: {type(exc).__name__}: {exc}")
    queue.put(("writer", writer_id, batches, errors))


def _whole_batches(records) -> list[str]:
    """Errors for the batches of ``records`` (one snapshot) that are not whole."""
    seen = Counter(r[1] for r in records if r[0] != "common")
    errors = []
    for r in records:
        if r[0] == "common":
            continue
        batch_id, size = r[1], r[4].rsplit("/", 1)[1]
        if seen[batch_id] != int(size):
            errors.append(f"batch {batch_id}: {seen[batch_id]} of {size} records in one snapshot")
            break
    return errors


def reader(store_path: str, stop, queue, readonly: bool = False) -> None:
    from rdirdb.errors import LmdbFileNotFoundError, NotFound
    from rdirdb.rdir.store import Store

    scans, errors, last = 0, [], {}
    # A read-only store sees a volume whose creator has not yet created its named
    # databases (known gap, test_read_only_open_of_a_volume_being_created): retry.
    not_ready = (NotFound, LmdbFileNotFoundError) if readonly else NotFound
    try:
        with Store(store_path, readonly=readonly) as store:
            while not stop.is_set() and not errors:
                for volume in store.volumes():
                    try:
                        chunks = store.volume(volume).chunks
                    except not_ready:
                        continue
                    records, truncated, _ = chunks.fetch(limit=1_000_000)
                    total = chunks.status(limit=1_000_000)[0]
                    errors.extend(_whole_batches(records))
                    n = len(records)
                    if truncated or n < last.get(volume, 0) or total < n:
                        errors.append(f"{volume}: counts went back ({last.get(volume)} -> {n}, "
                                      f"then status {total})")
                    last[volume] = n
                    scans += 1
    except Exception as exc:
        errors.append(f"reader: {type(exc).__name__}: {exc}")
    queue.put(("reader", os.getpid(), scans, errors))


@dataclass
class Figures(Outcome):
    writers: int = 0
    readers: int = 0
    volumes: int = 0
    records: int = 0
    batches: int = 0
    scans: int = 0
    shared_file_mib: float = 0.0  # data.mdb of the shared volume; > 1 MiB: the 1 MiB map grew
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def run(writers: int = 3, readers: int = 2, batches: int = 100, size: int = 50,
        workdir: str | None = None, timeout: float = 300) -> Figures:
    ctx = multiprocessing.get_context("spawn")  # no LMDB handle crosses a fork
    figures = Figures(writers=writers + 2, readers=readers, volumes=writers + 1)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        store_path = os.path.join(tmp, "store")
        queue, stop = ctx.Queue(), ctx.Event()
        write_procs = [ctx.Process(target=writer, args=(store_path, f"vol-{i}", f"w{i}", batches, size,
                                                        False, queue)) for i in range(writers)]
        write_procs += [ctx.Process(target=writer, args=(store_path, SHARED_VOLUME, f"s{i}", batches,
                                                         size, True, queue)) for i in range(2)]
        # Every other reader opens the store read-only.
        read_procs = [ctx.Process(target=reader, args=(store_path, stop, queue, i % 2 == 1))
                      for i in range(readers)]
        for p in read_procs + write_procs:
            p.start()
        results = []
        deadline = time.monotonic() + timeout
        for _ in write_procs:
            results.append(queue.get(timeout=max(1, deadline - time.monotonic())))
        stop.set()
        for _ in read_procs:
            results.append(queue.get(timeout=max(1, deadline - time.monotonic())))
        for p in read_procs + write_procs:
            p.join(timeout=30)
            if p.exitcode != 0:
                figures.errors.append(f"process {p.pid} exited with {p.exitcode}")
        for kind, _, n, errors in results:
            figures.errors.extend(errors)
            if kind == "reader":
                figures.scans += n
        figures.errors.extend(_check_after(store_path, writers, batches, size, figures))
    figures.seconds = time.monotonic() - started
    return figures


def _check_after(store_path: str, writers: int, batches: int, size: int, figures: Figures) -> list[str]:
    from rdirdb.rdir.store import Store

    errors = []
    with Store(store_path) as store:
        volumes = store.volumes()
        if volumes != sorted([f"vol-{i}" for i in range(writers)] + [SHARED_VOLUME]):
            errors.append(f"unexpected volumes {volumes}")
        for volume in volumes:
            chunks = store.volume(volume).chunks
            records, truncated, _ = chunks.fetch(limit=1_000_000)
            status = chunks.status(limit=1_000_000)
            errors.extend(_whole_batches(records))
            shared = volume == SHARED_VOLUME
            expected = batches * size * (2 if shared else 1) + (SHARED_KEYS if shared else 0)
            if not (len(records) == chunks.count() == status[0] == expected) or truncated:
                errors.append(f"{volume}: scan {len(records)}, count() {chunks.count()}, "
                              f"status {status[0]}, expected {expected}")
            if shared:
                common = [r for r in records if r[0] == "common"]
                if sorted(r[2] for r in common) != [f"key-{j:03d}" for j in range(SHARED_KEYS)]:
                    errors.append("shared keys are not there exactly once each")
                figures.shared_file_mib = os.path.getsize(
                    os.path.join(store._dir(volume, "rawx"), "data.mdb")) / (1 << 20)
            figures.records += len(records)
            figures.batches += len({r[2] for r in records})
    return errors


@dataclass
class HotCopy(Outcome):
    copies: int = 0
    records_min: int = 0
    records_max: int = 0
    during_writes: int = 0  # copies started while the writer was still writing
    errors: list[str] = field(default_factory=list)


def hot_copy(copies: int = 5, workdir: str | None = None) -> HotCopy:
    """Copy a volume (``Environment.copy``, the replicas' catch-up path) while a
    writer process pushes batches: every copy opens and holds whole batches only."""
    from rdirdb.rdir.store import Store

    ctx = multiprocessing.get_context("spawn")
    result = HotCopy(records_min=1 << 62)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        store_path = os.path.join(tmp, "store")
        with Store(store_path) as store:
            env = store.volume("copied", create=True).env
            queue = ctx.Queue()
            proc = ctx.Process(target=writer, args=(store_path, "copied", "w", 3000, 20, False, queue))
            proc.start()
            deadline = time.monotonic() + 60
            while store.volume("copied").chunks.count() == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            for i in range(copies):
                time.sleep(0.1)
                result.during_writes += proc.is_alive()
                target = os.path.join(tmp, f"copy-{i}")
                env.copy(os.path.join(target, "rawx", "copied"), compact=i % 2 == 0)
                with Store(target, readonly=True) as copy:
                    chunks = copy.volume("copied").chunks
                    records, _, _ = chunks.fetch(limit=1_000_000)
                    result.errors.extend(_whole_batches(records))
                    if len(records) != chunks.count():
                        result.errors.append(f"copy {i}: scan {len(records)}, count() {chunks.count()}")
                    result.records_min = min(result.records_min, len(records))
                    result.records_max = max(result.records_max, len(records))
                result.copies += 1
            result.errors.extend(queue.get(timeout=120)[3])
            proc.join(30)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--size", type=int, default=50)
    args = parser.parse_args(argv)
    f = run(args.writers, args.readers, args.batches, args.size)
    show(f"{f.writers} writer processes ({args.writers} own volumes + 2 on one shared volume), "
         f"{f.readers} readers: {f.records} records in {f.batches} batches, {f.scans} snapshot "
         f"scans, shared data.mdb {f.shared_file_mib:.1f} MiB (map started at 1 MiB), "
         f"{f.seconds:.1f} s", f)
    h = hot_copy()
    show(f"hot copies: {h.copies} copies ({h.during_writes} during writes) of {h.records_min} to "
         f"{h.records_max} records, whole batches only", h)
    return 0 if f.ok and h.ok else 1


if __name__ == "__main__":
    sys.exit(main())
