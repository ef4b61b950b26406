# cython: language_level=3
"""Hot read paths of SharedBase's LMDB backend: obj_id -> shard id lookups.

An entry of the ``sigs`` database maps a 32-byte obj_id to 9 bytes: the
shard id (unsigned 64-bit, big-endian) then one state byte (see
``rdirdb.sharedbase._lmdb.SIG_*``). Only the ``present`` state is visible
to readers, as in winery.
"""

cimport cython
from libc.stdint cimport int64_t, uint64_t

from rdirdb._lmdb cimport Environment, check
from rdirdb.lmdb cimport (MDB_NOTFOUND, MDB_SUCCESS, MDB_dbi, MDB_txn, MDB_val,
                          mdb_get)

import numpy as np

DEF OBJ_ID_SIZE = 32
DEF VALUE_SIZE = 9
DEF STATE_PRESENT = 1


cdef inline int64_t _present_shard(const MDB_val *value) noexcept nogil:
    """The shard id of a present entry, 0 for any other state or a malformed value."""
    cdef const unsigned char *p = <const unsigned char *>value.mv_data
    cdef uint64_t shard = 0
    cdef int i
    if value.mv_size != VALUE_SIZE or p[8] != STATE_PRESENT:
        return 0
    for i in range(8):
        shard = (shard << 8) | p[i]
    return <int64_t>shard


def lookup_one(Environment env, str db, bytes obj_id):
    """The shard holding ``obj_id`` (present state), or None."""
    cdef MDB_txn *txn
    cdef MDB_dbi dbi = env.dbi(db)
    cdef MDB_val key, value
    cdef int rc
    cdef int64_t shard = 0
    key.mv_data = <char *>obj_id
    key.mv_size = len(obj_id)
    env.begin_raw(&txn, False)
    rc = mdb_get(txn, dbi, &key, &value)
    if rc == MDB_SUCCESS:
        shard = _present_shard(&value)
    env.end_raw(txn, False)
    if rc != MDB_NOTFOUND:
        check(rc, b"mdb_get")
    return shard if shard else None


@cython.boundscheck(False)  # the hot loop: i < shape[0], rows of exactly OBJ_ID_SIZE bytes
@cython.wraparound(False)
def lookup_many(Environment env, str db, const unsigned char[:, ::1] obj_ids):
    """Shard ids (int64, 0 when absent) for each row of an (n, 32) uint8 array.

    All lookups run in one read transaction, without the GIL.
    """
    if obj_ids.shape[1] != OBJ_ID_SIZE:
        raise ValueError(f"obj_ids must have {OBJ_ID_SIZE} bytes per row, not {obj_ids.shape[1]}")
    cdef Py_ssize_t n = obj_ids.shape[0], i
    result = np.zeros(n, dtype=np.int64)
    cdef int64_t[::1] out = result
    cdef MDB_txn *txn
    cdef MDB_dbi dbi = env.dbi(db)
    cdef MDB_val key, value
    cdef int rc = MDB_SUCCESS
    if n == 0:
        return result
    env.begin_raw(&txn, False)
    with nogil:
        for i in range(n):
            key.mv_data = <void *>&obj_ids[i, 0]
            key.mv_size = OBJ_ID_SIZE
            rc = mdb_get(txn, dbi, &key, &value)
            if rc == MDB_SUCCESS:
                out[i] = _present_shard(&value)
            elif rc == MDB_NOTFOUND:
                rc = MDB_SUCCESS
            else:
                break
    env.end_raw(txn, False)
    check(rc, b"mdb_get")
    return result
