# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The native rdir engine: record codecs, batch writes, marker scans and counts.

Storage of a rawx volume (one LMDB environment):

* ``chunk_bin``: records whose container id and chunk id are both canonical
  (64 uppercase hex characters). The key is the two ids packed to binary,
  32 + 32 bytes. Binary order of such keys equals the text order of the ids.
* ``chunk_text``: every other record. The key is the text ``cid|chunk``
  (UTF-8), so the order is the reference's text order. A text longer than
  TEXT_PREFIX bytes (LMDB keys hold at most 511) is stored as its first
  TEXT_PREFIX bytes, a NUL and its SHA-256; the value keeps the rest of it.
* ``admin``: the lock and the incident date (handled in Python).

Scans merge both databases in the order of ``order_key(text)``: the text of
``cid|chunk`` (and, only for two texts longer than TEXT_PREFIX bytes that share
their first TEXT_PREFIX bytes, the SHA-256 decides). Scans run in two phases:
the LMDB loop without the GIL collects pointers into the map, then the Python
objects are built from them before the read transaction ends.

Chunk value: ``flags, varint mtime, zigzag varint version, content_id, path
[, key tail]``; a content id of uppercase hex of even length is packed to
binary (flag CONTENT_HEX).
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int8_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy, memset

from rdirdb.lmdb cimport *
from rdirdb._lmdb cimport Environment, check

import hashlib

import numpy as np

from rdirdb.errors import BadRequest, caller_error

cdef extern from "stdlib.h" nogil:
    void qsort_r(void *base, size_t nmemb, size_t size,
                 int (*compar)(const void *, const void *, void *) noexcept nogil, void *arg)

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object o, Py_ssize_t *size) except NULL
    object PyUnicode_FromStringAndSize(const char *u, Py_ssize_t size)
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void *PyUnicode_DATA(object o)

CHUNK_DATABASES = ("chunk_bin", "chunk_text", "admin")
META2_DATABASES = ("meta2",)

# Reference limits, in UTF-8 bytes (its buffer sizes minus the NUL).
DEF C_MAX_CONTAINER_ID = 64
DEF C_MAX_CONTENT_ID = 64
DEF C_MAX_CHUNK_ID = 511
DEF C_MAX_PATH = 1087
DEF C_MAX_CONTAINER_URL = 1023
DEF C_MAX_EXTRA_DATA = 65536
DEF TEXT_PREFIX = 478          # 478 + NUL + 32-byte digest = 511, LMDB's key limit
DEF HASH_LEN = 32
DEF CANON_LEN = 64             # canonical id: 64 uppercase hex characters
DEF CANON_KEY = 64             # canonical key: two packed ids
DEF CANON_TEXT = 129           # "<64 hex>|<64 hex>"
DEF _VALUE_MAX = 1 + 5 * 10 + C_MAX_CONTENT_ID + C_MAX_PATH + C_MAX_CHUNK_ID + C_MAX_CONTAINER_ID

MAX_CONTAINER_ID = C_MAX_CONTAINER_ID
MAX_CONTENT_ID = C_MAX_CONTENT_ID
MAX_CHUNK_ID = C_MAX_CHUNK_ID
MAX_PATH = C_MAX_PATH
MAX_CONTAINER_URL = C_MAX_CONTAINER_URL
MAX_PREFIX = TEXT_PREFIX

DEF F_CONTENT_ID = 1
DEF F_MTIME = 2
DEF F_PATH = 4
DEF F_VERSION = 8
FIELD_CONTENT_ID = F_CONTENT_ID
FIELD_MTIME = F_MTIME
FIELD_PATH = F_PATH
FIELD_VERSION = F_VERSION
ALL_FIELDS = F_CONTENT_ID | F_MTIME | F_PATH | F_VERSION

# Value flags
DEF V_CONTENT_HEX = 1
DEF V_KEY_TAIL = 2
DEF M_EXTRA_NULL = 4
DEF M_CID_HEX = 1

# The one order of the fields of a chunk record: tuples written or read, numpy
# arrays, OpenIO's chunk_push parameters.
CHUNK_DTYPE_FIELDS = ("container_id", "content_id", "chunk_id", "mtime", "path", "version")
CHUNK_DTYPE = np.dtype([
    ("container_id", f"S{C_MAX_CONTAINER_ID}"), ("content_id", f"S{C_MAX_CONTENT_ID}"),
    ("chunk_id", f"S{C_MAX_CHUNK_ID}"), ("mtime", "<i8"), ("path", f"S{C_MAX_PATH}"), ("version", "<i8"),
])
_CHUNK_VALUE_FIELDS = ("content_id", "mtime", "path", "version")
_META2_FIELDS = ("container_url", "container_id", "mtime", "extra_data")

cdef const char *HEX = b"0123456789ABCDEF"


# ===========================================================================
# Small codecs: hex, varints, text order
# ===========================================================================

# Value of each uppercase hex digit, -1 for any other byte. A table, not
# comparisons: random hex digits make a branchy decoder mispredict half the time.
cdef int8_t _HEXVAL[256]
for _i in range(256):
    _HEXVAL[_i] = -1
for _i, _c in enumerate(b"0123456789ABCDEF"):
    _HEXVAL[_c] = _i


cdef inline int _hexval(uint8_t c) noexcept nogil:
    return _HEXVAL[c]


cdef inline bint _is_upper_hex(const uint8_t *s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef int8_t acc = 0
    for i in range(n):
        acc |= _HEXVAL[s[i]]
    return acc >= 0


cdef inline void _pack_hex(const uint8_t *s, Py_ssize_t nbytes, uint8_t *out) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(nbytes):
        out[i] = <uint8_t>((_hexval(s[2 * i]) << 4) | _hexval(s[2 * i + 1]))


cdef inline void _unpack_hex(const uint8_t *b, Py_ssize_t nbytes, uint8_t *out) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(nbytes):
        out[2 * i] = HEX[b[i] >> 4]
        out[2 * i + 1] = HEX[b[i] & 15]


cdef inline void _canon_text(const uint8_t *key, uint8_t *out) noexcept nogil:
    """The 129-byte text ``cid|chunk`` of a canonical key."""
    _unpack_hex(key, 32, out)
    out[64] = 124  # '|'
    _unpack_hex(key + 32, 32, out + 65)


cdef inline int _text_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen) noexcept nogil:
    cdef size_t n = alen if alen < blen else blen
    cdef int c = memcmp(a, b, n)
    if c != 0:
        return c
    return (alen > blen) - (alen < blen)


cdef inline uint8_t *_put_varint(uint8_t *p, uint64_t v) noexcept nogil:
    while v >= 0x80:
        p[0] = <uint8_t>(v | 0x80)
        p += 1
        v >>= 7
    p[0] = <uint8_t>v
    return p + 1


cdef inline const uint8_t *_get_varint(const uint8_t *p, const uint8_t *end, uint64_t *out) noexcept nogil:
    """Read a varint; NULL if it runs past ``end`` or is too long."""
    cdef uint64_t v = 0
    cdef int shift = 0
    while p < end and shift < 64:
        v |= (<uint64_t>(p[0] & 0x7F)) << shift
        if p[0] < 0x80:
            out[0] = v
            return p + 1
        p += 1
        shift += 7
    return NULL


cdef inline uint64_t _zigzag(int64_t v) noexcept nogil:
    return (<uint64_t>v << 1) ^ <uint64_t>(v >> 63)


cdef inline int64_t _unzigzag(uint64_t v) noexcept nogil:
    return <int64_t>(v >> 1) ^ -<int64_t>(v & 1)


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
        if <uint8_t>HEX[i] > c:
            return HEX[i]
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


cdef bytes _digest_key(const uint8_t *text, Py_ssize_t n):
    """The stored form of a text key longer than TEXT_PREFIX bytes."""
    full = PyBytes_FromStringAndSize(<const char *>text, n)
    return full[:TEXT_PREFIX] + b"\x00" + hashlib.sha256(full).digest()


cdef bytes _order_key(bytes text):
    if len(text) <= TEXT_PREFIX:
        return text
    return _digest_key(<const uint8_t *>PyBytes_AS_STRING(text), len(text))


def order_key(str container_id, str chunk_id):
    """The bytes whose order defines the listing order of chunk records."""
    return _order_key((container_id + "|" + chunk_id).encode("utf-8", "surrogatepass"))


# ===========================================================================
# Validation helpers (with the GIL)
# ===========================================================================

cdef inline const uint8_t *_utf8(object value, Py_ssize_t *size, str field, Py_ssize_t index) except NULL:
    if not isinstance(value, str):
        _type_error(index, field, "str", value)
    try:
        return <const uint8_t *>PyUnicode_AsUTF8AndSize(value, size)
    except UnicodeEncodeError:
        raise BadRequest(f"{_where(index)}{field} is not valid UTF-8 text") from None


cdef inline str _where(Py_ssize_t index):
    return f"record {index}: " if index >= 0 else ""


cdef int _type_error(Py_ssize_t index, str field, str expected, object value) except -1:
    raise caller_error(TypeError(f"{_where(index)}{field} must be {expected}, not {type(value).__name__}"),
                       f"Invalid type for field [{field}]")


cdef int _not_an_object(Py_ssize_t index, str expected, object value) except -1:
    raise caller_error(TypeError(f"{_where(index)}must be {expected}, not {type(value).__name__}"), "Not an object")


cdef int _check_id(const uint8_t *s, Py_ssize_t n, str field, Py_ssize_t index) except -1:
    """The rule for the ids of a chunk key written from now on: not empty, and no
    control character (one would break the x-oio-list-marker header that carries
    the key). Records written before the rule still list, and can be deleted."""
    cdef Py_ssize_t i
    if n == 0:
        raise BadRequest(f"{_where(index)}{field} is empty")
    for i in range(n):
        if s[i] < 0x20 or s[i] == 0x7F:
            raise BadRequest(f"{_where(index)}{field} contains the control character U+{s[i]:04X}")
    return 0


cdef int _check_text(const uint8_t *s, Py_ssize_t n, Py_ssize_t limit, str field,
                     Py_ssize_t index) except -1:
    if n > limit:
        raise BadRequest(f"{_where(index)}{field} is {n} bytes long, the limit is {limit}")
    if n and memchr(s, 0, n) != NULL:
        raise BadRequest(f"{_where(index)}{field} contains a NUL character")
    return 0


cdef int64_t _int64(object value, str field, Py_ssize_t index) except? -1:
    if type(value) is not int and (isinstance(value, bool) or not hasattr(value, "__index__")):
        _type_error(index, field, "an int", value)
    try:
        return value
    except OverflowError:
        raise BadRequest(f"{_where(index)}{field} is out of the 64-bit range: {value}") from None


# ===========================================================================
# Batches: records encoded into one arena, sorted, then written in one txn
# ===========================================================================

cdef struct Entry:
    uint64_t head       # first 8 key bytes, big-endian: most comparisons stop here
    size_t koff
    size_t voff
    uint32_t klen
    uint32_t vlen
    uint32_t kind       # index of the database
    uint32_t dead       # overwritten by a later record with the same key
    Py_ssize_t index


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
    :func:`encode_chunks` and :func:`encode_meta2` return and ``apply`` writes.
    ``len()`` is the number of distinct keys."""
    cdef uint8_t *arena
    cdef size_t used, cap
    cdef Entry *entries
    cdef Py_ssize_t n, ncap
    cdef readonly bint meta2       # meta2 records, else chunk records
    cdef readonly bint key_only    # keys to delete, else records to write

    def __cinit__(self, Py_ssize_t expected, bint meta2=False, bint key_only=False):
        self.meta2 = meta2
        self.key_only = key_only
        self.cap = max(4096, <size_t>expected * 128)
        self.ncap = max(16, expected)
        self.arena = <uint8_t *>malloc(self.cap)
        self.entries = <Entry *>malloc(self.ncap * sizeof(Entry))
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
            grown = <Entry *>realloc(self.entries, self.ncap * 2 * sizeof(Entry))
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
        cdef Py_ssize_t i, j
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
            qsort_r(self.entries, self.n, sizeof(Entry), _entry_cmp, self.arena)
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


cdef int _write_batch(Environment env, MDB_dbi *dbis, Batch batch, bint delete,
                      Py_ssize_t *affected) except -1:
    """Apply a sorted batch in one write transaction (all or nothing).

    Keys past the current end of their database are appended (MDB_APPEND).
    On MDB_MAP_FULL the transaction is aborted, the map grown, and the batch
    applied again from the start.
    """
    cdef MDB_txn *txn
    cdef MDB_cursor *cur
    cdef MDB_val k, v, last, last_value
    cdef Py_ssize_t i, count
    cdef int rc
    cdef uint32_t kind
    cdef bint appending
    cdef Entry *e
    cdef size_t needed
    while True:
        env.begin_raw(&txn, True)
        rc = MDB_SUCCESS
        count = 0
        with nogil:
            i = 0
            while i < batch.n and rc == MDB_SUCCESS:
                kind = batch.entries[i].kind
                rc = mdb_cursor_open(txn, dbis[kind], &cur)
                if rc != MDB_SUCCESS:
                    break
                appending = False
                if not delete:
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
                    if delete:
                        rc = mdb_del(txn, dbis[kind], &k, NULL)
                        if rc == MDB_SUCCESS:
                            count += 1
                        elif rc == MDB_NOTFOUND:
                            rc = MDB_SUCCESS
                        continue
                    v.mv_data = batch.arena + e.voff
                    v.mv_size = e.vlen
                    if not appending and _text_cmp(<uint8_t *>k.mv_data, k.mv_size,
                                                   <uint8_t *>last.mv_data, last.mv_size) > 0:
                        appending = True
                    rc = mdb_cursor_put(cur, &k, &v, MDB_APPEND if appending else 0)
                    count += 1
                mdb_cursor_close(cur)
        if rc == MDB_MAP_FULL:
            env.end_raw(txn, False)
            needed = <size_t>env.info()["map_size"] * 2
            env.grow(needed)
            continue
        if rc != MDB_SUCCESS:
            env.end_raw(txn, False)
            check(rc, b"mdb_cursor_put" if not delete else b"mdb_del")
        try:
            env.end_raw(txn, True)
        except Exception as exc:
            if getattr(exc, "code", None) == MDB_MAP_FULL:
                env.grow(<size_t>env.info()["map_size"] * 2)
                continue
            raise
        affected[0] = count
        return 0


cdef Py_ssize_t _apply(Environment env, MDB_dbi *dbis, Batch batch, bint meta2) except -1:
    """Write (or, for keys, delete) a batch; returns how many records were written (or existed)."""
    cdef Py_ssize_t count = 0
    if batch.meta2 != meta2:
        raise TypeError(f"a batch of {'meta2' if batch.meta2 else 'chunk'} records "
                        f"cannot be applied to a {'meta2' if meta2 else 'chunk'} index")
    if batch.n:
        _write_batch(env, dbis, batch, batch.key_only, &count)
    return count


# ===========================================================================
# Chunk records: encoding
# ===========================================================================

cdef int _add_chunk(Batch batch, Py_ssize_t index,
                    const uint8_t *cid, Py_ssize_t cid_n,
                    const uint8_t *content, Py_ssize_t content_n,
                    const uint8_t *chunk, Py_ssize_t chunk_n,
                    int64_t mtime, const uint8_t *path, Py_ssize_t path_n,
                    int64_t version, bint key_only) except -1:
    """Validate one record and append its key (and value) to the batch."""
    cdef Entry *e
    cdef uint8_t *p
    cdef uint8_t *start
    cdef size_t tail_off
    cdef Py_ssize_t text_n, tail_n = 0
    _check_text(cid, cid_n, C_MAX_CONTAINER_ID, "container_id", index)
    _check_text(chunk, chunk_n, C_MAX_CHUNK_ID, "chunk_id", index)
    if cid_n and memchr(cid, 124, cid_n) != NULL:
        raise BadRequest(f"{_where(index)}container_id contains '|', the key separator")
    if not key_only:
        _check_id(cid, cid_n, "container_id", index)
        _check_id(chunk, chunk_n, "chunk_id", index)
        _check_text(content, content_n, C_MAX_CONTENT_ID, "content_id", index)
        _check_text(path, path_n, C_MAX_PATH, "path", index)
    if cid_n == CANON_LEN and chunk_n == CANON_LEN and _is_upper_hex(cid, CANON_LEN) \
            and _is_upper_hex(chunk, CANON_LEN):
        e = batch.add(0, index)
        p = batch.reserve(CANON_KEY)
        _pack_hex(cid, 32, p)
        _pack_hex(chunk, 32, p + 32)
        e.koff = batch.used
        e.klen = CANON_KEY
        batch.used += CANON_KEY
    else:
        e = batch.add(1, index)
        text_n = cid_n + 1 + chunk_n
        if text_n <= TEXT_PREFIX:
            e.koff = batch.used
            e.klen = <uint32_t>text_n
            batch.append(cid, cid_n)
            batch.append(b"|", 1)
            batch.append(chunk, chunk_n)
        else:
            p = <uint8_t *>malloc(text_n)
            if p == NULL:
                raise MemoryError()
            try:
                memcpy(p, cid, cid_n)
                p[cid_n] = 124
                memcpy(p + cid_n + 1, chunk, chunk_n)
                stored = _digest_key(p, text_n)
                e.koff = batch.used
                e.klen = <uint32_t>len(stored)
                batch.append(PyBytes_AS_STRING(stored), len(stored))
                tail_n = text_n - TEXT_PREFIX
                e.voff = batch.used  # the tail is copied into the value below
                batch.append(p + TEXT_PREFIX, tail_n)
            finally:
                free(p)
    if key_only:
        return 0
    if mtime < 0:
        mtime = 0
    # The tail of a long key was parked at e.voff; reserve() may move the arena.
    tail_off = e.voff
    start = batch.reserve(_chunk_value_bound(content_n, path_n, tail_n))
    p = _write_chunk_value(start, content, content_n, mtime, path, path_n, version,
                           batch.arena + tail_off, tail_n)
    e.voff = <size_t>(start - batch.arena)
    e.vlen = <uint32_t>(p - start)
    batch.used = e.voff + e.vlen
    return 0


cdef inline size_t _chunk_value_bound(Py_ssize_t content_n, Py_ssize_t path_n, Py_ssize_t tail_n) noexcept nogil:
    return 1 + 10 + 10 + 10 + content_n + 10 + path_n + 10 + tail_n


cdef uint8_t *_write_chunk_value(uint8_t *p, const uint8_t *content, Py_ssize_t content_n,
                                 int64_t mtime, const uint8_t *path, Py_ssize_t path_n,
                                 int64_t version, const uint8_t *tail, Py_ssize_t tail_n) noexcept nogil:
    """Encode a chunk value at ``p`` (room: _chunk_value_bound); returns its end."""
    cdef uint8_t flags = 0
    cdef uint8_t *start = p
    if content_n % 2 == 0 and _is_upper_hex(content, content_n):
        flags |= V_CONTENT_HEX
    if tail_n:
        flags |= V_KEY_TAIL
    p[0] = flags
    p = _put_varint(p + 1, <uint64_t>(mtime if mtime > 0 else 0))
    p = _put_varint(p, _zigzag(version))
    p = _put_id(p, content, content_n, flags & V_CONTENT_HEX)
    p = _put_field(p, path, path_n)
    if tail_n:
        p = _put_field(p, tail, tail_n)
    return p


cdef inline uint8_t *_put_field(uint8_t *p, const uint8_t *data, Py_ssize_t n) noexcept nogil:
    """A varint length and the bytes (the reader is _get_field)."""
    p = _put_varint(p, <uint64_t>n)
    if n:
        memcpy(p, data, n)
    return p + n


cdef inline uint8_t *_put_id(uint8_t *p, const uint8_t *text, Py_ssize_t n, bint packed) noexcept nogil:
    """An id as a field: packed to binary when it is uppercase hex of even length."""
    if not packed:
        return _put_field(p, text, n)
    p = _put_varint(p, <uint64_t>(n // 2))
    _pack_hex(text, n // 2, p)
    return p + n // 2


cdef struct ChunkValue:
    uint64_t mtime
    int64_t version
    const uint8_t *content
    Py_ssize_t content_n
    bint content_hex
    const uint8_t *path
    Py_ssize_t path_n
    const uint8_t *tail
    Py_ssize_t tail_n


cdef inline const uint8_t *_get_field(const uint8_t *p, const uint8_t *end, const uint8_t **data,
                                      Py_ssize_t *n) noexcept nogil:
    """Read a varint length and that many bytes; NULL if they run past ``end``."""
    cdef uint64_t size
    if p == NULL:
        return NULL
    p = _get_varint(p, end, &size)
    if p == NULL or size > <uint64_t>(end - p):
        return NULL
    data[0] = p
    n[0] = <Py_ssize_t>size
    return p + size


cdef inline const uint8_t *_get_tail(const uint8_t *p, const uint8_t *end, uint8_t flags,
                                     const uint8_t **tail, Py_ssize_t *n) noexcept nogil:
    """The tail of a long key, when the value has one (flag V_KEY_TAIL)."""
    tail[0] = NULL
    n[0] = 0
    if p == NULL or not flags & V_KEY_TAIL:
        return p
    return _get_field(p, end, tail, n)


cdef bint _parse_chunk_value(const uint8_t *p, size_t size, ChunkValue *out) noexcept nogil:
    """Parse a stored chunk value; False when it is malformed."""
    cdef const uint8_t *end = p + size
    cdef uint64_t v
    cdef uint8_t flags
    if size < 1:
        return False
    flags = p[0]
    p = _get_varint(p + 1, end, &out.mtime)
    if p == NULL:
        return False
    p = _get_varint(p, end, &v)
    out.version = _unzigzag(v)
    out.content_hex = (flags & V_CONTENT_HEX) != 0
    p = _get_field(p, end, &out.content, &out.content_n)
    p = _get_field(p, end, &out.path, &out.path_n)
    return _get_tail(p, end, flags, &out.tail, &out.tail_n) != NULL


cdef inline bint _value_mtime(const MDB_val *val, uint64_t *mtime) noexcept nogil:
    """Only the mtime of a chunk value (the rebuild filter reads nothing else)."""
    cdef const uint8_t *p = <const uint8_t *>val.mv_data
    if val.mv_size < 2:
        return False
    return _get_varint(p + 1, p + val.mv_size, mtime) != NULL


cdef str _decode(const uint8_t *s, Py_ssize_t n):
    return PyUnicode_DecodeUTF8(<const char *>s, n, "surrogatepass")


cdef str _hex_str(const uint8_t *b, Py_ssize_t nbytes):
    """Uppercase hex of ``nbytes`` bytes, written straight into a new ASCII str."""
    s = PyUnicode_New(nbytes * 2, 127)
    _unpack_hex(b, nbytes, <uint8_t *>PyUnicode_DATA(s))
    return s


cdef str _content_str(ChunkValue *cv):
    if cv.content_hex:
        return _hex_str(cv.content, cv.content_n)
    return _decode(cv.content, cv.content_n)


# ===========================================================================
# Scans: two sorted sources merged in text order
# ===========================================================================

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


cdef void _src_settle(Scan *scan, Source *s, int rc) noexcept nogil:
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


cdef int _scan_current(Scan *scan) noexcept nogil:
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
    """A read transaction with cursors positioned for one scan."""
    cdef Environment env
    cdef MDB_txn *txn
    cdef Scan scan
    cdef bytes prefix_b

    def __cinit__(self):
        self.txn = NULL
        memset(&self.scan, 0, sizeof(Scan))

    def __dealloc__(self):
        self.close()

    cdef int open(self, Environment env, MDB_dbi *dbis, bint *canonical, int nsrc,
                  object prefix, object marker) except -1:
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
        env.begin_raw(&self.txn, False)
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
        self.env.end_raw(txn, False)
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
            raise BadRequest("corrupted meta2 record")
        return PyBytes_FromStringAndSize(<const char *>mv.tail, mv.tail_n)
    if not _parse_chunk_value(<const uint8_t *>h.val.mv_data, h.val.mv_size, &cv):
        raise BadRequest("corrupted chunk record")
    return PyBytes_FromStringAndSize(<const char *>cv.tail, cv.tail_n)


cdef str _decode_long(const uint8_t *head, Py_ssize_t head_n, bytes tail):
    """A long text stored in two parts; decoded whole, as a character may straddle them."""
    return (PyBytes_FromStringAndSize(<const char *>head, head_n) + tail).decode("utf-8", "surrogatepass")


cdef int _open_chunk_dbis(Environment env, MDB_dbi *dbis, bint *canonical) except -1:
    dbis[0] = env.dbi("chunk_bin")
    dbis[1] = env.dbi("chunk_text")
    canonical[0] = True
    canonical[1] = False
    return 0


DEF MAX_LIMIT_ARG = 0x7FFFFFFF


cdef int64_t _int_arg(object value, str name, int64_t low, int64_t high) except? -1:
    """An int argument within [low, high]: TypeError or BadRequest otherwise."""
    cdef int64_t v = _int64(value, name, -1)
    if not low <= v <= high:
        raise BadRequest(f"{name} must be between {low} and {high}, not {v}")
    return v


cdef inline uint64_t _incident_arg(object incident) except? 0:
    cdef int64_t v = _int64(incident, "incident", -1)
    return <uint64_t>v if v > 0 else 0


@cython.final
cdef class _Page:
    """The hits of one page, collected by a scan; they point into the map until close()."""
    cdef _Reader reader
    cdef Hit *hits
    cdef Py_ssize_t count, cap
    cdef Hit prev
    cdef bint truncated

    def __cinit__(self):
        self.reader = _Reader()
        self.hits = NULL
        self.count = self.cap = 0
        self.truncated = False

    def __dealloc__(self):
        free(self.hits)

    cdef int collect(self, Environment env, MDB_dbi *dbis, bint *canonical, int nsrc,
                     object prefix, object marker, object limit, object incident) except -1:
        cdef Py_ssize_t lim = _int_arg(limit, "limit", 1, MAX_LIMIT_ARG)
        cdef uint64_t inc = _incident_arg(incident)
        cdef bint failed = False
        self.reader.open(env, dbis, canonical, nsrc, prefix, marker)
        with nogil:
            self.count = _collect(&self.reader.scan, &self.hits, &self.cap, lim, inc, &self.prev,
                                  &self.truncated, &failed)
        self.reader.raise_error()
        if failed:
            raise MemoryError("no memory for the page's records")
        return 0

    cdef object next_marker(self, bint meta2):
        return _key_text_of(&self.prev, meta2) if self.truncated else None

    cdef int close(self) except -1:
        return self.reader.close()


# ===========================================================================
# ChunkIndex
# ===========================================================================

@cython.final
cdef class ChunkIndex:
    """The chunk records of one rawx volume (see the module docstring)."""

    cdef readonly Environment env
    cdef MDB_dbi dbis[2]
    cdef bint canonical[2]
    cdef MDB_dbi admin_dbi

    def __init__(self, Environment env):
        self.env = env
        if env.max_key_size < 511:
            raise RuntimeError(f"liblmdb was built with MDB_MAXKEYSIZE {env.max_key_size}, rdirdb needs 511")
        _open_chunk_dbis(env, self.dbis, self.canonical)
        self.admin_dbi = env.dbi("admin")

    # -- writes ---------------------------------------------------------------

    def put_batch(self, records):
        """Validate every record, then write them all in one transaction.

        ``records``: tuples ``(container_id, content_id, chunk_id, mtime, path,
        version)``, dicts with those keys, or a numpy structured array with those
        fields. Nothing is written if any record is invalid; for duplicate keys
        the last record wins. Returns the number of records written.
        """
        return _apply(self.env, self.dbis, encode_chunks(records), False)

    def delete_batch(self, keys):
        """Delete the records of ``keys`` (``(container_id, chunk_id)`` tuples or
        dicts) in one transaction. Returns how many existed."""
        return _apply(self.env, self.dbis, encode_chunks(keys, key_only=True), False)

    def apply(self, Batch batch):
        """Write a batch of :func:`encode_chunks` in one transaction (delete its
        keys for a ``key_only`` batch); returns how many records were written
        (or existed)."""
        return _apply(self.env, self.dbis, batch, False)

    # -- reads ----------------------------------------------------------------

    def get(self, container_id, chunk_id):
        """The record of one chunk, or None."""
        cdef Batch batch = Batch(1)
        cdef MDB_txn *txn
        cdef MDB_val k, v
        cdef Hit hit
        cdef int rc
        _encode_chunk_object(batch, (container_id, chunk_id), -1, True)
        k.mv_data = batch.arena + batch.entries[0].koff
        k.mv_size = batch.entries[0].klen
        self.env.begin_raw(&txn, False)
        try:
            rc = mdb_get(txn, self.dbis[batch.entries[0].kind], &k, &v)
            if rc == MDB_NOTFOUND:
                return None
            check(rc, b"mdb_get")
            hit.key = k
            hit.val = v
            hit.canonical = batch.entries[0].kind == 0
            return _chunk_record(&hit, ALL_FIELDS, _CidCache())
        finally:
            self.env.end_raw(txn, False)

    def fetch(self, *, prefix=None, marker=None, limit=1000, incident=0, fields=ALL_FIELDS,
              bint entries=False):
        """One page of records in listing order: ``(records, truncated, next_marker)``.

        ``marker`` (``cid|chunk``) is an exclusive start; ``prefix`` a text prefix of
        ``cid|chunk``; ``incident`` > 0 keeps only records with mtime <= incident.
        A record is ``(container_id, content_id, chunk_id, mtime, path, version)``,
        the order of put_batch, with None for the fields not asked for; with ``entries`` it is OpenIO's
        ``(container_id, chunk_id, {"content_id", "mtime", "path", "version"})``.
        """
        cdef _Page page = _Page()
        cdef _CidCache cache = _CidCache()
        cdef int field_mask = _int_arg(fields, "fields", 0, ALL_FIELDS)
        cdef Py_ssize_t i
        try:
            page.collect(self.env, self.dbis, self.canonical, 2, prefix, marker, limit, incident)
            records = [_chunk_record(&page.hits[i], field_mask, cache, entries) for i in range(page.count)]
            return records, page.truncated, page.next_marker(False)
        finally:
            page.close()

    def fetch_arrays(self, *, prefix=None, marker=None, limit=1000, incident=0):
        """Like :meth:`fetch`, as one numpy structured array of CHUNK_DTYPE."""
        cdef _Page page = _Page()
        try:
            page.collect(self.env, self.dbis, self.canonical, 2, prefix, marker, limit, incident)
            return _chunk_array(page.hits, page.count), page.truncated, page.next_marker(False)
        finally:
            page.close()

    def status(self, *, prefix=None, marker=None, limit=1000, incident=0):
        """Counts of one page: ``(total, to_rebuild, {cid: (total, to_rebuild)},
        truncated, next_marker)``; a record is to rebuild when incident > 0 and
        its mtime <= incident. Counting makes no Python object per record."""
        cdef _Reader reader = _Reader()
        cdef Counts counts
        cdef ContainerCount *c
        cdef Py_ssize_t i
        cdef Hit prev
        cdef bint truncated = False
        cdef Py_ssize_t lim = _int_arg(limit, "limit", 1, MAX_LIMIT_ARG)
        cdef uint64_t inc = _incident_arg(incident)
        memset(&counts, 0, sizeof(Counts))
        try:
            reader.open(self.env, self.dbis, self.canonical, 2, prefix, marker)
            with nogil:
                _count(&reader.scan, &counts, lim, inc, &prev, &truncated)
            reader.raise_error()
            if counts.failed:
                raise MemoryError()
            containers = {}
            for i in range(counts.n):
                c = &counts.items[i]
                cid = _hex_str(c.cid, c.cid_n) if c.canonical else _decode(c.cid, c.cid_n)
                # A canonical container whose chunks sit in both databases shows up twice.
                total, to_rebuild = containers.get(cid, (0, 0))
                containers[cid] = (total + c.total, to_rebuild + c.to_rebuild)
            next_marker = _key_text_of(&prev, False) if truncated else None
            return counts.total, counts.to_rebuild, containers, truncated, next_marker
        finally:
            reader.close()
            free(counts.items)

    def count(self):
        """How many chunk records the volume holds (from LMDB's page statistics)."""
        return self.env.stat("chunk_bin")["entries"] + self.env.stat("chunk_text")["entries"]

    def clear(self, *, bint all=False, before=0, bint repair=False, bint erase_incident=False):
        """Remove records and/or rewrite them in the current encoding, in one transaction.

        ``all`` removes every record; ``before`` > 0 removes those with
        mtime <= before; ``repair`` re-encodes every record kept (a record whose
        value cannot be parsed counts as an error and is left as is);
        ``erase_incident`` deletes the incident date in the same commit.
        Returns ``(removed, repaired, errors)``.
        """
        cdef uint64_t cutoff = _incident_arg(before)
        cdef uint8_t *buf
        if not (all or cutoff or repair or erase_incident):
            return 0, 0, 0
        buf = <uint8_t *>malloc(_chunk_value_bound(C_MAX_CONTENT_ID, C_MAX_PATH, C_MAX_CHUNK_ID + C_MAX_CONTAINER_ID))
        if buf == NULL:
            raise MemoryError()
        try:
            return self._clear(all, cutoff, repair, erase_incident, buf)
        finally:
            free(buf)

    cdef tuple _clear(self, bint all, uint64_t cutoff, bint repair, bint erase_incident, uint8_t *buf):
        cdef Py_ssize_t removed = 0, repaired = 0, errors = 0
        cdef MDB_txn *txn
        cdef MDB_cursor *cur
        cdef MDB_stat st
        cdef MDB_val k
        cdef int rc, i
        cdef bint walk = all or cutoff or repair
        while True:
            removed = repaired = errors = 0
            self.env.begin_raw(&txn, True)
            rc = MDB_SUCCESS
            for i in range(2 if walk else 0):
                if all:
                    rc = mdb_stat(txn, self.dbis[i], &st)
                    if rc == MDB_SUCCESS:
                        removed += st.ms_entries
                        rc = mdb_drop(txn, self.dbis[i], 0)
                else:
                    rc = mdb_cursor_open(txn, self.dbis[i], &cur)
                    if rc == MDB_SUCCESS:
                        with nogil:
                            rc = _clear_walk(cur, cutoff, repair, &removed, &repaired, &errors, buf)
                            mdb_cursor_close(cur)
                if rc != MDB_SUCCESS:
                    break
            if rc == MDB_SUCCESS and erase_incident:
                k.mv_data = <void *><const char *>b"incident_date"
                k.mv_size = 13
                rc = mdb_del(txn, self.admin_dbi, &k, NULL)
                if rc == MDB_NOTFOUND:
                    rc = MDB_SUCCESS
            if rc == MDB_MAP_FULL:
                self.env.end_raw(txn, False)
                self.env.grow(<size_t>self.env.info()["map_size"] * 2)
                continue
            if rc != MDB_SUCCESS:
                self.env.end_raw(txn, False)
                check(rc, b"clear")
            self.env.end_raw(txn, True)
            return removed, repaired, errors


cdef int _clear_walk(MDB_cursor *cur, uint64_t cutoff, bint repair, Py_ssize_t *removed,
                     Py_ssize_t *repaired, Py_ssize_t *errors, uint8_t *buf) noexcept nogil:
    """Delete (mtime <= cutoff) or re-encode every record under ``cur``.

    ``buf`` has room for the largest value. Returns an LMDB code.
    """
    cdef MDB_val k, v, nv
    cdef ChunkValue cv
    cdef int rc
    cdef uint8_t content[C_MAX_CONTENT_ID]
    cdef const uint8_t *cp
    cdef Py_ssize_t cn
    rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)
    while rc == MDB_SUCCESS:
        if not _parse_chunk_value(<const uint8_t *>v.mv_data, v.mv_size, &cv) or \
                (cv.content_hex and cv.content_n * 2 > C_MAX_CONTENT_ID):
            errors[0] += 1
        elif cutoff and cv.mtime <= cutoff:
            rc = mdb_cursor_del(cur, 0)
            if rc != MDB_SUCCESS:
                return rc
            removed[0] += 1
        elif repair:
            cp = cv.content
            cn = cv.content_n
            if cv.content_hex:
                _unpack_hex(cv.content, cn, content)
                cp = content
                cn *= 2
            nv.mv_data = buf
            nv.mv_size = <size_t>(_write_chunk_value(buf, cp, cn, <int64_t>cv.mtime, cv.path, cv.path_n,
                                                     cv.version, cv.tail, cv.tail_n) - buf)
            rc = mdb_cursor_put(cur, &k, &nv, MDB_CURRENT)
            if rc != MDB_SUCCESS:
                return rc
            repaired[0] += 1
        # After a delete the cursor sits on the next record, and MDB_NEXT returns it.
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)
    return MDB_SUCCESS if rc == MDB_NOTFOUND else rc


# -- record construction (with the GIL) ---------------------------------------

@cython.final
cdef class _CidCache:
    """The last container id decoded: consecutive records share one str object."""
    cdef uint8_t raw[C_MAX_CONTAINER_ID]
    cdef Py_ssize_t n
    cdef bint canonical
    cdef object value

    cdef object get(self, const uint8_t *raw, Py_ssize_t n, bint canonical):
        if self.value is not None and n == self.n and canonical == self.canonical \
                and memcmp(raw, self.raw, n) == 0:
            return self.value
        self.value = _hex_str(raw, n) if canonical else _decode(raw, n)
        memcpy(self.raw, raw, n)
        self.n = n
        self.canonical = canonical
        return self.value


cdef object _chunk_record(Hit *h, int fields, _CidCache cache, bint entry=False):
    """The record of a hit in the one order of a chunk record, CHUNK_DTYPE_FIELDS, or
    with ``entry`` the client's ``(container_id, chunk_id, {content_id, mtime, path, version})``."""
    cdef ChunkValue cv
    cdef const uint8_t *k = <const uint8_t *>h.key.mv_data
    cdef const uint8_t *bar
    cdef Py_ssize_t cid_n
    if not _parse_chunk_value(<const uint8_t *>h.val.mv_data, h.val.mv_size, &cv):
        raise BadRequest("corrupted chunk record")
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
        return (cid, chunk, {"content_id": _content_str(&cv), "mtime": cv.mtime,
                             "path": _decode(cv.path, cv.path_n), "version": cv.version})
    return (
        cid,
        _content_str(&cv) if fields & F_CONTENT_ID else None,
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
    return chunk_array([_chunk_record(&hits[i], ALL_FIELDS, cache) for i in range(count)])


# -- counting (without the GIL) -------------------------------------------------

cdef struct ContainerCount:
    uint8_t cid[C_MAX_CONTAINER_ID]   # packed (32 bytes) when canonical, else text
    Py_ssize_t cid_n
    bint canonical
    Py_ssize_t total
    Py_ssize_t to_rebuild


cdef struct Counts:
    ContainerCount *items
    Py_ssize_t n
    Py_ssize_t cap
    Py_ssize_t total
    Py_ssize_t to_rebuild
    bint failed


cdef inline const uint8_t *_cid_of(Source *s, Py_ssize_t *n) noexcept nogil:
    """The container id of the current key: packed for a canonical key, else text."""
    cdef const uint8_t *k = <const uint8_t *>s.key.mv_data
    cdef const uint8_t *bar
    if s.canonical:
        n[0] = 32
        return k
    bar = <const uint8_t *>memchr(k, 124, s.key.mv_size)
    n[0] = (bar - k) if bar != NULL else 0
    return k


cdef void _count(Scan *scan, Counts *counts, Py_ssize_t limit, uint64_t incident,
                 Hit *prev, bint *truncated) noexcept nogil:
    cdef Py_ssize_t seen = 0, cid_n
    cdef const uint8_t *cid
    cdef int i
    cdef Source *s
    cdef ContainerCount *c = NULL
    cdef ContainerCount *grown
    cdef uint64_t mtime
    cdef bint rebuild
    truncated[0] = False
    while True:
        i = _scan_current(scan)
        if i < 0:
            break
        if seen == limit:
            truncated[0] = True
            break
        s = &scan.src[i]
        cid = _cid_of(s, &cid_n)
        if cid_n > C_MAX_CONTAINER_ID:
            cid_n = C_MAX_CONTAINER_ID
        if c == NULL or c.canonical != s.canonical or c.cid_n != cid_n or memcmp(c.cid, cid, cid_n) != 0:
            if counts.n == counts.cap:
                counts.cap = counts.cap * 2 if counts.cap else 64
                grown = <ContainerCount *>realloc(counts.items, counts.cap * sizeof(ContainerCount))
                if grown == NULL:
                    counts.failed = True
                    return
                counts.items = grown
            c = &counts.items[counts.n]
            counts.n += 1
            memcpy(c.cid, cid, cid_n)
            c.cid_n = cid_n
            c.canonical = s.canonical
            c.total = 0
            c.to_rebuild = 0
        rebuild = incident and _value_mtime(&s.val, &mtime) and mtime <= incident
        c.total += 1
        counts.total += 1
        if rebuild:
            c.to_rebuild += 1
            counts.to_rebuild += 1
        prev.key = s.key
        prev.val = s.val
        prev.canonical = s.canonical
        seen += 1
        _src_next(scan, s)


# -- input decoding ------------------------------------------------------------

ctypedef int (*_AddRecord)(Batch, object, Py_ssize_t, bint) except -1


cdef Batch _encode_batch(object records, bint meta2, bint key_only, _AddRecord add):
    """Validate and encode every record with ``add``, then sort; the last duplicate is kept."""
    cdef Batch batch
    cdef Py_ssize_t i, n
    records = _as_list(records)
    n = len(records)
    batch = Batch(n, meta2, key_only)
    for i in range(n):
        add(batch, records[i], i, key_only)
    batch.sort_unique()
    return batch


def encode_chunks(records, *, bint key_only=False):
    """Validate and encode chunk records (keys with ``key_only``): tuples, dicts or
    a numpy structured array. This is the one validator of chunk records; the
    :class:`Batch` it returns is written by :meth:`ChunkIndex.apply`."""
    if _is_ndarray(records):
        return _encode_chunk_array(records, key_only)
    return _encode_batch(records, False, key_only, _encode_chunk_object)


cdef list _as_list(object records):
    """A batch as a list; text is refused (iterating it would give characters)."""
    if isinstance(records, (str, bytes, dict)):
        raise caller_error(TypeError(f"a batch must be a list of records, not {type(records).__name__}"))
    return records if isinstance(records, list) else list(records)


cdef bint _is_ndarray(object obj):
    return type(obj).__name__ == "ndarray" and hasattr(obj, "dtype")


cdef int _encode_chunk_object(Batch batch, object rec, Py_ssize_t i, bint key_only) except -1:
    """One record (a tuple or a dict) into the batch. The fields are checked in
    the reference server's order, each for presence then type, so that the first
    error named is the one the reference names."""
    cdef Py_ssize_t cid_n = 0, content_n = 0, chunk_n = 0, path_n = 0, n
    cdef const uint8_t *cid = NULL
    cdef const uint8_t *content = NULL
    cdef const uint8_t *chunk = NULL
    cdef const uint8_t *path = NULL
    cdef int64_t mtime = 0, version = 0
    if isinstance(rec, dict):
        cid = _utf8(_field(rec, "container_id", i), &cid_n, "container_id", i)
        if key_only:
            chunk = _utf8(_field(rec, "chunk_id", i), &chunk_n, "chunk_id", i)
            # The reference type-checks the optional fields of a delete.
            for name in _CHUNK_VALUE_FIELDS:
                value = rec.get(name)
                if value is None:
                    continue
                if name == "mtime" or name == "version":
                    _int64(value, name, i)
                else:
                    _utf8(value, &n, name, i)
        else:
            content = _utf8(_field(rec, "content_id", i), &content_n, "content_id", i)
            chunk = _utf8(_field(rec, "chunk_id", i), &chunk_n, "chunk_id", i)
            mtime = _int64(_field(rec, "mtime", i), "mtime", i)
            path = _utf8(_field(rec, "path", i), &path_n, "path", i)
            version = _int64(_field(rec, "version", i), "version", i)
    elif isinstance(rec, tuple):
        if key_only:
            if len(rec) != 2:
                raise BadRequest(f"{_where(i)}expected (container_id, chunk_id), got {len(rec)} items")
            cid = _utf8(rec[0], &cid_n, "container_id", i)
            chunk = _utf8(rec[1], &chunk_n, "chunk_id", i)
        else:
            if len(rec) != 6:
                raise BadRequest(f"{_where(i)}expected (container_id, content_id, chunk_id, mtime, "
                                 f"path, version), got {len(rec)} items")
            cid = _utf8(rec[0], &cid_n, "container_id", i)
            content = _utf8(rec[1], &content_n, "content_id", i)
            chunk = _utf8(rec[2], &chunk_n, "chunk_id", i)
            mtime = _int64(rec[3], "mtime", i)
            path = _utf8(rec[4], &path_n, "path", i)
            version = _int64(rec[5], "version", i)
    else:
        _not_an_object(i, "a tuple or a dict", rec)
    return _add_chunk(batch, i, cid, cid_n, content, content_n, chunk, chunk_n,
                      mtime, path, path_n, version, key_only)


cdef object _field(dict rec, str name, Py_ssize_t i):
    """A mandatory field of a record; absent or None is missing."""
    value = rec.get(name)
    if value is None:
        raise caller_error(BadRequest(f"{_where(i)}missing field [{name}]"), f"Missing field [{name}]")
    return value


cdef object _bytes_column(object array, str name):
    """A numpy column as (contiguous uint8 2-D view, item width), bytes encoded as UTF-8."""
    if array.dtype.names is None or name not in array.dtype.names:
        raise BadRequest(f"the array has no field [{name}]")
    col = array[name]
    if col.dtype.kind == "U":
        col = np.char.encode(col, "utf-8")
    elif col.dtype.kind != "S":
        raise caller_error(TypeError(f"array field [{name}] must be bytes or str, not {col.dtype}"))
    col = np.ascontiguousarray(col)
    width = col.dtype.itemsize
    return col.view(np.uint8).reshape(len(col), width) if width else np.zeros((len(col), 0), np.uint8), width


cdef object _int_column(object array, str name):
    if array.dtype.names is None or name not in array.dtype.names:
        raise BadRequest(f"the array has no field [{name}]")
    col = array[name]
    if col.dtype.kind not in "iu":
        raise caller_error(TypeError(f"array field [{name}] must be integers, not {col.dtype}"))
    if col.dtype.kind == "u" and len(col) and col.max() > 0x7FFFFFFFFFFFFFFF:
        raise BadRequest(f"array field [{name}] is out of the 64-bit range")
    return np.ascontiguousarray(col, dtype=np.int64)


cdef inline Py_ssize_t _strip(const uint8_t *p, Py_ssize_t width) noexcept nogil:
    """Length of a numpy fixed-width bytes item (trailing NULs are padding)."""
    while width > 0 and p[width - 1] == 0:
        width -= 1
    return width


cdef Batch _encode_chunk_array(object array, bint key_only):
    cdef Py_ssize_t n = len(array), i
    cdef const uint8_t[:, ::1] cids, chunks, contents, paths
    cdef const int64_t[::1] mtimes, versions
    cdef Py_ssize_t wc, wk, wt = 0, wp = 0
    cdef Batch batch = Batch(n, False, key_only)
    cids, wc = _bytes_column(array, "container_id")
    chunks, wk = _bytes_column(array, "chunk_id")
    if not key_only:
        contents, wt = _bytes_column(array, "content_id")
        paths, wp = _bytes_column(array, "path")
        mtimes = _int_column(array, "mtime")
        versions = _int_column(array, "version")
    for i in range(n):
        if key_only:
            _add_chunk(batch, i, &cids[i, 0] if wc else <const uint8_t *>b"", _strip(&cids[i, 0], wc) if wc else 0,
                       NULL, 0, &chunks[i, 0] if wk else <const uint8_t *>b"", _strip(&chunks[i, 0], wk) if wk else 0,
                       0, NULL, 0, 0, True)
        else:
            _add_chunk(batch, i,
                       &cids[i, 0] if wc else <const uint8_t *>b"", _strip(&cids[i, 0], wc) if wc else 0,
                       &contents[i, 0] if wt else <const uint8_t *>b"", _strip(&contents[i, 0], wt) if wt else 0,
                       &chunks[i, 0] if wk else <const uint8_t *>b"", _strip(&chunks[i, 0], wk) if wk else 0,
                       mtimes[i],
                       &paths[i, 0] if wp else <const uint8_t *>b"", _strip(&paths[i, 0], wp) if wp else 0,
                       versions[i], False)
    batch.sort_unique()
    return batch


# ===========================================================================
# Codec entry points (tests, tools)
# ===========================================================================

def encode_chunk_key(container_id, chunk_id):
    """``(canonical, stored key)`` of a chunk record."""
    cdef Batch batch = Batch(1)
    _encode_chunk_object(batch, (container_id, chunk_id), -1, True)
    e = &batch.entries[0]
    return e.kind == 0, PyBytes_FromStringAndSize(<const char *>batch.arena + e.koff, e.klen)


def encode_chunk_value(content_id, mtime, path, version):
    """The stored value of a chunk record (mtime <= 0 is stored as 0)."""
    cdef Py_ssize_t content_n, path_n
    cdef const uint8_t *content = _utf8(content_id, &content_n, "content_id", -1)
    cdef const uint8_t *p = _utf8(path, &path_n, "path", -1)
    cdef int64_t m = _int64(mtime, "mtime", -1), v = _int64(version, "version", -1)
    cdef uint8_t buf[_VALUE_MAX]
    _check_text(content, content_n, C_MAX_CONTENT_ID, "content_id", -1)
    _check_text(p, path_n, C_MAX_PATH, "path", -1)
    end = _write_chunk_value(buf, content, content_n, m, p, path_n, v, NULL, 0)
    return PyBytes_FromStringAndSize(<const char *>buf, end - buf)


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


# ===========================================================================
# Meta2Index
# ===========================================================================

cdef struct Meta2Value:
    uint64_t mtime
    const uint8_t *cid
    Py_ssize_t cid_n
    bint cid_hex
    bint extra_null
    const uint8_t *extra
    Py_ssize_t extra_n
    const uint8_t *tail
    Py_ssize_t tail_n


cdef bint _parse_meta2_value(const uint8_t *p, size_t size, Meta2Value *out) noexcept nogil:
    """Parse a stored meta2 value; False when it is malformed."""
    cdef const uint8_t *end = p + size
    cdef uint8_t flags
    if size < 1:
        return False
    flags = p[0]
    p = _get_varint(p + 1, end, &out.mtime)
    out.cid_hex = (flags & M_CID_HEX) != 0
    out.extra_null = (flags & M_EXTRA_NULL) != 0
    p = _get_field(p, end, &out.cid, &out.cid_n)
    p = _get_field(p, end, &out.extra, &out.extra_n)
    return _get_tail(p, end, flags, &out.tail, &out.tail_n) != NULL


@cython.final
cdef class Meta2Index:
    """The container records of one meta2 volume, keyed by container url."""

    cdef readonly Environment env
    cdef MDB_dbi dbis[1]
    cdef bint canonical[1]

    def __init__(self, Environment env):
        self.env = env
        self.dbis[0] = env.dbi("meta2")
        self.canonical[0] = False

    def put_batch(self, records):
        """Write records (dicts with container_url, container_id, optional mtime and
        extra_data) in one transaction, all or nothing. Returns how many."""
        return _apply(self.env, self.dbis, encode_meta2(records), True)

    def delete_batch(self, container_urls):
        """Delete the records of ``container_urls`` (or of records with container_id and
        container_url) in one transaction; returns how many existed."""
        return _apply(self.env, self.dbis, encode_meta2(container_urls, key_only=True), True)

    def apply(self, Batch batch):
        """Write a batch of :func:`encode_meta2` in one transaction (delete its
        urls for a ``key_only`` batch); returns how many records were written
        (or existed)."""
        return _apply(self.env, self.dbis, batch, True)

    def fetch(self, *, prefix=None, marker=None, limit=1000):
        """One page of records in url order: ``(records, truncated, next_marker)``,
        the shape of :meth:`ChunkIndex.fetch`; ``truncated`` is true only when one
        more record exists; ``marker`` is exclusive."""
        cdef _Page page = _Page()
        cdef Py_ssize_t i
        try:
            page.collect(self.env, self.dbis, self.canonical, 1, prefix, marker, limit, 0)
            records = [_meta2_record(&page.hits[i]) for i in range(page.count)]
            return records, page.truncated, page.next_marker(True)
        finally:
            page.close()

    def count(self, prefix=None):
        """How many records (whose url starts with ``prefix``)."""
        cdef _Reader reader
        cdef Py_ssize_t total = 0
        cdef Scan *scan
        if not prefix:
            return self.env.stat("meta2")["entries"]
        reader = _Reader()
        try:
            reader.open(self.env, self.dbis, self.canonical, 1, prefix, None)
            scan = &reader.scan
            with nogil:
                while scan.src[0].valid:
                    total += 1
                    _src_next(scan, &scan.src[0])
            reader.raise_error()
            return total
        finally:
            reader.close()


def encode_meta2(records, *, bint key_only=False):
    """Validate and encode meta2 records (dicts), or with ``key_only`` the records
    to delete (container urls, or dicts with container_id and container_url):
    the one validator of meta2 records. :meth:`Meta2Index.apply` writes the batch."""
    return _encode_batch(records, True, key_only, _add_meta2)


cdef int _add_meta2(Batch batch, object rec, Py_ssize_t i, bint key_only) except -1:
    cdef Py_ssize_t url_n, cid_n = 0, extra_n = 0, tail_n = 0
    cdef const uint8_t *url = NULL
    cdef const uint8_t *cid = NULL
    cdef const uint8_t *extra = NULL
    cdef int64_t mtime = 0
    cdef Entry *e
    cdef uint8_t *p
    cdef uint8_t *start
    cdef uint8_t flags = 0
    cdef size_t tail_off = 0
    if key_only and isinstance(rec, str):
        url = _utf8(rec, &url_n, "container_url", i)
    elif not isinstance(rec, dict):
        _not_an_object(i, "a container url or a dict" if key_only else "a dict", rec)
    else:
        # The reference server's order: container_id, then container_url.
        cid = _utf8(_field(rec, "container_id", i), &cid_n, "container_id", i)
        url = _utf8(_field(rec, "container_url", i), &url_n, "container_url", i)
    if not key_only:
        _check_text(cid, cid_n, C_MAX_CONTAINER_ID, "container_id", i)
        if rec.get("mtime") is not None:
            mtime = _int64(rec["mtime"], "mtime", i)
        if rec.get("extra_data") is None:
            flags |= M_EXTRA_NULL
        else:
            extra = _utf8(rec["extra_data"], &extra_n, "extra_data", i)
            _check_text(extra, extra_n, C_MAX_EXTRA_DATA, "extra_data", i)
    _check_text(url, url_n, C_MAX_CONTAINER_URL, "container_url", i)
    if url_n == 0:
        raise BadRequest(f"{_where(i)}container_url is empty")
    e = batch.add(0, i)
    if url_n <= TEXT_PREFIX:
        e.koff = batch.used
        e.klen = <uint32_t>url_n
        batch.append(url, url_n)
    else:
        stored = _digest_key(url, url_n)
        e.koff = batch.used
        e.klen = <uint32_t>len(stored)
        batch.append(PyBytes_AS_STRING(stored), len(stored))
        tail_n = url_n - TEXT_PREFIX
        flags |= V_KEY_TAIL
    if key_only:
        return 0
    if mtime < 0:
        mtime = 0
    if cid_n % 2 == 0 and _is_upper_hex(cid, cid_n):
        flags |= M_CID_HEX
    start = batch.reserve(1 + 10 + 10 + cid_n + 10 + extra_n + 10 + tail_n)
    p = start
    p[0] = flags
    p = _put_varint(p + 1, <uint64_t>mtime)
    p = _put_id(p, cid, cid_n, flags & M_CID_HEX)
    p = _put_field(p, extra, extra_n)
    if tail_n:
        p = _put_field(p, url + TEXT_PREFIX, tail_n)
    e.voff = <size_t>(start - batch.arena)
    e.vlen = <uint32_t>(p - start)
    batch.used = e.voff + e.vlen
    return 0


cdef dict _meta2_record(Hit *h):
    cdef Meta2Value mv
    cdef const uint8_t *k = <const uint8_t *>h.key.mv_data
    if not _parse_meta2_value(<const uint8_t *>h.val.mv_data, h.val.mv_size, &mv):
        raise BadRequest("corrupted meta2 record")
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


# ===========================================================================
# Benchmark ceilings: the same LMDB work without Python objects
# ===========================================================================

def raw_insert(Environment env, keys, values, Py_ssize_t batch=10000, db="chunk_bin"):
    """Insert pre-encoded pairs in a C loop, ``batch`` pairs per transaction."""
    cdef Batch b
    cdef Py_ssize_t n = len(keys), start, i, written
    cdef MDB_dbi dbis[1]
    cdef Entry *e
    dbis[0] = env.dbi(db)
    for start in range(0, n, batch):
        b = Batch(min(batch, n - start))
        for i in range(start, min(start + batch, n)):
            e = b.add(0, i)
            e.koff = b.used
            e.klen = len(keys[i])
            b.append(PyBytes_AS_STRING(keys[i]), e.klen)
            e.voff = b.used
            e.vlen = len(values[i])
            b.append(PyBytes_AS_STRING(values[i]), e.vlen)
        b.sort_unique()
        _write_batch(env, dbis, b, False, &written)


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


# ===========================================================================
# OpenIO's entries, made as the caller iterates
# ===========================================================================

@cython.final
cdef class Entries:
    """Iterate a fetched page as OpenIO's ``(container_id, chunk_id, value)`` entries.

    Each entry is built only when the caller asks for it, so it dies young: a
    page of 1,000 value dicts built at once keeps the garbage collector busy
    (a full listing of a large volume ran several times slower that way).
    """
    cdef list records
    cdef Py_ssize_t i

    def __cinit__(self, list records):
        self.records = records
        self.i = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.i >= len(self.records):
            raise StopIteration
        rec = <tuple>self.records[self.i]
        self.i += 1
        return (rec[0], rec[2], {"content_id": rec[1], "mtime": rec[3], "path": rec[4], "version": rec[5]})
