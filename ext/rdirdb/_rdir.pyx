# cython: language_level=3, cdivision=True
"""The native rdir engine: the index of a volume, written and read in C.

Storage of a rawx volume (one LMDB environment):

* ``chunk_bin``: records whose container id and chunk id are both canonical
  (64 uppercase hex characters). The key is the two ids packed to binary,
  32 + 32 bytes. Binary order of such keys equals the text order of the ids.
* ``chunk_text``: every other record. The key is the text ``cid|chunk``
  (UTF-8), so the order is the reference's text order. A text longer than
  MAX_PREFIX bytes (LMDB keys hold at most 511) is stored as its first
  MAX_PREFIX bytes, a NUL and its SHA-256; the value keeps the rest of it.
* ``admin``: the lock and the incident date (handled in Python).

A meta2 volume has one database, ``meta2``, keyed by container url.

The parts, one module each (docs/architecture.md): the value codecs
(_codec.pxd), records in (_encode: the one validator, into a Batch), batches
written in one transaction (_batch), scans and the records out (_scan),
counts (_count), and here the indexes that tie them together. This module is
the engine's Python API; the names of the other modules that belong to it are
re-exported here.
"""

cimport cython
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc

from rdirdb._batch cimport Batch, apply_batch
from rdirdb._repair cimport Stamps, open_stamps
from rdirdb._codec cimport *
from rdirdb._count cimport chunk_status, count_prefix
from rdirdb._encode cimport _encode_chunk_object
from rdirdb._lmdb cimport Environment, Transaction, check
from rdirdb._scan cimport (Entries, Hit, _chunk_array, _chunk_record, _CidCache, _incident_arg, _int_arg,
                           _meta2_record, _Page)
from rdirdb.lmdb cimport *

from rdirdb._batch import Batch
from rdirdb._encode import encode_chunk_key, encode_chunk_value, encode_chunks, encode_meta2, order_key
from rdirdb._scan import (CHUNK_DTYPE, CHUNK_DTYPE_FIELDS, Entries, chunk_array, decode_chunk_key,
                          decode_chunk_value, split_marker)
from rdirdb.errors import UnsupportedLmdbError

CHUNK_DATABASES = ("chunk_bin", "chunk_text", "admin")
META2_DATABASES = ("meta2",)
# The tombstones of each database of records, and the volume's last write stamp
# (docs/reliability.md, "Replicas that converge"). Opened by the indexes, created on the
# first read-write open: a store written before stamps existed opens as it is.
CHUNK_TOMB_DATABASES = ("chunk_bin_tomb", "chunk_text_tomb")
META2_TOMB_DATABASES = ("meta2_tomb",)
CLOCK_DATABASE = "clock"

# Limits on ids, in UTF-8 bytes (the reference server's buffer sizes).
MAX_CONTAINER_ID = C_MAX_CONTAINER_ID
MAX_CONTENT_ID = C_MAX_CONTENT_ID
MAX_CHUNK_ID = C_MAX_CHUNK_ID
MAX_PATH = C_MAX_PATH
MAX_CONTAINER_URL = C_MAX_CONTAINER_URL
MAX_PREFIX = TEXT_PREFIX

# The fields of a chunk record a fetch builds (the others are None).
FIELD_CONTENT_ID = F_CONTENT_ID
FIELD_MTIME = F_MTIME
FIELD_PATH = F_PATH
FIELD_VERSION = F_VERSION
ALL_FIELDS = F_ALL

cdef bint _CHUNK_CANONICAL[2]
_CHUNK_CANONICAL[0] = True     # chunk_bin
_CHUNK_CANONICAL[1] = False    # chunk_text


# ===========================================================================
# The write path the two indexes share
# ===========================================================================

cdef class _StampedIndex:
    """An index whose writes go through its :class:`Stamps` (a chunk or a meta2
    volume): the batches of :func:`encode_chunks` or :func:`encode_meta2`."""

    cdef readonly Environment env
    cdef readonly Stamps stamps

    def apply(self, Batch batch):
        """Write a batch in one transaction (delete its keys for a ``key_only``
        batch); returns how many records were written (or existed)."""
        return self.stamps.apply(batch)

    def apply_group(self, list batches, *, bint sync_meta=True, more=None):
        """Write several batches in one transaction, in their order (the group
        commit of the server: one commit for many requests), all or nothing;
        returns how many records each wrote (or existed). ``sync_meta``: see
        :meth:`Environment.write`; ``more()``: batches taken once the
        transaction holds the write lock, written after ``batches``."""
        return self.stamps.apply_group(batches, sync_meta, more)


# ===========================================================================
# ChunkIndex
# ===========================================================================

@cython.final
cdef class ChunkIndex(_StampedIndex):
    """The chunk records of one rawx volume (see the module docstring)."""

    cdef MDB_dbi dbis[2]
    cdef MDB_dbi admin_dbi

    def __init__(self, Environment env):
        self.env = env
        if env.max_key_size < 511:
            raise UnsupportedLmdbError(
                "mdb_env_get_maxkeysize", 0, f"liblmdb was built with MDB_MAXKEYSIZE {env.max_key_size}, "
                "rdirdb needs 511")
        self.dbis[0] = env.dbi("chunk_bin")
        self.dbis[1] = env.dbi("chunk_text")
        self.admin_dbi = env.dbi("admin")
        self.stamps = open_stamps(env, self.dbis, CHUNK_TOMB_DATABASES, CLOCK_DATABASE, False)

    # -- writes ---------------------------------------------------------------

    def put_batch(self, records):
        """Validate every record, then write them all in one transaction.

        ``records``: tuples ``(container_id, content_id, chunk_id, mtime, path,
        version)``, dicts with those keys, or a numpy structured array with those
        fields. Nothing is written if any record is invalid; for duplicate keys
        the last record wins. Returns the number of records written.
        """
        return self.stamps.apply(encode_chunks(records))

    def delete_batch(self, keys):
        """Delete the records of ``keys`` (``(container_id, chunk_id)`` tuples or
        dicts) in one transaction. Returns how many existed."""
        return self.stamps.apply(encode_chunks(keys, key_only=True))


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
            return _chunk_record(&hit, F_ALL, _CidCache())
        finally:
            self.env.end_raw(txn, False)

    def fetch(self, *, prefix=None, marker=None, limit=1000, incident=0, fields=F_ALL,
              bint entries=False, Transaction txn=None):
        """One page of records in listing order: ``(records, truncated, next_marker)``.

        ``marker`` (``cid|chunk``) is an exclusive start; ``prefix`` a text prefix of
        ``cid|chunk``; ``incident`` > 0 keeps only records with mtime <= incident.
        A record is ``(container_id, content_id, chunk_id, mtime, path, version)``,
        the order of put_batch, with None for the fields not asked for; with
        ``entries`` it is OpenIO's ``(container_id, chunk_id, {"content_id",
        "mtime", "path", "version"})``. ``txn`` (a transaction of ``env``) reads
        that snapshot, so that pages read with one ``txn`` are one point in time;
        by default each page has its own.
        """
        cdef _Page page = _Page()
        cdef _CidCache cache = _CidCache()
        cdef int field_mask = <int>_int_arg(fields, "fields", 0, F_ALL)
        cdef Py_ssize_t i
        try:
            page.collect(self.env, self.dbis, _CHUNK_CANONICAL, 2, prefix, marker, limit, incident, txn)
            records = [_chunk_record(&page.hits[i], field_mask, cache, entries) for i in range(page.count)]
            return records, page.truncated, page.next_marker(False)
        finally:
            page.close()

    def fetch_entries(self, *, prefix=None, marker=None, limit=1000, incident=0):
        """Like :meth:`fetch` with ``entries``, the entries made lazily: an iterator of
        :class:`Entries` (each entry is made as it is asked for, so it dies young)."""
        cdef _Page page = _Page()
        try:
            page.collect(self.env, self.dbis, _CHUNK_CANONICAL, 2, prefix, marker, limit, incident)
            return page.entries(), page.truncated, page.next_marker(False)
        finally:
            page.close()

    def fetch_arrays(self, *, prefix=None, marker=None, limit=1000, incident=0):
        """Like :meth:`fetch`, as one numpy structured array of CHUNK_DTYPE."""
        cdef _Page page = _Page()
        try:
            page.collect(self.env, self.dbis, _CHUNK_CANONICAL, 2, prefix, marker, limit, incident)
            return _chunk_array(page.hits, page.count), page.truncated, page.next_marker(False)
        finally:
            page.close()

    def status(self, *, prefix=None, marker=None, limit=1000, incident=0):
        """Counts of one page: ``(total, to_rebuild, {cid: (total, to_rebuild)},
        truncated, next_marker)``; a record is to rebuild when incident > 0 and
        its mtime <= incident. Counting makes no Python object per record."""
        return chunk_status(self.env, self.dbis, _CHUNK_CANONICAL, prefix, marker, limit, incident)

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
        if not (all or cutoff or repair or erase_incident):
            return 0, 0, 0
        return self.env.write(_clear_into, self, all, cutoff, repair, erase_incident)


def _clear_into(Transaction txn, ChunkIndex index, bint all, uint64_t cutoff, bint repair, bint erase_incident):
    """Environment.write's function: ChunkIndex.clear in ``txn``."""
    cdef Py_ssize_t removed = 0, repaired = 0, errors = 0
    cdef MDB_cursor *cur
    cdef MDB_stat st
    cdef MDB_val k
    cdef int rc = MDB_SUCCESS, i
    cdef uint8_t *buf = <uint8_t *>malloc(
        _chunk_value_bound(C_MAX_CONTENT_ID, C_MAX_PATH, C_MAX_CHUNK_ID + C_MAX_CONTAINER_ID) + STAMP_SIZE)
    if buf == NULL:
        raise MemoryError()
    try:
        for i in range(2 if all or cutoff or repair else 0):
            if all:
                rc = mdb_stat(txn._txn, index.dbis[i], &st)
                if rc == MDB_SUCCESS:
                    removed += <Py_ssize_t>st.ms_entries
                    rc = mdb_drop(txn._txn, index.dbis[i], 0)
                if rc == MDB_SUCCESS and index.stamps.clock:
                    # A replica cleared to be copied again keeps no tombstone (the clock stays).
                    rc = mdb_drop(txn._txn, index.stamps.tombs[i], 0)
            else:
                rc = mdb_cursor_open(txn._txn, index.dbis[i], &cur)
                if rc == MDB_SUCCESS:
                    with nogil:
                        rc = _clear_walk(cur, cutoff, repair, &removed, &repaired, &errors, buf)
                        mdb_cursor_close(cur)
            if rc != MDB_SUCCESS:
                break
    finally:
        free(buf)
    if rc == MDB_SUCCESS and erase_incident:
        k.mv_data = <void *><const char *>b"incident_date"
        k.mv_size = 13
        rc = mdb_del(txn._txn, index.admin_dbi, &k, NULL)
        if rc == MDB_NOTFOUND:
            rc = MDB_SUCCESS
    txn.fail(rc, b"clear")
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
            if (<const uint8_t *>v.mv_data)[0] & V_STAMPED:  # the stamp of its write stays
                buf[0] |= V_STAMPED
                _put_stamp(buf + nv.mv_size, _value_stamp(<const uint8_t *>v.mv_data, v.mv_size))
                nv.mv_size += STAMP_SIZE
            rc = mdb_cursor_put(cur, &k, &nv, MDB_CURRENT)
            if rc != MDB_SUCCESS:
                return rc
            repaired[0] += 1
        # After a delete the cursor sits on the next record, and MDB_NEXT returns it.
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)
    return MDB_SUCCESS if rc == MDB_NOTFOUND else rc


# ===========================================================================
# Meta2Index
# ===========================================================================

@cython.final
cdef class Meta2Index(_StampedIndex):
    """The container records of one meta2 volume, keyed by container url."""

    cdef MDB_dbi dbis[1]

    def __init__(self, Environment env):
        self.env = env
        self.dbis[0] = env.dbi("meta2")
        self.stamps = open_stamps(env, self.dbis, META2_TOMB_DATABASES, CLOCK_DATABASE, True)

    def put_batch(self, records):
        """Write records (dicts with container_url, container_id, optional mtime and
        extra_data) in one transaction, all or nothing. Returns how many."""
        return self.stamps.apply(encode_meta2(records))

    def delete_batch(self, container_urls):
        """Delete the records of ``container_urls`` (or of records with container_id and
        container_url) in one transaction; returns how many existed."""
        return self.stamps.apply(encode_meta2(container_urls, key_only=True))

    def fetch(self, *, prefix=None, marker=None, limit=1000, Transaction txn=None):
        """One page of records in url order: ``(records, truncated, next_marker)``,
        the shape of :meth:`ChunkIndex.fetch`; ``truncated`` is true only when one
        more record exists; ``marker`` is exclusive; ``txn`` reads that snapshot,
        as in :meth:`ChunkIndex.fetch`."""
        cdef _Page page = _Page()
        cdef bint canonical = False
        cdef Py_ssize_t i
        try:
            page.collect(self.env, self.dbis, &canonical, 1, prefix, marker, limit, 0, txn)
            records = [_meta2_record(&page.hits[i]) for i in range(page.count)]
            return records, page.truncated, page.next_marker(True)
        finally:
            page.close()

    def count(self, prefix=None):
        """How many records (whose url starts with ``prefix``)."""
        if not prefix:
            return self.env.stat("meta2")["entries"]
        return count_prefix(self.env, self.dbis[0], prefix)
