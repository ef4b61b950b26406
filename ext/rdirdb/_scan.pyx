# cython: language_level=3, cdivision=True
"""Records out: merged scans of a volume's databases, pages, and the Python
objects of what they find (see _scan.pxd).

A chunk scan merges ``chunk_bin`` (canonical keys, binary) and ``chunk_text``
(text keys) in the order of the text ``cid|chunk``; a meta2 scan reads the one
``meta2`` database. A page collects up to ``limit`` hits, and knows exactly
whether another one follows (``truncated``) and after which key it starts.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy, memset

from rdirdb._codec cimport *
from rdirdb._encode cimport _int64, _order_key
from rdirdb._lmdb cimport Environment, Transaction, check
from rdirdb.lmdb cimport *

import numpy as np

from rdirdb.errors import BadRequest, CorruptedError, caller_error

cdef extern from "Python.h":
    object PyUnicode_FromStringAndSize(const char *u, Py_ssize_t size)
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void *PyUnicode_DATA(object o)

# The one order of the fields of a chunk record: tuples written or read, numpy
# arrays, OpenIO's chunk_push parameters.
CHUNK_DTYPE_FIELDS = ("container_id", "content_id", "chunk_id", "mtime", "path", "version")
CHUNK_DTYPE = np.dtype([
    ("container_id", f"S{C_MAX_CONTAINER_ID}"), ("content_id", f"S{C_MAX_CONTENT_ID}"),
    ("chunk_id", f"S{C_MAX_CHUNK_ID}"), ("mtime", "<i8"), ("path", f"S{C_MAX_PATH}"), ("version", "<i8"),
])


# -- where a scan starts ----------------------------------------------------------

# The smallest canonical text >= ``t`` (see _canon_lower_bound).
cdef inline bint _canon_allowed(Py_ssize_t pos, uint8_t c) noexcept nogil:
    if pos == 64:
        return c == 124
    return _hexval(c) >= 0


cdef inline int _canon_next_char(Py_ssize_t pos, uint8_t c) noexcept nogil:
    """The smallest character allowed at ``pos`` that is > c, or -1."""
    cdef int i
    if pos == 64:
        return 124 if c < 124 else -1
    for i in range(16):
        if <uint8_t>rdirdb_hex_pairs[2 * i + 1] > c:
            return rdirdb_hex_pairs[2 * i + 1]
    return -1


cdef bint _canon_lower_bound(const uint8_t *t, Py_ssize_t tlen, uint8_t *key) noexcept nogil:
    """Set ``key`` to the smallest canonical key whose text is >= ``t``.

    Canonical texts are exactly the 129-byte strings of 64 hex digits, '|' and
    64 hex digits. Returns False when every canonical text is < ``t``.
    """
    cdef uint8_t s[CANON_TEXT]
    cdef Py_ssize_t p = 0, j, i
    cdef int c
    while p < tlen and p < CANON_TEXT and _canon_allowed(p, t[p]):
        p += 1
    if p == tlen:
        memcpy(s, t, p)
        j = p
    else:
        # t[p] is not allowed there, or t is a canonical text followed by more
        # bytes: raise the rightmost position that can be raised, from p (or
        # from the last position) leftwards.
        j = p if p < CANON_TEXT else CANON_TEXT - 1
        c = _canon_next_char(j, t[j])
        while c < 0:
            j -= 1
            if j < 0:
                return False
            c = _canon_next_char(j, t[j])
        memcpy(s, t, j)
        s[j] = <uint8_t>c
        j += 1
    for i in range(j, CANON_TEXT):
        s[i] = 124 if i == 64 else 48
    _pack_hex(s, 32, key)
    _pack_hex(s + 65, 32, key + 32)
    return True


# -- text out ------------------------------------------------------------------------

cdef object _corrupted(str kind):
    """The error of a stored value that does not parse: the storage's failure, never the caller's."""
    return CorruptedError(f"{kind} value", MDB_CORRUPTED, f"a stored {kind} record cannot be decoded")


cdef str _decode(const uint8_t *s, Py_ssize_t n):
    return PyUnicode_DecodeUTF8(<const char *>s, n, "surrogatepass")


cdef str _hex_str(const uint8_t *b, Py_ssize_t nbytes):
    """Uppercase hex of ``nbytes`` bytes, written straight into a new ASCII str."""
    s = PyUnicode_New(nbytes * 2, 127)
    _unpack_hex(b, nbytes, <uint8_t *>PyUnicode_DATA(s))
    return s


cdef inline str _content_str(ChunkValue *cv):
    if cv.content_hex:
        return _hex_str(cv.content, cv.content_n)
    return _decode(cv.content, cv.content_n)


# -- readers and pages -----------------------------------------------------------------

@cython.final
cdef class _Reader:
    """A read transaction with cursors positioned for one scan: its own, or the
    caller's ``snapshot`` (left open by close())."""

    def __cinit__(self):
        self.txn = NULL
        memset(&self.scan, 0, sizeof(Scan))

    def __dealloc__(self):
        self.close()

    cdef int open(self, Environment env, const MDB_dbi *dbis, const bint *canonical, int nsrc,
                  object prefix, object marker, Transaction snapshot=None) except -1:
        cdef Py_ssize_t i
        cdef Source *s
        cdef bytes start, marker_b = None, start_key
        cdef bint exclusive = False
        cdef uint8_t canon_start[CANON_KEY]
        cdef MDB_val k
        cdef int rc
        cdef MDB_cursor_op op
        self.env = env
        self.prefix_b = b""
        if prefix is not None:
            self.prefix_b = _arg_text(prefix, "prefix")
            if len(self.prefix_b) > TEXT_PREFIX:
                raise BadRequest(f"prefix is {len(self.prefix_b)} bytes long, the limit is {TEXT_PREFIX}")
        if marker is not None:
            marker_b = _arg_text(marker, "marker") or None  # an empty marker is no marker
        # Start at the later of the prefix (inclusive) and the marker (exclusive).
        start = self.prefix_b
        if marker_b is not None and _order_key(marker_b) >= start:
            start = marker_b
            exclusive = True
        start_key = _order_key(start)
        self.scan.nsrc = nsrc
        self.scan.prefix = <const uint8_t *>PyBytes_AS_STRING(self.prefix_b)
        self.scan.prefix_n = len(self.prefix_b)
        if snapshot is None:
            env.begin_raw(&self.txn, False)
        else:
            if snapshot.env is not env:
                raise caller_error(ValueError("the transaction belongs to another environment"))
            snapshot._ensure_open()
            self.snapshot = snapshot
            self.txn = snapshot._txn
        for i in range(nsrc):
            s = &self.scan.src[i]
            s.canonical = canonical[i]
            s.valid = False
            rc = mdb_cursor_open(self.txn, dbis[i], &s.cur)
            if rc != MDB_SUCCESS:
                self.close()
                check(rc, b"mdb_cursor_open")
            if s.canonical:
                if not _canon_lower_bound(<const uint8_t *>PyBytes_AS_STRING(start), len(start), canon_start):
                    continue
                k.mv_data = canon_start
                k.mv_size = CANON_KEY
            else:
                k.mv_data = PyBytes_AS_STRING(start_key)
                k.mv_size = len(start_key)
            s.key = k
            # LMDB rejects an empty key: an empty start is the first record.
            op = MDB_SET_RANGE if k.mv_size else MDB_FIRST
            with nogil:
                _src_settle(&self.scan, s, mdb_cursor_get(s.cur, &s.key, &s.val, op))
            if exclusive and s.valid and self.key_equals(s, marker_b, start_key):
                with nogil:
                    _src_next(&self.scan, s)
        self.raise_error()
        return 0

    cdef bint key_equals(self, Source *s, bytes marker_b, bytes marker_key):
        cdef size_t n
        if s.canonical:
            return len(marker_b) == CANON_TEXT and \
                memcmp(_src_text(s, &n), PyBytes_AS_STRING(marker_b), CANON_TEXT) == 0
        return s.key.mv_size == <size_t>len(marker_key) and \
            memcmp(s.key.mv_data, PyBytes_AS_STRING(marker_key), s.key.mv_size) == 0

    cdef int raise_error(self) except -1:
        cdef int rc = self.scan.rc
        if rc:
            self.close()
            check(rc, b"mdb_cursor_get")
        return 0

    cdef int close(self) except -1:
        cdef int i
        cdef MDB_txn *txn = self.txn
        if txn == NULL:
            return 0
        for i in range(self.scan.nsrc):
            if self.scan.src[i].cur != NULL:
                mdb_cursor_close(self.scan.src[i].cur)
                self.scan.src[i].cur = NULL
        self.txn = NULL
        if self.snapshot is None:
            self.env.end_raw(txn, False)
        self.snapshot = None
        return 0


cdef bytes _arg_text(object value, str name):
    if not isinstance(value, str):
        raise caller_error(TypeError(f"{name} must be str, not {type(value).__name__}"))
    try:
        return (<str>value).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{name} is not valid UTF-8 text") from None


cdef Py_ssize_t _collect(Scan *scan, Hit **hits, Py_ssize_t *cap, Py_ssize_t limit, uint64_t incident,
                         Hit *prev, bint *truncated, bint *failed) noexcept nogil:
    """Collect up to ``limit`` matches; ``truncated`` if one more exists.

    ``*hits`` grows with the matches found (a huge limit costs nothing on a
    small volume); ``prev`` ends on the last key visited before the next match
    (the marker).
    """
    cdef Py_ssize_t count = 0, grown_cap
    cdef int i
    cdef Source *s
    cdef uint64_t mtime
    cdef Hit *grown
    truncated[0] = False
    while True:
        i = _scan_current(scan)
        if i < 0:
            break
        s = &scan.src[i]
        if incident:
            if not _value_mtime(&s.val, &mtime) or mtime > incident:
                prev.key = s.key
                prev.val = s.val
                prev.canonical = s.canonical
                _src_next(scan, s)
                continue
        if count == limit:
            truncated[0] = True
            break
        if count == cap[0]:
            grown_cap = min(cap[0] * 2 if cap[0] else 256, limit)
            grown = <Hit *>realloc(hits[0], grown_cap * sizeof(Hit))
            if grown == NULL:
                failed[0] = True
                break
            hits[0] = grown
            cap[0] = grown_cap
        hits[0][count].key = s.key
        hits[0][count].val = s.val
        hits[0][count].canonical = s.canonical
        prev[0] = hits[0][count]
        count += 1
        _src_next(scan, s)
    return count


cdef object _key_text_of(Hit *h, bint meta2):
    """The text (``cid|chunk`` or container url) of a stored key, as str."""
    cdef uint8_t buf[CANON_TEXT]
    cdef ChunkValue cv
    cdef const uint8_t *p = <const uint8_t *>h.key.mv_data
    if h.canonical:
        _canon_text(p, buf)
        return PyUnicode_FromStringAndSize(<const char *>buf, CANON_TEXT)
    if h.key.mv_size <= TEXT_PREFIX:
        return _decode(p, h.key.mv_size)
    return _decode_long(p, TEXT_PREFIX, _long_key_tail(h, meta2))


cdef bytes _long_key_tail(Hit *h, bint meta2):
    cdef ChunkValue cv
    cdef Meta2Value mv
    if meta2:
        if not _parse_meta2_value(<const uint8_t *>h.val.mv_data, h.val.mv_size, &mv):
            raise _corrupted("meta2")
        return PyBytes_FromStringAndSize(<const char *>mv.tail, mv.tail_n)
    if not _parse_chunk_value(<const uint8_t *>h.val.mv_data, h.val.mv_size, &cv):
        raise _corrupted("chunk")
    return PyBytes_FromStringAndSize(<const char *>cv.tail, cv.tail_n)


cdef str _decode_long(const uint8_t *head, Py_ssize_t head_n, bytes tail):
    """A long text stored in two parts; decoded whole, as a character may straddle them."""
    return (PyBytes_FromStringAndSize(<const char *>head, head_n) + tail).decode("utf-8", "surrogatepass")


cdef enum:
    MAX_LIMIT_ARG = 0x7FFFFFFF


cdef int64_t _int_arg(object value, str name, int64_t low, int64_t high) except? -1:
    """An int argument within [low, high]: TypeError or BadRequest otherwise."""
    cdef int64_t v = _int64(value, name, -1)
    if not low <= v <= high:
        raise BadRequest(f"{name} must be between {low} and {high}, not {v}")
    return v


cdef Py_ssize_t _limit_arg(object limit) except? -1:
    """The number of records a page may hold: 1 or more."""
    return <Py_ssize_t>_int_arg(limit, "limit", 1, MAX_LIMIT_ARG)


cdef uint64_t _incident_arg(object incident) except? 0:
    """An incident date filter: 0 (none) for a date <= 0."""
    cdef int64_t v = _int64(incident, "incident", -1)
    return <uint64_t>v if v > 0 else 0


@cython.final
cdef class _Page:
    """The hits of one page, collected by a scan; they point into the map until close()."""

    def __cinit__(self):
        self.reader = _Reader()
        self.hits = NULL
        self.count = self.cap = 0
        self.truncated = False

    def __dealloc__(self):
        free(self.hits)

    cdef int collect(self, Environment env, const MDB_dbi *dbis, const bint *canonical, int nsrc,
                     object prefix, object marker, object limit, object incident,
                     Transaction snapshot=None) except -1:
        cdef Py_ssize_t lim = _limit_arg(limit)
        cdef uint64_t inc = _incident_arg(incident)
        cdef bint failed = False
        self.reader.open(env, dbis, canonical, nsrc, prefix, marker, snapshot)
        with nogil:
            self.count = _collect(&self.reader.scan, &self.hits, &self.cap, lim, inc, &self.prev,
                                  &self.truncated, &failed)
        self.reader.raise_error()
        if failed:
            raise MemoryError("no memory for the page's records")
        return 0

    cdef object next_marker(self, bint meta2):
        return _key_text_of(&self.prev, meta2) if self.truncated else None

    cdef Entries entries(self):
        """The chunk records of the page as lazy :class:`Entries`: their keys and
        values copied out of the map (the page may close), each value checked."""
        cdef Entries out = Entries.__new__(Entries)
        cdef size_t size = 0, off = 0
        cdef Py_ssize_t i, bad = -1
        cdef Hit *h
        for i in range(self.count):
            size += self.hits[i].key.mv_size + self.hits[i].val.mv_size
        out.arena = <uint8_t *>malloc(size if size else 1)
        out.hits = <Hit *>malloc(<size_t>(self.count if self.count else 1) * sizeof(Hit))
        if out.arena == NULL or out.hits == NULL:
            raise MemoryError("no memory for the page's records")
        out.values = <ChunkValue *>malloc(<size_t>(self.count if self.count else 1) * sizeof(ChunkValue))
        if out.values == NULL:
            raise MemoryError("no memory for the page's records")
        with nogil:
            for i in range(self.count):
                h = &out.hits[i]
                h.canonical = self.hits[i].canonical
                h.key.mv_data = out.arena + off
                h.key.mv_size = self.hits[i].key.mv_size
                memcpy(h.key.mv_data, self.hits[i].key.mv_data, h.key.mv_size)
                off += h.key.mv_size
                h.val.mv_data = out.arena + off
                h.val.mv_size = self.hits[i].val.mv_size
                memcpy(h.val.mv_data, self.hits[i].val.mv_data, h.val.mv_size)
                off += h.val.mv_size
                if bad < 0 and not _parse_chunk_value(<const uint8_t *>h.val.mv_data, h.val.mv_size,
                                                      &out.values[i]):
                    bad = i
        if bad >= 0:
            raise _corrupted("chunk")
        out.count = self.count
        return out

    cdef int close(self) except -1:
        return self.reader.close()


# -- records out -------------------------------------------------------------------------

@cython.final
cdef class _CidCache:
    """The last container id decoded: consecutive records share one str object."""

    cdef object get(self, const uint8_t *raw, Py_ssize_t n, bint canonical):
        if self.value is not None and n == self.n and canonical == self.canonical \
                and memcmp(raw, self.raw, n) == 0:
            return self.value
        self.value = _hex_str(raw, n) if canonical else _decode(raw, n)
        memcpy(self.raw, raw, n)
        self.n = n
        self.canonical = canonical
        return self.value


@cython.final
cdef class Entries:
    """A page of chunk records as OpenIO's ``(container_id, chunk_id, value)``
    entries, each made when the caller asks for it (ChunkIndex.fetch_entries).

    The page is held as the bytes of its stored keys and values, so each entry
    dies young: a page of 1,000 value dicts built at once keeps the garbage
    collector busy (a full listing of a large volume ran several times slower
    that way), and a record tuple built first only to be taken apart again
    cost a quarter of a listing.
    """

    def __cinit__(self):
        self.arena = NULL
        self.hits = NULL
        self.values = NULL
        self.count = self.i = 0
        self.cache = _CidCache()

    def __dealloc__(self):
        free(self.arena)
        free(self.hits)
        free(self.values)

    def __iter__(self):
        return self

    def __next__(self):
        if self.i >= self.count:
            raise StopIteration
        self.i += 1
        return _parsed_record(&self.hits[self.i - 1], &self.values[self.i - 1], F_ALL, self.cache, True)

    def __length_hint__(self):
        return self.count - self.i


cdef object _chunk_record(Hit *h, int fields, _CidCache cache, bint entry=False):
    """The record of a hit in the one order of a chunk record, CHUNK_DTYPE_FIELDS, or
    with ``entry`` the client's ``(container_id, chunk_id, {content_id, mtime, path, version})``."""
    cdef ChunkValue cv
    if not _parse_chunk_value(<const uint8_t *>h.val.mv_data, h.val.mv_size, &cv):
        raise _corrupted("chunk")
    return _parsed_record(h, &cv, fields, cache, entry)


cdef object _parsed_record(Hit *h, ChunkValue *cv, int fields, _CidCache cache, bint entry):
    """_chunk_record of a hit whose value is parsed (``cv``)."""
    cdef const uint8_t *k = <const uint8_t *>h.key.mv_data
    cdef const uint8_t *bar
    cdef Py_ssize_t cid_n
    if h.canonical:
        cid = cache.get(k, 32, True)
        chunk = _hex_str(k + 32, 32)
    else:
        bar = <const uint8_t *>memchr(k, 124, h.key.mv_size)
        cid_n = bar - k
        cid = cache.get(k, cid_n, False)
        if h.key.mv_size <= TEXT_PREFIX:
            chunk = _decode(bar + 1, h.key.mv_size - cid_n - 1)
        else:
            chunk = _decode_long(bar + 1, TEXT_PREFIX - cid_n - 1,
                                 PyBytes_FromStringAndSize(<const char *>cv.tail, cv.tail_n))
    if entry:
        return (cid, chunk, {"content_id": _content_str(cv), "mtime": cv.mtime,
                             "path": _decode(cv.path, cv.path_n), "version": cv.version})
    return (
        cid,
        _content_str(cv) if fields & F_CONTENT_ID else None,
        chunk,
        cv.mtime if fields & F_MTIME else None,
        _decode(cv.path, cv.path_n) if fields & F_PATH else None,
        cv.version if fields & F_VERSION else None,
    )


def chunk_array(records):
    """Chunk records (tuples in CHUNK_DTYPE_FIELDS order) as one numpy array of
    CHUNK_DTYPE, whose text fields, UTF-8 bytes, are as wide as the limits: every
    page of a listing has this dtype, so pages concatenate."""
    array = np.empty(len(records), CHUNK_DTYPE)
    for i, name in enumerate(CHUNK_DTYPE_FIELDS):
        if name == "mtime" or name == "version":
            array[name] = [r[i] for r in records]
        else:
            array[name] = [(<str>r[i]).encode("utf-8", "surrogatepass") for r in records]
    return array


cdef object _chunk_array(Hit *hits, Py_ssize_t count):
    cdef _CidCache cache = _CidCache()
    return chunk_array([_chunk_record(&hits[i], F_ALL, cache) for i in range(count)])


cdef dict _meta2_record(Hit *h):
    cdef Meta2Value mv
    cdef const uint8_t *k = <const uint8_t *>h.key.mv_data
    if not _parse_meta2_value(<const uint8_t *>h.val.mv_data, h.val.mv_size, &mv):
        raise _corrupted("meta2")
    if h.key.mv_size <= TEXT_PREFIX:
        url = _decode(k, h.key.mv_size)
    else:
        url = _decode_long(k, TEXT_PREFIX, PyBytes_FromStringAndSize(<const char *>mv.tail, mv.tail_n))
    return {
        "container_id": _hex_str(mv.cid, mv.cid_n) if mv.cid_hex else _decode(mv.cid, mv.cid_n),
        "container_url": url,
        "extra_data": None if mv.extra_null else _decode(mv.extra, mv.extra_n),
        "mtime": mv.mtime,
    }


# -- codec entry points (tests, tools) ---------------------------------------------------

def decode_chunk_value(bytes value):
    """``(content_id, mtime, path, version)`` of a stored value."""
    cdef ChunkValue cv
    if not _parse_chunk_value(<const uint8_t *>PyBytes_AS_STRING(value), len(value), &cv):
        raise BadRequest("malformed chunk value")
    return _content_str(&cv), cv.mtime, _decode(cv.path, cv.path_n), cv.version


def decode_chunk_key(bint canonical, bytes key, bytes value=None):
    """``(container_id, chunk_id)`` of a stored key (a long text key needs its value)."""
    cdef Hit h
    h.key.mv_data = PyBytes_AS_STRING(key)
    h.key.mv_size = len(key)
    h.canonical = canonical
    if value is not None:
        h.val.mv_data = PyBytes_AS_STRING(value)
        h.val.mv_size = len(value)
    elif not canonical and len(key) > TEXT_PREFIX:
        raise BadRequest("a long key needs its value to be decoded")
    text = _key_text_of(&h, False)
    return split_marker(text)


def split_marker(str marker):
    """``(container_id, chunk_id)`` of a ``cid|chunk`` marker."""
    cid, sep, chunk = marker.partition("|")
    if not sep:
        raise BadRequest(f"marker {marker!r} is not of the form <container_id>|<chunk_id>")
    return cid, chunk
