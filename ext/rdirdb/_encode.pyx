# cython: language_level=3, cdivision=True
"""Records in: the one validator of rdir records, and their encoding into a batch.

Every write path (RdirClient embedded or remote through the server,
``rdirdb import``, ``import-leveldb``) reaches the engine through
:func:`encode_chunks` or :func:`encode_meta2`, which check every field of every
record (type, length, NUL, the id rule) and encode its stored key and value
into a :class:`rdirdb._batch.Batch`. A bad record raises BadRequest, or a
TypeError for a value of the wrong type, both marked as the caller's
(``errors.caller_error``), before anything is written.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memchr, memcpy

from rdirdb._batch cimport Batch, Entry
from rdirdb._codec cimport *

import hashlib

import numpy as np

from rdirdb.errors import BadRequest, caller_error

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object o, Py_ssize_t *size) except NULL

# The optional fields of a chunk key (a delete), in the reference's order.
_CHUNK_VALUE_FIELDS = ("content_id", "mtime", "path", "version")


# -- fields ------------------------------------------------------------------------

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


# -- keys ------------------------------------------------------------------------

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


# -- chunk records -------------------------------------------------------------------

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
    cdef bint canonical = False
    if cid_n == CANON_LEN and chunk_n == CANON_LEN:
        # The key packed where it goes, the ids checked in the same pass; it is
        # kept (batch.used moves) only if both are canonical.
        p = batch.reserve(CANON_KEY)
        canonical = _pack_hex(cid, 32, p) and _pack_hex(chunk, 32, p + 32)
    if not canonical:  # canonical ids pass every check of an id
        _check_text(cid, cid_n, C_MAX_CONTAINER_ID, "container_id", index)
        _check_text(chunk, chunk_n, C_MAX_CHUNK_ID, "chunk_id", index)
        if cid_n and memchr(cid, 124, cid_n) != NULL:
            raise BadRequest(f"{_where(index)}container_id contains '|', the key separator")
        if not key_only:
            _check_id(cid, cid_n, "container_id", index)
            _check_id(chunk, chunk_n, "chunk_id", index)
    if not key_only:
        _check_text(content, content_n, C_MAX_CONTENT_ID, "content_id", index)
        _check_text(path, path_n, C_MAX_PATH, "path", index)
    if canonical:
        e = batch.add(0, index)
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


def encode_chunk_key(container_id, chunk_id):
    """``(canonical, stored key)`` of a chunk record."""
    cdef Batch batch = Batch(1)
    cdef Entry *e
    _encode_chunk_object(batch, (container_id, chunk_id), -1, True)
    e = &batch.entries[0]
    return e.kind == 0, PyBytes_FromStringAndSize(<const char *>batch.arena + e.koff, e.klen)


def encode_chunk_value(content_id, mtime, path, version):
    """The stored value of a chunk record (mtime <= 0 is stored as 0)."""
    cdef Py_ssize_t content_n, path_n
    cdef const uint8_t *content = _utf8(content_id, &content_n, "content_id", -1)
    cdef const uint8_t *p = _utf8(path, &path_n, "path", -1)
    cdef int64_t m = _int64(mtime, "mtime", -1), v = _int64(version, "version", -1)
    cdef uint8_t buf[1 + 5 * 10 + C_MAX_CONTENT_ID + C_MAX_PATH]
    _check_text(content, content_n, C_MAX_CONTENT_ID, "content_id", -1)
    _check_text(p, path_n, C_MAX_PATH, "path", -1)
    end = _write_chunk_value(buf, content, content_n, m, p, path_n, v, NULL, 0)
    return PyBytes_FromStringAndSize(<const char *>buf, end - buf)


# -- meta2 records ------------------------------------------------------------------

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
