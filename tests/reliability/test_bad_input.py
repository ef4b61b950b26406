"""Bad input on the Python API: wrong types and sizes raise TypeError or
ValueError (BadRequest is a ValueError) with a message, never crash the
interpreter, and a rejected call writes nothing (the environment's last
transaction id does not move, no volume directory appears).

The gaps this fuzz found (a crash on a huge limit, loose argument types, ...)
are fixed; their tests at the end keep them fixed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rdirdb import _rdir
from rdirdb.rdir.store import Store
from tests import strategies as ids

REJECTED = (TypeError, ValueError)

surrogate_text = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1,
                         max_size=3).flatmap(lambda s: st.sampled_from([s, "a" + s, s + "b"]))
non_text = st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(),
                     st.binary(max_size=8), st.lists(st.integers(), max_size=3),
                     st.tuples(st.text(max_size=3)), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                     max_size=2))
non_int = st.one_of(st.none(), st.booleans(), st.floats(), st.text(max_size=5), st.binary(max_size=5),
                    st.lists(st.integers(), max_size=2), st.complex_numbers())
out_of_int64 = st.one_of(st.integers(2**63, 2**200), st.integers(-(2**200), -(2**63) - 1))


def oversized(limit):
    """Text longer than ``limit`` UTF-8 bytes (ASCII or 2-byte characters)."""
    return st.tuples(st.sampled_from(["x", "é", "/"]), st.integers(1, 3 * limit)).map(
        lambda t: t[0] * (limit // len(t[0].encode()) + t[1]))


def bad_text(limit):
    return st.one_of(non_text, surrogate_text, oversized(limit),
                     st.text(max_size=5).map(lambda s: s + "\x00"))


TEXT_LIMITS = {0: _rdir.MAX_CONTAINER_ID, 1: _rdir.MAX_CONTENT_ID, 2: _rdir.MAX_CHUNK_ID,
               4: _rdir.MAX_PATH}


@st.composite
def bad_record(draw):
    """A record that is invalid for sure: one field replaced, or not a record at all."""
    rec = list(draw(ids.record))
    kind = draw(st.sampled_from(["text", "int", "pipe", "arity", "type", "dict"]))
    if kind == "text":
        i = draw(st.sampled_from(sorted(TEXT_LIMITS)))
        rec[i] = draw(bad_text(TEXT_LIMITS[i]))
    elif kind == "int":
        rec[draw(st.sampled_from([3, 5]))] = draw(st.one_of(non_int, out_of_int64))
    elif kind == "pipe":
        rec[0] = draw(st.text(max_size=10).map(lambda s: s[:30] + "|"))
    elif kind == "arity":
        n = draw(st.sampled_from([0, 1, 2, 5, 7, 9]))
        return tuple((rec * 2)[:n])
    elif kind == "type":
        return draw(st.one_of(st.none(), st.integers(), st.text(max_size=4), st.binary(max_size=4),
                              st.lists(st.text(max_size=3), max_size=6), st.floats()))
    else:
        names = ["container_id", "content_id", "chunk_id", "mtime", "path", "version"]
        record = dict(zip(names, rec))
        if draw(st.booleans()):
            del record[draw(st.sampled_from(names))]
        else:
            name = draw(st.sampled_from(names))
            record[name] = draw(non_int if name in ("mtime", "version") else non_text.filter(
                lambda v: v is not None))
            if name in ("mtime", "version") and record[name] is None:
                del record[name]
        return record
    return tuple(rec)


@st.composite
def bad_key(draw):
    cid, _, chunk, *_ = draw(ids.record)
    kind = draw(st.sampled_from(["cid", "chunk", "arity", "type", "dict"]))
    if kind == "cid":
        return (draw(st.one_of(bad_text(_rdir.MAX_CONTAINER_ID), st.just("a|b"))), chunk)
    if kind == "chunk":
        return (cid, draw(bad_text(_rdir.MAX_CHUNK_ID)))
    if kind == "arity":
        return tuple([cid, chunk, cid][: draw(st.sampled_from([0, 1, 3]))])
    if kind == "type":
        return draw(st.one_of(st.none(), st.integers(), st.text(max_size=4), st.lists(st.text(), max_size=2)))
    key = {"container_id": cid, "chunk_id": chunk}
    key[draw(st.sampled_from(["mtime", "version"]))] = draw(non_int.filter(lambda v: v is not None))
    return key


@st.composite
def batch_with(draw, bad, good=ids.record):
    batch = draw(st.lists(good, max_size=4))
    batch.insert(draw(st.integers(0, len(batch))), draw(bad))
    return batch


not_a_batch = st.one_of(st.none(), st.integers(), st.floats(), st.text(min_size=1, max_size=4),
                        st.binary(min_size=1, max_size=4),
                        st.dictionaries(st.text(min_size=1, max_size=3), st.integers(), min_size=1),
                        st.lists(st.lists(ids.record, min_size=1, max_size=2), min_size=1, max_size=2))


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """One volume holding a few records, shared by the fuzz examples (never changed)."""
    store = Store(tmp_path_factory.mktemp("fuzz"), map_size=1 << 20)
    chunks = store.volume("v", create=True).chunks
    chunks.put_batch([(f"c{i % 3}", "x", f"k{i}", i, "p", 1) for i in range(50)])
    yield store, chunks
    store.close()


def _rejected_without_write(chunks, call):
    before = chunks.env.info()["last_txnid"], chunks.count()
    with pytest.raises(REJECTED) as info:
        call()
    assert str(info.value), "the error has no message"
    assert (chunks.env.info()["last_txnid"], chunks.count()) == before, "a rejected call wrote"


@given(batch=st.one_of(batch_with(bad_record()), not_a_batch))
def test_put_batch_rejects(filled, batch):
    _, chunks = filled
    _rejected_without_write(chunks, lambda: chunks.put_batch(batch))


@given(keys=st.one_of(batch_with(bad_key()), not_a_batch))
def test_delete_batch_rejects(filled, keys):
    _, chunks = filled
    _rejected_without_write(chunks, lambda: chunks.delete_batch(keys))


truthy_junk = st.one_of(st.integers(1, 2**80), st.floats().filter(bool), st.lists(st.integers(), min_size=1),
                        st.dictionaries(st.text(max_size=2), st.integers(), min_size=1), st.just(object()))
bad_scan_args = st.one_of(
    st.fixed_dictionaries({"prefix": st.one_of(truthy_junk, surrogate_text, oversized(_rdir.MAX_PREFIX))}),
    st.fixed_dictionaries({"marker": st.one_of(truthy_junk, surrogate_text)}),
    # Huge limits are the known gaps below (MemoryError, overflow, crash).
    st.fixed_dictionaries({"limit": st.one_of(st.integers(-(2**63), 0), st.none(), st.floats(),
                                              st.text(max_size=3), st.binary(max_size=3))}),
    st.fixed_dictionaries({"incident": st.one_of(st.none(), st.text(max_size=3), st.binary(max_size=3),
                                                 st.lists(st.integers(), max_size=2))}),
    st.fixed_dictionaries({st.sampled_from(["limt", "offset", "path"]): st.integers()}),
)


@given(kwargs=bad_scan_args, which=st.sampled_from(["fetch", "fetch_arrays", "status"]))
def test_scans_reject(filled, kwargs, which):
    _, chunks = filled
    _rejected_without_write(chunks, lambda: getattr(chunks, which)(**kwargs))


@given(limit=st.integers(1, 2**22), incident=st.integers(-(2**63), 2**63 - 1),
       prefix=st.one_of(st.none(), st.text(max_size=20).filter(lambda s: "\x00" not in s)),
       marker=st.one_of(st.none(), st.text(max_size=600)))
def test_scans_accept_any_valid_argument(filled, limit, incident, prefix, marker):
    """Valid but extreme arguments: no error, no crash (limits up to 2**22: see the gaps below)."""
    _, chunks = filled
    if prefix is not None and len(prefix.encode("utf-8", "surrogatepass")) > _rdir.MAX_PREFIX:
        return
    try:
        records, truncated, _ = chunks.fetch(prefix=prefix, marker=marker, limit=limit, incident=incident)
        chunks.status(prefix=prefix, marker=marker, limit=limit, incident=incident)
    except ValueError as exc:  # surrogates in the text
        assert "UTF-8" in str(exc)
        return
    assert len(records) <= min(limit, 50)


@given(key=st.one_of(st.tuples(bad_text(_rdir.MAX_CONTAINER_ID), st.text(max_size=4)),
                     st.tuples(st.text(max_size=4), bad_text(_rdir.MAX_CHUNK_ID))))
def test_get_rejects(filled, key):
    _, chunks = filled
    _rejected_without_write(chunks, lambda: chunks.get(*key))


bad_volume_id = st.one_of(non_text.filter(lambda v: not isinstance(v, str)), st.just(""), surrogate_text,
                          st.text(max_size=5).map(lambda s: s + "\x00"), oversized(256))


@given(volume_id=bad_volume_id, create=st.booleans())
def test_store_volume_rejects(tmp_path_factory, volume_id, create):
    root = tmp_path_factory.mktemp("vols")
    with Store(root) as store:
        with pytest.raises(REJECTED) as info:
            store.volume(volume_id, create=create)
        assert str(info.value)
        assert store.volumes() == [] and store.opened_count == 0
    assert os.listdir(root) == []


@given(service_type=st.one_of(non_text.filter(lambda v: v not in ("rawx", "meta2")),
                              st.text(max_size=8).filter(lambda v: v not in ("rawx", "meta2"))))
def test_store_volume_rejects_service_type(tmp_path_factory, service_type):
    root = tmp_path_factory.mktemp("svc")
    with Store(root) as store:
        with pytest.raises(REJECTED):
            store.volume("v", service_type, create=True)
    assert os.listdir(root) == []


@given(volume_id=st.one_of(
    st.sampled_from(["..", ".", "../x", "/etc", "a/../../b", "~root", "%2e%2e", "..\\..", ".hidden"]),
    st.lists(st.sampled_from(["..", "/", ".", "a", "%", "\\"]), min_size=1, max_size=8).map("".join)))
def test_traversal_volume_ids_stay_inside(tmp_path_factory, volume_id):
    root = tmp_path_factory.mktemp("trav")
    with Store(root / "store") as store:
        store.volume(volume_id, create=True).chunks.put_batch([("c", "x", "k", 1, "p", 1)])
        assert store.volumes() == [volume_id]
    for dirpath, _, files in os.walk(root):
        assert os.path.realpath(dirpath).startswith(os.path.realpath(root / "store")) or dirpath == str(root)


@pytest.mark.parametrize("array", [
    np.zeros(3),
    np.zeros(3, dtype=[("container_id", "S4")]),
    np.zeros(2, dtype=[(n, "O") for n in _rdir.CHUNK_DTYPE_FIELDS]),
    np.zeros(2, dtype=[(n, "f8") for n in _rdir.CHUNK_DTYPE_FIELDS]),
    np.zeros((2, 2), dtype=[(n, "S4") for n in _rdir.CHUNK_DTYPE_FIELDS]),
    np.array([("c|d", "x", "k", 1, "p", 1)], dtype=[(n, t) for n, t in zip(
        ("container_id", "content_id", "chunk_id", "mtime", "path", "version"),
        ("S4", "S4", "S4", "i8", "S4", "i8"))]),
], ids=["no-fields", "missing-fields", "object", "float", "2-d", "pipe"])
def test_bad_arrays(filled, array):
    _, chunks = filled
    _rejected_without_write(chunks, lambda: chunks.put_batch(array))


@pytest.fixture(scope="module")
def meta2(tmp_path_factory):
    with Store(tmp_path_factory.mktemp("meta2"), map_size=1 << 20) as store:
        index = store.volume("m", "meta2", create=True).meta2
        index.put_batch([{"container_url": f"NS/a/c{i}", "container_id": "%064X" % i, "mtime": i}
                         for i in range(20)])
        yield index


meta2_record = st.fixed_dictionaries({
    "container_url": st.text(min_size=1, max_size=30).filter(lambda s: "\x00" not in s),
    "container_id": ids.container_id, "mtime": ids.mtime})


@st.composite
def bad_meta2_record(draw):
    rec = dict(draw(meta2_record))
    kind = draw(st.sampled_from(["url", "cid", "mtime", "extra", "missing", "type"]))
    if kind == "url":
        rec["container_url"] = draw(bad_text(_rdir.MAX_CONTAINER_URL).filter(lambda v: v is not None))
    elif kind == "cid":
        rec["container_id"] = draw(bad_text(_rdir.MAX_CONTAINER_ID).filter(lambda v: v is not None))
    elif kind == "mtime":
        rec["mtime"] = draw(st.one_of(non_int, out_of_int64).filter(lambda v: v is not None))
    elif kind == "extra":
        rec["extra_data"] = draw(bad_text(65536).filter(lambda v: v is not None))
    elif kind == "missing":
        del rec[draw(st.sampled_from(["container_url", "container_id"]))]
    else:
        return draw(st.one_of(st.none(), st.integers(), st.text(max_size=4), st.tuples(st.text())))
    return rec


@given(batch=batch_with(bad_meta2_record(), meta2_record))
def test_meta2_put_batch_rejects(meta2, batch):
    _rejected_without_write(meta2, lambda: meta2.put_batch(batch))


def test_meta2_empty_url_writes_nothing(meta2):
    """An empty url is rejected late, by LMDB (see the gap below), still all or nothing."""
    from rdirdb.errors import LmdbError

    before = meta2.env.info()["last_txnid"], meta2.count()
    with pytest.raises((ValueError, LmdbError)):
        meta2.put_batch([{"container_url": "NS/new", "container_id": "x"},
                         {"container_url": "", "container_id": "x"}])
    assert (meta2.env.info()["last_txnid"], meta2.count()) == before


@given(urls=st.lists(st.one_of(non_text.filter(lambda v: not isinstance(v, str)), surrogate_text,
                               oversized(_rdir.MAX_CONTAINER_URL), st.text(max_size=5).map(lambda s: s + "\x00")),
                     min_size=1, max_size=3))
def test_meta2_delete_batch_rejects(meta2, urls):
    _rejected_without_write(meta2, lambda: meta2.delete_batch(["NS/a/c1"] + urls))


# ---------------------------------------------------------------------------
# Gaps found by this fuzz, fixed in the engine and kept as regression tests
# ---------------------------------------------------------------------------

def _run_isolated(code: str, directory: str) -> subprocess.CompletedProcess:
    """Run ``code`` against a small volume in a fresh interpreter (it may crash); the
    volume's store is ``directory`` (a test's tmp_path: nothing is left in /tmp)."""
    prelude = textwrap.dedent("""
        import sys
        from rdirdb.rdir.store import Store
        store = Store(sys.argv[1], map_size=1 << 20)
        chunks = store.volume("v", create=True).chunks
        chunks.put_batch([("c", "x", f"k{i}", 1, "p", 1) for i in range(2000)])
        meta2 = store.volume("v", "meta2", create=True).meta2
        meta2.put_batch([{"container_url": f"NS/a/c{i}", "container_id": "%064X" % i, "mtime": i}
                         for i in range(2000)])
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(_rdir.__file__))] + sys.path))
    args = [sys.executable, "-c", prelude + textwrap.dedent(code), directory]
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=5, env=env)
    except subprocess.TimeoutExpired:  # a corrupted heap can also hang in malloc
        return subprocess.CompletedProcess(args, returncode="hung", stdout="", stderr="")


def test_run_isolated_keeps_its_store_in_the_given_directory(tmp_path):
    out = _run_isolated("print(store.path)", str(tmp_path / "store"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "store")
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["meta2", "rawx"]


@pytest.mark.parametrize("call", ["chunks.fetch(limit=2**61)", "chunks.fetch_arrays(limit=2**61)"])
def test_huge_limit_does_not_crash(call, tmp_path):
    out = _run_isolated(f"""
        try:
            {call}
        except (TypeError, ValueError):
            print("rejected")
    """, str(tmp_path))
    assert out.returncode == 0, f"interpreter died with {out.returncode}"
    assert out.stdout.strip() == "rejected"


def test_meta2_huge_limit_rejected(tmp_path):
    out = _run_isolated("""
        try:
            meta2.fetch(limit=2**61)
        except (TypeError, ValueError):
            print("rejected")
    """, str(tmp_path))
    assert out.returncode == 0, f"interpreter died with {out.returncode}"
    assert out.stdout.strip() == "rejected"


def test_huge_limit_is_a_value_error(filled):
    _, chunks = filled
    with pytest.raises(REJECTED):
        chunks.fetch(limit=10**13)


@pytest.mark.parametrize("call", ["fetch(limit=2**70)", "fetch(incident=2**70)", "status(incident=-(2**70))",
                                  "clear(before=2**70)"])
def test_out_of_range_ints_are_value_errors(filled, call):
    _, chunks = filled
    with pytest.raises(REJECTED):
        eval(f"chunks.{call}")


@pytest.mark.parametrize("kwargs", [{"incident": 1.5}, {"prefix": 0}, {"prefix": []}, {"marker": False}])
def test_wrong_scan_types_are_type_errors(filled, kwargs):
    _, chunks = filled
    with pytest.raises(TypeError):
        chunks.fetch(**kwargs)


def test_admin_key_type(filled):
    store, _ = filled
    with pytest.raises(TypeError):
        store.volume("v").admin_get(5)


@pytest.mark.parametrize("call", ["put_batch([{'container_url': '', 'container_id': 'x'}])",
                                  "delete_batch([''])"])
def test_meta2_empty_url_is_bad_request(meta2, call):
    with pytest.raises(REJECTED):
        eval(f"meta2.{call}")


def test_meta2_delete_batch_of_a_string(meta2):
    with pytest.raises(TypeError):
        meta2.delete_batch("NS/a/c1")
