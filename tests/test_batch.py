"""Batch writes: all or nothing, last duplicate wins, numpy input, deletes."""

from __future__ import annotations

import numpy as np
import pytest

from rdirdb import _rdir
from rdirdb.errors import BadRequest

CID = "A" * 64


def rec(i, cid=CID, mtime=10):
    return (cid, "C" * 32, "%064X" % i, mtime, f"obj-{i}", 1)


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (("a|b", "c", "k", 1, "p", 1), BadRequest, "record 3: container_id contains '|'"),
        (("c", "c", "k" * 600, 1, "p", 1), BadRequest, "record 3: chunk_id is 600 bytes"),
        (("c", "c", "k", "1", "p", 1), TypeError, "record 3: mtime must be an int"),
        (("c", "c", "k", 1, "p"), BadRequest, "record 3: expected"),
        ({"container_id": "c", "chunk_id": "k", "mtime": 1, "path": "p", "version": 1},
         BadRequest, r"record 3: missing field \[content_id\]"),
        ("not a record", TypeError, "record 3: must be a tuple or a dict"),
        (("c", "c", "k", 1, "p", 2**64), BadRequest, "record 3: version is out of the 64-bit range"),
    ],
)
def test_one_bad_record_writes_nothing(chunks, bad, error, message):
    chunks.put_batch([rec(100)])
    batch = [rec(0), rec(1), rec(2), bad, rec(4)]
    with pytest.raises(error, match=message):
        chunks.put_batch(batch)
    assert chunks.count() == 1
    assert chunks.fetch()[0] == [(CID, "C" * 32, "%064X" % 100, 10, "obj-100", 1)]


def test_last_duplicate_wins(chunks):
    n = chunks.put_batch([rec(1, mtime=1), rec(2), rec(1, mtime=3), rec(1, mtime=2)])
    assert n == 2  # unique keys written
    assert chunks.get(CID, "%064X" % 1)[3] == 2


def test_push_overwrites_whole_value(chunks):
    chunks.put_batch([("c", "content-a", "k", 5, "path-a", 1)])
    chunks.put_batch([{"container_id": "c", "content_id": "b", "chunk_id": "k", "mtime": 0,
                       "path": "p", "version": 2, "extra": "ignored"}])
    assert chunks.get("c", "k") == ("c", "b", "k", 0, "p", 2)


def test_negative_mtime_reads_back_as_zero(chunks):
    chunks.put_batch([("c", "x", "k", -7, "p", 1)])
    assert chunks.get("c", "k")[3] == 0


def test_delete_batch(chunks):
    chunks.put_batch([rec(i) for i in range(10)])
    keys = [(CID, "%064X" % i) for i in (1, 3, 3, 99)] + [{"container_id": CID, "chunk_id": "%064X" % 5}]
    assert chunks.delete_batch(keys) == 3
    assert chunks.count() == 7
    assert chunks.delete_batch([]) == 0


def test_delete_type_checks_optional_fields(chunks):
    chunks.put_batch([rec(1)])
    with pytest.raises(TypeError, match="mtime must be an int"):
        chunks.delete_batch([{"container_id": CID, "chunk_id": "%064X" % 1, "mtime": "x"}])
    assert chunks.count() == 1


def test_appends_after_existing_keys_and_inserts_before(chunks):
    chunks.put_batch([rec(i) for i in range(100, 200)])
    chunks.put_batch([rec(i) for i in list(range(0, 50)) + list(range(300, 350))])
    listing, _, _ = chunks.fetch(limit=10_000)
    assert [r[2] for r in listing] == ["%064X" % i for i in sorted(set(range(0, 50)) | set(range(100, 200)) | set(range(300, 350)))]


def _array(rows, cid_dtype="S64"):
    dtype = [("container_id", cid_dtype), ("content_id", "S32"), ("chunk_id", "S64"),
             ("mtime", "<i8"), ("path", "S16"), ("version", "<i4")]
    return np.array(rows, dtype=dtype)


def test_numpy_structured_array_input(chunks):
    rows = [("c%d" % (i % 3), "x", "k%03d" % i, i, "p%d" % i, 1) for i in range(30)]
    assert chunks.put_batch(_array(rows)) == 30
    assert chunks.put_batch(_array(rows[:2], cid_dtype="U8")) == 2
    listing, _, _ = chunks.fetch(limit=100)
    assert sorted(listing) == sorted(rows)
    keys = np.array([(b"c0", b"k000"), (b"c1", b"k001")], dtype=[("container_id", "S4"), ("chunk_id", "S8")])
    assert chunks.delete_batch(keys) == 2


def test_numpy_array_errors(chunks):
    with pytest.raises(BadRequest, match=r"no field \[path\]"):
        chunks.put_batch(np.zeros(2, dtype=[("container_id", "S4"), ("chunk_id", "S4"), ("content_id", "S4"),
                                            ("mtime", "i8"), ("version", "i8")]))
    with pytest.raises(TypeError, match=r"field \[mtime\] must be integers"):
        chunks.put_batch(_array([]).astype([("container_id", "S64"), ("content_id", "S32"), ("chunk_id", "S64"),
                                           ("mtime", "f8"), ("path", "S16"), ("version", "<i4")]))
    assert chunks.count() == 0


def test_array_round_trip(chunks):
    rows = [("%064X" % i, "%032X" % i, "%064X" % (i * 3), i, "obj", 2) for i in range(50)]
    chunks.put_batch(rows)
    array, truncated, _ = chunks.fetch_arrays(limit=100)
    assert not truncated
    assert chunks.put_batch(array) == 50
    assert chunks.count() == 50


def test_clear_variants(chunks):
    chunks.put_batch([rec(i, mtime=i) for i in range(10)] + [("c", "x", "long" * 120, 3, "p", 1)])
    assert chunks.clear() == (0, 0, 0)
    assert chunks.clear(before=4) == (6, 0, 0)
    assert chunks.count() == 5
    assert chunks.clear(repair=True) == (0, 5, 0)
    assert [r[3] for r in chunks.fetch()[0]] == [5, 6, 7, 8, 9]
    assert chunks.clear(all=True) == (5, 0, 0)
    assert chunks.count() == 0


def test_repair_rewrites_into_current_encoding(chunks, volume):
    chunks.put_batch([rec(1)])
    canonical, key = _rdir.encode_chunk_key(CID, "%064X" % 1)
    # A value written by an older encoder: content id stored as text, not packed.
    old = bytes([0, 10, 2, 32]) + b"C" * 32 + bytes([5]) + b"obj-1"
    with volume.env.begin(write=True) as txn:
        txn.put(key, old, db="chunk_bin")
    assert chunks.get(CID, "%064X" % 1) == (CID, "C" * 32, "%064X" % 1, 10, "obj-1", 1)
    assert chunks.clear(repair=True) == (0, 1, 0)
    with volume.env.begin() as txn:
        assert txn.get(key, db="chunk_bin") == _rdir.encode_chunk_value("C" * 32, 10, "obj-1", 1)


def test_corrupted_value_counts_as_clear_error(chunks, volume):
    chunks.put_batch([rec(1), rec(2)])
    _, key = _rdir.encode_chunk_key(CID, "%064X" % 1)
    with volume.env.begin(write=True) as txn:
        txn.put(key, b"\x00\xff\xff", db="chunk_bin")
    assert chunks.clear(repair=True) == (0, 1, 1)


def _database_sizes(volume) -> dict[bytes, int]:
    """Entries of every named database of the volume's environment."""
    with volume.env.begin() as txn, txn.cursor() as cur:
        names = [name for name, _ in cur]
    return {name: volume.env.stat(name.decode())["entries"] for name in names}


@pytest.mark.parametrize("service_type", ["rawx", "meta2"])
def test_apply_group_writes_what_apply_writes_one_batch_after_another(tmp_path, service_type):
    """The server's group commit (index.apply_group) leaves a volume as the
    batches' own transactions would, in every database of the volume."""
    from rdirdb.rdir.store import Store

    if service_type == "rawx":
        puts = [[rec(i), rec(i + 1)] for i in range(0, 40, 2)]
        deletes = [[(CID, "%064X" % i)] for i in range(0, 40, 3)]
        encode = _rdir.encode_chunks
    else:
        def url(i):
            return {"container_url": f"ns/acct/c{i}", "container_id": "%064X" % i, "mtime": 10}
        puts = [[url(i), url(i + 1)] for i in range(0, 40, 2)]
        deletes = [[url(i)] for i in range(0, 40, 3)]
        encode = _rdir.encode_meta2
    # interleaved: a delete between two puts of its key, and a put after it; empty batches
    # write nothing (and take no stamp)
    batches = [b for pair in zip(puts, deletes) for b in pair] + puts[:3] + [[]] + puts[3:5] + [[]]
    with Store(tmp_path, sync=False) as store:
        one_by_one = store.volume("one", service_type, create=True)
        grouped = store.volume("group", service_type, create=True)
        counts = [one_by_one.index.apply(encode(b, key_only=b in deletes)) for b in batches]
        assert grouped.index.apply_group([encode(b, key_only=b in deletes) for b in batches]) == counts
        assert _database_sizes(grouped) == _database_sizes(one_by_one)
        assert grouped.index.fetch(limit=1000)[0] == one_by_one.index.fetch(limit=1000)[0]
        with pytest.raises(TypeError, match="cannot be applied"):
            grouped.index.apply_group([_rdir.encode_chunks([rec(1)]) if service_type == "meta2"
                                       else _rdir.encode_meta2([{"container_url": "a/b/c", "container_id": CID}])])
