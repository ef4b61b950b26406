"""The journal of a volume: durable writes without an LMDB flush per commit.

A durable LMDB commit writes and flushes every page it changed (about 2.2 scattered
4 KiB pages per random record) while it holds the write lock, which serializes the
commits of a volume: that, not the flush's latency, caps durable single pushes
(docs/server.md, "Where the durable path loses"). A journaled volume commits without
flushing (MDB_WRITEMAP, MDB_NOSYNC, as ``--no-fsync``) and makes each commit durable
by appending what it wrote (each key with its stamp and stored value, or its
tombstone) to a journal file of its own process, flushed with one ``fdatasync`` of a
sequential append, outside the write lock. A crash then loses nothing acknowledged:

* A **restore point** is a snapshot whose pages are all on disk: taken under the
  write lock, it pins the last committed snapshot (``Environment.pin``: a read
  transaction, so that no later commit reuses its pages), flushes the data file,
  and saves its two meta pages in ``journal/restore-point`` (written to a
  temporary file, flushed, renamed). Without a flush per commit, the kernel may
  write a later meta page before the pages it references; restoring the saved
  meta pages brings the file back to the pinned snapshot, whose pages no commit
  touched.
* Every commit after the restore point is in a journal: a journaled commit is
  appended to its process's journal (and flushed before its requests are answered);
  any other commit (admin keys, repair, purges: ``Environment.checkpointer``) takes a
  new restore point before it returns. A journaled commit first makes sure a
  restore point exists (it takes one under the write lock it holds otherwise).
* **Recovery**, by the first process to open the volume (an exclusive ``flock`` of
  ``journal/lock``, shared by every opener): the saved meta pages are written back,
  the entries of every journal stamped after the restore point's last stamp are
  replayed (``Stamps.apply_entries``: the newer stamp wins, so replays are idempotent
  and need no order; stamps grow with the commits, so an entry of a commit before
  the restore point is left out, and a later clear of the volume stays), the file is
  flushed, and the restore point and the journals are removed. Without a restore
  point (the last process to hold it closed and flushed the file), nothing is
  replayed.
* The pins: a process releases its pin of a restore point only once a newer one is
  saved, or at its close, where, holding the write lock, it flushes the file and
  removes the restore point if it is its own (the file is then consistent on disk
  as it is; the next journaled commit takes a new one). A process killed with
  SIGKILL leaves its pin in LMDB's reader table: stale reader slots are cleared
  only by a process that just saved a restore point of its own.
* Each process's journal starts again at its start, with the next epoch, when the
  process takes a restore point (its blocks are written ahead, :data:`PREALLOCATE`
  at a time, so that an append flushes data only; a reader stops at a record that is
  not whole or of another epoch than the first); the journal of a process that is
  gone (its ``flock`` free) is removed by the next restore point (all it holds was
  committed before it). Restore points are taken every :data:`CHECKPOINT_SECONDS`
  by each writing process, in a thread of its journal, which bounds both the pages a
  pin keeps from reuse and the journal's length.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from typing import Any, Callable, Iterator, NamedTuple

from rdirdb._batch import JOURNAL_ENTRY
from rdirdb._lmdb import Environment
from rdirdb.errors import CorruptedError

JOURNAL_DIR = "journal"
RESTORE_POINT = "restore-point"
LOCK = "lock"
CHECKPOINT_SECONDS = 0.25

_RECORD = struct.Struct("<III")  # length, crc32 (of the epoch and the entries), epoch
_EPOCH = struct.Struct("<I")
# A journal's blocks are written (zeros) ahead of its records, this much at a time: an
# append then flushes data only, not the file's size (half the time and CPU on ext4).
PREALLOCATE = 1 << 20
_ENTRY = struct.Struct(JOURNAL_ENTRY)
_RESTORE_MAGIC = b"rdirdb-restore-point-1\n"
_RESTORE_HEAD = struct.Struct("<QQII")  # txnid, last stamp, length of the meta pages, crc32
_META_TXNID = 144  # offset of mm_txnid in an LMDB meta page (page header, then MDB_meta)
_REPLAY_CHUNK = 10_000

log = logging.getLogger("rdirdb.journal")


def journal_dir(env_path: str) -> str:
    return os.path.join(env_path, JOURNAL_DIR)


def is_journaled(env_path: str) -> bool:
    """Whether the volume in ``env_path`` was ever written with a journal (then every
    durable writer must keep it)."""
    return os.path.isdir(journal_dir(env_path))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def meta_txnids(metas: bytes) -> tuple[int, int]:
    """The txnids of the two meta pages of ``metas`` (the data file's first two pages)."""
    psize = len(metas) // 2
    first, second = (struct.unpack_from("<Q", metas, page * psize + _META_TXNID)[0] for page in (0, 1))
    return first, second


class RestorePoint(NamedTuple):
    txnid: int
    last_stamp: int  # the volume's last write stamp: journal entries stamped later are after it
    metas: bytes

    def encode(self) -> bytes:
        head = _RESTORE_HEAD.pack(self.txnid, self.last_stamp, len(self.metas), 0)[:-4]
        return _RESTORE_MAGIC + head + struct.pack("<I", zlib.crc32(self.metas, zlib.crc32(head))) + self.metas


def read_restore_point(path: str) -> RestorePoint | None:
    """The restore point saved in ``path`` (None: there is none)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    at = len(_RESTORE_MAGIC)
    if not data.startswith(_RESTORE_MAGIC) or len(data) < at + _RESTORE_HEAD.size:
        raise CorruptedError("restore-point", 0, f"{path} is not a restore point")
    txnid, last_stamp, size, crc = _RESTORE_HEAD.unpack_from(data, at)
    head = data[at: at + _RESTORE_HEAD.size - 4]
    metas = data[at + _RESTORE_HEAD.size:]
    if len(metas) != size or zlib.crc32(metas, zlib.crc32(head)) != crc or max(meta_txnids(metas)) != txnid:
        raise CorruptedError("restore-point", 0, f"{path} is damaged")
    return RestorePoint(txnid, last_stamp, metas)


def _record(epoch: int, entries: bytes) -> bytes:
    epoch_bytes = _EPOCH.pack(epoch)
    return _RECORD.pack(len(entries), zlib.crc32(entries, zlib.crc32(epoch_bytes)), epoch) + entries


def read_entries(path: str) -> Iterator[tuple[bytes, int, bytes | None]]:
    """The entries of a journal file, as ``Stamps.apply_entries`` takes them: its records
    from the start while they are whole and of the first one's epoch (a journal starts
    again at its start, with the next epoch, at each restore point; past a record that
    was not wholly written, never acknowledged, or an older epoch's, nothing counts)."""
    with open(path, "rb") as f:
        data = f.read()
    at = 0
    first = None
    while at + _RECORD.size <= len(data):
        size, crc, epoch = _RECORD.unpack_from(data, at)
        body = data[at + _RECORD.size: at + _RECORD.size + size]
        if size == 0 or len(body) != size or zlib.crc32(body, zlib.crc32(_EPOCH.pack(epoch))) != crc:
            return
        if first is None:
            first = epoch
        elif epoch != first:
            return
        at += _RECORD.size + size
        pos = 0
        while pos < size:
            kind, tomb, klen, vlen, stamp = _ENTRY.unpack_from(body, pos)
            pos += _ENTRY.size
            key = bytes([kind]) + body[pos: pos + klen]
            pos += klen
            yield key, stamp, None if tomb else body[pos: pos + vlen]
            pos += vlen


def _journal_files(directory: str) -> list[str]:
    return sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".log"))


def _orphan(path: str) -> bool:
    """Whether no process holds the journal ``path`` (its writer is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


class Opener:
    """A process's hold on a journaled volume directory: the shared ``flock`` of its
    journal's lock, after a recovery if this opener came first (see the module)."""

    def __init__(self, env_path: str, *, create: bool) -> None:
        self.dir = journal_dir(env_path)
        if create:
            os.makedirs(self.dir, exist_ok=True)
        self.point: RestorePoint | None = None  # read by restore()
        self.fd = os.open(os.path.join(self.dir, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.first = True
        except BlockingIOError:
            fcntl.flock(self.fd, fcntl.LOCK_SH)
            self.first = False

    def needs_recovery(self) -> bool:
        return self.first and (os.path.exists(os.path.join(self.dir, RESTORE_POINT)) or bool(_journal_files(self.dir)))

    def restore(self, data_path: str) -> None:
        """Write the restore point's meta pages back (first opener, before LMDB opens)."""
        point = self.point = read_restore_point(os.path.join(self.dir, RESTORE_POINT))
        if point is None:
            return
        fd = os.open(data_path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.pwrite(fd, point.metas, 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    def replay(self, env: Environment, stamps: Any) -> int:
        """Apply the entries of every journal written after the restore point (none
        without one: the file was flushed whole at a close), flush, then drop the
        journals and the restore point; how many entries were applied. An entry of
        a commit before the restore point is left out: a later commit that cleared
        the volume must not see it come back."""
        applied = 0
        files = _journal_files(self.dir)
        after = [] if self.point is None else [
            entry for path in files for entry in read_entries(path) if entry[1] > self.point.last_stamp]
        for start in range(0, len(after), _REPLAY_CHUNK):
            applied += stamps.apply_entries(after[start: start + _REPLAY_CHUNK])
        env.sync()
        for path in [os.path.join(self.dir, RESTORE_POINT), *files]:
            if os.path.exists(path):
                os.unlink(path)
        _fsync_dir(self.dir)
        return applied

    def ready(self) -> None:
        """Let other processes open the volume (after a recovery)."""
        if self.first:
            fcntl.flock(self.fd, fcntl.LOCK_SH)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Journal:
    """The journal of one process for one volume (see the module's docstring)."""

    def __init__(self, env: Environment, opener: Opener, last_stamp: Callable[[], int]) -> None:
        self.env = env
        self.last_stamp = last_stamp  # the volume's last write stamp (Stamps.last_stamp)
        self.opener = opener
        self.dir = opener.dir
        self.restore_path = os.path.join(self.dir, RESTORE_POINT)
        self.path = os.path.join(self.dir, f"{os.getpid()}-{time.monotonic_ns()}.log")
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)  # held while this journal is in use (see _orphan)
        self.epoch = 1
        self.offset = 0  # where the next record goes
        self.allocated = 0  # the file's length, all of it written
        self._preallocate(PREALLOCATE)
        _fsync_dir(self.dir)
        self.pinned = 0  # the txnid of this process's last restore point
        self.last_checkpoint = 0.0
        self._lock = threading.Lock()  # the file: appends, and its truncation at a restore point
        self._due = threading.Condition()
        self._wanted = self._stopping = False
        self._thread: threading.Thread | None = None
        env.checkpointer = self.checkpoint

    # -- journaled commits ------------------------------------------------------

    def ensure_restore_point(self) -> None:
        """Called under LMDB's write lock before a journaled commit: a restore point
        must exist, else the journal could not be replayed onto anything."""
        if not os.path.exists(self.restore_path):
            self._checkpoint_locked()

    def append(self, entries: bytes) -> None:
        """Append a commit's entries (``journal_entries``) and flush: it is durable."""
        if not entries:
            return
        with self._lock:
            record = _record(self.epoch, entries)
            if self.offset + len(record) > self.allocated:
                self._preallocate(self.offset + len(record) - self.allocated + PREALLOCATE)
            written = os.pwrite(self.fd, record, self.offset)
            if written != len(record):
                raise OSError(f"short write to the journal {self.path}: {written} of {len(record)} bytes")
            os.fdatasync(self.fd)
            self.offset += len(record)
        if time.monotonic() - self.last_checkpoint > CHECKPOINT_SECONDS:
            self._wake_checkpointer()

    def _preallocate(self, size: int) -> None:
        """Write ``size`` bytes of zeros at the file's end, flushed with its new length."""
        zeros = bytes(min(size, PREALLOCATE))
        end = self.allocated + size
        while self.allocated < end:
            chunk = zeros[: end - self.allocated]
            self.allocated += os.pwrite(self.fd, chunk, self.allocated)
        os.fdatasync(self.fd)

    # -- restore points -----------------------------------------------------------

    def _wake_checkpointer(self) -> None:
        """Take the next restore point in a thread of this journal: its flush of the
        pages written since the last one does not hold up the commits."""
        with self._due:
            if self._thread is None:
                self._thread = threading.Thread(target=self._checkpoints, name=f"rdirdb-journal-{self.path}",
                                                daemon=True)
                self._thread.start()
            self._wanted = True
            self._due.notify()

    def _checkpoints(self) -> None:
        while True:
            with self._due:
                while not (self._wanted or self._stopping):
                    self._due.wait()
                if self._stopping:
                    return
                self._wanted = False
            try:
                self.checkpoint()
            except Exception:  # the next commit tries again; journals keep everything meanwhile
                log.exception("taking a restore point of %s failed", self.env.path)

    def checkpoint(self) -> None:
        """Take a restore point (also after each commit that is not journaled)."""
        self.env.sync()  # most pages, before the write lock
        txn = self.env.begin(write=True)  # LMDB's write lock first (then self._lock): no commit meanwhile
        try:
            self._checkpoint_locked()
        finally:
            txn.abort()

    def _checkpoint_locked(self) -> None:
        with self._lock:
            txnid = self.env.pin()
            self.env.sync()
            metas = self.env.meta_pages()
            if max(meta_txnids(metas)) != txnid:
                raise CorruptedError("restore-point", 0, f"{self.env.path}: the meta pages are not of txn {txnid}")
            tmp = self.restore_path + ".tmp"
            with open(tmp, "wb") as f:
                f.write(RestorePoint(txnid, self.last_stamp(), metas).encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.restore_path)
            _fsync_dir(self.dir)
            self.env.unpin_old()
            self.pinned = txnid
            self.last_checkpoint = time.monotonic()
            self.epoch += 1  # all it held is in the restore point: the journal starts again
            self.offset = 0
            for path in _journal_files(self.dir):
                if path != self.path and _orphan(path):
                    os.unlink(path)  # a journal of a process that is gone: all committed before
            self.env.reader_check()  # stale pins: the restore point is this process's now

    def close(self) -> None:
        """Flush the volume, drop this process's restore point and journal (see the
        module's docstring). Idempotent."""
        if self.fd < 0:
            return
        self.env.checkpointer = None
        with self._due:
            self._stopping = True
            self._due.notify()
        if self._thread is not None:
            self._thread.join()
        if not self.env.closed:
            txn = self.env.begin(write=True)
            try:
                self.env.sync()
                point = read_restore_point(self.restore_path)
                mine = point is not None and point.txnid == self.pinned
                if mine:
                    os.unlink(self.restore_path)
                    _fsync_dir(self.dir)
            finally:
                txn.abort()
            self.env.unpin()
            if mine or point is None:
                os.unlink(self.path)  # all it held is on disk, with no restore point to replay onto
        os.close(self.fd)
        self.fd = -1
        self.opener.close()
