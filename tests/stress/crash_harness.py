"""Crash safety: kill a writer with SIGKILL at random moments, then check the store.

The writer process pushes batches and deletes whole earlier batches; one
round in five kills it while it opens the store (the first one while it
creates it). Every record of a batch carries the batch id (its
``content_id``) and the batch size (in its ``path``), so a scan tells whether
a batch is whole, absent or half applied. The writer appends a line to an acknowledgement log only AFTER
``put_batch``/``delete_batch`` returned::

    P <batch id> <size>     the batch is written
    D <batch id>            the batch is deleted

After each kill the store is opened again and checked:

* every acknowledged batch is there, whole; every acknowledged delete is gone;
* no batch is half applied (put and delete are all or nothing), and the only
  unacknowledged batch that may show up is the one in flight at the kill;
* a full scan (``fetch`` pages), ``status`` pages and ``count()`` agree.

Both durability modes are run: ``sync=True`` (fsync per commit) and
``sync=False`` (MDB_NOSYNC). A SIGKILL leaves the OS page cache intact, so
both must keep every acknowledged batch; only a power loss or an OS crash can
lose the last commits of ``sync=False``.

:func:`stale_readers` kills processes that hold read transactions while the
environment stays open elsewhere, and checks that a new opener clears their
reader slots (``mdb_reader_check`` on open). :func:`killed_lock_holder` kills a
process inside a write transaction while another one waits for the lock.

Usage: ``python tests/stress/crash_harness.py --rounds 50 [--mode sync|nosync|both] [--writemap]``
(prints the figures; exits 1 on any violation).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

VOLUME = "crash-vol"
CONTAINERS = 5


class Outcome:
    """Base of the figures of a scenario: ``errors`` lists what went wrong."""

    errors: list[str]

    @property
    def ok(self) -> bool:
        return not self.errors


def show(line: str, outcome: Outcome) -> bool:
    """Print a scenario's figures with the verdict and the first errors; returns ok."""
    print(f"{line}  {'ok' if outcome.ok else 'FAILED'}")
    for error in outcome.errors[:10]:
        print("   ", error)
    return outcome.ok


# ---------------------------------------------------------------------------
# Records of a batch
# ---------------------------------------------------------------------------


def batch_records(batch_id: str, size: int) -> list[tuple]:
    """The records of one batch: half canonical ids (``chunk_bin``), half text
    ids (``chunk_text``), so one batch spans both databases."""
    records = []
    for j in range(size):
        digest = hashlib.sha256(f"{batch_id}/{j}".encode()).hexdigest().upper()
        cid = hashlib.sha256(f"c{j % CONTAINERS}".encode()).hexdigest().upper()
        if j % 2:
            records.append((cid, batch_id, digest, j, f"{batch_id}/{size}", 1))
        else:
            records.append((f"ctr-{j % CONTAINERS}", batch_id, f"chunk-{digest[:40]}", j,
                            f"{batch_id}/{size}", 1))
    return records


def batch_keys(batch_id: str, size: int) -> list[tuple[str, str]]:
    return [(r[0], r[2]) for r in batch_records(batch_id, size)]


# ---------------------------------------------------------------------------
# Writer (child process)
# ---------------------------------------------------------------------------


def read_log(log_path: str) -> list[list[str]]:
    """The complete lines of the acknowledgement log, split."""
    try:
        with open(log_path) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    return [line.split() for line in text.split("\n")[:-1]]  # a torn last line is dropped


def writer(store_path: str, log_path: str, sync: bool, round_no: int, seed: int,
           writemap: bool = False) -> None:
    """Push and delete batches forever; acknowledge each one after it returned."""
    from rdirdb.rdir.store import Store

    rng = random.Random(seed)
    live = {}  # acknowledged, not deleted: batch id -> size
    for entry in read_log(log_path):
        if entry[0] == "P":
            live[entry[1]] = int(entry[2])
        else:
            live.pop(entry[1], None)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(1, b"opening\n")
    store = Store(store_path, sync=sync, writemap=writemap, map_size=1 << 20)  # small map: growth is exercised
    chunks = store.volume(VOLUME, create=True).chunks
    os.write(1, b"ready\n")
    seq = 0
    while True:
        if live and rng.random() < 0.4:
            batch_id = rng.choice(sorted(live))
            keys = batch_keys(batch_id, live[batch_id])
            # The operation is announced just before the call, so a check knows
            # that it may be applied (whole) though not acknowledged.
            os.write(1, f"D {batch_id}\n".encode())
            chunks.delete_batch(keys)
            os.write(fd, f"D {batch_id}\n".encode())
            del live[batch_id]
        else:
            batch_id = f"r{round_no:03d}b{seq:05d}"
            size = rng.randint(1, 200)
            seq += 1
            records = batch_records(batch_id, size)
            os.write(1, f"P {batch_id} {size}\n".encode())
            chunks.put_batch(records)
            os.write(fd, f"P {batch_id} {size}\n".encode())
            live[batch_id] = size


# ---------------------------------------------------------------------------
# Checks (parent process)
# ---------------------------------------------------------------------------


@dataclass
class Check:
    records: int = 0
    batches: int = 0
    acked_puts: int = 0
    acked_deletes: int = 0
    applied: list[list[str]] = field(default_factory=list)  # in-flight operations found applied
    errors: list[str] = field(default_factory=list)


def full_scan(chunks) -> list[tuple]:
    records, marker = [], None
    while True:
        page, truncated, marker = chunks.fetch(marker=marker, limit=997)
        records.extend(page)
        if not truncated:
            return records


def full_status(chunks) -> tuple[int, Counter]:
    total, per_container, marker = 0, Counter(), None
    while True:
        t, _, containers, truncated, marker = chunks.status(marker=marker, limit=1009)
        total += t
        for cid, (n, _) in containers.items():
            per_container[cid] += n
        if not truncated:
            return total, per_container


def check_store(store_path: str, log_path: str, sync: bool, inflight: list[list[str]] | None = None,
                writemap: bool = False) -> Check:
    """Open the store after a crash and check it against the acknowledgement log.

    ``inflight``: the operations the writer announced but did not acknowledge
    (the one running at the kill); each may be applied or not, never half.
    """
    from rdirdb.rdir.store import Store

    result = Check()
    expected = {}  # batch id -> size, acknowledged and not deleted
    deleted = set()
    sizes = {}
    for entry in read_log(log_path):
        if entry[0] == "P":
            expected[entry[1]] = sizes[entry[1]] = int(entry[2])
            result.acked_puts += 1
        else:
            expected.pop(entry[1], None)
            deleted.add(entry[1])
            result.acked_deletes += 1
    optional_puts = {e[1]: int(e[2]) for e in inflight or () if e[0] == "P"}
    optional_deletes = {e[1] for e in inflight or () if e[0] == "D"}

    with Store(store_path, sync=sync, writemap=writemap) as store:
        if not store.exists(VOLUME) and not expected:
            return result  # killed before the first batch, while creating the volume
        chunks = store.volume(VOLUME).chunks
        records = full_scan(chunks)
        total, per_container = full_status(chunks)
        count = chunks.count()
    seen = Counter(r[1] for r in records)
    result.records, result.batches = len(records), len(seen)
    for r in records:
        if r[4] != f"{r[1]}/{sizes.get(r[1], optional_puts.get(r[1], -1))}":
            result.errors.append(f"record of unknown or resized batch: {r}")
            break
    for batch_id, n in seen.items():
        size = sizes.get(batch_id, optional_puts.get(batch_id))
        if n != size:
            result.errors.append(f"batch {batch_id} half applied: {n} of {size} records")
        elif batch_id in deleted:
            result.errors.append(f"acknowledged delete of {batch_id} is not applied")
        elif batch_id not in expected:
            if batch_id in optional_puts:
                result.applied.append(["P", batch_id, str(size)])
            else:
                result.errors.append(f"batch {batch_id} present but never announced")
    for batch_id, size in expected.items():
        if seen.get(batch_id, 0) == 0 and batch_id not in optional_deletes:
            result.errors.append(f"acknowledged batch {batch_id} ({size} records) is lost")
        elif batch_id in optional_deletes and seen.get(batch_id, 0) == 0:
            result.applied.append(["D", batch_id])
    scan_per_container = Counter(r[0] for r in records)
    if total != len(records) or per_container != scan_per_container:
        result.errors.append(f"status says {total} records, the scan {len(records)}")
    if count != len(records):
        result.errors.append(f"count() says {count}, the scan {len(records)}")
    return result


# ---------------------------------------------------------------------------
# Rounds
# ---------------------------------------------------------------------------


@dataclass
class RunFigures(Outcome):
    mode: str
    rounds: int = 0
    acked_puts: int = 0
    acked_deletes: int = 0
    records_at_end: int = 0
    inflight_applied: int = 0
    inflight_lost: int = 0
    killed_opening: int = 0  # rounds killed before the store was open
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def _env() -> dict[str, str]:
    """The child's environment: this process's rdirdb is found first."""
    import rdirdb

    src = os.path.dirname(os.path.dirname(os.path.abspath(rdirdb.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def run_rounds(rounds: int, sync: bool, workdir: str | None = None, seed: int = 0,
               max_delay: float = 0.4, writemap: bool = False) -> RunFigures:
    """``rounds`` kills of a writer on one store, checked after each (the writer and
    the checks open the store with MDB_WRITEMAP when ``writemap``)."""
    rng = random.Random(seed)
    figures = RunFigures(("sync" if sync else "nosync") + (" writemap" if writemap else ""))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        store_path, log_path = os.path.join(tmp, "store"), os.path.join(tmp, "ack.log")
        env = _env()
        for round_no in range(rounds):
            proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "writer", store_path, log_path,
                 "1" if sync else "0", str(round_no), str(rng.randrange(1 << 30)),
                 "1" if writemap else "0"],
                stdout=subprocess.PIPE, env=env)
            # One round in five kills the writer while it opens (or creates) the store.
            early = round_no % 5 == 0
            ready = proc.stdout.readline()
            if not early and ready == b"opening\n":
                ready = proc.stdout.readline()
            if ready != (b"opening\n" if early else b"ready\n"):
                proc.kill()
                proc.wait()
                proc.stdout.close()
                figures.errors.append(f"round {round_no}: writer failed to start ({ready!r})")
                break
            time.sleep(rng.uniform(0, 0.001) if early else rng.uniform(0, max_delay))
            proc.send_signal(signal.SIGKILL)
            out = proc.stdout.read()
            proc.wait()
            proc.stdout.close()
            if proc.returncode != -signal.SIGKILL:
                figures.errors.append(f"round {round_no}: writer exited with {proc.returncode}")
            announced = [e for e in (line.split() for line in out.decode().split("\n")[:-1])
                         if e[0] in ("P", "D")]
            figures.killed_opening += early and b"ready\n" not in out
            acked = {tuple(e) for e in read_log(log_path)}
            inflight = [e for e in announced[-1:] if tuple(e) not in acked]
            check = check_store(store_path, log_path, sync, inflight, writemap)
            # An applied in-flight operation is acknowledged now, so later rounds expect it.
            with open(log_path, "a") as log:
                log.writelines(" ".join(e) + "\n" for e in check.applied)
            figures.rounds += 1
            figures.inflight_applied += len(check.applied)
            figures.inflight_lost += len(inflight) - len(check.applied)
            figures.acked_puts, figures.acked_deletes = check.acked_puts, check.acked_deletes
            figures.records_at_end = check.records
            figures.errors.extend(f"round {round_no}: {e}" for e in check.errors)
            if check.errors:
                break
    figures.seconds = time.monotonic() - started
    return figures


# ---------------------------------------------------------------------------
# Stale reader slots
# ---------------------------------------------------------------------------

_READER = """
import os, sys, time
from rdirdb._lmdb import Environment
from rdirdb._rdir import CHUNK_DATABASES
env = Environment(sys.argv[1], databases=CHUNK_DATABASES)
txn = env.begin()
os.write(1, b"ready\\n")
time.sleep(60)
"""

_OPENER = """
import json, sys
from rdirdb._lmdb import Environment
from rdirdb._rdir import CHUNK_DATABASES
env = Environment(sys.argv[1], databases=CHUNK_DATABASES)
cleared_again = env.reader_check()
with env.begin() as txn:
    pass
print(json.dumps({"cleared_again": cleared_again}))
"""


@dataclass
class StaleReaders(Outcome):
    killed: int = 0
    full_before: bool = False       # the dead readers filled every slot
    cleared_by_opener: bool = False  # a new opener's reader_check freed them
    left_after: int = 0              # stale slots the holder still found afterwards
    errors: list[str] = field(default_factory=list)


def stale_readers(workdir: str | None = None, max_readers: int = 4) -> StaleReaders:
    """Fill every reader slot with processes killed inside read transactions.

    This process keeps the environment open the whole time, so LMDB does not
    reset the lock file (it does when the last user is gone): only
    ``mdb_reader_check`` can free the dead slots.
    """
    from rdirdb._lmdb import Environment
    from rdirdb._rdir import CHUNK_DATABASES
    from rdirdb.errors import ReadersFullError

    result = StaleReaders()
    env_vars = _env()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        holder = Environment(tmp, databases=CHUNK_DATABASES, max_readers=max_readers)
        try:
            slots = holder.info()["max_readers"]
            procs = [subprocess.Popen([sys.executable, "-c", _READER, tmp], stdout=subprocess.PIPE,
                                      env=env_vars) for _ in range(slots)]
            for proc in procs:
                if proc.stdout.readline() != b"ready\n":
                    result.errors.append("a reader process failed to start")
            for proc in procs:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                proc.stdout.close()
            result.killed = len(procs)
            try:
                holder.begin().abort()
            except ReadersFullError:
                result.full_before = True
            if not result.full_before:
                result.errors.append("the killed readers did not hold their slots (test is void)")
            out = subprocess.run([sys.executable, "-c", _OPENER, tmp], capture_output=True,
                                 env=env_vars, timeout=60)
            if out.returncode != 0:
                result.errors.append(f"a new opener failed: {out.stderr.decode()[-300:]}")
            else:
                result.cleared_by_opener = json.loads(out.stdout)["cleared_again"] == 0
            result.left_after = holder.reader_check()
            if result.left_after:
                result.errors.append(f"{result.left_after} stale slots were left after a new open")
            holder.begin().abort()  # slots are free again
        finally:
            holder.close()
    return result


# ---------------------------------------------------------------------------
# A writer killed while it holds the write lock
# ---------------------------------------------------------------------------

_LOCK_HOLDER = """
import os, sys, time
from rdirdb.rdir.store import Store
chunks = Store(sys.argv[1]).volume("v").chunks
txn = chunks.env.begin(write=True)
txn.put(b"uncommitted", b"1", db="admin")
os.write(1, b"ready\\n")
time.sleep(60)
"""


@dataclass
class LockHolder(Outcome):
    waiter_blocked: bool = False    # our batch waited for the holder's write lock
    waiter_seconds: float = 0.0     # how long it waited in all
    uncommitted_gone: bool = False  # the holder's open transaction left nothing
    errors: list[str] = field(default_factory=list)


def killed_lock_holder(workdir: str | None = None, hold: float = 0.5) -> LockHolder:
    """Another process holds the write transaction and is killed while this one
    waits for it: LMDB's robust mutex hands the lock over, the batch goes through."""
    import threading

    from rdirdb.rdir.store import Store

    result = LockHolder()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        # Open the volume first: opening needs a write transaction too.
        with Store(tmp) as store:
            volume = store.volume("v", create=True)
            with subprocess.Popen([sys.executable, "-c", _LOCK_HOLDER, tmp], stdout=subprocess.PIPE,
                                  env=_env()) as holder:
                if holder.stdout.readline() != b"ready\n":
                    result.errors.append("the lock holder failed to start")
                    return result
                outcome = {}

                def push():
                    started = time.monotonic()
                    try:
                        outcome["written"] = volume.chunks.put_batch(batch_records("waiter", 10))
                    except Exception as exc:
                        outcome["error"] = f"{type(exc).__name__}: {exc}"
                    outcome["seconds"] = time.monotonic() - started

                thread = threading.Thread(target=push)
                thread.start()
                time.sleep(hold)
                result.waiter_blocked = thread.is_alive()
                holder.kill()
                holder.wait()
                thread.join(30)
            if thread.is_alive():
                result.errors.append("the waiting batch never got the lock")
                return result
            result.waiter_seconds = outcome.get("seconds", 0.0)
            if "error" in outcome:
                result.errors.append(f"the waiting batch failed: {outcome['error']}")
            result.uncommitted_gone = volume.admin_get("uncommitted") is None
            if not result.uncommitted_gone:
                result.errors.append("the killed holder's uncommitted write is visible")
            if volume.chunks.count() != 10:
                result.errors.append(f"{volume.chunks.count()} records instead of 10")
        if not result.waiter_blocked:
            result.errors.append("the batch did not wait for the holder (test is void)")
    return result


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "writer":
        writer(argv[1], argv[2], argv[3] == "1", int(argv[4]), int(argv[5]), argv[6] == "1")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--mode", choices=("sync", "nosync", "both"), default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--writemap", action="store_true", help="open the stores with MDB_WRITEMAP")
    args = parser.parse_args(argv)
    ok = True
    modes = {"sync": [True], "nosync": [False], "both": [True, False]}[args.mode]
    print(f"{'mode':16} {'rounds':>6} {'acked puts':>10} {'acked dels':>10} {'records':>8} "
          f"{'in-flight applied/lost':>22} {'killed opening':>14} {'seconds':>8}")
    for sync in modes:
        f = run_rounds(args.rounds, sync, args.workdir, args.seed, writemap=args.writemap)
        ok &= show(f"{f.mode:16} {f.rounds:>6} {f.acked_puts:>10} {f.acked_deletes:>10} "
                   f"{f.records_at_end:>8} {f'{f.inflight_applied}/{f.inflight_lost}':>22} "
                   f"{f.killed_opening:>14} {f.seconds:>8.1f}", f)
    s = stale_readers(args.workdir)
    ok &= show(f"stale readers: {s.killed} killed in read txns, slots full before: {s.full_before}, "
               f"cleared by a new open: {s.cleared_by_opener}, left: {s.left_after}", s)
    h = killed_lock_holder(args.workdir)
    ok &= show(f"write lock holder killed: waiter blocked: {h.waiter_blocked}, then written after "
               f"{h.waiter_seconds:.2f} s, uncommitted write gone: {h.uncommitted_gone}", h)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
