"""Write stamps, tombstones, range digests and resolution in the engine, against a
plain-Python model (rdirdb._repair; docs/reliability.md, "Replicas that converge")."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rdirdb._lmdb import Environment
from rdirdb._rdir import CHUNK_DATABASES, encode_chunk_key, encode_chunk_value
from rdirdb._repair import entry_hash, newer, same_content, value_stamp
from rdirdb.errors import BadRequest
from rdirdb.rdir.store import Store, stamp_at, stamp_time

CANON = ["0" * 64, "A" * 64, "F" * 64]
TEXT = ["c1", "c2", "lower" + "a" * 59]
CIDS = CANON + TEXT
CHUNKS = ["0" * 64, "B" * 64, "k1", "k2"]

ops = st.lists(
    st.tuples(st.booleans(), st.sampled_from(CIDS), st.sampled_from(CHUNKS), st.integers(0, 3)),
    max_size=25,
)


def _write(chunks, history):
    for put, cid, chunk, mtime in history:
        if put:
            chunks.put_batch([(cid, "C0", chunk, mtime, "p", 1)])
        else:
            chunks.delete_batch([(cid, chunk)])


def _model_winner(versions):
    """The plain-Python rule: newest stamp, then a tombstone over a record, then greater value bytes."""
    return max(versions, key=lambda e: (e[1], e[2] is None, e[2] or b""))


def _model_digest(entries, bounds):
    out = [[0, 0] for _ in bounds[:-1]]
    for key, stamp, value in entries:
        j = max(i for i in range(len(bounds) - 1) if bounds[i] <= key)
        if bounds[-1] is not None and key >= bounds[-1]:
            continue
        tomb = value is None
        out[j][0] += 1
        out[j][1] = (out[j][1] + entry_hash(key[0], key[1:], value or b"", tomb)) % 2**64
    return [tuple(d) for d in out]


@pytest.fixture
def pair(tmp_path):
    with Store(tmp_path / "a", map_size=1 << 20) as a, Store(tmp_path / "b", map_size=1 << 20) as b:
        yield a.volume("v", create=True), b.volume("v", create=True)


@given(ops, ops, st.lists(st.binary(max_size=70), max_size=4))
@settings(max_examples=40)
def test_digests_resolution_and_listings_follow_the_model(tmp_path_factory, ops_a, ops_b, cuts):
    root = tmp_path_factory.mktemp("s")
    with Store(root / "a", map_size=1 << 20) as sa, Store(root / "b", map_size=1 << 20) as sb:
        a, b = sa.volume("v", create=True), sb.volume("v", create=True)
        _write(a.chunks, ops_a)
        _write(b.chunks, ops_b)
        ea, eb = a.stamps.entries(b"", None)[0], b.stamps.entries(b"", None)[0]
        # The entries are sorted by full key, records and tombstones apart from listings.
        assert [e[0] for e in ea] == sorted({e[0] for e in ea})
        records, _, _ = a.chunks.fetch(limit=1000)
        assert len(records) == a.chunks.count() == sum(e[2] is not None for e in ea)
        bounds = [b""] + sorted(set(cuts) - {b""}) + [None]
        assert a.stamps.digest(bounds) == _model_digest(ea, bounds)
        # A split covers the range, its parts' digests are the digests of its bounds.
        parts = a.stamps.split(b"", None, 3)
        starts = [p[0] for p in parts]
        assert starts == sorted(starts) and sum(p[1] for p in parts) == len(ea)
        assert a.stamps.digest(starts + [None]) == [(p[1], p[2]) for p in parts]
        # Both ways, by the model's rule.
        model: dict[bytes, list] = {}
        for e in ea + eb:
            model.setdefault(e[0], []).append(e)
        expected = [_model_winner(v) for _, v in sorted(model.items())]
        a.stamps.apply_entries(eb)
        b.stamps.apply_entries(ea)
        assert a.stamps.entries(b"", None)[0] == b.stamps.entries(b"", None)[0] == expected
        assert a.stamps.digest([b"", None]) == b.stamps.digest([b"", None])
        assert a.chunks.fetch(limit=1000) == b.chunks.fetch(limit=1000)
        assert a.chunks.status() == b.chunks.status()
        # Applying again changes nothing.
        assert a.stamps.apply_entries(eb) == 0


@given(st.lists(st.tuples(st.integers(1, 5), st.booleans(), st.binary(min_size=1, max_size=3)), min_size=2, max_size=4))
def test_the_rule_is_a_total_order(versions):
    as_entries = [(b"k", s, None if t else v) for s, t, v in versions]
    best = _model_winner(as_entries)
    for e in as_entries:
        c = newer(best[1], best[2] is None, best[2], e[1], e[2] is None, e[2])
        assert c >= 0 and (c == 0) == (best == e or (best[2] is None and e[2] is None and best[1] == e[1]))


def test_writes_are_stamped_in_order_and_deletes_leave_tombstones(pair):
    a, _ = pair
    before = stamp_at(time.time())
    a.chunks.put_batch([("c1", "x", "k1", 1, "p", 1), ("c1", "x", "k2", 1, "p", 1)])
    a.chunks.delete_batch([("c1", "k1"), ("c9", "never-written")])
    entries, _ = a.stamps.entries(b"", None)
    (k1, s1, v1), (k2, s2, v2), (k9, s9, v9) = entries
    assert (k1, v1, v9) == (b"\x01c1|k1", None, None) and v2 is not None
    assert before <= s2 < s1 == s9 == a.stamps.last_stamp()
    assert abs(stamp_time(s1) - time.time()) < 5
    assert value_stamp(v2) == s2
    assert a.chunks.count() == 1 and a.stamps.tombstone_count() == 2
    # A put drops the key's tombstone.
    a.chunks.put_batch([("c1", "x", "k1", 1, "p", 1)])
    assert a.stamps.tombstone_count() == 1 and a.chunks.count() == 2


def test_the_clock_moves_past_what_a_replica_received(pair):
    a, b = pair
    future = stamp_at(time.time() + 3600)
    value = a.chunks.put_batch([("c1", "x", "k1", 1, "p", 1)]) and a.stamps.entries(b"", None)[0][0][2]
    stamped = bytes([value[0]]) + value[1:-8] + future.to_bytes(8, "big")
    assert b.stamps.apply_entries([(b"\x01c1|k1", future, stamped)]) == 1
    assert b.stamps.last_stamp() > future
    b.chunks.delete_batch([("c1", "k1")])  # a delete after the repair wins over what it received
    assert b.stamps.entries(b"", None)[0][0][1] > future


def test_expired_tombstones_are_invisible_then_purged(pair):
    a, _ = pair
    a.chunks.put_batch([("c1", "x", "k1", 1, "p", 1)])
    a.chunks.delete_batch([("c1", "k1")])
    cutoff = a.stamps.last_stamp() + 1
    assert a.stamps.entries(b"", None, cutoff)[0] == [] and a.stamps.digest([b"", None], cutoff) == [(0, 0)]
    assert a.purge_tombstones(3600) == 0  # not an hour old
    assert a.purge_tombstones(3600, now=time.time() + 7200) == 1
    assert a.stamps.tombstone_count() == 0


def test_meta2_volumes_have_stamps_and_tombstones(tmp_path):
    with Store(tmp_path / "a") as sa, Store(tmp_path / "b") as sb:
        a, b = sa.volume("m", "meta2", create=True), sb.volume("m", "meta2", create=True)
        a.meta2.put_batch([{"container_url": "NS/a/c1", "container_id": "AB" * 32, "mtime": 1}])
        b.meta2.put_batch([{"container_url": "NS/a/c1", "container_id": "AB" * 32, "mtime": 1},
                           {"container_url": "NS/a/c2", "container_id": "CD" * 32}])
        a.meta2.delete_batch(["NS/a/c1"])
        b.stamps.apply_entries(a.stamps.entries(b"", None)[0])
        a.stamps.apply_entries(b.stamps.entries(b"", None)[0])
        assert a.meta2.fetch() == b.meta2.fetch() and [r["container_url"] for r in b.meta2.fetch()[0]] == ["NS/a/c2"]
        assert a.meta2.count() == b.meta2.count() == 1


def test_clear_all_drops_tombstones_and_repair_keeps_stamps(pair):
    a, _ = pair
    a.chunks.put_batch([("c1", "x", "k1", 1, "p", 1), ("c1", "x", "k2", 1, "p", 1)])
    a.chunks.delete_batch([("c1", "k2")])
    before = a.stamps.entries(b"", None)[0]
    assert a.chunks.clear(repair=True) == (0, 1, 0)
    assert a.stamps.entries(b"", None)[0] == before
    a.chunks.clear(all=True)
    assert a.stamps.entries(b"", None)[0] == [] and a.stamps.last_stamp() >= before[0][1]


def test_a_store_written_before_stamps_opens_and_lists(tmp_path):
    """Records without a stamp (written by an earlier rdirdb) list and count as before,
    read-only too; they have stamp 0, older than any write, and repair carries them."""
    path = tmp_path / "old" / "rawx" / "v"
    with Environment(str(path), databases=CHUNK_DATABASES) as env, env.begin(write=True) as txn:
        for chunk in ("k1", "k2"):
            txn.put(encode_chunk_key("c1", chunk)[1], encode_chunk_value("x", 1, "p", 1), db="chunk_text")
    with Store(tmp_path / "old", readonly=True) as ro:
        v = ro.volume("v")
        assert not v.stamps.enabled and v.chunks.count() == 2
        assert [e[1] for e in v.stamps.entries(b"", None)[0]] == [0, 0]
    with Store(tmp_path / "old") as rw, Store(tmp_path / "new") as other:
        v = rw.volume("v")
        assert v.stamps.enabled and [r[2] for r in v.chunks.fetch()[0]] == ["k1", "k2"]
        v.chunks.delete_batch([("c1", "k1")])
        fresh = other.volume("v", create=True)
        fresh.stamps.apply_entries(v.stamps.entries(b"", None)[0])
        assert fresh.chunks.fetch() == v.chunks.fetch() and fresh.stamps.tombstone_count() == 1


@pytest.mark.parametrize("entry", [
    (b"\x00short", 5, None),                 # a canonical key is 64 bytes
    (b"\x07c|k", 5, None),                   # no such kind
    (b"\x01c|k", 0, None),                   # a tombstone's stamp is at least 1
    (b"\x01c|k", 5, b"\x80garbage"),         # not a chunk value
    (b"\x01c|k", 5, b"\x00\x01\x02\x01x\x01p"),  # no stamp
    (b"\x01c|k", 0, b"\x80\x01\x02\x01x\x01p" + bytes(8)),  # a stamp that is not the entry's
    ("c|k", 5, None),
    (b"\x01c|k", 5),
])
def test_bad_entries_write_nothing(pair, entry):
    a, _ = pair
    a.chunks.put_batch([("c1", "x", "k1", 1, "p", 1)])
    before = a.env.info()["last_txnid"], a.stamps.entries(b"", None)
    good = (b"\x01c|z", 5, None)
    with pytest.raises((BadRequest, TypeError)):
        a.stamps.apply_entries([good, entry])
    assert (a.env.info()["last_txnid"], a.stamps.entries(b"", None)) == before


def test_bad_bounds(pair):
    a, _ = pair
    with pytest.raises(BadRequest):
        a.stamps.digest([b"b", b"a", None])
    with pytest.raises(BadRequest):
        a.stamps.digest([None, b"a"])
    with pytest.raises(TypeError):
        a.stamps.digest([b"", None], cutoff=-1)
    with pytest.raises(BadRequest):
        a.stamps.split(b"", None, 0)


@given(ops)
@settings(max_examples=20)
def test_replicas_given_the_same_writes_have_the_same_digests(tmp_path_factory, history):
    """Each replica stamps a write with its own clock: the digests leave stamps out."""
    root = tmp_path_factory.mktemp("s")
    with Store(root / "a", map_size=1 << 20) as sa, Store(root / "b", map_size=1 << 20) as sb:
        a, b = sa.volume("v", create=True), sb.volume("v", create=True)
        _write(a.chunks, history)
        time.sleep(0.002)
        _write(b.chunks, history)
        assert a.stamps.digest([b"", None]) == b.stamps.digest([b"", None])
        ea, eb = a.stamps.entries(b"", None)[0], b.stamps.entries(b"", None)[0]
        assert all(same_content(x[2], y[2]) for x, y in zip(ea, eb)) and len(ea) == len(eb)
