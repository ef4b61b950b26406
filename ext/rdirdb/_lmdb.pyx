# cython: language_level=3
"""Handles over the LMDB C library: environments, transactions and cursors.

Every handle follows one lifecycle: a pointer that starts NULL, an idempotent
``close()``, a ``closed`` property, context-manager support, and a clear
:class:`rdirdb.errors.ClosedError` when used after close. Parents close their
children first (environment -> transactions -> cursors).

The map grows on its own: write transactions start with half the map free.
A write that still finds the map full (MDB_MAP_FULL, at a put or at the
commit) aborts its transaction and doubles the map (Environment.map_full);
:func:`replay` then runs the write again, a bounded number of times. These
two are the only places that handle a full map. Growing needs no live
transaction in this process, so every transaction holds the shared side of
``_resize_lock`` and a resize takes the exclusive side.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport (EACCES, EAGAIN, EBUSY, EINVAL, EIO, ENOENT, ENOMEM,
                         ENOSPC, ENOSYS, EOPNOTSUPP, EPERM, EROFS, ETIMEDOUT, errno)
from libc.stdlib cimport free, malloc
from libc.string cimport memset
from posix.stat cimport fstat, struct_stat
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME
from posix.unistd cimport getpid, pwrite, usleep

from rdirdb.lmdb cimport *

import os
import weakref

from rdirdb import errors


cdef extern from "fcntl.h" nogil:
    int fallocate(int fd, int mode, long offset, long length)
    int posix_fadvise(int fd, long offset, long length, int advice)
    enum: POSIX_FADV_WILLNEED


cdef extern from "sys/mman.h" nogil:
    int madvise(void *addr, size_t length, int advice)


cdef extern from "pthread.h" nogil:
    ctypedef struct pthread_rwlockattr_t:
        pass
    int pthread_rwlock_init(pthread_rwlock_t *lock, const pthread_rwlockattr_t *attr)
    int pthread_rwlock_destroy(pthread_rwlock_t *lock)
    int pthread_rwlock_rdlock(pthread_rwlock_t *lock)
    int pthread_rwlock_timedwrlock(pthread_rwlock_t *lock, const timespec *abstime)
    int pthread_rwlock_unlock(pthread_rwlock_t *lock)
    ctypedef struct pthread_mutexattr_t:
        pass
    int pthread_cond_init(pthread_cond_t *cond, const void *attr)
    int pthread_cond_destroy(pthread_cond_t *cond)
    int pthread_cond_signal(pthread_cond_t *cond)
    int pthread_cond_wait(pthread_cond_t *cond, pthread_mutex_t *mutex)
    int pthread_create(pthread_t *thread, const void *attr, void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t thread, void **retval)
    int pthread_mutex_init(pthread_mutex_t *mutex, const pthread_mutexattr_t *attr)
    int pthread_mutex_destroy(pthread_mutex_t *mutex)
    int pthread_mutex_lock(pthread_mutex_t *mutex)
    int pthread_mutex_unlock(pthread_mutex_t *mutex)


# ---------------------------------------------------------------------------
# Errors: one table from return code to exception class
# ---------------------------------------------------------------------------

_ERRORS = {
    MDB_KEYEXIST: errors.KeyExistsError,
    MDB_PAGE_NOTFOUND: errors.PageNotFoundError,
    MDB_CORRUPTED: errors.CorruptedError,
    MDB_PANIC: errors.PanicError,
    MDB_VERSION_MISMATCH: errors.VersionMismatchError,
    MDB_INVALID: errors.InvalidError,
    MDB_MAP_FULL: errors.MapFullError,
    MDB_DBS_FULL: errors.DbsFullError,
    MDB_READERS_FULL: errors.ReadersFullError,
    MDB_TLS_FULL: errors.TlsFullError,
    MDB_TXN_FULL: errors.TxnFullError,
    MDB_CURSOR_FULL: errors.CursorFullError,
    MDB_PAGE_FULL: errors.PageFullError,
    MDB_MAP_RESIZED: errors.MapResizedError,
    MDB_INCOMPATIBLE: errors.IncompatibleError,
    MDB_BAD_RSLOT: errors.BadRslotError,
    MDB_BAD_TXN: errors.BadTxnError,
    MDB_BAD_VALSIZE: errors.BadValSizeError,
    MDB_BAD_DBI: errors.BadDbiError,
    ENOSPC: errors.DiskFullError,
    EACCES: errors.LmdbPermissionError,
    EPERM: errors.LmdbPermissionError,
    ENOENT: errors.LmdbFileNotFoundError,
    EINVAL: errors.LmdbInvalidParameterError,
    ENOMEM: errors.LmdbMemoryError,
    EIO: errors.LmdbIOError,
    EROFS: errors.LmdbReadOnlyError,
    EBUSY: errors.LmdbBusyError,
    EAGAIN: errors.LmdbBusyError,
}


cdef int check(int rc, const char *what) except -1:
    """Raise the exception mapped to ``rc`` (naming ``what``) unless it is 0."""
    if rc == MDB_SUCCESS:
        return 0
    cls = _ERRORS.get(rc, errors.LmdbError)
    raise cls(what.decode(), rc, mdb_strerror(rc).decode("utf-8", "replace"))


def lmdb_version():
    """The version of the linked liblmdb, as ``(major, minor, patch)``."""
    cdef int major, minor, patch
    mdb_version(&major, &minor, &patch)
    return (major, minor, patch)


cdef inline bytes _as_key(object key):
    if not isinstance(key, bytes):
        raise TypeError(f"keys and values must be bytes, not {type(key).__name__}")
    return <bytes>key


cdef inline void _set_val(MDB_val *val, bytes data):
    val.mv_data = PyBytes_AS_STRING(data)
    val.mv_size = PyBytes_GET_SIZE(data)


cdef inline bytes _val_bytes(MDB_val *val):
    return PyBytes_FromStringAndSize(<char *>val.mv_data, val.mv_size)


cdef _closed(str what):
    raise errors.ClosedError(f"{what} is closed")


# Below this much free space, a failed write is blamed on a full disk.
DEF DISK_FULL_MARGIN = 1 << 20


def _disk_full(path):
    """Whether the file system of ``path`` has (almost) no room left."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < DISK_FULL_MARGIN


# The longest a resize waits for this process's other transactions to end.
DEF RESIZE_WAIT_SECONDS = 30

# How many times replay() runs a write again after its map grew (each growth
# doubles the map, so one write may need up to 1,024 times the map it found).
MAX_MAP_GROWTHS = 10


def replay(fn, *args):
    """``fn(*args)``, run again while it raises MapGrownError (its write
    transaction was aborted and the map grown), at most MAX_MAP_GROWTHS times.

    The one replay of a write that found the map full; ``fn`` must have no
    effect outside its transaction.
    """
    cdef int growths = 0
    while True:
        try:
            return fn(*args)
        except errors.MapGrownError:
            if growths == MAX_MAP_GROWTHS:
                raise
            growths += 1


# warm() reads and maps the data file this much at a time (close() waits for one such step).
DEF WARM_CHUNK = 32 << 20
DEF WARM_READ = 1 << 20  # bytes per read ahead (posix_fadvise caps what one call reads)
DEF MADV_POPULATE_READ = 22  # Linux 5.14; older kernels refuse it (EINVAL): the pages are read, not mapped
DEF MADV_POPULATE_WRITE = 23  # Linux 5.14; older kernels refuse it (EINVAL): pretouch() does nothing
DEF FREE_DBI = 0  # LMDB's free list: key a txnid, value the pages it freed (count first)
DEF PRETOUCH_AHEAD = 8192  # pages a step of the pretouch thread touches at most (32 MiB)
DEF END_AHEAD = 256  # pages past the last one in use that it keeps touched
DEF PRETOUCH_FEW = 512  # a step that touched fewer pages waits PRETOUCH_PAUSE us before the next
DEF PRETOUCH_PAUSE = 2000

# With MDB_WRITEMAP, disk blocks are allocated this far past the pages in use:
# as much as is in use up to this size, a sixteenth of it past 1 GiB.
DEF RESERVE_AHEAD = 64 << 20
# Zeros written ahead in a durable environment without it: at most this much at
# a time (the next commit flushes them).
DEF ZEROS_AHEAD = 8 << 20
DEF ZEROS_CHUNK = 1 << 20


cdef char _zeros[ZEROS_CHUNK]  # static storage: all zero


cdef int _write_zeros(int fd, size_t start, size_t end) noexcept nogil:
    """Write zeros to ``fd`` from ``start`` to ``end``: 0, or the errno."""
    cdef ssize_t n
    while start < end:
        n = pwrite(fd, _zeros, min(end - start, <size_t>ZEROS_CHUNK), start)
        if n <= 0:
            return errno if n < 0 else EIO
        start += n
    return 0


# ---------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------

cdef void *_pretouch_thread(void *arg) noexcept nogil:
    """An environment's pretouch thread (Environment(pretouch=True)): after each
    write, the free pages of the next ones; until _stop_pretouch()."""
    cdef _Touch *t = <_Touch *>arg  # in the Environment: _stop_pretouch() joins before it dies
    while True:
        pthread_mutex_lock(&t.lock)
        while not t.wanted and not t.quit:
            pthread_cond_wait(&t.cond, &t.lock)
        t.wanted = False
        if t.quit:
            pthread_mutex_unlock(&t.lock)
            return NULL
        pthread_mutex_unlock(&t.lock)
        if _pretouch(t, PRETOUCH_AHEAD) < PRETOUCH_FEW:
            usleep(PRETOUCH_PAUSE)  # small writes (single pushes): one step per pause at most


cdef char *_map_base(MDB_env *env, MDB_dbi main, size_t psize, size_t used) noexcept nogil:
    """Where LMDB mapped the data file (mdb_env_info gives it only for MDB_FIXEDMAP),
    or NULL: found from a key of the main database, which lies in a page of the map
    that starts with its own page number (LMDB's page header, as on disk)."""
    cdef MDB_txn *txn
    cdef MDB_cursor *cur
    cdef MDB_val k, v
    cdef size_t page, pgno
    cdef char *base = NULL
    if mdb_txn_begin(env, NULL, MDB_RDONLY, &txn) != MDB_SUCCESS:
        return NULL
    if mdb_cursor_open(txn, main, &cur) == MDB_SUCCESS:
        if mdb_cursor_get(cur, &k, &v, MDB_FIRST) == MDB_SUCCESS:
            page = <size_t>k.mv_data & ~(psize - 1)
            pgno = (<size_t *>page)[0]
            if 0 < pgno and pgno * psize < used and page >= pgno * psize:
                base = <char *>(page - pgno * psize)
        mdb_cursor_close(cur)
    mdb_txn_abort(txn)
    return base


cdef size_t _pretouch(_Touch *t, size_t max_pages) noexcept nogil:
    """Environment.pretouch(): how many pages it touched."""
    cdef MDB_envinfo info
    cdef MDB_stat st
    cdef MDB_txn *txn
    cdef MDB_cursor *cur
    cdef MDB_val k, v
    cdef size_t *pages = NULL
    cdef size_t *ids
    cdef size_t count = 0, i, n, txnid, upto, seek, first, last, touched = 0
    cdef size_t psize, limit
    cdef char *base
    cdef int rc
    if t.off or max_pages == 0:
        return 0
    pthread_mutex_lock(t.warm_lock)  # close() waits for this step
    if t.warm_stop[0] or t.env == NULL:
        pthread_mutex_unlock(t.warm_lock)
        return 0
    pthread_rwlock_rdlock(t.resize_lock)  # the map stays where it is
    mdb_env_info(t.env, &info)
    mdb_env_stat(t.env, &st)
    psize = st.ms_psize
    limit = info.me_mapsize // psize
    base = _map_base(t.env, t.main, psize, (info.me_last_pgno + 1) * psize)
    upto = t.upto
    pages = <size_t *>malloc(max_pages * sizeof(size_t))
    if base != NULL and pages != NULL and mdb_txn_begin(t.env, NULL, MDB_RDONLY, &txn) == MDB_SUCCESS:
        if mdb_cursor_open(txn, FREE_DBI, &cur) == MDB_SUCCESS:
            # The next writes take the oldest records first: those after the
            # newest one touched, in order (a record is touched whole).
            k.mv_data = &seek
            k.mv_size = sizeof(size_t)
            seek = upto + 1
            rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE)
            while rc == MDB_SUCCESS and k.mv_size == sizeof(size_t) and v.mv_size >= sizeof(size_t):
                txnid = (<size_t *>k.mv_data)[0]
                ids = <size_t *>v.mv_data
                n = min(ids[0], v.mv_size // sizeof(size_t) - 1)
                if count + n > max_pages and count > 0:
                    break
                for i in range(1, min(n, max_pages) + 1):
                    if ids[i] < limit:
                        pages[count] = ids[i]
                        count += 1
                upto = txnid
                rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)
            mdb_cursor_close(cur)
        mdb_txn_abort(txn)  # no reader pins the free list while the pages are touched
        # Once the free list runs out, new pages come from past the last one in
        # use: those of the blocks allocated ahead (reserve()), END_AHEAD at most.
        first = max(info.me_last_pgno + 1, t.end)
        last = min(info.me_last_pgno + 1 + END_AHEAD, t.reserved[0] // psize, limit)
        if first < last and count + (last - first) <= max_pages:
            for i in range(first, last):
                pages[count] = i
                count += 1
            t.end = last
    i = 0
    while i < count:  # runs of consecutive pages, in either order, one call each
        first = last = pages[i]
        i += 1
        while i < count and (pages[i] == last + 1 or pages[i] + 1 == first):
            if pages[i] == last + 1:
                last += 1
            else:
                first -= 1
            i += 1
        if madvise(base + first * psize, (last - first + 1) * psize, MADV_POPULATE_WRITE) != 0:
            if errno == EINVAL:
                t.off = True
            break
        touched += last - first + 1
    t.upto = upto
    free(pages)
    pthread_rwlock_unlock(t.resize_lock)
    pthread_mutex_unlock(t.warm_lock)
    return touched

@cython.final
cdef class Environment:
    """An LMDB environment: one directory holding ``data.mdb`` and ``lock.mdb``.

    ``sync=True`` (the default) makes every commit durable (fsync); with
    ``sync=False`` a commit survives the death of the process but not of the
    machine. A durable commit flushes its data pages while it holds LMDB's
    write lock, and its meta page after releasing it (MDB_NOMETASYNC, then
    mdb_env_sync before the commit returns): each commit is on disk when it
    returns, as with LMDB's own two flushes, but the next writer (another
    process or thread) waits for one flush instead of two. ``writemap=True`` changes pages through a writable map (MDB_WRITEMAP:
    no buffer and no write call per dirty page at commit, a sparse data file with
    blocks allocated ahead; see docs/engine.md). Without it, a durable
    environment writes zeros ahead of its pages, so that a commit's flush
    rewrites blocks the data file has (docs/server.md, "Shutdown and durability"). Stale
    reader slots of dead processes are cleared on open.
    """

    def __cinit__(self):
        self._env = NULL
        self._lock_ready = False
        self._warm_stop = False
        if pthread_mutex_init(&self._warm_lock, NULL) != 0:
            raise MemoryError("cannot create the warm lock")
        self._reserved = 0
        self.pretouching = False
        memset(&self._touch, 0, sizeof(_Touch))
        self._touch.warm_lock = &self._warm_lock
        self._touch.warm_stop = &self._warm_stop
        self._touch.resize_lock = &self._resize_lock
        self._touch.reserved = &self._reserved
        if pthread_mutex_init(&self._touch.lock, NULL) != 0 or pthread_cond_init(&self._touch.cond, NULL) != 0:
            raise MemoryError("cannot create the pretouch lock")
        self._children = weakref.WeakSet()
        self._dbis = {}

    def __init__(self, path, *, databases=(), size_t map_size=256 << 20,
                 unsigned int max_dbs=8, unsigned int max_readers=256, bint sync=True,
                 bint readonly=False, bint create=True, bint writemap=False, bint pretouch=False):
        cdef unsigned int flags = MDB_NOTLS | MDB_NORDAHEAD
        cdef int dead = 0, rc
        cdef const char *cpath
        self.path = os.fspath(path)
        self.readonly = readonly
        self.durable = sync
        self.writemap = writemap and not readonly
        if readonly:
            flags |= MDB_RDONLY
        if self.writemap:
            flags |= MDB_WRITEMAP
        if not sync:
            flags |= MDB_NOSYNC | MDB_NOMETASYNC
        else:
            # The meta page is flushed after the commit, outside the write lock
            # (end_raw): see the class docstring.
            flags |= MDB_NOMETASYNC
        if create and not readonly:
            os.makedirs(self.path, exist_ok=True)
        elif not os.path.isdir(self.path):
            raise errors.LmdbFileNotFoundError("mdb_env_open", ENOENT, f"no environment at {self.path}")
        if pthread_rwlock_init(&self._resize_lock, NULL) != 0:
            raise MemoryError("cannot create the resize lock")
        self._lock_ready = True
        check(mdb_env_create(&self._env), b"mdb_env_create")
        try:
            check(mdb_env_set_maxdbs(self._env, max_dbs), b"mdb_env_set_maxdbs")
            check(mdb_env_set_maxreaders(self._env, max_readers), b"mdb_env_set_maxreaders")
            check(mdb_env_set_mapsize(self._env, map_size), b"mdb_env_set_mapsize")
            path_b = os.fsencode(self.path)
            cpath = <const char *>path_b
            with nogil:
                rc = mdb_env_open(self._env, cpath, flags, 0o644)
            check(rc, b"mdb_env_open")
            # Readers of processes killed with SIGKILL leave their slots behind.
            check(mdb_reader_check(self._env, &dead), b"mdb_reader_check")
            self._touch.main = self.open_db(None)
            for name in databases:
                self.open_db(name)
            self._touch.env = self._env
            # Not durable: its flushes would write the touched pages too.
            self.pretouching = pretouch and self.writemap and not sync
        except BaseException:
            mdb_env_close(self._env)
            self._env = NULL
            raise

    def __dealloc__(self):
        with nogil:  # the thread may need the GIL meanwhile (a line-traced build)
            self._stop_pretouch()
        if self._env != NULL:
            mdb_env_close(self._env)
            self._env = NULL
        pthread_cond_destroy(&self._touch.cond)
        pthread_mutex_destroy(&self._touch.lock)
        if self._lock_ready:
            pthread_rwlock_destroy(&self._resize_lock)
        pthread_mutex_destroy(&self._warm_lock)

    cdef int _ensure_open(self) except -1:
        if self._env == NULL:
            _closed("environment")
        return 0

    def close(self):
        """Abort this environment's open transactions, then close it. Idempotent."""
        if self._env == NULL:
            return
        for child in list(self._children):
            child.close()
        with nogil:
            self._stop_pretouch()
            pthread_mutex_lock(&self._warm_lock)  # a warm() between two steps stops there
            self._warm_stop = True
            self._touch.env = NULL
            mdb_env_close(self._env)
            self._env = NULL
            pthread_mutex_unlock(&self._warm_lock)

    @property
    def closed(self):
        return self._env == NULL

    def __enter__(self):
        self._ensure_open()
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self._env == NULL else "open"
        return f"<rdirdb.Environment {self.path!r} {state}>"

    # -- transactions (C level) ---------------------------------------------

    cdef int begin_raw(self, MDB_txn **txn, bint write) except -1:
        """Begin a transaction that holds the shared side of the resize lock."""
        cdef int rc
        cdef MDB_envinfo info
        cdef MDB_stat st
        self._ensure_open()
        if write and self.readonly:
            raise errors.LmdbReadOnlyError("mdb_txn_begin", EROFS, "the environment was opened read-only")
        while True:
            if write:
                mdb_env_info(self._env, &info)
                mdb_env_stat(self._env, &st)
                if (info.me_last_pgno + 1) * st.ms_psize * 2 > info.me_mapsize:
                    self.grow((info.me_last_pgno + 1) * st.ms_psize * 2)
            with nogil:
                pthread_rwlock_rdlock(&self._resize_lock)
                rc = mdb_txn_begin(self._env, NULL, 0 if write else MDB_RDONLY, txn)
                if rc != MDB_SUCCESS:
                    pthread_rwlock_unlock(&self._resize_lock)
            if rc == MDB_MAP_RESIZED:
                # Another process grew the map: adopt its size, then retry.
                self.grow(0)
                continue
            check(rc, b"mdb_txn_begin")
            if write and (self.writemap or self.durable):
                try:
                    self.reserve()
                except BaseException:
                    self.end_raw(txn[0], False)
                    raise
            return 0

    cdef int end_raw(self, MDB_txn *txn, bint commit, bint write=False) except -1:
        """Commit or abort ``txn`` (a ``write`` one: see the meta page's sync in the
        class docstring) and release the shared resize lock."""
        cdef int rc
        with nogil:
            rc = self._end_nogil(txn, commit, commit and write and self.durable)
        return self._end_check(rc)

    cdef int _end_nogil(self, MDB_txn *txn, bint commit, bint meta_sync) noexcept nogil:
        """end_raw's work (``meta_sync``: flush the meta page too); its LMDB code."""
        cdef int rc = MDB_SUCCESS
        if commit:
            rc = mdb_txn_commit(txn)
            if rc == MDB_SUCCESS and meta_sync:
                rc = mdb_env_sync(self._env, 1)
        else:
            mdb_txn_abort(txn)
        pthread_rwlock_unlock(&self._resize_lock)
        return rc

    cdef int _end_check(self, int rc) except -1:
        """Raise the error of an ended transaction's code (see end_raw)."""
        if rc == MDB_MAP_FULL:  # the commit freed the transaction
            self.map_full(b"mdb_txn_commit")
        if rc == EIO and _disk_full(self.path):
            # liblmdb reports a short write as EIO: name the real cause.
            raise errors.DiskFullError("mdb_txn_commit", ENOSPC,
                                       f"no space left on the device of {self.path}")
        check(rc, b"mdb_txn_commit")
        return 0

    cdef int grow(self, size_t needed) except -1:
        """Double the map until it holds ``needed`` bytes (0: adopt the current file size).

        Waits until no other transaction of this process is live, as LMDB requires.
        """
        cdef MDB_envinfo info
        cdef timespec deadline
        cdef int rc
        cdef size_t size
        self._ensure_open()
        clock_gettime(CLOCK_REALTIME, &deadline)
        deadline.tv_sec += RESIZE_WAIT_SECONDS
        with nogil:
            rc = pthread_rwlock_timedwrlock(&self._resize_lock, &deadline)
        if rc == ETIMEDOUT:
            raise errors.MapFullError(
                "mdb_env_set_mapsize", MDB_MAP_FULL,
                "the map must grow but transactions of this process stayed open "
                f"for {RESIZE_WAIT_SECONDS} s; close long-lived transactions")
        try:
            mdb_env_info(self._env, &info)
            size = info.me_mapsize
            if needed == 0:
                rc = mdb_env_set_mapsize(self._env, 0)
            elif size < needed:
                while size < needed:
                    size *= 2
                rc = mdb_env_set_mapsize(self._env, size)
            check(rc, b"mdb_env_set_mapsize")
        finally:
            pthread_rwlock_unlock(&self._resize_lock)
        return 0

    cdef int map_full(self, const char *what) except -1:
        """Double the map after a write found it full (its transaction has ended),
        then raise MapGrownError: the write is to be run again (see replay())."""
        self.grow(<size_t>self.info()["map_size"] * 2)
        raise errors.MapGrownError(
            what.decode(), MDB_MAP_FULL, "the map was full: the transaction was aborted and the map "
            "grown; run the transaction again")


    cdef int reserve(self) except -1:
        """Make the data file's blocks ready ahead of the pages in use.

        With a writable map (MDB_WRITEMAP), LMDB writes new pages straight into
        a sparse file: on a full disk the kernel can only answer with SIGBUS,
        which kills the process. Allocating ahead (fallocate) turns a full disk
        into a DiskFullError here, in a write transaction that has written
        nothing. In a durable environment without it, zeros are written ahead
        instead: a commit's flush then rewrites blocks the file has, where a
        flush that grows the file also commits its new size and blocks to the
        file system's journal (about twice the time and CPU on ext4; see
        docs/server.md, "Shutdown and durability"). Called by the holder of the write
        lock, so the pages in use are exact, and nothing past the file's end
        is LMDB's.
        """
        cdef MDB_envinfo info
        cdef MDB_stat st
        cdef struct_stat fst
        cdef int fd, rc = 0
        cdef size_t used, ahead, start = self._reserved, end
        mdb_env_info(self._env, &info)
        mdb_env_stat(self._env, &st)
        used = (info.me_last_pgno + 1) * st.ms_psize
        ahead = max(min(<size_t>RESERVE_AHEAD, used), used // 16)
        if not self.writemap:
            ahead = min(ahead, <size_t>ZEROS_AHEAD)
        if used + ahead // 2 <= self._reserved:
            return 0
        check(mdb_env_get_fd(self._env, &fd), b"mdb_env_get_fd")
        if self.writemap:
            end = min(used + ahead, info.me_mapsize)  # the file is as long as the map
            if end <= start:
                return 0  # all of the map is reserved already; the next growth extends it
            with nogil:
                if fallocate(fd, 0, start, end - start) != 0:  # mode 0: data stays as it is
                    rc = errno
        else:
            end = used + ahead
            with nogil:
                if fstat(fd, &fst) != 0:
                    rc = errno
                else:
                    start = max(<size_t>fst.st_size, used)  # another process may have written some
                    if start < end:
                        rc = _write_zeros(fd, start, end)
        if rc in (EOPNOTSUPP, ENOSYS):
            self._reserved = <size_t>-1  # this file system cannot: writes go unreserved
        elif rc == ENOSPC:
            what = "that writes with MDB_WRITEMAP allocate" if self.writemap else "of zeros written"
            raise errors.DiskFullError(
                "fallocate" if self.writemap else "pwrite", ENOSPC,
                f"no space left on the device of {self.path} for the {(end - start) >> 10:,} KiB {what} ahead")
        elif rc != 0:
            check(rc, b"fallocate" if self.writemap else b"pwrite")
        else:
            self._reserved = end
        return 0

    cdef MDB_dbi dbi(self, name) except? 0:
        """The handle of a database opened with the environment (None: the main one)."""
        try:
            return self._dbis[name]
        except KeyError:
            self._ensure_open()
            raise ValueError(f"unknown database {name!r}: list it in Environment(databases=...)") from None

    # -- Python API -----------------------------------------------------------

    def write(self, fn, *args, bint sync_meta=True):
        """``fn(txn, *args)`` in a write transaction, committed when it returns;
        returns its result. A write that finds the map full is run again in a
        new transaction once the map has grown (see :func:`replay`).

        ``sync_meta=False`` (a durable environment) leaves the commit's meta page
        unflushed: the commit is on disk once a later commit flushed its data
        pages, or :meth:`sync` ran (the server's group commit: one flush per
        commit under load, see rdirdb/server/commit.py)."""
        return replay(self._write_once, fn, args, sync_meta)

    def _write_once(self, fn, args, bint sync_meta):
        cdef Transaction txn
        with self.begin(write=True) as txn:
            txn._sync_meta = sync_meta
            return fn(txn, *args)

    def begin(self, *, bint write=False):
        """Start a transaction; use it as a context manager (commit, or abort on error)."""
        cdef Transaction txn = Transaction.__new__(Transaction)
        self._ensure_open()
        self.begin_raw(&txn._txn, write)
        txn.env = self
        txn.write = write
        txn._sync_meta = write
        self._children.add(txn)
        return txn

    def open_db(self, name=None):
        """Open (creating it when writable) the named database; returns its handle.

        An existing database opens in a read transaction (no wait for a writer,
        no disk space needed); only creating one takes a write transaction.
        Call it while this thread holds no write transaction.
        """
        cdef MDB_txn *txn
        cdef MDB_dbi handle = 0
        cdef int rc
        cdef const char *cname = NULL
        cdef bint created = False
        if name in self._dbis:
            return self._dbis[name]
        name_b = name.encode() if name is not None else None
        if name_b is not None:
            cname = name_b
        self.begin_raw(&txn, False)
        rc = mdb_dbi_open(txn, cname, 0, &handle)
        if rc == MDB_NOTFOUND and not self.readonly:
            self.end_raw(txn, False)
            self.begin_raw(&txn, True)
            rc = mdb_dbi_open(txn, cname, MDB_CREATE, &handle)
            created = True
        if rc != MDB_SUCCESS:
            self.end_raw(txn, False)
            if rc == MDB_NOTFOUND:
                raise errors.LmdbFileNotFoundError("mdb_dbi_open", rc, f"no database named {name!r}")
            check(rc, b"mdb_dbi_open")
        self.end_raw(txn, True, created)
        self._dbis[name] = handle
        return handle

    def stat(self, name=None):
        """LMDB's statistics of the named database, as a dict."""
        cdef MDB_txn *txn
        cdef MDB_stat st
        cdef MDB_dbi handle = self.dbi(name)
        self.begin_raw(&txn, False)
        try:
            check(mdb_stat(txn, handle, &st), b"mdb_stat")
        finally:
            self.end_raw(txn, False)
        return {
            "psize": st.ms_psize, "depth": st.ms_depth,
            "branch_pages": st.ms_branch_pages, "leaf_pages": st.ms_leaf_pages,
            "overflow_pages": st.ms_overflow_pages, "entries": st.ms_entries,
        }

    def info(self):
        """Map size, last page number, reader counts, as a dict."""
        cdef MDB_envinfo info
        self._ensure_open()
        check(mdb_env_info(self._env, &info), b"mdb_env_info")
        return {
            "map_size": info.me_mapsize, "last_pgno": info.me_last_pgno,
            "last_txnid": info.me_last_txnid, "max_readers": info.me_maxreaders,
            "num_readers": info.me_numreaders,
        }

    @property
    def map_size(self):
        return self.info()["map_size"]

    @property
    def max_key_size(self):
        self._ensure_open()
        return mdb_env_get_maxkeysize(self._env)

    def reader_check(self):
        """Clear reader slots of dead processes; returns how many were cleared."""
        cdef int dead = 0
        self._ensure_open()
        check(mdb_reader_check(self._env, &dead), b"mdb_reader_check")
        return dead

    def warm(self, max_bytes=None):
        """Read the pages in use of the data file into memory and map them, unless
        they take more than ``max_bytes`` (None: no limit); returns how many bytes
        it warmed (0: skipped, or the environment was closed first).

        A B-tree write reads the pages it changes. When they are not in memory (a
        server just started on a large volume, or the kernel dropped pages it
        found unused), each write waits for 4 KiB reads from the disk, one page
        at a time (MDB_NORDAHEAD): on a 10,000,000-record volume, random pushes
        ran about 30 times slower cold than warm. warm() reads the file ahead in
        large sequential reads (posix_fadvise) and maps its pages into this process
        (MADV_POPULATE_READ: no page fault at their first use, and pages mapped
        by a process are the last the kernel reclaims), WARM_CHUNK at a time,
        releasing the GIL: meant for a thread of its own, while the environment
        serves. close() stops it between two steps. Warming is best effort: an
        error ends it early.
        """
        cdef size_t offset = 0
        cdef bint skipped = False
        cdef size_t limit = <size_t>-1 if max_bytes is None else max_bytes
        cdef MDB_dbi main = self.dbi(None)
        self._ensure_open()
        self._warm_steps(main, limit, &offset, &skipped)
        return 0 if skipped else offset

    cdef void _warm_steps(self, MDB_dbi main, size_t limit, size_t *warmed, bint *skip) noexcept:
        cdef MDB_envinfo info
        cdef MDB_stat st
        cdef size_t offset = 0, used, n, done
        cdef int fd, rc = 0
        cdef bint skipped = False
        cdef char *base
        with nogil:
            while True:
                pthread_mutex_lock(&self._warm_lock)
                if self._warm_stop:
                    pthread_mutex_unlock(&self._warm_lock)
                    break
                pthread_rwlock_rdlock(&self._resize_lock)  # the map stays where it is
                mdb_env_info(self._env, &info)
                mdb_env_stat(self._env, &st)
                used = (info.me_last_pgno + 1) * st.ms_psize
                if offset == 0 and used > limit:
                    skipped = True
                elif offset < used:
                    n = used - offset if used - offset < WARM_CHUNK else WARM_CHUNK
                    rc = mdb_env_get_fd(self._env, &fd)
                    if rc == MDB_SUCCESS:
                        done = 0
                        while done < n:  # large reads (a page fault reads 4 KiB), no copy
                            posix_fadvise(fd, offset + done, WARM_READ if n - done > WARM_READ else n - done,
                                          POSIX_FADV_WILLNEED)
                            done += WARM_READ
                        base = _map_base(self._env, main, st.ms_psize, used)
                        if base != NULL and madvise(base + offset, n, MADV_POPULATE_READ) != 0:
                            rc = errno
                    offset += n
                pthread_rwlock_unlock(&self._resize_lock)
                pthread_mutex_unlock(&self._warm_lock)
                if skipped or rc != 0 or offset >= used:
                    break
        warmed[0] = offset
        skip[0] = skipped

    def pretouch(self, size_t max_pages=PRETOUCH_AHEAD):
        """Fault in, writable, the free pages that the next write transactions
        will reuse, at most ``max_pages`` of them; returns how many it touched
        (0 without MDB_WRITEMAP, or on a kernel without MADV_POPULATE_WRITE).

        With MDB_WRITEMAP a write copies each page it changes into a free page
        of the map. A free page is the old copy of a page that an earlier write
        changed; once the kernel has written it back it is mapped read-only, so
        the first write to it takes a page fault, and the file system's
        page_mkwrite (on a 10,000,000-record volume, about 2 faults and 9 us of
        system time per record of a random batch; docs/engine.md). pretouch()
        takes those faults ahead, in a thread of its own, while the writer waits
        for its next request: it reads the free list (LMDB's database 0) in a
        read transaction, from the records the next writes take first, and
        asks the kernel to map their pages writable (MADV_POPULATE_WRITE, which
        changes no byte of them). The records it touched are remembered, so
        each page is touched once. Best effort: an error stops it. The thread
        of ``pretouch=True`` (unsynced environments with MDB_WRITEMAP only: a
        synced commit's flush would write the touched pages too) runs one step
        after each write, and after a step that found little to touch (small
        writes) waits 2 ms before the next.
        """
        cdef size_t n
        self._ensure_open()
        if not self.writemap:
            return 0
        with nogil:
            n = _pretouch(&self._touch, max_pages)
        return n

    cdef int _kick_pretouch(self) except -1:
        """Wake the pretouch thread (started on the first call in this process)."""
        cdef int pid = getpid()
        cdef int rc = 0
        with nogil:
            pthread_mutex_lock(&self._touch.lock)
            if self._touch.pid != pid and not self._touch.quit:  # none yet, or forked
                rc = pthread_create(&self._touch.thread, NULL, _pretouch_thread, &self._touch)
                if rc == 0:
                    self._touch.pid = pid
            self._touch.wanted = True
            pthread_cond_signal(&self._touch.cond)
            pthread_mutex_unlock(&self._touch.lock)
        if rc != 0:
            self.pretouching = False  # best effort: writes go on, faulting
        return 0

    cdef void _stop_pretouch(self) noexcept nogil:
        """Stop and join this process's pretouch thread, if any."""
        cdef bint running
        pthread_mutex_lock(&self._touch.lock)
        running = self._touch.pid == getpid()
        self._touch.quit = True
        pthread_cond_signal(&self._touch.cond)
        pthread_mutex_unlock(&self._touch.lock)
        if running:
            pthread_join(self._touch.thread, NULL)
            self._touch.pid = 0

    def sync(self, bint force=True):
        """Flush buffers to disk (useful with ``sync=False``)."""
        cdef int rc
        self._ensure_open()
        with nogil:
            rc = mdb_env_sync(self._env, force)
        check(rc, b"mdb_env_sync")

    def copy(self, path, *, bint compact=True):
        """Write a consistent copy of the environment into the empty directory ``path``.

        Runs in a read transaction, so writers go on meanwhile (hot backup).
        """
        cdef int rc
        cdef unsigned int flags = 1 if compact else 0   # MDB_CP_COMPACT
        cdef const char *cpath
        self._ensure_open()
        os.makedirs(path, exist_ok=True)
        path_b = os.fsencode(path)
        cpath = <const char *>path_b
        with nogil:
            rc = mdb_env_copy2(self._env, cpath, flags)
        check(rc, b"mdb_env_copy2")


# ---------------------------------------------------------------------------
# Transaction
# ---------------------------------------------------------------------------

@cython.final
cdef class Transaction:
    """A read or write transaction; get one from :meth:`Environment.begin`."""

    def __cinit__(self):
        self._txn = NULL
        self._children = weakref.WeakSet()

    def __init__(self, *args, **kwargs):
        raise TypeError("use Environment.begin() to start a transaction")

    def __dealloc__(self):
        if self._txn != NULL and self.env is not None:
            self.env.end_raw(self._txn, False)
            self._txn = NULL

    cdef int _ensure_open(self) except -1:
        if self._txn == NULL:
            _closed("transaction")
        return 0

    cdef int _finish(self, bint commit) except -1:
        if self._txn == NULL:
            return 0
        self.env.end_raw(self._detach(), commit, self._sync_meta)
        return self._ended(commit)

    cdef MDB_txn *_detach(self) except? NULL:
        """Close the cursors, forget the transaction and return it (to end it)."""
        for child in list(self._children):
            child.close()
        cdef MDB_txn *txn = self._txn
        self._txn = NULL
        self.env._children.discard(self)
        return txn

    cdef int _ended(self, bint commit) except -1:
        if commit and self.write and self.env.pretouching:
            self.env._kick_pretouch()
        return 0

    cdef int write_then_commit(self, txn_writer write, void *state) except? -1:
        """``write(txn, state)`` and, if it succeeds, the commit, in one stretch without
        the GIL: a writer holding LMDB's write lock does not wait for the GIL between its
        writes and its commit (the server's group commit: another thread runs Python).
        Returns 0 once committed (a failed commit raises, as :meth:`commit`), or the
        code of the failed write, the transaction still open: raise it with :meth:`fail`."""
        cdef int rc, end_rc = MDB_SUCCESS
        cdef MDB_txn *txn
        cdef bint meta_sync
        self._ensure_open()
        if not self.write:
            raise errors.LmdbReadOnlyError("mdb_txn_commit", EROFS, "a read transaction cannot write")
        for child in list(self._children):
            child.close()
        txn = self._txn
        meta_sync = self._sync_meta and self.env.durable
        with nogil:
            rc = write(txn, state)
            if rc == MDB_SUCCESS:
                end_rc = self.env._end_nogil(txn, True, meta_sync)
        if rc != MDB_SUCCESS:
            return rc
        self._detach()  # ended: committed, or freed by a failed commit
        self.env._end_check(end_rc)
        self._ended(True)
        return MDB_SUCCESS

    cdef int fail(self, int rc, const char *what) except -1:
        """Raise the error of ``rc`` from a write in this transaction (none for 0).

        A full map aborts the transaction and grows the map (LMDB cannot grow it
        under a live transaction): MapGrownError, run the transaction again.
        """
        if rc == MDB_MAP_FULL:
            self._finish(False)
            self.env.map_full(what)
        return check(rc, what)

    def commit(self):
        """Commit; the transaction is closed afterwards."""
        self._ensure_open()
        self._finish(True)

    def abort(self):
        """Abort; the transaction is closed afterwards. Idempotent."""
        self._finish(False)

    close = abort

    @property
    def closed(self):
        return self._txn == NULL

    def __enter__(self):
        self._ensure_open()
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._txn == NULL:
            return
        self._finish(exc_type is None)

    def get(self, key, *, db=None):
        """The value stored under ``key``, or None."""
        cdef MDB_val k, v
        cdef int rc
        self._ensure_open()
        _set_val(&k, _as_key(key))
        rc = mdb_get(self._txn, self.env.dbi(db), &k, &v)
        if rc == MDB_NOTFOUND:
            return None
        check(rc, b"mdb_get")
        return _val_bytes(&v)

    def put(self, key, value, *, db=None, bint overwrite=True, bint append=False):
        """Store ``value`` under ``key``; False if the key exists and not ``overwrite``."""
        cdef MDB_val k, v
        cdef int rc
        cdef unsigned int flags = (0 if overwrite else MDB_NOOVERWRITE) | (MDB_APPEND if append else 0)
        self._ensure_open()
        _set_val(&k, _as_key(key))
        _set_val(&v, _as_key(value))
        rc = mdb_put(self._txn, self.env.dbi(db), &k, &v, flags)
        if rc == MDB_KEYEXIST and not overwrite:
            return False
        self.fail(rc, b"mdb_put")
        return True

    def delete(self, key, *, db=None):
        """Delete ``key``; False if it was not there."""
        cdef MDB_val k
        cdef int rc
        self._ensure_open()
        _set_val(&k, _as_key(key))
        rc = mdb_del(self._txn, self.env.dbi(db), &k, NULL)
        if rc == MDB_NOTFOUND:
            return False
        check(rc, b"mdb_del")
        return True

    def cursor(self, *, db=None):
        """A cursor over the named database, closed with this transaction."""
        cdef Cursor cur = Cursor.__new__(Cursor)
        self._ensure_open()
        check(mdb_cursor_open(self._txn, self.env.dbi(db), &cur._cursor), b"mdb_cursor_open")
        cur.txn = self
        self._children.add(cur)
        return cur


# ---------------------------------------------------------------------------
# Cursor
# ---------------------------------------------------------------------------

@cython.final
cdef class Cursor:
    """A position in one database of a transaction; iterate it for ``(key, value)``."""

    def __cinit__(self):
        self._cursor = NULL
        self._positioned = False

    def __init__(self, *args, **kwargs):
        raise TypeError("use Transaction.cursor() to open a cursor")

    def __dealloc__(self):
        # A cursor never outlives its transaction's pointer: close() runs first.
        if self._cursor != NULL and self.txn is not None and self.txn._txn != NULL:
            mdb_cursor_close(self._cursor)
        self._cursor = NULL

    cdef int _ensure_open(self) except -1:
        if self._cursor == NULL:
            _closed("cursor")
        if self.txn._txn == NULL:
            _closed("transaction of this cursor")
        return 0

    def close(self):
        """Close the cursor. Idempotent."""
        if self._cursor == NULL:
            return
        mdb_cursor_close(self._cursor)
        self._cursor = NULL
        self._positioned = False
        self.txn._children.discard(self)

    @property
    def closed(self):
        return self._cursor == NULL

    def __enter__(self):
        self._ensure_open()
        return self

    def __exit__(self, *exc):
        self.close()

    cdef bint _move(self, int op) except -1:
        cdef int rc
        self._ensure_open()
        rc = mdb_cursor_get(self._cursor, &self._key, &self._value, <MDB_cursor_op>op)
        if rc == MDB_NOTFOUND:
            self._positioned = False
            return False
        check(rc, b"mdb_cursor_get")
        self._positioned = True
        return True

    def first(self):
        """Move to the first key; False if the database is empty."""
        return self._move(MDB_FIRST)

    def last(self):
        """Move to the last key; False if the database is empty."""
        return self._move(MDB_LAST)

    def next(self):
        """Move to the next key; False past the end."""
        return self._move(MDB_NEXT)

    def prev(self):
        """Move to the previous key; False before the start."""
        return self._move(MDB_PREV)

    def set_range(self, key):
        """Move to the first key >= ``key``; False if there is none."""
        _set_val(&self._key, _as_key(key))
        return self._move(MDB_SET_RANGE)

    def set_key(self, key):
        """Move to ``key`` exactly; False if it is absent."""
        _set_val(&self._key, _as_key(key))
        return self._move(MDB_SET_KEY)

    def key(self):
        """The current key (bytes), or None when not positioned."""
        self._ensure_open()
        return _val_bytes(&self._key) if self._positioned else None

    def value(self):
        """The current value (bytes), or None when not positioned."""
        self._ensure_open()
        return _val_bytes(&self._value) if self._positioned else None

    def item(self):
        self._ensure_open()
        if not self._positioned:
            return None
        return (_val_bytes(&self._key), _val_bytes(&self._value))

    def __iter__(self):
        """Iterate ``(key, value)`` from the current position (from the first if unpositioned)."""
        ok = self._move(MDB_GET_CURRENT if self._positioned else MDB_FIRST)
        while ok:
            yield (_val_bytes(&self._key), _val_bytes(&self._value))
            ok = self._move(MDB_NEXT)
