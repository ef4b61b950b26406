# cython: language_level=3
"""Batches: records encoded into one arena, sorted, then written in one transaction."""

from libc.stdint cimport uint8_t, uint32_t, uint64_t

from rdirdb._lmdb cimport Environment
from rdirdb.lmdb cimport MDB_dbi, MDB_txn


cdef struct Entry:
    uint64_t head       # first 8 key bytes, big-endian: most comparisons stop here
    size_t koff
    size_t voff
    uint32_t klen
    uint32_t vlen
    uint32_t kind       # index of the database
    uint32_t dead       # overwritten by a later record with the same key
    Py_ssize_t index


cdef class Batch:
    cdef uint8_t *arena
    cdef size_t used, cap
    cdef Entry *entries
    cdef Py_ssize_t n, ncap
    cdef readonly bint meta2       # meta2 records, else chunk records
    cdef readonly bint key_only    # keys to delete, else records to write
    cdef MDB_dbi dbis[2]           # where apply_batch writes: one database per kind
    cdef MDB_dbi tombs[2]          # the tombstones of each kind (with ``clock``: 0 writes no stamp)
    cdef MDB_dbi clock             # the volume's last write stamp

    cdef uint8_t *reserve(self, size_t size) except NULL
    cdef Entry *add(self, uint32_t kind, Py_ssize_t index) except NULL
    cdef int append(self, const void *data, size_t size) except -1
    cdef int sort_unique(self) except -1


cdef Py_ssize_t apply_batch(Environment env, const MDB_dbi *dbis, Batch batch, bint meta2,
                            const MDB_dbi *tombs=*, MDB_dbi clock=*) except -1
cdef int clock_advance(MDB_txn *txn, MDB_dbi clock, uint64_t floor, uint64_t *stamp) noexcept nogil
cdef list apply_batches(Environment env, const MDB_dbi *dbis, list batches, bint meta2,
                        const MDB_dbi *tombs=*, MDB_dbi clock=*, bint sync_meta=*, more=*)
