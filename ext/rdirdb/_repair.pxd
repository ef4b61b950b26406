# cython: language_level=3
"""Write stamps, tombstones and the digests of key ranges: what repair compares and moves."""

from rdirdb._batch cimport Batch
from rdirdb._lmdb cimport Environment, Transaction
from rdirdb.lmdb cimport MDB_dbi, MDB_txn


cdef class Stamps:
    cdef readonly Environment env
    cdef MDB_dbi dbis[2]
    cdef MDB_dbi tombs[2]
    cdef MDB_dbi clock          # 0: a read-only store written before stamps (no tombstones)
    cdef readonly int kinds     # databases of records: 2 (chunk_bin, chunk_text) or 1 (meta2)
    cdef readonly bint meta2
    cdef tuple _tomb_names

    cdef Py_ssize_t apply(self, Batch batch) except -1
    cdef list apply_group(self, list batches, bint sync_meta=*)
    cdef int _begin(self, MDB_txn **t, Transaction txn) except -1
    cdef int _end(self, MDB_txn *t, Transaction txn) except -1
    cdef object _clock_value(self, const char *name)


cdef Stamps open_stamps(Environment env, const MDB_dbi *dbis, tuple tomb_names, str clock_name,
                        bint meta2)
