"""Disk full: fill a small tmpfs holding the store, then free space.

A 2 MiB tmpfs holds the store and a 512 KiB filler file. Batches of 100
records (about 1 KiB each) are pushed until one fails. Then:

* the error is an :class:`rdirdb.errors.LmdbError` raised by the commit
  (liblmdb turns a short write into EIO, so it is usually ``LmdbIOError``,
  sometimes ``DiskFullError`` when the write got no byte at all);
* the failed batch left nothing: the same handle, and the store reopened while
  the disk is still full, hold exactly the acknowledged batches, all whole;
* once the filler is removed, writes on the same handle succeed, and the
  store reopens with everything.

With ``writemap`` the store is opened with MDB_WRITEMAP, where LMDB writes
through the map into a sparse file: the engine allocates blocks ahead, so a
full disk is a ``DiskFullError`` from ``fallocate`` before the transaction
writes anything, never a SIGBUS.

Needs root (``mount -t tmpfs``); :func:`run` raises :class:`MountNotPermitted`
otherwise. Usage: ``python tests/stress/diskfull.py [--writemap]``
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

if not __package__:  # run as a script: make the `tests` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.stress.crash_harness import Outcome, show  # noqa: E402

TMPFS_SIZE = "2m"
BATCH = 100


class MountNotPermitted(RuntimeError):
    pass


@contextmanager
def small_tmpfs(workdir: str | None = None):
    with tempfile.TemporaryDirectory(dir=workdir) as mountpoint:
        try:
            out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", mountpoint],
                                 capture_output=True, text=True)
        except OSError as exc:  # no mount command
            raise MountNotPermitted(f"cannot run mount: {exc}") from None
        if out.returncode != 0:
            raise MountNotPermitted(f"cannot mount a tmpfs: {out.stderr.strip() or out.returncode}")
        try:
            yield mountpoint
        finally:
            subprocess.run(["umount", mountpoint], check=True)


def _batch(b: int, size: int = BATCH) -> list[tuple]:
    return [("ctr", f"b{b:04d}", f"b{b:04d}-{j:03d}", b, "p" * 1000, 1) for j in range(size)]


def _batches(chunks) -> Counter:
    records, truncated, _ = chunks.fetch(limit=1_000_000)
    assert not truncated
    return Counter(r[1] for r in records)


@dataclass
class Figures(Outcome):
    mode: str
    acked: int = 0
    error: str = ""
    error_class: str = ""
    retries_failed: int = 0
    reopened_while_full: bool = False
    written_after_free: bool = False
    errors: list[str] = field(default_factory=list)


def run(sync: bool, workdir: str | None = None, writemap: bool = False) -> Figures:
    from rdirdb.errors import LmdbError
    from rdirdb.rdir.store import Store

    figures = Figures(("sync" if sync else "nosync") + (" writemap" if writemap else ""))
    with small_tmpfs(workdir) as root:
        filler = os.path.join(root, "filler")
        with open(filler, "wb") as f:
            f.write(b"x" * (512 << 10))
        path = os.path.join(root, "store")
        store = Store(path, sync=sync, map_size=1 << 20, writemap=writemap)
        chunks = store.volume("v", create=True).chunks

        def expect(where: str, batches: int) -> None:
            seen = _batches(chunks)
            want = Counter({f"b{b:04d}": BATCH for b in range(batches)})
            if seen != want or chunks.count() != sum(want.values()):
                figures.errors.append(f"{where}: {len(seen)} batches ({sum(seen.values())} records, "
                                      f"count() {chunks.count()}), expected {batches} whole batches")

        failed = None
        for b in range(200):  # 2 MiB cannot hold 200 * 100 KiB
            try:
                chunks.put_batch(_batch(b))
            except LmdbError as exc:
                failed = exc
                break
            figures.acked += 1
        if failed is None:
            figures.errors.append("the disk never filled up")
            store.close()
            return figures
        figures.error_class, figures.error = type(failed).__name__, str(failed)
        expect("same handle after the failure", figures.acked)
        for _ in range(3):  # still full: the same clear error, no crash, no write
            try:
                chunks.put_batch(_batch(figures.acked))
            except LmdbError:
                figures.retries_failed += 1
        expect("same handle after failed retries", figures.acked)
        store.close()

        store = Store(path, sync=sync, writemap=writemap)  # opens while the disk is still full
        chunks = store.volume("v").chunks
        expect("reopened while full", figures.acked)
        figures.reopened_while_full = not figures.errors
        os.remove(filler)
        try:
            chunks.put_batch(_batch(figures.acked))
            chunks.put_batch(_batch(figures.acked + 1))
            figures.written_after_free = True
        except LmdbError as exc:
            figures.errors.append(f"write after freeing space failed: {exc}")
        store.close()

        with Store(path, sync=sync, writemap=writemap) as store:
            chunks = store.volume("v").chunks
            expect("reopened after freeing space", figures.acked + 2 * figures.written_after_free)
    return figures


def main(argv: list[str] | None = None) -> int:
    writemap = "--writemap" in (sys.argv[1:] if argv is None else argv)
    ok = True
    for sync in (True, False):
        try:
            f = run(sync, writemap=writemap)
        except MountNotPermitted as exc:
            print(f"skipped: {exc}")
            return 0
        ok &= show(f"{f.mode} {f.acked} batches acknowledged, then {f.error_class}: {f.error}; "
                   f"{f.retries_failed}/3 retries failed cleanly, reopened while full: "
                   f"{f.reopened_while_full}, writes after freeing space: {f.written_after_free}", f)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
