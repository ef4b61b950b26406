# cython: language_level=3
"""Batches: records encoded into one arena, sorted, then written in one transaction."""

from libc.stdint cimport uint8_t, uint32_t, uint64_t

from rdirdb._lmdb cimport Environment
from rdirdb.lmdb cimport MDB_dbi


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

    cdef uint8_t *reserve(self, size_t size) except NULL
    cdef Entry *add(self, uint32_t kind, Py_ssize_t index) except NULL
    cdef int append(self, const void *data, size_t size) except -1
    cdef int sort_unique(self) except -1


cdef Py_ssize_t apply_batch(Environment env, const MDB_dbi *dbis, Batch batch, bint meta2) except -1
cdef list apply_batches(Environment env, const MDB_dbi *dbis, list batches, bint meta2)
