# cython: language_level=3
"""Hot paths of SharedBase's LMDB backend: obj_id -> shard id lookups, and the
batch that records new ids.

An entry of the ``sigs`` database maps a 32-byte obj_id to 9 bytes: the
shard id (unsigned 64-bit, big-endian) then one state byte (``SIG_*``). Only
the ``present`` state is visible to readers, as in winery. The other
databases are described in ``rdirdb.sharedbase.lmdb``.
"""

cimport cython
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcmp

from rdirdb._lmdb cimport Environment, Transaction, check
from rdirdb.lmdb cimport (MDB_CORRUPTED, MDB_CURRENT, MDB_KEYEXIST, MDB_NOOVERWRITE, MDB_NOTFOUND,
                          MDB_SUCCESS, MDB_cursor, MDB_dbi, MDB_txn, MDB_val, mdb_cursor_close,
                          mdb_cursor_open, mdb_cursor_put, mdb_del, mdb_get, mdb_put)

import numpy as np

DEF OBJ_ID_SIZE = 32
DEF VALUE_SIZE = 9
DEF SHARD_KEY_SIZE = 8  # a shard id, big-endian: the key of ``shards`` and ``counts``, a ``counts`` value
DEF STATE_INFLIGHT = 0  # legacy: nothing writes it since 2024 (winery's)
DEF STATE_PRESENT = 1
DEF STATE_DELETED = 2
DEF MAX_FENCES = 4

# The state byte of a ``sigs`` value.
SIG_INFLIGHT, SIG_PRESENT, SIG_DELETED = STATE_INFLIGHT, STATE_PRESENT, STATE_DELETED


cdef inline int64_t _present_shard(const MDB_val *value) noexcept nogil:
    """The shard id of a present entry, 0 for any other state or a malformed value."""
    cdef const unsigned char *p = <const unsigned char *>value.mv_data
    cdef uint64_t shard = 0
    cdef int i
    if value.mv_size != VALUE_SIZE or p[8] != STATE_PRESENT:
        return 0
    return <int64_t>_get_u64(p)


cdef inline uint64_t _get_u64(const unsigned char *p) noexcept nogil:
    cdef uint64_t n = 0
    cdef int i
    for i in range(8):
        n = (n << 8) | p[i]
    return n


cdef inline void _put_u64(unsigned char *p, uint64_t n) noexcept nogil:
    cdef int i
    for i in range(7, -1, -1):
        p[i] = n & 0xFF
        n >>= 8


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


cdef struct _Fences:
    int n
    const char *data[MAX_FENCES]
    size_t size[MAX_FENCES]


cdef enum:  # the databases of record_new, in its ``dbis``
    SHARDS, SIGS, DELETED, COUNTS, N_DBS


cdef int _record(MDB_txn *txn, const MDB_dbi *dbis, uint64_t shard_id, const _Fences *fences,
                 const uint8_t *ids, Py_ssize_t n, int64_t *owners, bint *fenced,
                 const char **what) noexcept nogil:
    """record_new's loop: the fence, then each id; returns an LMDB code (``what`` failed)."""
    cdef unsigned char shard_key[SHARD_KEY_SIZE]
    cdef unsigned char ours[VALUE_SIZE]
    cdef unsigned char count[SHARD_KEY_SIZE]
    cdef const unsigned char *row
    cdef MDB_val k, v
    cdef MDB_cursor *cur
    cdef Py_ssize_t i
    cdef uint64_t added = 0
    cdef int rc, f
    _put_u64(shard_key, shard_id)
    # The fence: the shard's row must start as a row of ours in a writable state does.
    k.mv_data = shard_key
    k.mv_size = SHARD_KEY_SIZE
    what[0] = b"mdb_get"
    rc = mdb_get(txn, dbis[SHARDS], &k, &v)
    if rc == MDB_NOTFOUND:
        fenced[0] = True
        return MDB_SUCCESS
    if rc != MDB_SUCCESS:
        return rc
    row = <const unsigned char *>v.mv_data
    fenced[0] = True
    for f in range(fences.n):
        if v.mv_size >= fences.size[f] and memcmp(row, fences.data[f], fences.size[f]) == 0:
            fenced[0] = False
    if fenced[0]:
        return MDB_SUCCESS

    _put_u64(ours, shard_id)
    ours[8] = STATE_PRESENT
    what[0] = b"mdb_cursor_open"
    rc = mdb_cursor_open(txn, dbis[SIGS], &cur)
    if rc != MDB_SUCCESS:
        return rc
    what[0] = b"mdb_cursor_put"
    for i in range(n):
        k.mv_data = <void *>(ids + i * OBJ_ID_SIZE)
        k.mv_size = OBJ_ID_SIZE
        v.mv_data = ours
        v.mv_size = VALUE_SIZE
        # One search: a new id goes in; an id already there is left as it is,
        # the cursor on it and ``v`` its value.
        rc = mdb_cursor_put(cur, &k, &v, MDB_NOOVERWRITE)
        if rc == MDB_KEYEXIST:
            if v.mv_size != VALUE_SIZE:
                rc = MDB_CORRUPTED
                break
            if (<const unsigned char *>v.mv_data)[8] != STATE_DELETED:
                owners[i] = <int64_t>_get_u64(<const unsigned char *>v.mv_data)  # it keeps its shard
                rc = MDB_SUCCESS
                continue
            # A tombstone: the id is added again, to our shard.
            v.mv_data = ours
            v.mv_size = VALUE_SIZE
            rc = mdb_cursor_put(cur, &k, &v, MDB_CURRENT)
            if rc == MDB_SUCCESS:
                k.mv_data = <void *>(ids + i * OBJ_ID_SIZE)
                k.mv_size = OBJ_ID_SIZE
                what[0] = b"mdb_del"
                rc = mdb_del(txn, dbis[DELETED], &k, NULL)
                if rc == MDB_NOTFOUND:
                    rc = MDB_SUCCESS
                what[0] = b"mdb_cursor_put"
        if rc != MDB_SUCCESS:
            break
        owners[i] = <int64_t>shard_id
        added += 1
    mdb_cursor_close(cur)
    if rc != MDB_SUCCESS or added == 0:
        return rc

    # The shard's count of present objects.
    k.mv_data = shard_key
    k.mv_size = SHARD_KEY_SIZE
    what[0] = b"mdb_get"
    rc = mdb_get(txn, dbis[COUNTS], &k, &v)
    if rc == MDB_SUCCESS:
        if v.mv_size != SHARD_KEY_SIZE:
            return MDB_CORRUPTED
        added += _get_u64(<const unsigned char *>v.mv_data)
    elif rc != MDB_NOTFOUND:
        return rc
    _put_u64(count, added)
    v.mv_data = count
    v.mv_size = SHARD_KEY_SIZE
    what[0] = b"mdb_put"
    return mdb_put(txn, dbis[COUNTS], &k, &v, 0)


def record_new(Transaction txn, uint64_t shard_id, tuple fences, const unsigned char[::1] ids):
    """Record the obj_ids of ``ids`` (32 bytes each, sorted) in shard ``shard_id``
    within the write transaction ``txn``, in one loop without the GIL.

    The fence first: the shard's row in ``shards`` must start with one of
    ``fences`` (the row the shard has while its holder may write to it), else
    nothing is written and the answer is None. Then each id: a new one, or a
    tombstone, becomes present in our shard; a present (or in-flight) one keeps
    its shard. The shard's count in ``counts`` grows by the ids added. Returns
    the owner of each id (int64, in the order of ``ids``).
    """
    cdef _Fences c_fences
    cdef MDB_dbi dbis[N_DBS]
    cdef Environment env = txn.env
    cdef Py_ssize_t n = ids.shape[0] // OBJ_ID_SIZE
    cdef const uint8_t *data = NULL
    cdef bint fenced = False
    cdef const char *what = b"mdb_get"
    cdef int rc
    if ids.shape[0] % OBJ_ID_SIZE:
        raise ValueError(f"ids must be {OBJ_ID_SIZE} bytes each, not {ids.shape[0]} bytes in all")
    if not 0 < len(fences) <= MAX_FENCES:
        raise ValueError(f"expected 1 to {MAX_FENCES} fences, not {len(fences)}")
    c_fences.n = len(fences)
    for f, fence in enumerate(fences):
        if not isinstance(fence, bytes) or not fence:
            raise TypeError("each fence must be non-empty bytes")
        c_fences.data[f] = <bytes>fence
        c_fences.size[f] = len(<bytes>fence)
    if not txn.write:
        raise ValueError("record_new needs a write transaction")
    txn._ensure_open()
    dbis[SHARDS], dbis[SIGS] = env.dbi("shards"), env.dbi("sigs")
    dbis[DELETED], dbis[COUNTS] = env.dbi("deleted"), env.dbi("counts")
    result = np.zeros(n, dtype=np.int64)
    cdef int64_t[::1] owners = result
    if n:
        data = &ids[0]
    with nogil:
        rc = _record(txn._txn, dbis, shard_id, &c_fences, data, n, &owners[0] if n else NULL,
                     &fenced, &what)
    txn.fail(rc, what)
    return None if fenced else result
