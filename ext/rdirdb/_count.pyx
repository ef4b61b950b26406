# cython: language_level=3, cdivision=True
"""Counts: how many records a scan passes, without a Python object per record.

chunk_status() counts a page of a chunk scan per container, and those to
rebuild after an incident (the reference's status body); count_prefix()
counts the meta2 records under a prefix.
"""

from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memchr, memcmp, memcpy, memset

from rdirdb._codec cimport C_MAX_CONTAINER_ID, _value_mtime
from rdirdb._lmdb cimport Environment
from rdirdb._scan cimport (Hit, Scan, Source, _Reader, _decode, _hex_str, _incident_arg, _key_text_of,
                           _limit_arg, _scan_current, _src_next)
from rdirdb.lmdb cimport MDB_dbi


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
        if c == NULL or c.canonical != s.canonical or c.cid_n != cid_n or memcmp(c.cid, cid, <size_t>cid_n) != 0:
            if counts.n == counts.cap:
                counts.cap = counts.cap * 2 if counts.cap else 64
                grown = <ContainerCount *>realloc(counts.items, <size_t>counts.cap * sizeof(ContainerCount))
                if grown == NULL:
                    counts.failed = True
                    return
                counts.items = grown
            c = &counts.items[counts.n]
            counts.n += 1
            memcpy(c.cid, cid, <size_t>cid_n)
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


cdef tuple chunk_status(Environment env, const MDB_dbi *dbis, const bint *canonical, object prefix,
                        object marker, object limit, object incident):
    """``(total, to_rebuild, {cid: (total, to_rebuild)}, truncated, next_marker)`` of one page."""
    cdef _Reader reader = _Reader()
    cdef Counts counts
    cdef ContainerCount *c
    cdef Py_ssize_t i
    cdef Hit prev
    cdef bint truncated = False
    cdef Py_ssize_t lim = _limit_arg(limit)
    cdef uint64_t inc = _incident_arg(incident)
    memset(&counts, 0, sizeof(Counts))
    try:
        reader.open(env, dbis, canonical, 2, prefix, marker)
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


cdef Py_ssize_t count_prefix(Environment env, MDB_dbi dbi, object prefix) except -1:
    """How many records of the text-keyed database ``dbi`` start with ``prefix``."""
    cdef _Reader reader = _Reader()
    cdef Py_ssize_t total = 0
    cdef Scan *scan
    cdef bint canonical = False
    try:
        reader.open(env, &dbi, &canonical, 1, prefix, None)
        scan = &reader.scan
        with nogil:
            while scan.src[0].valid:
                total += 1
                _src_next(scan, &scan.src[0])
        reader.raise_error()
        return total
    finally:
        reader.close()
