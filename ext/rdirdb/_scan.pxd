# cython: language_level=3
"""Scans: the sorted databases of a volume merged in text order, page by page.

A scan runs in two phases: an LMDB loop without the GIL collects pointers into
the map (Hit), then the Python objects are built from them before the read
transaction ends. The cursor primitives are inline: the loops of _scan and
_count call them once per record.
"""

from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcmp

from rdirdb._codec cimport C_MAX_CONTAINER_ID, CANON_KEY, CANON_TEXT, ChunkValue, _canon_text, _text_cmp
from rdirdb._lmdb cimport Environment, Transaction
from rdirdb.lmdb cimport (MDB_CORRUPTED, MDB_NEXT, MDB_NOTFOUND, MDB_SUCCESS, MDB_cursor, MDB_dbi,
                          MDB_txn, MDB_val, mdb_cursor_get)


cdef struct Source:
    MDB_cursor *cur
    bint valid
    bint canonical
    MDB_val key
    MDB_val val
    bint has_text                  # text computed for the current key
    uint8_t text[CANON_TEXT]       # text of the current key when canonical


cdef struct Hit:
    MDB_val key
    MDB_val val
    bint canonical


cdef struct Scan:
    Source src[2]
    int nsrc
    const uint8_t *prefix
    size_t prefix_n
    int rc                          # first LMDB error met, or 0


cdef inline const uint8_t *_src_text(Source *s, size_t *n) noexcept nogil:
    """Text of the current key; a canonical key is hex-encoded on first use only."""
    if s.canonical:
        if not s.has_text:
            _canon_text(<const uint8_t *>s.key.mv_data, s.text)
            s.has_text = True
        n[0] = CANON_TEXT
        return s.text
    n[0] = s.key.mv_size
    return <const uint8_t *>s.key.mv_data


cdef inline void _src_settle(Scan *scan, Source *s, int rc) noexcept nogil:
    """Record the result of a cursor move and stop the source past the prefix."""
    cdef size_t n
    cdef const uint8_t *t
    if rc == MDB_NOTFOUND:
        s.valid = False
        return
    if rc != MDB_SUCCESS:
        s.valid = False
        if scan.rc == 0:
            scan.rc = rc
        return
    s.valid = True
    s.has_text = False
    if s.canonical and s.key.mv_size != CANON_KEY:
        s.valid = False
        if scan.rc == 0:
            scan.rc = MDB_CORRUPTED
        return
    if scan.prefix_n:
        t = _src_text(s, &n)
        if n < scan.prefix_n or memcmp(t, scan.prefix, scan.prefix_n) != 0:
            s.valid = False


cdef inline void _src_next(Scan *scan, Source *s) noexcept nogil:
    _src_settle(scan, s, mdb_cursor_get(s.cur, &s.key, &s.val, MDB_NEXT))


cdef inline int _scan_current(Scan *scan) noexcept nogil:
    """Index of the source holding the smallest current key, or -1 at the end."""
    cdef size_t an, bn
    cdef const uint8_t *a
    cdef const uint8_t *b
    if scan.nsrc == 1 or not scan.src[1].valid:
        return 0 if scan.src[0].valid else -1
    if not scan.src[0].valid:
        return 1
    a = _src_text(&scan.src[0], &an)
    b = _src_text(&scan.src[1], &bn)
    return 0 if _text_cmp(a, an, b, bn) <= 0 else 1


cdef class _Reader:
    cdef Environment env
    cdef MDB_txn *txn
    cdef Transaction snapshot
    cdef Scan scan
    cdef bytes prefix_b

    cdef int open(self, Environment env, const MDB_dbi *dbis, const bint *canonical, int nsrc,
                  object prefix, object marker, Transaction snapshot=*) except -1
    cdef bint key_equals(self, Source *s, bytes marker_b, bytes marker_key)
    cdef int raise_error(self) except -1
    cdef int close(self) except -1


cdef class _CidCache:
    cdef uint8_t raw[C_MAX_CONTAINER_ID]
    cdef Py_ssize_t n
    cdef bint canonical
    cdef object value

    cdef object get(self, const uint8_t *raw, Py_ssize_t n, bint canonical)


cdef class Entries:
    cdef uint8_t *arena
    cdef Hit *hits
    cdef ChunkValue *values        # the parsed value of each hit
    cdef Py_ssize_t count, i
    cdef _CidCache cache


cdef class _Page:
    cdef _Reader reader
    cdef Hit *hits
    cdef Py_ssize_t count, cap
    cdef Hit prev
    cdef bint truncated

    cdef int collect(self, Environment env, const MDB_dbi *dbis, const bint *canonical, int nsrc,
                     object prefix, object marker, object limit, object incident,
                     Transaction snapshot=*) except -1
    cdef object next_marker(self, bint meta2)
    cdef Entries entries(self)
    cdef int close(self) except -1


cdef Py_ssize_t _limit_arg(object limit) except? -1
cdef uint64_t _incident_arg(object incident) except? 0
cdef int64_t _int_arg(object value, str name, int64_t low, int64_t high) except? -1
cdef str _decode(const uint8_t *s, Py_ssize_t n)
cdef str _hex_str(const uint8_t *b, Py_ssize_t nbytes)
cdef object _key_text_of(Hit *h, bint meta2)
cdef object _chunk_record(Hit *h, int fields, _CidCache cache, bint entry=*)
cdef object _parsed_record(Hit *h, ChunkValue *cv, int fields, _CidCache cache, bint entry)
cdef object _corrupted(str kind)
cdef object _chunk_array(Hit *hits, Py_ssize_t count)
cdef dict _meta2_record(Hit *h)
