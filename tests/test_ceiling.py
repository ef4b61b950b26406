"""The benchmarks' ceilings do the work of the paths they bound (benches/compare.py)."""

from __future__ import annotations

from rdirdb import _ceiling, _rdir, _repair
from rdirdb.rdir.store import Store

CANONICAL = [("%064X" % (i % 3), "C" * 32, "%064X" % (7 * i), 1_700_000_000 + i, f"obj-{i}", 1) for i in range(50)]
TEXT = [("text-cid", "content", f"chunk-\u00e9-{i}", i, "p", -i) for i in range(5)]


def _dump(env, db):
    with env.begin() as txn:
        return list(txn.cursor(db=db))


def test_raw_insert_writes_what_put_batch_writes(tmp_path):
    with Store(tmp_path / "a", sync=False) as a, Store(tmp_path / "b", sync=False) as b:
        a.volume("v", create=True).chunks.put_batch(CANONICAL)
        keys = [_rdir.encode_chunk_key(cid, chunk)[1] for cid, _, chunk, *_ in CANONICAL]
        values = [_rdir.encode_chunk_value(*rec[1:2], *rec[3:]) for rec in CANONICAL]
        packed = _ceiling.pack(keys, values)
        assert len(packed) == len(CANONICAL)
        _ceiling.raw_insert(b.volume("v", create=True).chunks.stamps, packed, batch=7)
        # The same records, each with a write stamp of its own volume's clock.
        assert a.volume("v").chunks.fetch(limit=1000) == b.volume("v").chunks.fetch(limit=1000)
        assert [k for k, _ in _dump(a.volume("v").env, "chunk_bin")] == \
            [k for k, _ in _dump(b.volume("v").env, "chunk_bin")]
        assert all(_repair.value_stamp(v) for _, v in _dump(b.volume("v").env, "chunk_bin"))


def test_raw_entries_are_the_entries_of_a_fetch(tmp_path):
    with Store(tmp_path / "s", sync=False) as store:
        volume = store.volume("v", create=True)
        assert list(_ceiling.raw_entries(volume.env)) == []
        volume.chunks.put_batch(CANONICAL + TEXT)
        entries, truncated, _ = volume.chunks.fetch(limit=1000, entries=True)
        assert not truncated
        # One database after the other, not merged: the same entries, canonical ones first.
        assert list(_ceiling.raw_entries(volume.env)) == (
            [e for e in entries if e[0] != "text-cid"] + [e for e in entries if e[0] == "text-cid"])
        it = _ceiling.raw_entries(volume.env)
        next(it)
        del it  # a read transaction left open is ended with its iterator
        volume.chunks.put_batch(TEXT)
