# cython: language_level=3
"""The codecs of the rdir engine's records: constants and inline C functions,
compiled into every module that cimports them (no call crosses a module).

* hex: uppercase hex ids packed to binary and back;
* varints (LEB128) and zigzag for the numbers of a value;
* the text order of keys (``cid|chunk`` compared as bytes);
* chunk values: ``flags, varint mtime, zigzag varint version, content_id,
  path [, key tail]``, a content id of uppercase hex of even length packed to
  binary (flag V_CONTENT_HEX);
* meta2 values: ``flags, varint mtime, container_id, extra_data [, key tail]``.

docs/engine.md describes the storage these codecs write.
"""

from libc.stdint cimport int8_t, int64_t, uint8_t, uint64_t
from libc.string cimport memcmp, memcpy

from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec

from rdirdb.lmdb cimport MDB_val

cdef extern from *:
    """
    /* Value of each uppercase hex digit, -1 for any other byte. A table, not
       comparisons: random hex digits make a branchy decoder mispredict. */
    static const signed char rdirdb_hexval[256] = {
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
     0,  1,  2,  3,  4,  5,  6,  7,  8,  9, -1, -1, -1, -1, -1, -1,
    -1, 10, 11, 12, 13, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    };
    /* The two hex digits of each byte: one 2-byte copy per byte unpacked
       (its odd characters, from 1 to 31, are the 16 digits in order). */
    static const char rdirdb_hex_pairs[513] =
        "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F"
        "202122232425262728292A2B2C2D2E2F303132333435363738393A3B3C3D3E3F"
        "404142434445464748494A4B4C4D4E4F505152535455565758595A5B5C5D5E5F"
        "606162636465666768696A6B6C6D6E6F707172737475767778797A7B7C7D7E7F"
        "808182838485868788898A8B8C8D8E8F909192939495969798999A9B9C9D9E9F"
        "A0A1A2A3A4A5A6A7A8A9AAABACADAEAFB0B1B2B3B4B5B6B7B8B9BABBBCBDBEBF"
        "C0C1C2C3C4C5C6C7C8C9CACBCCCDCECFD0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF"
        "E0E1E2E3E4E5E6E7E8E9EAEBECEDEEEFF0F1F2F3F4F5F6F7F8F9FAFBFCFDFEFF";
    """
    const int8_t rdirdb_hexval[256]
    const char rdirdb_hex_pairs[513]


cdef enum:
    # Reference limits, in UTF-8 bytes (its buffer sizes minus the NUL).
    C_MAX_CONTAINER_ID = 64
    C_MAX_CONTENT_ID = 64
    C_MAX_CHUNK_ID = 511
    C_MAX_PATH = 1087
    C_MAX_CONTAINER_URL = 1023
    C_MAX_EXTRA_DATA = 65536
    TEXT_PREFIX = 478          # 478 + NUL + 32-byte digest = 511, LMDB's key limit
    CANON_LEN = 64             # canonical id: 64 uppercase hex characters
    CANON_KEY = 64             # canonical key: two packed ids
    CANON_TEXT = 129           # "<64 hex>|<64 hex>"
    # The fields of a chunk record a scan builds.
    F_CONTENT_ID = 1
    F_MTIME = 2
    F_PATH = 4
    F_VERSION = 8
    F_ALL = 15
    # Flags of a value.
    V_CONTENT_HEX = 1          # chunk: the content id is packed
    V_KEY_TAIL = 2             # chunk and meta2: the value ends with the tail of a long key
    M_CID_HEX = 1              # meta2: the container id is packed
    M_EXTRA_NULL = 4           # meta2: extra_data is null


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


# -- hex ------------------------------------------------------------------------

cdef inline int _hexval(uint8_t c) noexcept nogil:
    return rdirdb_hexval[c]


cdef inline bint _is_upper_hex(const uint8_t *s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef int8_t acc = 0
    for i in range(n):
        acc |= rdirdb_hexval[s[i]]
    return acc >= 0


cdef inline bint _pack_hex(const uint8_t *s, Py_ssize_t nbytes, uint8_t *out) noexcept nogil:
    """Pack ``2 * nbytes`` hex digits into ``out``, checking them in the same pass:
    False when one is not an uppercase hex digit (``out`` then holds garbage)."""
    cdef Py_ssize_t i
    cdef int8_t hi, lo, acc = 0
    for i in range(nbytes):
        hi = rdirdb_hexval[s[2 * i]]
        lo = rdirdb_hexval[s[2 * i + 1]]
        acc |= hi | lo
        out[i] = <uint8_t>((hi << 4) | lo)
    return acc >= 0


cdef inline void _unpack_hex(const uint8_t *b, Py_ssize_t nbytes, uint8_t *out) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(nbytes):
        memcpy(out + 2 * i, rdirdb_hex_pairs + 2 * b[i], 2)


cdef inline void _canon_text(const uint8_t *key, uint8_t *out) noexcept nogil:
    """The 129-byte text ``cid|chunk`` of a canonical key."""
    _unpack_hex(key, 32, out)
    out[64] = 124  # '|'
    _unpack_hex(key + 32, 32, out + 65)


# -- the text order ----------------------------------------------------------------

cdef inline int _text_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen) noexcept nogil:
    cdef size_t n = alen if alen < blen else blen
    cdef int c = memcmp(a, b, n)
    if c != 0:
        return c
    return (alen > blen) - (alen < blen)


# -- numbers -------------------------------------------------------------------------

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


# -- fields of a value -------------------------------------------------------------------

cdef inline uint8_t *_put_field(uint8_t *p, const uint8_t *data, Py_ssize_t n) noexcept nogil:
    """A varint length and the bytes (the reader is _get_field)."""
    p = _put_varint(p, <uint64_t>n)
    if n:
        memcpy(p, data, <size_t>n)
    return p + n


cdef inline uint8_t *_put_id(uint8_t *p, const uint8_t *text, Py_ssize_t n, bint packed) noexcept nogil:
    """An id as a field: packed to binary when it is uppercase hex of even length."""
    if not packed:
        return _put_field(p, text, n)
    p = _put_varint(p, <uint64_t>(n // 2))
    _pack_hex(text, n // 2, p)
    return p + n // 2


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


# -- chunk values ----------------------------------------------------------------------------

cdef inline size_t _chunk_value_bound(Py_ssize_t content_n, Py_ssize_t path_n, Py_ssize_t tail_n) noexcept nogil:
    """Room enough for the value _write_chunk_value writes."""
    return <size_t>(1 + 10 + 10 + 10 + content_n + 10 + path_n + 10 + tail_n)


cdef inline uint8_t *_write_chunk_value(uint8_t *p, const uint8_t *content, Py_ssize_t content_n,
                                        int64_t mtime, const uint8_t *path, Py_ssize_t path_n,
                                        int64_t version, const uint8_t *tail, Py_ssize_t tail_n) noexcept nogil:
    """Encode a chunk value at ``p`` (room: _chunk_value_bound); returns its end.
    A mtime <= 0 is stored as 0 (none)."""
    cdef uint8_t *flags = p
    cdef uint8_t *packed
    flags[0] = V_KEY_TAIL if tail_n else 0
    p = _put_varint(p + 1, <uint64_t>(mtime if mtime > 0 else 0))
    p = _put_varint(p, _zigzag(version))
    # The content id packed (_put_id) when it is uppercase hex of even length:
    # packed and checked in one pass, written as text when the check fails.
    packed = _put_varint(p, <uint64_t>(content_n // 2))
    if content_n % 2 == 0 and _pack_hex(content, content_n // 2, packed):
        flags[0] |= V_CONTENT_HEX
        p = packed + content_n // 2
    else:
        p = _put_field(p, content, content_n)
    p = _put_field(p, path, path_n)
    if tail_n:
        p = _put_field(p, tail, tail_n)
    return p


cdef inline bint _parse_chunk_value(const uint8_t *p, size_t size, ChunkValue *out) noexcept nogil:
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
    if p == NULL:
        return False
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


# -- meta2 values ------------------------------------------------------------------------------

cdef inline bint _parse_meta2_value(const uint8_t *p, size_t size, Meta2Value *out) noexcept nogil:
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


# -- write stamps (docs/reliability.md, "Replicas that converge") -------------------------------
#
# A record written since stamps exist ends with the 8-byte big-endian stamp of its write,
# flag V_STAMPED set in its first byte; the value parsers above stop before it. A record of an
# older store has no stamp: its stamp is 0, older than any write. A tombstone's value is its
# stamp alone. A stamp is a hybrid logical clock: milliseconds since the epoch << 16 | a counter.

cdef enum:
    V_STAMPED = 0x80           # chunk and meta2: the value ends with the stamp of its write
    STAMP_SIZE = 8
    STAMP_COUNTER_BITS = 16


cdef inline void _put_stamp(uint8_t *p, uint64_t stamp) noexcept nogil:
    cdef int i
    for i in range(STAMP_SIZE):
        p[i] = <uint8_t>(stamp >> (8 * (STAMP_SIZE - 1 - i)))


cdef inline uint64_t _get_stamp(const uint8_t *p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(STAMP_SIZE):
        v = (v << 8) | p[i]
    return v


cdef inline uint64_t _value_stamp(const uint8_t *v, size_t n) noexcept nogil:
    """The stamp of a stored record's value; 0 for a record written before stamps."""
    if n < 1 + STAMP_SIZE or not v[0] & V_STAMPED:
        return 0
    return _get_stamp(v + n - STAMP_SIZE)


cdef inline uint64_t _wall_ms() noexcept nogil:
    """The wall clock in milliseconds since the epoch."""
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <uint64_t>ts.tv_sec * 1000 + <uint64_t>(ts.tv_nsec // 1000000)


cdef inline uint64_t _hlc_next(uint64_t last) noexcept nogil:
    """The stamp of a write that follows ``last``: the wall clock in ms, or last + 1
    when the clock is behind it (the hybrid logical clock's send/receive rule)."""
    cdef uint64_t now = _wall_ms() << STAMP_COUNTER_BITS
    return now if now > last else last + 1


cdef inline int _entry_order(uint64_t sa, bint ta, const uint8_t *va, size_t na,
                             uint64_t sb, bint tb, const uint8_t *vb, size_t nb) noexcept nogil:
    """The rule that resolves two versions of one key (> 0: a wins, < 0: b wins, 0: the same):
    the newer stamp; at equal stamps a tombstone over a record; between two records, the
    greater value bytes (so that every replica picks the same one)."""
    if sa != sb:
        return 1 if sa > sb else -1
    if ta != tb:
        return 1 if ta else -1
    if ta:
        return 0
    return _text_cmp(va, na, vb, nb)
