# cython: language_level=3
"""Benchmark ceilings, not part of the product: the least work that gives the
same result as a measured path, for benches/compare.py and the pytest-benchmark
suite. No path of the product can do the same work faster (docs/engine.md,
"The benchmarks' ceilings").

* raw_insert writes pairs already encoded and packed in one buffer (pack)
  through the engine's own batch writer (one copy per batch, sort, MDB_APPEND,
  the write stamp, one transaction per batch): a write path without
  validation, encoding or a Python object per record.
* raw_entries hands out the entries of chunk_fetch, ``(container_id, chunk_id,
  {content_id, mtime, path, version})``, built by the engine's own builder
  straight from a cursor in one read transaction: no pages, markers, copies or
  client around them.
* raw_scan walks a database in a C loop, touching each key and value.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from rdirdb._batch cimport Batch, Entry
from rdirdb._codec cimport ChunkValue, F_ALL, _parse_chunk_value
from rdirdb._lmdb cimport Environment, check
from rdirdb._repair cimport Stamps
from rdirdb._scan cimport Hit, _CidCache, _corrupted, _parsed_record
from rdirdb.lmdb cimport *


@cython.final
cdef class Packed:
    """Stored keys and values in one buffer, in their order: record ``i`` is the
    key ``data[off[2i]:off[2i+1]]`` and the value ``data[off[2i+1]:off[2i+2]]``."""
    cdef uint8_t *data
    cdef size_t *off
    cdef readonly Py_ssize_t n

    def __cinit__(self):
        self.data = NULL
        self.off = NULL

    def __dealloc__(self):
        free(self.data)
        free(self.off)

    def __len__(self):
        return self.n


def pack(keys, values):
    """Pack pre-encoded keys and values (sequences of bytes) for raw_insert."""
    cdef Packed p = Packed()
    cdef Py_ssize_t i, n = len(keys)
    cdef size_t size = 0
    cdef bytes b
    if len(values) != n:
        raise ValueError("as many keys as values")
    for i in range(n):
        size += len(<bytes>keys[i]) + len(<bytes>values[i])
    p.data = <uint8_t *>malloc(size if size else 1)
    p.off = <size_t *>malloc((2 * n + 1) * sizeof(size_t))
    if p.data == NULL or p.off == NULL:
        raise MemoryError()
    p.n = n
    p.off[0] = 0
    for i in range(2 * n):
        b = keys[i // 2] if i % 2 == 0 else values[i // 2]
        memcpy(p.data + p.off[i], PyBytes_AS_STRING(b), len(b))
        p.off[i + 1] = p.off[i] + len(b)
    return p


def raw_insert(Stamps index, Packed records, Py_ssize_t batch=10000):
    """Insert packed pairs of chunk_bin, ``batch`` pairs per transaction: one copy of
    each batch's bytes into the engine's batch, its sort, its stamped write
    (``index``: ``ChunkIndex.stamps`` of the volume)."""
    cdef Batch b
    cdef Py_ssize_t n = records.n, start, end, i
    cdef Entry *e
    cdef size_t base
    cdef uint8_t *arena
    for start in range(0, n, batch):
        end = min(start + batch, n)
        b = Batch(end - start)
        base = records.off[2 * start]
        arena = b.reserve(records.off[2 * end] - base)
        memcpy(arena, records.data + base, records.off[2 * end] - base)
        b.used += records.off[2 * end] - base
        for i in range(start, end):
            e = b.add(0, i)
            e.koff = records.off[2 * i] - base
            e.klen = <uint32_t>(records.off[2 * i + 1] - records.off[2 * i])
            e.voff = records.off[2 * i + 1] - base
            e.vlen = <uint32_t>(records.off[2 * i + 2] - records.off[2 * i + 1])
        b.sort_unique()
        index.apply(b)


@cython.final
cdef class RawEntries:
    """raw_entries' iterator: a read transaction and a cursor per chunk database
    (walked one after the other: the order of the merge is not a ceiling's work)."""
    cdef Environment env
    cdef MDB_txn *txn
    cdef MDB_cursor *cur
    cdef MDB_dbi dbis[2]
    cdef int db
    cdef MDB_cursor_op op
    cdef _CidCache cache

    def __cinit__(self, Environment env):
        self.env = env
        self.txn = NULL
        self.cur = NULL
        self.cache = _CidCache()
        self.dbis[0] = env.dbi("chunk_bin")
        self.dbis[1] = env.dbi("chunk_text")
        env.begin_raw(&self.txn, False)
        self.db = -1

    def __dealloc__(self):
        self.close()

    cdef int close(self) except -1:
        if self.cur != NULL:
            mdb_cursor_close(self.cur)
            self.cur = NULL
        if self.txn != NULL:
            self.env.end_raw(self.txn, False)
            self.txn = NULL
        return 0

    def __iter__(self):
        return self

    def __next__(self):
        cdef Hit h
        cdef ChunkValue cv
        cdef int rc = MDB_NOTFOUND
        if self.txn == NULL:
            raise StopIteration
        if self.cur != NULL:
            rc = mdb_cursor_get(self.cur, &h.key, &h.val, MDB_NEXT)
        while rc == MDB_NOTFOUND and self.db < 1:
            if self.cur != NULL:
                mdb_cursor_close(self.cur)
                self.cur = NULL
            self.db += 1
            check(mdb_cursor_open(self.txn, self.dbis[self.db], &self.cur), b"mdb_cursor_open")
            rc = mdb_cursor_get(self.cur, &h.key, &h.val, MDB_FIRST)
        if rc == MDB_NOTFOUND:
            self.close()
            raise StopIteration
        check(rc, b"mdb_cursor_get")
        h.canonical = self.db == 0
        if not _parse_chunk_value(<const uint8_t *>h.val.mv_data, h.val.mv_size, &cv):
            raise _corrupted("chunk")
        return _parsed_record(&h, &cv, F_ALL, self.cache, True)


def raw_entries(Environment env):
    """Every chunk record of a rawx volume as chunk_fetch's entries, straight from
    cursors in one read transaction (ended when the iterator is exhausted)."""
    return RawEntries(env)


def raw_scan(Environment env, db="chunk_bin"):
    """Walk every record of ``db`` in a C loop (touching keys and values); returns the count."""
    cdef MDB_txn *txn
    cdef MDB_cursor *cur
    cdef MDB_val k, v
    cdef Py_ssize_t count = 0
    cdef uint64_t sink = 0
    cdef int rc
    cdef MDB_dbi dbi = env.dbi(db)
    env.begin_raw(&txn, False)
    try:
        check(mdb_cursor_open(txn, dbi, &cur), b"mdb_cursor_open")
        with nogil:
            rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)
            while rc == MDB_SUCCESS:
                sink += (<uint8_t *>k.mv_data)[0] + (<uint8_t *>v.mv_data)[0]
                count += 1
                rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)
            mdb_cursor_close(cur)
        if rc != MDB_NOTFOUND:
            check(rc, b"mdb_cursor_get")
    finally:
        env.end_raw(txn, False)
    return count
