# cython: language_level=3, cdivision=True
"""Batches of the rdir engine: what the encoders (_encode) fill and the indexes
(_rdir) write.

A batch holds the stored keys and values of its records in one growing arena;
sort_unique() orders them by database and key (the last of equal keys wins),
and apply_batch() writes them in one LMDB write transaction, without the GIL,
appending where a key is past the end of its database (MDB_APPEND): all or
nothing. With the volume's tombstone and clock databases, every write is
stamped (docs/reliability.md, "Replicas that converge"): a record's value
carries the stamp of its transaction, a delete leaves a tombstone, a put
removes the key's tombstone.
"""

cimport cython
from libc.errno cimport ENOMEM
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from cpython.ref cimport PyObject
from cpython.sequence cimport PySequence_Fast_ITEMS
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy

from rdirdb._codec cimport STAMP_SIZE, V_STAMPED, _get_stamp, _hlc_next, _put_stamp, _text_cmp
from rdirdb._lmdb cimport Environment, Transaction
from rdirdb.lmdb cimport *

cdef extern from "stdlib.h" nogil:
    void qsort_r(void *base, size_t nmemb, size_t size,
                 int (*compar)(const void *, const void *, void *) noexcept nogil, void *arg)


cdef int _entry_cmp(const void *a, const void *b, void *arena) noexcept nogil:
    cdef const Entry *x = <const Entry *>a
    cdef const Entry *y = <const Entry *>b
    cdef const uint8_t *base = <const uint8_t *>arena
    if x.kind != y.kind:
        return (x.kind > y.kind) - (x.kind < y.kind)
    if x.head != y.head:
        return 1 if x.head > y.head else -1
    cdef int c = _text_cmp(base + x.koff, x.klen, base + y.koff, y.klen)
    if c != 0:
        return c
    return (x.index > y.index) - (x.index < y.index)


@cython.final
cdef class Batch:
    """A validated batch, encoded into one growing arena and sorted: what
    ``encode_chunks`` and ``encode_meta2`` return and the indexes' ``apply``
    writes. ``len()`` is the number of distinct keys."""

    def __cinit__(self, Py_ssize_t expected, bint meta2=False, bint key_only=False):
        self.meta2 = meta2
        self.key_only = key_only
        self.cap = <size_t>max(4096, expected * 128)
        self.ncap = max(16, expected)
        self.arena = <uint8_t *>malloc(self.cap)
        self.entries = <Entry *>malloc(<size_t>self.ncap * sizeof(Entry))
        if self.arena == NULL or self.entries == NULL:
            raise MemoryError()
        self.used = 0
        self.n = 0

    def __dealloc__(self):
        free(self.arena)
        free(self.entries)

    cdef uint8_t *reserve(self, size_t size) except NULL:
        """Room for ``size`` more bytes at the end of the arena."""
        cdef uint8_t *grown
        cdef size_t cap = self.cap
        if self.used + size > cap:
            while self.used + size > cap:
                cap *= 2
            grown = <uint8_t *>realloc(self.arena, cap)
            if grown == NULL:
                raise MemoryError()
            self.arena = grown
            self.cap = cap
        return self.arena + self.used

    cdef Entry *add(self, uint32_t kind, Py_ssize_t index) except NULL:
        cdef Entry *grown
        if self.n == self.ncap:
            grown = <Entry *>realloc(self.entries, <size_t>self.ncap * 2 * sizeof(Entry))
            if grown == NULL:
                raise MemoryError()
            self.entries = grown
            self.ncap *= 2
        cdef Entry *e = &self.entries[self.n]
        self.n += 1
        e.kind = kind
        e.index = index
        e.dead = 0
        e.klen = 0
        e.vlen = 0
        return e

    cdef int append(self, const void *data, size_t size) except -1:
        memcpy(self.reserve(size), data, size)
        self.used += size
        return 0

    cdef int sort_unique(self) except -1:
        """Sort by (database, key, position); mark all but the last of equal keys dead."""
        cdef Py_ssize_t i
        cdef uint32_t j
        cdef Entry *a
        cdef Entry *b
        cdef uint64_t head
        for i in range(self.n):
            a = &self.entries[i]
            head = 0
            for j in range(8):
                head = (head << 8) | (self.arena[a.koff + j] if j < a.klen else 0)
            a.head = head
        with nogil:
            qsort_r(self.entries, <size_t>self.n, sizeof(Entry), _entry_cmp, self.arena)
        for i in range(self.n - 1):
            a = &self.entries[i]
            b = &self.entries[i + 1]
            if a.kind == b.kind and a.klen == b.klen and \
                    memcmp(self.arena + a.koff, self.arena + b.koff, a.klen) == 0:
                a.dead = 1
        return 0

    def __len__(self):
        cdef Py_ssize_t i, count = 0
        for i in range(self.n):
            count += not self.entries[i].dead
        return count


cdef int clock_advance(MDB_txn *txn, MDB_dbi clock, uint64_t floor, uint64_t *stamp) noexcept nogil:
    """The stamp of this write transaction: after the volume's last one and after
    ``floor`` (the newest stamp it receives from a replica), by the wall clock when
    it is ahead; stored as the volume's last stamp. Returns an LMDB code."""
    cdef MDB_val k, v
    cdef uint64_t last = floor
    cdef uint8_t buf[STAMP_SIZE]
    k.mv_data = <void *><const char *>b"last"
    k.mv_size = 4
    cdef int rc = mdb_get(txn, clock, &k, &v)
    if rc == MDB_SUCCESS and v.mv_size == STAMP_SIZE and _get_stamp(<const uint8_t *>v.mv_data) > last:
        last = _get_stamp(<const uint8_t *>v.mv_data)
    elif rc != MDB_SUCCESS and rc != MDB_NOTFOUND:
        return rc
    stamp[0] = _hlc_next(last)
    _put_stamp(buf, stamp[0])
    v.mv_data = buf
    v.mv_size = STAMP_SIZE
    return mdb_put(txn, clock, &k, &v, 0)


cdef inline int _has_tombstones(MDB_txn *txn, MDB_dbi tombs, bint *found) noexcept nogil:
    """Whether the database of tombstones ``tombs`` holds any (so that puts need not look
    there for the keys they write). Returns an LMDB code."""
    cdef MDB_stat st
    cdef int rc = mdb_stat(txn, tombs, &st)
    found[0] = rc != MDB_SUCCESS or st.ms_entries > 0
    return rc


cdef int _write_entries(MDB_txn *txn, Batch batch, Py_ssize_t *count) noexcept nogil:
    """Put (or delete, for keys) every live entry in ``txn``; returns an LMDB code.

    A stamped batch (``batch.clock``) writes each record with the stamp of the
    transaction and drops its tombstone, and leaves a tombstone for each key deleted."""
    cdef MDB_cursor *cur
    cdef MDB_val k, v, last, last_value, stamp_val
    cdef Py_ssize_t i = 0
    cdef int rc = MDB_SUCCESS
    cdef uint32_t kind
    cdef bint appending, stamped = batch.clock != 0, tombs = False
    cdef Entry *e
    cdef uint64_t stamp = 0
    cdef size_t max_vlen = 0
    cdef uint8_t *scratch = NULL
    cdef uint8_t stamp_buf[STAMP_SIZE]
    if stamped:
        rc = clock_advance(txn, batch.clock, 0, &stamp)
        if rc != MDB_SUCCESS:
            return rc
        _put_stamp(stamp_buf, stamp)
        stamp_val.mv_data = stamp_buf
        stamp_val.mv_size = STAMP_SIZE
        if not batch.key_only:
            for i in range(batch.n):
                if batch.entries[i].vlen > max_vlen:
                    max_vlen = batch.entries[i].vlen
            i = 0
            scratch = <uint8_t *>malloc(max_vlen + STAMP_SIZE)
            if scratch == NULL:
                return ENOMEM
    while i < batch.n and rc == MDB_SUCCESS:
        kind = batch.entries[i].kind
        rc = mdb_cursor_open(txn, batch.dbis[kind], &cur)
        if rc != MDB_SUCCESS:
            break
        appending = False
        if stamped:
            rc = _has_tombstones(txn, batch.tombs[kind], &tombs)
            if rc != MDB_SUCCESS:
                mdb_cursor_close(cur)
                break
        if not batch.key_only:
            rc = mdb_cursor_get(cur, &last, &last_value, MDB_LAST)
            if rc == MDB_NOTFOUND:
                appending = True
                rc = MDB_SUCCESS
        while i < batch.n and batch.entries[i].kind == kind and rc == MDB_SUCCESS:
            e = &batch.entries[i]
            i += 1
            if e.dead:
                continue
            k.mv_data = batch.arena + e.koff
            k.mv_size = e.klen
            if batch.key_only:
                rc = mdb_del(txn, batch.dbis[kind], &k, NULL)
                if rc == MDB_SUCCESS:
                    count[0] += 1
                elif rc == MDB_NOTFOUND:
                    rc = MDB_SUCCESS
                if rc == MDB_SUCCESS and stamped:
                    rc = mdb_put(txn, batch.tombs[kind], &k, &stamp_val, 0)
                continue
            v.mv_data = batch.arena + e.voff
            v.mv_size = e.vlen
            if stamped:
                memcpy(scratch, v.mv_data, e.vlen)
                scratch[0] |= V_STAMPED
                memcpy(scratch + e.vlen, stamp_buf, STAMP_SIZE)
                v.mv_data = scratch
                v.mv_size = e.vlen + STAMP_SIZE
                if tombs:
                    rc = mdb_del(txn, batch.tombs[kind], &k, NULL)
                    if rc == MDB_NOTFOUND:
                        rc = MDB_SUCCESS
                    elif rc != MDB_SUCCESS:
                        break
            if not appending and _text_cmp(<uint8_t *>k.mv_data, k.mv_size,
                                           <uint8_t *>last.mv_data, last.mv_size) > 0:
                appending = True
            rc = mdb_cursor_put(cur, &k, &v, MDB_APPEND if appending else 0)
            count[0] += 1
        mdb_cursor_close(cur)
    free(scratch)
    return rc


def _write_into(Transaction txn, Batch batch):
    """Environment.write's function: the batch in ``txn``, committed; how many records it wrote."""
    return _write_all_into(txn, [batch])[0]


cdef int _bind(Batch batch, const MDB_dbi *dbis, bint meta2, const MDB_dbi *tombs,
               MDB_dbi clock) except -1:
    """Check that ``batch`` is of the index's kind and point it at the index's
    databases, its tombstones and its clock (stamped writes; 0: none)."""
    if batch.meta2 != meta2:
        raise TypeError(f"a batch of {'meta2' if batch.meta2 else 'chunk'} records "
                        f"cannot be applied to a {'meta2' if meta2 else 'chunk'} index")
    batch.dbis[0] = dbis[0]
    if not meta2:
        batch.dbis[1] = dbis[1]
    batch.clock = clock if tombs != NULL else 0
    if batch.clock:
        batch.tombs[0] = tombs[0]
        if not meta2:
            batch.tombs[1] = tombs[1]
    return 0


cdef Py_ssize_t apply_batch(Environment env, const MDB_dbi *dbis, Batch batch, bint meta2,
                            const MDB_dbi *tombs=NULL, MDB_dbi clock=0) except -1:
    """Write a sorted batch (delete its keys if ``key_only``) in one write
    transaction, all or nothing; returns how many records were written (or
    existed). ``dbis`` are the databases of the batch's kinds, ``tombs`` their
    tombstones and ``clock`` the volume's last stamp (stamped writes; 0: none)."""
    _bind(batch, dbis, meta2, tombs, clock)
    if batch.n == 0:
        return 0
    return env.write(_write_into, batch)


cdef struct _Group:  # the batches of one transaction, for _write_group (it owns no Python object)
    PyObject **batches
    Py_ssize_t n
    Py_ssize_t *counts  # what batch i wrote
    Py_ssize_t failed   # the batch whose write failed


cdef int _write_group(MDB_txn *txn, void *state) noexcept nogil:
    """Each batch of the _Group ``state`` in ``txn``, in order, until one fails; an LMDB code."""
    cdef _Group *group = <_Group *>state
    cdef Py_ssize_t i
    cdef int rc = MDB_SUCCESS
    for i in range(group.n):
        if (<Batch>group.batches[i]).n == 0:  # nothing to write: not even a stamp
            continue
        rc = _write_entries(txn, <Batch>group.batches[i], &group.counts[i])
        if rc != MDB_SUCCESS:
            group.failed = i
            break
    return rc


def _write_all_into(Transaction txn, list batches):
    """Environment.write's function: each batch in ``txn``, in order, then the
    commit, in one stretch without the GIL (the write lock is held meanwhile:
    no wait for the GIL between a group's batches, see
    :meth:`Transaction.write_then_commit`); their counts."""
    cdef list owned = list(batches)  # its items are borrowed below: nobody else may change it
    cdef _Group group
    cdef int rc
    for batch in owned:
        if not isinstance(batch, Batch):
            raise TypeError(f"expected a Batch, not {type(batch).__name__}")
    group.batches = PySequence_Fast_ITEMS(owned)
    group.n = len(owned)
    group.failed = 0
    group.counts = <Py_ssize_t *>calloc(group.n if group.n else 1, sizeof(Py_ssize_t))
    if group.counts == NULL:
        raise MemoryError()
    try:
        rc = txn.write_then_commit(_write_group, &group)
        if rc != MDB_SUCCESS:
            txn.fail(rc, b"mdb_del" if (<Batch>owned[group.failed]).key_only else b"mdb_cursor_put")
        return [group.counts[i] for i in range(group.n)]
    finally:
        free(group.counts)


cdef class _Binding:
    """Where a batch taken inside the transaction goes (see apply_batches)."""
    cdef MDB_dbi dbis[2]
    cdef MDB_dbi tombs[2]
    cdef bint meta2, stamped
    cdef MDB_dbi clock

    cdef int bind(self, Batch batch) except -1:
        return _bind(batch, self.dbis, self.meta2, self.tombs if self.stamped else NULL, self.clock)


def _write_all_and_more(Transaction txn, list batches, more, _Binding binding):
    """Environment.write's function: ``batches``, then those ``more()`` returns."""
    cdef list late = list(more())
    for batch in late:
        binding.bind(batch)
    return _write_all_into(txn, batches + late)


cdef list apply_batches(Environment env, const MDB_dbi *dbis, list batches, bint meta2,
                        const MDB_dbi *tombs=NULL, MDB_dbi clock=0, bint sync_meta=True, more=None):
    """Write several batches in one write transaction, in their order (a later
    batch's record or delete wins over an earlier one's), all or nothing;
    returns how many records each wrote (or found, for deletes). ``sync_meta``:
    see :meth:`Environment.write`. ``more()``, called once the transaction
    holds LMDB's write lock (again if it is replayed: it must return the same
    batches), returns batches to write after ``batches``: those that arrived
    while another writer held the lock (the server's group commit)."""
    cdef Batch batch
    cdef _Binding binding
    for batch in batches:
        _bind(batch, dbis, meta2, tombs, clock)
    if more is None:
        return env.write(_write_all_into, batches, sync_meta=sync_meta)
    binding = _Binding.__new__(_Binding)
    binding.dbis[0], binding.dbis[1] = dbis[0], dbis[1] if not meta2 else 0
    binding.stamped = tombs != NULL
    if binding.stamped:
        binding.tombs[0], binding.tombs[1] = tombs[0], tombs[1] if not meta2 else 0
    binding.meta2, binding.clock = meta2, clock
    return env.write(_write_all_and_more, batches, more, binding, sync_meta=sync_meta)
