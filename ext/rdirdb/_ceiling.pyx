# cython: language_level=3
"""Benchmark ceilings, not part of the product: the engine's LMDB work without
Python objects, for benches/compare.py and the pytest-benchmark suite.

raw_insert writes pre-encoded pairs through the engine's own batch writer
(sort, MDB_APPEND, one transaction per batch); raw_scan walks a database in
a C loop.
"""

from cpython.bytes cimport PyBytes_AS_STRING
from libc.stdint cimport uint8_t, uint32_t, uint64_t

from rdirdb._batch cimport Batch, Entry, apply_batch
from rdirdb._lmdb cimport Environment, check
from rdirdb.lmdb cimport *


def raw_insert(Environment env, keys, values, Py_ssize_t batch=10000, db="chunk_bin"):
    """Insert pre-encoded pairs in a C loop, ``batch`` pairs per transaction."""
    cdef Batch b
    cdef Py_ssize_t n = len(keys), start, i
    cdef MDB_dbi dbis[2]
    cdef Entry *e
    dbis[0] = dbis[1] = env.dbi(db)
    for start in range(0, n, batch):
        b = Batch(min(batch, n - start))
        for i in range(start, min(start + batch, n)):
            e = b.add(0, i)
            e.koff = b.used
            e.klen = <uint32_t>len(keys[i])
            b.append(PyBytes_AS_STRING(keys[i]), e.klen)
            e.voff = b.used
            e.vlen = <uint32_t>len(values[i])
            b.append(PyBytes_AS_STRING(values[i]), e.vlen)
        b.sort_unique()
        apply_batch(env, dbis, b, False)


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
