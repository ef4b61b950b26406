# cython: language_level=3, cdivision=True
"""Write stamps, tombstones and the digests of key ranges: what repair compares and moves.

Every write of a volume is stamped (a hybrid logical clock, see _codec.pxd): a
record's value ends with the stamp of its write, a delete leaves a tombstone
(the key, in a database of tombstones per database of records, and the stamp
of the delete), and the volume's last stamp is kept in its ``clock`` database.

Repair (rdirdb.rdir.repair) sees a volume as one sorted key space: an entry's
*full key* is one byte of kind (the index of its database of records) followed
by its stored key, and an entry is a record or a tombstone. A range ``[lo, hi)``
of full keys (``hi`` None: to the end) has a digest: how many entries, and the
sum (mod 2**64) of an xxh3 hash of each entry's kind, key, value and kind of
entry. Two replicas hold the same entries in a range when the digests are equal
(up to a 64-bit collision). The hash leaves the stamps out: replicas that got
the same writes hold the same content under different stamps. Tombstones older than a cutoff are left out of
digests and listings (they are due to be purged), so that replicas that purged
at different moments still agree.

:meth:`Stamps.apply_entries` applies entries of other replicas by the one rule
of :func:`newer` (_codec._entry_order): the newer stamp wins, a tombstone wins
a tie with a record, and between two records the greater value bytes.
"""

cimport cython
from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport strlen

from rdirdb._batch cimport Batch, apply_batch, apply_batches, clock_advance
from rdirdb._codec cimport *
from rdirdb._lmdb cimport Environment, Transaction, check
from rdirdb.lmdb cimport *

from rdirdb.errors import BadRequest, LmdbFileNotFoundError, RefusedEntries, caller_error

cdef extern from *:
    """
    #define XXH_INLINE_ALL
    #include <xxhash.h>
    """
    ctypedef unsigned long long XXH64_hash_t
    XXH64_hash_t XXH3_64bits_withSeed(const void *data, size_t len, XXH64_hash_t seed) nogil

cdef enum:
    MAX_KEY = 511

cdef uint64_t TOMB_SEED = 0x9E3779B97F4A7C15   # the hash of a tombstone differs from a record's

# Keys of the ``clock`` database: the volume's last write stamp, and the tombstone floor, a
# stamp no tombstone of the volume is older than (set by a purge, lowered by an apply), so that
# a purge with nothing to remove costs one read instead of a walk of every tombstone.
cdef const char *LAST_KEY = b"last"
cdef const char *FLOOR_KEY = b"tomb_floor"

MAX_STAMP = 2 ** 64 - 1
# The newest stamp a replica takes from another: the clock moves past it (and past every
# stamp it takes later), and must not wrap past 2**64 (later writes would be older).
# Stamps of the wall clock stay below it for millennia.
MAX_RECEIVED_STAMP = 2 ** 63 - 1
STAMP_BITS_COUNTER = STAMP_COUNTER_BITS


cdef inline size_t _content(const uint8_t *val, size_t val_n, uint8_t *flags) noexcept nogil:
    """The content of a record's value: its flags but V_STAMPED, and the length of
    its body (from val + 1) without the stamp."""
    if val_n == 0:
        flags[0] = 0
        return 0
    flags[0] = val[0] & ~V_STAMPED
    if val[0] & V_STAMPED and val_n >= 1 + STAMP_SIZE:
        return val_n - 1 - STAMP_SIZE
    return val_n - 1


cdef inline uint64_t _entry_hash(int kind, const uint8_t *key, size_t key_n, const uint8_t *val,
                                 size_t val_n, bint tomb) noexcept nogil:
    """The hash of an entry's content: its key and, for a record, its value without the
    stamp. Replicas that got the same writes stamp them with their own clocks: their
    digests are equal all the same."""
    cdef uint64_t h = XXH3_64bits_withSeed(key, key_n, <uint64_t>kind)
    cdef uint8_t flags
    cdef size_t n
    if tomb:
        return XXH3_64bits_withSeed(NULL, 0, h ^ TOMB_SEED)
    n = _content(val, val_n, &flags)
    return XXH3_64bits_withSeed(val + 1 if n else NULL, n, h ^ flags)


def entry_hash(int kind, bytes key, bytes value, bint tomb):
    """The hash of one entry in a digest (a tombstone's value is ignored)."""
    return _entry_hash(kind, <const uint8_t *>key, len(key), <const uint8_t *>value, len(value), tomb)


def same_content(bytes value_a, bytes value_b):
    """Whether two versions of a key hold the same (None: a tombstone), stamps aside:
    two replicas that hold it need nothing from each other."""
    cdef uint8_t fa, fb
    cdef size_t na, nb
    if value_a is None or value_b is None:
        return value_a is None and value_b is None
    na = _content(<const uint8_t *>value_a, len(value_a), &fa)
    nb = _content(<const uint8_t *>value_b, len(value_b), &fb)
    return fa == fb and na == nb and (<bytes>value_a)[1:1 + na] == (<bytes>value_b)[1:1 + nb]


def newer(uint64_t stamp_a, bint tomb_a, bytes value_a, uint64_t stamp_b, bint tomb_b, bytes value_b):
    """> 0 when version a of a key wins over version b, < 0 when b wins, 0 when they are
    the same: the one rule by which replicas resolve a key (value None: a tombstone)."""
    cdef const uint8_t *va = <const uint8_t *>value_a if value_a is not None else NULL
    cdef const uint8_t *vb = <const uint8_t *>value_b if value_b is not None else NULL
    return _entry_order(stamp_a, tomb_a, va, len(value_a) if va != NULL else 0,
                        stamp_b, tomb_b, vb, len(value_b) if vb != NULL else 0)


def value_stamp(bytes value):
    """The stamp of a stored record's value (0: written before stamps)."""
    return _value_stamp(<const uint8_t *>value, len(value))


# ===========================================================================
# A walk of a range: records and tombstones merged in full key order
# ===========================================================================

cdef struct Side:
    MDB_cursor *cur
    bint ok
    MDB_val key
    MDB_val val


cdef struct Walk:
    MDB_txn *txn
    const MDB_dbi *dbis
    const MDB_dbi *tombs        # NULL: no tombstones
    int kinds
    int kind
    Side rec
    Side tomb
    const uint8_t *lo
    size_t lo_n
    const uint8_t *hi           # NULL: to the end
    size_t hi_n
    uint64_t cutoff
    int rc
    # the current entry
    MDB_val key
    MDB_val val
    bint is_tomb
    uint64_t stamp


cdef inline int _full_cmp(int kind, const uint8_t *key, size_t key_n, const uint8_t *full,
                          size_t full_n) noexcept nogil:
    """Compare the full key (kind, key) with ``full``; any key is after the empty one."""
    if full_n == 0:
        return 1
    if kind != full[0]:
        return 1 if kind > full[0] else -1
    return _text_cmp(key, key_n, full + 1, full_n - 1)


cdef inline void _side_settle(Walk *w, Side *s, int rc) noexcept nogil:
    if rc == MDB_SUCCESS:
        s.ok = True
    else:
        s.ok = False
        if rc != MDB_NOTFOUND and w.rc == 0:
            w.rc = rc


cdef void _side_start(Walk *w, Side *s, MDB_dbi dbi) noexcept nogil:
    cdef int rc
    if s.cur != NULL:
        mdb_cursor_close(s.cur)
        s.cur = NULL
    rc = mdb_cursor_open(w.txn, dbi, &s.cur)
    if rc != MDB_SUCCESS:
        s.cur = NULL
        _side_settle(w, s, rc)
        return
    if w.lo_n > 1 and w.kind == w.lo[0]:
        s.key.mv_data = <void *>(w.lo + 1)
        s.key.mv_size = w.lo_n - 1
        rc = mdb_cursor_get(s.cur, &s.key, &s.val, MDB_SET_RANGE)
    else:
        rc = mdb_cursor_get(s.cur, &s.key, &s.val, MDB_FIRST)
    _side_settle(w, s, rc)


cdef void _walk_kind(Walk *w) noexcept nogil:
    _side_start(w, &w.rec, w.dbis[w.kind])
    if w.tombs != NULL:
        _side_start(w, &w.tomb, w.tombs[w.kind])
    else:
        w.tomb.ok = False


cdef void _walk_open(Walk *w, MDB_txn *txn, const MDB_dbi *dbis, const MDB_dbi *tombs, int kinds,
                     const uint8_t *lo, size_t lo_n, const uint8_t *hi, size_t hi_n,
                     uint64_t cutoff) noexcept nogil:
    w.txn = txn
    w.dbis = dbis
    w.tombs = tombs
    w.kinds = kinds
    w.lo = lo
    w.lo_n = lo_n
    w.hi = hi
    w.hi_n = hi_n
    w.cutoff = cutoff
    w.rc = 0
    w.rec.cur = NULL
    w.tomb.cur = NULL
    w.kind = lo[0] if lo_n else 0
    if w.kind < w.kinds:
        _walk_kind(w)


cdef void _walk_close(Walk *w) noexcept nogil:
    if w.rec.cur != NULL:
        mdb_cursor_close(w.rec.cur)
        w.rec.cur = NULL
    if w.tomb.cur != NULL:
        mdb_cursor_close(w.tomb.cur)
        w.tomb.cur = NULL


cdef inline uint64_t _tomb_stamp(const MDB_val *v) noexcept nogil:
    return _get_stamp(<const uint8_t *>v.mv_data) if v.mv_size == STAMP_SIZE else 0


cdef bint _walk_next(Walk *w) noexcept nogil:
    """Move to the next entry of the range (w.key, w.val, w.is_tomb, w.stamp); False at its end."""
    cdef Side *s
    cdef int c
    while w.rc == 0 and w.kind < w.kinds:
        while w.tomb.ok and _tomb_stamp(&w.tomb.val) < w.cutoff:
            _side_settle(w, &w.tomb, mdb_cursor_get(w.tomb.cur, &w.tomb.key, &w.tomb.val, MDB_NEXT))
        if not w.rec.ok and not w.tomb.ok:
            w.kind += 1
            if w.kind < w.kinds:
                _walk_kind(w)
            continue
        if w.rec.ok and w.tomb.ok:
            c = _text_cmp(<const uint8_t *>w.rec.key.mv_data, w.rec.key.mv_size,
                          <const uint8_t *>w.tomb.key.mv_data, w.tomb.key.mv_size)
            if c == 0:  # never written so (a put drops the tombstone): the record stands
                _side_settle(w, &w.tomb, mdb_cursor_get(w.tomb.cur, &w.tomb.key, &w.tomb.val, MDB_NEXT))
            s = &w.rec if c <= 0 else &w.tomb
        else:
            s = &w.rec if w.rec.ok else &w.tomb
        if w.hi != NULL and _full_cmp(w.kind, <const uint8_t *>s.key.mv_data, s.key.mv_size,
                                      w.hi, w.hi_n) >= 0:
            return False
        w.key = s.key
        w.val = s.val
        w.is_tomb = s == &w.tomb
        w.stamp = _tomb_stamp(&s.val) if w.is_tomb else \
            _value_stamp(<const uint8_t *>s.val.mv_data, s.val.mv_size)
        _side_settle(w, s, mdb_cursor_get(s.cur, &s.key, &s.val, MDB_NEXT))
        return True
    return False


cdef inline uint64_t _walk_hash(const Walk *w) noexcept nogil:
    """The hash of the walk's current entry."""
    return _entry_hash(w.kind, <const uint8_t *>w.key.mv_data, w.key.mv_size, <const uint8_t *>w.val.mv_data,
                       w.val.mv_size, w.is_tomb)


cdef bytes _full_key(int kind, const MDB_val *key):
    cdef bytes out = bytes([kind])
    return out + (<const char *>key.mv_data)[:key.mv_size]


cdef const uint8_t *_bound(object b, size_t *n, str name) except? NULL:
    """A full key argument (bytes); None gives NULL (no bound)."""
    if b is None:
        n[0] = 0
        return NULL
    if not isinstance(b, bytes):
        raise caller_error(TypeError(f"{name} must be bytes or None, not {type(b).__name__}"))
    if len(b) > 1 + MAX_KEY:
        raise BadRequest(f"{name} is {len(b)} bytes long, the limit is {1 + MAX_KEY}")
    n[0] = len(b)
    return <const uint8_t *>(<bytes>b)


cdef uint64_t _cutoff_arg(object cutoff) except? 0:
    if type(cutoff) is not int or cutoff < 0 or cutoff > MAX_STAMP:
        raise caller_error(TypeError(f"cutoff must be an int in [0, 2**64), not {cutoff!r}"))
    return cutoff


# ===========================================================================
# Stamps: the tombstones and the clock of one volume
# ===========================================================================

@cython.final
cdef class Stamps:
    """The stamps, tombstones and range digests of one volume's index."""

    def __init__(self):
        raise TypeError("Stamps are made by the indexes")

    @property
    def enabled(self):
        """False for a read-only volume written before stamps existed (no tombstones)."""
        return self.clock != 0

    cdef Py_ssize_t apply(self, Batch batch) except -1:
        return apply_batch(self.env, self.dbis, batch, self.meta2, self.tombs if self.clock else NULL,
                           self.clock)

    cdef list apply_group(self, list batches, bint sync_meta=True):
        return apply_batches(self.env, self.dbis, batches, self.meta2,
                             self.tombs if self.clock else NULL, self.clock, sync_meta)

    def last_stamp(self):
        """The volume's last write stamp (0: none yet)."""
        return self._clock_value(LAST_KEY) or 0

    def tombstone_floor(self):
        """A stamp no tombstone of the volume is older than, kept by purges (None: unknown,
        the next purge walks the tombstones)."""
        return self._clock_value(FLOOR_KEY)

    cdef object _clock_value(self, const char *name):
        cdef MDB_txn *txn
        cdef uint64_t value
        cdef bint found
        if not self.clock:
            return None
        self.env.begin_raw(&txn, False)
        try:
            check(_clock_get(txn, self.clock, name, &value, &found), b"mdb_get")
        finally:
            self.env.end_raw(txn, False)
        return value if found else None

    def tombstone_count(self):
        """How many tombstones the volume keeps (purged or not yet)."""
        cdef int i
        if not self.clock:
            return 0
        return sum(self.env.stat(name)["entries"] for name in self._tomb_names)

    # -- digests ----------------------------------------------------------------------

    def digest(self, bounds, cutoff=0, Transaction txn=None):
        """The digests of the consecutive ranges ``[bounds[i], bounds[i + 1])``:
        a list of ``(count, hash)``, one per range. ``bounds`` are full keys in
        increasing order, the last one None for the end of the key space;
        tombstones with a stamp below ``cutoff`` are left out."""
        cdef uint64_t cut = _cutoff_arg(cutoff)
        cdef list keys = list(bounds)
        cdef Py_ssize_t nb = len(keys), i, j
        cdef size_t *lens
        cdef const uint8_t **ptrs
        cdef uint64_t *sums
        cdef Py_ssize_t *counts
        cdef Walk w
        cdef MDB_txn *t
        cdef const MDB_dbi *tombs = self.tombs if self.clock else NULL
        if nb < 2:
            raise BadRequest("a digest needs at least two bounds")
        lens = <size_t *>malloc(nb * sizeof(size_t))
        ptrs = <const uint8_t **>malloc(nb * sizeof(uint8_t *))
        sums = <uint64_t *>malloc(nb * sizeof(uint64_t))
        counts = <Py_ssize_t *>malloc(nb * sizeof(Py_ssize_t))
        try:
            if lens == NULL or ptrs == NULL or sums == NULL or counts == NULL:
                raise MemoryError()
            for i in range(nb):
                if keys[i] is None and i < nb - 1:
                    raise BadRequest("only the last bound may be None (the end)")
                ptrs[i] = _bound(keys[i], &lens[i], "bound")
                if i and ptrs[i] != NULL and _text_cmp(ptrs[i - 1], lens[i - 1], ptrs[i], lens[i]) > 0:
                    raise BadRequest("bounds must be in increasing order")
                sums[i] = 0
                counts[i] = 0
            self._begin(&t, txn)
            try:
                _walk_open(&w, t, self.dbis, tombs, self.kinds, ptrs[0], lens[0], ptrs[nb - 1], lens[nb - 1], cut)
                with nogil:
                    j = 0
                    while _walk_next(&w):
                        while j + 2 < nb and _full_cmp(w.kind, <const uint8_t *>w.key.mv_data,
                                                       w.key.mv_size, ptrs[j + 1], lens[j + 1]) >= 0:
                            j += 1
                        counts[j] += 1
                        sums[j] += _walk_hash(&w)
                    _walk_close(&w)
                check(w.rc, b"mdb_cursor_get")
            finally:
                self._end(t, txn)
            return [(counts[i], sums[i]) for i in range(nb - 1)]
        finally:
            free(lens)
            free(ptrs)
            free(sums)
            free(counts)

    def split(self, lo, hi, int parts, cutoff=0, Transaction txn=None):
        """Split ``[lo, hi)`` into at most ``parts`` ranges of about as many entries of
        this replica: a list of ``(start, count, hash)``, the first start ``lo``, each
        range ending where the next starts (the last at ``hi``)."""
        cdef uint64_t cut = _cutoff_arg(cutoff)
        cdef size_t lo_n, hi_n
        cdef const uint8_t *lo_p = _bound(lo, &lo_n, "lo")
        cdef const uint8_t *hi_p = _bound(hi, &hi_n, "hi")
        cdef Py_ssize_t n = 0, step, i, j
        cdef Walk w
        cdef MDB_txn *t
        cdef const MDB_dbi *tombs = self.tombs if self.clock else NULL
        if lo is None:
            lo_p = <const uint8_t *>b""
        if parts < 1 or parts > 4096:
            raise BadRequest(f"parts must be in [1, 4096], not {parts}")
        cdef uint64_t *sums = <uint64_t *>malloc(parts * sizeof(uint64_t))
        cdef Py_ssize_t *counts = <Py_ssize_t *>malloc(parts * sizeof(Py_ssize_t))
        cdef MDB_val *starts = <MDB_val *>malloc(parts * sizeof(MDB_val))
        cdef int *kinds = <int *>malloc(parts * sizeof(int))
        try:
            if sums == NULL or counts == NULL or starts == NULL or kinds == NULL:
                raise MemoryError()
            self._begin(&t, txn)
            try:
                with nogil:
                    _walk_open(&w, t, self.dbis, tombs, self.kinds, lo_p, lo_n, hi_p, hi_n, cut)
                    while _walk_next(&w):
                        n += 1
                    _walk_close(&w)
                    step = (n + parts - 1) // parts if n else 1
                    j = -1
                    i = 0
                    if w.rc == 0:
                        _walk_open(&w, t, self.dbis, tombs, self.kinds, lo_p, lo_n, hi_p, hi_n, cut)
                        while _walk_next(&w):
                            if i % step == 0 and j + 1 < parts:
                                j += 1
                                counts[j] = 0
                                sums[j] = 0
                                starts[j] = w.key
                                kinds[j] = w.kind
                            i += 1
                            counts[j] += 1
                            sums[j] += _walk_hash(&w)
                        _walk_close(&w)
                check(w.rc, b"mdb_cursor_get")
                if j < 0:
                    return [(lo if lo is not None else b"", 0, 0)]
                out = [(_full_key(kinds[i], &starts[i]), counts[i], sums[i]) for i in range(j + 1)]
            finally:
                self._end(t, txn)
            out[0] = (lo if lo is not None else b"", out[0][1], out[0][2])
            return out
        finally:
            free(sums)
            free(counts)
            free(starts)
            free(kinds)

    def entries(self, lo, hi, cutoff=0, Py_ssize_t limit=100000, Transaction txn=None):
        """The entries of ``[lo, hi)``: ``(entries, next)``, each entry ``(full key, stamp,
        value)`` with the value None for a tombstone; ``next`` is the full key the
        listing resumes at when ``limit`` stopped it, else None."""
        cdef uint64_t cut = _cutoff_arg(cutoff)
        cdef size_t lo_n, hi_n
        cdef const uint8_t *lo_p = _bound(lo, &lo_n, "lo")
        cdef const uint8_t *hi_p = _bound(hi, &hi_n, "hi")
        cdef Walk w
        cdef MDB_txn *t
        cdef const MDB_dbi *tombs = self.tombs if self.clock else NULL
        cdef list out = []
        if lo is None:
            lo_p = <const uint8_t *>b""
        if limit < 1:
            raise BadRequest(f"limit must be positive, not {limit}")
        self._begin(&t, txn)
        try:
            _walk_open(&w, t, self.dbis, tombs, self.kinds, lo_p, lo_n, hi_p, hi_n, cut)
            try:
                while _walk_next(&w):
                    if len(out) == limit:
                        return out, _full_key(w.kind, &w.key)
                    out.append((_full_key(w.kind, &w.key), w.stamp, None if w.is_tomb else
                                (<const char *>w.val.mv_data)[:w.val.mv_size]))
            finally:
                _walk_close(&w)
            check(w.rc, b"mdb_cursor_get")
        finally:
            self._end(t, txn)
        return out, None

    cdef int _begin(self, MDB_txn **t, Transaction txn) except -1:
        if txn is None:
            self.env.begin_raw(t, False)
        else:
            if txn.env is not self.env:
                raise caller_error(ValueError("the transaction is not one of this volume"))
            t[0] = txn._txn
        return 0

    cdef int _end(self, MDB_txn *t, Transaction txn) except -1:
        if txn is None:
            self.env.end_raw(t, False)
        return 0

    # -- writes -----------------------------------------------------------------------

    def apply_entries(self, entries, max_clock_skew=None):
        """Apply entries of another replica (``(full key, stamp, value)``, value None for a
        tombstone, as :meth:`entries` lists them) in one transaction: each one that wins
        over this replica's version of its key (:func:`newer`) replaces it. The clock
        moves past the newest stamp received. Returns how many were applied.

        Entries stamped more than ``max_clock_skew`` seconds ahead of this host's wall
        clock are refused (None: no bound but 2**63), so that the clock never moves
        that far ahead. Refused entries (bad, or too far ahead) raise RefusedEntries,
        which lists every one of them, and nothing is written."""
        cdef list items
        cdef uint64_t top = 0
        if not self.clock:
            raise BadRequest("this volume is read-only")
        items = _checked(entries, self.kinds, self.meta2, max_clock_skew)
        if not items:
            return 0
        for item in items:
            if item[1] > top:
                top = item[1]
        return self.env.write(_apply_into, self, items, top)

    def purge(self, cutoff):
        """Remove the tombstones whose stamp is below ``cutoff``, in one transaction;
        returns how many. When the tombstone floor says none is that old, it costs one
        read (no write transaction, no walk)."""
        cdef uint64_t cut = _cutoff_arg(cutoff)
        if not self.clock or not cut or not self.tombstone_count():
            return 0
        floor = self.tombstone_floor()
        if floor is not None and floor >= cut:
            return 0
        return self.env.write(_purge_into, self, cut)

    def clear(self, bint records=False):
        """Remove every tombstone and, with ``records``, every record, in one transaction
        (a replica cleared to be copied again); the clock stays. Returns how many
        records were removed."""
        if not self.clock:
            raise BadRequest("this volume is read-only")
        return self.env.write(_drop_into, self, records)


def check_entries(entries, bint meta2, max_clock_skew=None):
    """Check entries as :meth:`Stamps.apply_entries` does, without a volume: RefusedEntries
    for bad ones, TypeError for a value of the wrong type."""
    _checked(entries, 1 if meta2 else 2, meta2, max_clock_skew)


cdef list _checked(object entries, int kinds, bint meta2, object max_clock_skew):
    """The entries as tuples, each checked; RefusedEntries lists all the refused ones.
    The one rule of what a replica accepts, the bound on stamps ahead of its clock included."""
    cdef list items = [], refused = []
    cdef Py_ssize_t i
    cdef uint64_t now_ms = 0, limit = MAX_RECEIVED_STAMP
    if not isinstance(entries, (list, tuple)):
        raise caller_error(TypeError(f"entries must be a list, not {type(entries).__name__}"))
    if max_clock_skew is not None:
        if not isinstance(max_clock_skew, (int, float)) or not 0 <= max_clock_skew < 1e9:
            raise caller_error(TypeError(f"max_clock_skew must be seconds in [0, 1e9), not {max_clock_skew!r}"))
        now_ms = _wall_ms()
        limit = min(limit, ((now_ms + <uint64_t>(max_clock_skew * 1000)) << STAMP_COUNTER_BITS)
                    | ((1 << STAMP_COUNTER_BITS) - 1))
    for i, entry in enumerate(entries):
        item = _check_entry(i, entry, kinds, meta2)
        if isinstance(item, str):
            refused.append((i, entry[0] if isinstance(entry[0], bytes) else b"", item))
        elif item[1] > limit:
            ahead = ((<uint64_t>item[1] >> STAMP_COUNTER_BITS) - <double>now_ms) / 1000
            refused.append((i, item[0], f"the stamp {item[1]} is {ahead:.3f} s ahead of this server's clock "
                                        f"(at most {max_clock_skew} s: the maximum clock skew)"))
        else:
            items.append(item)
    if refused:
        raise RefusedEntries(refused)
    return items


cdef object _check_entry(Py_ssize_t i, object entry, int kinds, bint meta2):
    """The entry as a tuple, or why it is refused (a str)."""
    cdef ChunkValue cv
    cdef Meta2Value mv
    cdef const uint8_t *p
    cdef size_t n
    if not isinstance(entry, (list, tuple)) or len(entry) != 3:
        raise caller_error(TypeError(f"entry {i} must be (key, stamp, value)"))
    key, stamp, value = entry
    if not isinstance(key, bytes) or len(key) < 2 or len(key) > 1 + MAX_KEY:
        return f"the key must be 2 to {1 + MAX_KEY} bytes"
    if key[0] >= kinds:
        return f"unknown kind of key {key[0]}"
    if not meta2 and key[0] == 0 and len(key) != 1 + CANON_KEY:
        return f"a canonical chunk key is {CANON_KEY} bytes"
    if type(stamp) is not int or stamp < 0 or stamp > MAX_RECEIVED_STAMP:
        return "the stamp must be an int in [0, 2**63)"
    if value is None:
        if stamp == 0:
            return "a tombstone's stamp is at least 1"
        return (key, stamp, None)
    if not isinstance(value, bytes):
        raise caller_error(TypeError(f"entry {i}: the value must be bytes or None"))
    p = <const uint8_t *>(<bytes>value)
    n = len(value)
    if _value_stamp(p, n) != <uint64_t>stamp or n == 0 or (p[0] & V_STAMPED != 0) != (stamp != 0):
        return f"the value does not carry the stamp {stamp}"
    if stamp:  # else a record written before stamps
        n -= STAMP_SIZE
    if not (_parse_meta2_value(p, n, &mv) if meta2 else _parse_chunk_value(p, n, &cv)):
        return f"the value is not a {'meta2' if meta2 else 'chunk'} record"
    return (key, stamp, value)


cdef struct Incoming:
    const uint8_t *key
    size_t key_n
    uint64_t stamp
    const uint8_t *val      # NULL: a tombstone
    size_t val_n


cdef int _clock_get(MDB_txn *txn, MDB_dbi clock, const char *name, uint64_t *value, bint *found) noexcept nogil:
    """A stamp of the ``clock`` database (``found`` False when absent); an LMDB code."""
    cdef MDB_val k, v
    k.mv_data = <void *>name
    k.mv_size = strlen(name)
    cdef int rc = mdb_get(txn, clock, &k, &v)
    found[0] = rc == MDB_SUCCESS and v.mv_size == STAMP_SIZE
    if found[0]:
        value[0] = _get_stamp(<const uint8_t *>v.mv_data)
    return MDB_SUCCESS if rc == MDB_NOTFOUND else rc


cdef int _clock_put(MDB_txn *txn, MDB_dbi clock, const char *name, uint64_t value) noexcept nogil:
    cdef MDB_val k, v
    cdef uint8_t buf[STAMP_SIZE]
    _put_stamp(buf, value)
    k.mv_data = <void *>name
    k.mv_size = strlen(name)
    v.mv_data = buf
    v.mv_size = STAMP_SIZE
    return mdb_put(txn, clock, &k, &v, 0)


cdef int _apply_one(MDB_txn *txn, Stamps st, Incoming *e, Py_ssize_t *applied) noexcept nogil:
    cdef MDB_val k, v, sv
    cdef int kind = e.key[0], rc, order
    cdef uint8_t buf[STAMP_SIZE]
    cdef bint local_tomb = False
    k.mv_data = <void *>(e.key + 1)
    k.mv_size = e.key_n - 1
    rc = mdb_get(txn, st.dbis[kind], &k, &v)
    if rc == MDB_NOTFOUND:
        rc = mdb_get(txn, st.tombs[kind], &k, &v)
        local_tomb = True
    if rc == MDB_SUCCESS:
        order = _entry_order(e.stamp, e.val == NULL, e.val, e.val_n,
                             _tomb_stamp(&v) if local_tomb else _value_stamp(<const uint8_t *>v.mv_data, v.mv_size),
                             local_tomb, <const uint8_t *>v.mv_data, v.mv_size)
        if order <= 0:
            return MDB_SUCCESS
    elif rc != MDB_NOTFOUND:
        return rc
    if e.val == NULL:
        rc = mdb_del(txn, st.dbis[kind], &k, NULL)
        if rc == MDB_SUCCESS or rc == MDB_NOTFOUND:
            _put_stamp(buf, e.stamp)
            sv.mv_data = buf
            sv.mv_size = STAMP_SIZE
            rc = mdb_put(txn, st.tombs[kind], &k, &sv, 0)
    else:
        v.mv_data = <void *>e.val
        v.mv_size = e.val_n
        rc = mdb_put(txn, st.dbis[kind], &k, &v, 0)
        if rc == MDB_SUCCESS:
            rc = mdb_del(txn, st.tombs[kind], &k, NULL)
            if rc == MDB_NOTFOUND:
                rc = MDB_SUCCESS
    if rc == MDB_SUCCESS:
        applied[0] += 1
    return rc


def _apply_into(Transaction txn, Stamps st, list items, uint64_t top):
    """Environment.write's function: Stamps.apply_entries in ``txn``."""
    cdef Py_ssize_t n = len(items), i, applied = 0
    cdef Incoming *es = <Incoming *>malloc(n * sizeof(Incoming))
    cdef int rc = MDB_SUCCESS
    cdef uint64_t stamp, floor, oldest = MAX_STAMP
    cdef bint found
    if es == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            key, s, value = items[i]
            es[i].key = <const uint8_t *>(<bytes>key)
            es[i].key_n = len(key)
            es[i].stamp = s
            es[i].val = NULL
            es[i].val_n = 0
            if value is not None:
                es[i].val = <const uint8_t *>(<bytes>value)
                es[i].val_n = len(value)
            elif s < oldest:
                oldest = s
        with nogil:
            for i in range(n):
                rc = _apply_one(txn._txn, st, &es[i], &applied)
                if rc != MDB_SUCCESS:
                    break
            if rc == MDB_SUCCESS:
                rc = clock_advance(txn._txn, st.clock, top, &stamp)
            if rc == MDB_SUCCESS:  # a received tombstone may be older than the floor
                rc = _clock_get(txn._txn, st.clock, FLOOR_KEY, &floor, &found)
                if rc == MDB_SUCCESS and found and oldest < floor:
                    rc = _clock_put(txn._txn, st.clock, FLOOR_KEY, oldest)
    finally:
        free(es)
    txn.fail(rc, b"apply")
    return applied


def _purge_into(Transaction txn, Stamps st, uint64_t cutoff):
    """Environment.write's function: Stamps.purge in ``txn``. The tombstone floor becomes
    the oldest stamp kept, or the clock's next stamp when that is older: a delete made
    later is stamped after the clock's last stamp."""
    cdef Py_ssize_t removed = 0
    cdef int rc = MDB_SUCCESS, kind
    cdef MDB_cursor *cur
    cdef MDB_val k, v
    cdef uint64_t oldest = MAX_STAMP, last = 0, stamp
    cdef bint found
    with nogil:
        for kind in range(st.kinds):
            rc = mdb_cursor_open(txn._txn, st.tombs[kind], &cur)
            if rc != MDB_SUCCESS:
                break
            rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)
            while rc == MDB_SUCCESS:
                stamp = _tomb_stamp(&v)
                if stamp < cutoff:
                    rc = mdb_cursor_del(cur, 0)
                    if rc != MDB_SUCCESS:
                        break
                    removed += 1
                elif stamp < oldest:
                    oldest = stamp
                # After a delete the cursor sits on the next entry, and MDB_NEXT returns it.
                rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)
            mdb_cursor_close(cur)
            if rc == MDB_NOTFOUND:
                rc = MDB_SUCCESS
            if rc != MDB_SUCCESS:
                break
        if rc == MDB_SUCCESS:
            rc = _clock_get(txn._txn, st.clock, LAST_KEY, &last, &found)
        if rc == MDB_SUCCESS:
            rc = _clock_put(txn._txn, st.clock, FLOOR_KEY, min(oldest, last + 1))
    txn.fail(rc, b"purge")
    return removed


def _drop_into(Transaction txn, Stamps st, bint records):
    """Environment.write's function: Stamps.clear in ``txn``."""
    cdef int rc = MDB_SUCCESS, kind
    cdef Py_ssize_t removed = 0
    cdef MDB_stat stat
    for kind in range(st.kinds):
        if records:
            rc = mdb_stat(txn._txn, st.dbis[kind], &stat)
            if rc == MDB_SUCCESS:
                removed += <Py_ssize_t>stat.ms_entries
                rc = mdb_drop(txn._txn, st.dbis[kind], 0)
        if rc == MDB_SUCCESS:
            rc = mdb_drop(txn._txn, st.tombs[kind], 0)
        if rc != MDB_SUCCESS:
            break
    txn.fail(rc, b"mdb_drop")
    return removed


cdef Stamps open_stamps(Environment env, const MDB_dbi *dbis, tuple tomb_names, str clock_name,
                        bint meta2):
    """The stamps of an index: its tombstone and clock databases opened, created when the
    environment is writable. A read-only environment written before stamps gets none
    (``enabled`` False): it lists as it is and has no tombstones."""
    cdef Stamps st = Stamps.__new__(Stamps)
    cdef int i
    st.env = env
    st.kinds = len(tomb_names)
    st.meta2 = meta2
    st._tomb_names = tomb_names
    st.clock = 0
    for i in range(st.kinds):
        st.dbis[i] = dbis[i]
    try:
        for i in range(st.kinds):
            st.tombs[i] = env.open_db(tomb_names[i])
        st.clock = env.open_db(clock_name)
    except LmdbFileNotFoundError:
        if not env.readonly:
            raise
        st.clock = 0
    return st
