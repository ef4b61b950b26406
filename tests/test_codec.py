"""Key and value codecs: lossless round trips, order, limits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rdirdb import _rdir
from rdirdb.errors import BadRequest
from tests import strategies as S
from tests.scan_model import order_key


@given(S.canonical_id, S.canonical_id)
def test_canonical_key_is_64_bytes(cid, chunk):
    canonical, key = _rdir.encode_chunk_key(cid, chunk)
    assert canonical
    assert len(key) == 64
    assert _rdir.decode_chunk_key(True, key) == (cid, chunk)


@given(S.container_id, S.chunk_id, S.content_id, S.mtime, S.path, S.version)
def test_round_trip(cid, chunk, content, mtime, path, version):
    canonical, key = _rdir.encode_chunk_key(cid, chunk)
    value = _rdir.encode_chunk_value(content, mtime, path, version)
    if len(key) > _rdir.MAX_PREFIX and not canonical:
        # A long key keeps its tail in the value: rebuild one as the engine does.
        return
    assert _rdir.decode_chunk_key(canonical, key) == (cid, chunk)
    assert _rdir.decode_chunk_value(value) == (content, max(mtime, 0), path, version)


@given(st.lists(st.tuples(S.canonical_id, S.canonical_id), min_size=2, max_size=30))
def test_canonical_key_order_is_text_order(pairs):
    by_key = sorted(pairs, key=lambda p: _rdir.encode_chunk_key(*p)[1])
    by_text = sorted(pairs, key=lambda p: f"{p[0]}|{p[1]}")
    assert by_key == by_text


@given(S.container_id, S.chunk_id)
def test_order_key_matches_model(cid, chunk):
    assert _rdir.order_key(cid, chunk) == order_key(cid, chunk)


@given(S.container_id, S.chunk_id)
def test_marker_round_trip(cid, chunk):
    assert _rdir.split_marker(f"{cid}|{chunk}") == (cid, chunk)


def test_hex_content_id_is_packed():
    packed = _rdir.encode_chunk_value("0123456789ABCDEF0123456789ABCDEF", 1, "p", 1)
    plain = _rdir.encode_chunk_value("0123456789abcdef0123456789abcdef", 1, "p", 1)
    assert len(packed) == len(plain) - 16


@pytest.mark.parametrize(
    "cid, chunk, message",
    [
        ("C" * 65, "x", "container_id is 65 bytes long, the limit is 64"),
        ("c", "x" * 512, "chunk_id is 512 bytes long, the limit is 511"),
        ("a|b", "x", "container_id contains '|'"),
        ("a\x00", "x", "container_id contains a NUL"),
        ("a", "x\x00", "chunk_id contains a NUL"),
        ("a", "\ud800", "chunk_id is not valid UTF-8"),
    ],
)
def test_bad_keys_are_rejected(cid, chunk, message):
    with pytest.raises(BadRequest, match=message.replace("|", r"\|")):
        _rdir.encode_chunk_key(cid, chunk)


def test_utf8_limit_counts_bytes():
    # 32 two-byte characters are 64 bytes: allowed; one more is not.
    _rdir.encode_chunk_key("é" * 32, "x")
    with pytest.raises(BadRequest, match="66 bytes"):
        _rdir.encode_chunk_key("é" * 33, "x")


@pytest.mark.parametrize(
    "args, error",
    [
        (("c", 1.0, "p", 1), TypeError),
        (("c", True, "p", 1), TypeError),
        (("c", 1, "p", "1"), TypeError),
        (("c", 1, b"p", 1), TypeError),
        (("c", 2**63, "p", 1), BadRequest),
        (("C" * 65, 1, "p", 1), BadRequest),
        (("c", 1, "p" * 1088, 1), BadRequest),
    ],
)
def test_bad_values_are_rejected(args, error):
    with pytest.raises(error):
        _rdir.encode_chunk_value(*args)


def test_malformed_value_is_an_error():
    with pytest.raises(BadRequest, match="malformed"):
        _rdir.decode_chunk_value(b"\x00\xff")
