"""Scans, paging and counts of the engine against the plain-Python model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rdirdb import _rdir
from rdirdb.errors import CorruptedError
from rdirdb.rdir.store import Store
from tests import strategies as S
from tests.legacy import write_legacy_chunks
from tests.scan_model import ChunkModel

incident = st.one_of(st.just(0), st.integers(-3, 45))
limit = st.integers(1, 7)


def _load(tmp_path_factory, records, deletes=()):
    store = Store(tmp_path_factory.mktemp("scan"), map_size=1 << 20)
    chunks = store.volume("v", create=True).chunks
    model = ChunkModel()
    chunks.put_batch(records)
    for rec in records:
        model.put(*rec)
    chunks.delete_batch(list(deletes))
    for key in deletes:
        model.delete(*key)
    return store, chunks, model


def _prefixes(records):
    """Prefixes worth asking for: none, whole containers, partial ids, a miss."""
    cids = sorted({r[0] for r in records})
    return st.one_of(
        st.none(),
        st.sampled_from(cids) if cids else st.none(),
        st.sampled_from(cids).map(lambda c: c[: len(c) // 2]) if cids else st.none(),
        st.sampled_from(cids).map(lambda c: c + "|") if cids else st.none(),
        st.sampled_from(["0", "A", "F0", "zz", "L"]),
    )


def _markers(records):
    keys = [f"{r[0]}|{r[2]}" for r in records]
    return st.one_of(
        st.none(),
        st.sampled_from(keys) if keys else st.none(),
        st.sampled_from(keys).map(lambda k: k[:-1]) if keys else st.none(),
        st.sampled_from(keys).map(lambda k: k + "0") if keys else st.none(),
        st.sampled_from(keys).map(lambda k: k + "x") if keys else st.none(),
        S.container_id.map(lambda c: c + "|"),
        st.sampled_from(["0", "A|", "~", "F" * 64 + "|" + "F" * 64]),
    )


@settings(max_examples=80)
@given(st.data(), st.lists(S.record, max_size=40))
def test_fetch_page_matches_model(tmp_path_factory, data, records):
    store, chunks, model = _load(tmp_path_factory, records)
    with store:
        prefix = data.draw(_prefixes(records))
        marker = data.draw(_markers(records))
        lim, inc = data.draw(limit), data.draw(incident)
        assert chunks.fetch(prefix=prefix, marker=marker, limit=lim, incident=inc) == model.fetch(
            prefix, marker, lim, inc
        )
        assert chunks.status(prefix=prefix, marker=marker, limit=lim, incident=inc) == model.status(
            prefix, marker, lim, inc
        )
        # The lazy entries of a page are the eager ones, and its paging is the same.
        entries, truncated, next_marker = chunks.fetch_entries(prefix=prefix, marker=marker, limit=lim, incident=inc)
        assert (list(entries), truncated, next_marker) == chunks.fetch(
            prefix=prefix, marker=marker, limit=lim, incident=inc, entries=True
        )


@settings(max_examples=60)
@given(st.data(), st.lists(S.record, max_size=40))
def test_paging_visits_every_match_once(tmp_path_factory, data, records):
    store, chunks, model = _load(tmp_path_factory, records)
    with store:
        prefix = data.draw(_prefixes(records))
        lim, inc = data.draw(limit), data.draw(incident)
        expected, _, _ = model.fetch(prefix, None, 10**6, inc)
        seen, marker, requests = [], None, 0
        while True:
            page, truncated, marker = chunks.fetch(prefix=prefix, marker=marker, limit=lim, incident=inc)
            requests += 1
            seen += page
            if not truncated:
                break
        assert seen == expected
        # Exact truncation: ceil(n / limit) requests, and one for an empty result.
        assert requests == max(1, -(-len(expected) // lim))


@given(st.lists(S.record, max_size=30), st.data())
def test_deletes_and_overwrites_match_model(tmp_path_factory, records, data):
    keys = [(r[0], r[2]) for r in records]
    deletes = data.draw(st.lists(st.sampled_from(keys), max_size=10)) if keys else []
    store, chunks, model = _load(tmp_path_factory, records, deletes)
    with store:
        assert chunks.count() == len(model.records)
        assert chunks.fetch(limit=10**4) == model.fetch(limit=10**4)
        for (cid, chunk), (content, mtime, path, version) in model.records.items():
            assert chunks.get(cid, chunk) == (cid, content, chunk, mtime, path, version)


@given(st.lists(S.record, min_size=1, max_size=25))
def test_every_marker_resumes_right_after_its_record(tmp_path_factory, records):
    store, chunks, model = _load(tmp_path_factory, records)
    with store:
        listing, _, _ = model.fetch(limit=10**6)
        for i, rec in enumerate(listing):
            page, truncated, _ = chunks.fetch(marker=f"{rec[0]}|{rec[2]}", limit=1)
            assert page == listing[i + 1 : i + 2]
            assert truncated == (i + 2 < len(listing))


def test_fields_selection(chunks):
    chunks.put_batch([("A" * 64, "C" * 32, "B" * 64, 7, "p", 3)])
    (rec,), _, _ = chunks.fetch(fields=0)
    assert rec == ("A" * 64, None, "B" * 64, None, None, None)


def test_fetch_arrays(chunks):
    chunks.put_batch([("c1", "x", "k1", 5, "path/1", 1), ("c2", "yy", "k22", 9, "p", 2)])
    array, truncated, marker = chunks.fetch_arrays(limit=1)
    assert (truncated, marker) == (True, "c1|k1")
    assert array.tolist() == [(b"c1", b"x", b"k1", 5, b"path/1", 1)]
    array, truncated, _ = chunks.fetch_arrays(marker="c1|k1")
    assert array["chunk_id"].tolist() == [b"k22"] and not truncated


def test_fetch_entries_are_a_copy_made_as_asked(chunks, volume):
    """Entries outlive their read transaction: later writes, even of the same keys,
    do not change a page already fetched; each entry is a fresh object."""
    recs = [("A" * 64, "C" * 32, "%064X" % i, 7 + i, f"p{i}", i) for i in range(5)]
    recs.append(("text-cid", "content", "chunk-\u00e9", 1, "path/\u00e9", -2))
    chunks.put_batch(recs)
    entries, truncated, marker = chunks.fetch_entries(limit=4)
    assert (truncated, marker) == (True, "A" * 64 + "|" + "%064X" % 3)
    assert entries.__length_hint__() == 4
    first = next(entries)
    chunks.put_batch([(cid, "D" * 32, chunk, 99, "q", 0) for cid, _, chunk, *_ in recs])
    chunks.clear(all=True)
    assert first == ("A" * 64, "%064X" % 0, {"content_id": "C" * 32, "mtime": 7, "path": "p0", "version": 0})
    rest = list(entries)
    assert [e[1] for e in rest] == ["%064X" % i for i in (1, 2, 3)]
    assert rest[0][2] is not rest[1][2] and entries.__length_hint__() == 0
    assert list(entries) == []
    chunks.put_batch(recs)
    entries, truncated, marker = chunks.fetch_entries(marker=marker)
    assert (list(entries), truncated, marker) == (
        [("A" * 64, "%064X" % 4, {"content_id": "C" * 32, "mtime": 11, "path": "p4", "version": 4}),
         ("text-cid", "chunk-\u00e9", {"content_id": "content", "mtime": 1, "path": "path/\u00e9", "version": -2})],
        False, None)


def test_fetch_entries_refuses_a_corrupted_value_when_fetched(chunks, volume):
    chunks.put_batch([("A" * 64, "C" * 32, "%064X" % i, 1, "p", 1) for i in range(3)])
    _, key = _rdir.encode_chunk_key("A" * 64, "%064X" % 1)
    with volume.env.begin(write=True) as txn:
        txn.put(key, b"\x00\xff\xff", db="chunk_bin")
    with pytest.raises(CorruptedError):
        chunks.fetch_entries()
    entries, _, _ = chunks.fetch_entries(limit=1)  # the page before it is whole
    assert len(list(entries)) == 1


def test_limit_must_be_positive(chunks):
    with pytest.raises(ValueError, match="limit"):
        chunks.fetch(limit=0)


def test_status_of_empty_volume(chunks):
    assert chunks.status(incident=5) == (0, 0, {}, False, None)


def test_long_prefix_is_rejected(chunks):
    with pytest.raises(ValueError, match="prefix"):
        chunks.fetch(prefix="x" * 479)


# Ids the id rule refuses now, as a store written before it may hold them.
legacy_id = st.one_of(
    st.just(""),
    st.text(st.sampled_from(["x", "\n", "\r", "\t", "\x01", "\x7f", "!", "A", " "]), min_size=1, max_size=4),
)
legacy_record = st.tuples(legacy_id.map(lambda s: s.replace("|", "")), S.content_id, legacy_id, S.mtime,
                          S.path, S.version)


@given(st.lists(st.one_of(legacy_record, S.record.filter(lambda r: len(f"{r[0]}|{r[2]}".encode()) <= 478)),
                max_size=30), limit)
def test_a_store_written_before_the_id_rule_lists_completely(tmp_path_factory, records, lim):
    """Records with empty ids or control characters list, count and delete as before."""
    with Store(tmp_path_factory.mktemp("legacy"), map_size=1 << 20) as store:
        volume = store.volume("v", create=True)
        write_legacy_chunks(volume, records)
        model = ChunkModel()
        for rec in records:
            model.put(*rec)
        expected, _, _ = model.fetch(limit=10**6)
        seen, marker = [], None
        while True:
            page, truncated, marker = volume.chunks.fetch(marker=marker, limit=lim)
            seen += page
            if not truncated:
                break
        assert seen == expected
        assert volume.chunks.status(limit=10**6)[0] == len(expected)
        assert volume.chunks.delete_batch([(cid, chunk) for cid, _, chunk, *_ in records]) == len(expected)
        assert volume.chunks.count() == 0
