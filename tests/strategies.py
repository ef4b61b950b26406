"""Hypothesis strategies for rdir ids: canonical and everything else the reference accepts."""

from __future__ import annotations

from hypothesis import strategies as st

HEX_UPPER = "0123456789ABCDEF"

canonical_id = st.text(HEX_UPPER, min_size=64, max_size=64)
# Few distinct leading characters, so records share containers and prefixes.
short_canonical_id = st.sampled_from("0A9F").flatmap(
    lambda c: st.text("0F", min_size=63, max_size=63).map(lambda s: c + s)
)
lower_hex_id = st.text("0123456789abcdef", min_size=64, max_size=64)
# Text that is valid UTF-8 (no surrogates) and has no NUL.
free_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)
# The ids of a chunk key: not empty, no control character (U+0000-U+001F, U+007F).
CONTROL_CHARACTERS = "".join(map(chr, [*range(0x20), 0x7F]))
id_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters=CONTROL_CHARACTERS), min_size=1, max_size=12
)


def _fits(limit):
    return lambda s: len(s.encode("utf-8")) <= limit


container_id = st.one_of(
    short_canonical_id,
    canonical_id,
    lower_hex_id,
    id_text.map(lambda s: s.replace("|", "")).filter(lambda s: s and _fits(64)(s)),
    st.sampled_from(["A", "AB", "ABC", "c1"]),
)
url_chunk_id = canonical_id.map(lambda h: f"http://127.0.0.1:6201/{h}")
# Long ids share a long common start, so their stored keys collide on the prefix.
long_chunk_id = st.integers(430, 511).flatmap(
    lambda n: st.text("xy", min_size=8, max_size=8).map(lambda t: ("L" * (n - 8) + t))
)
# Two-byte characters across the 478-byte split of long keys.
long_multibyte_id = st.integers(200, 255).map(lambda n: "é" * n)
chunk_id = st.one_of(
    short_canonical_id,
    canonical_id,
    lower_hex_id,
    url_chunk_id,
    id_text.filter(_fits(511)),
    long_chunk_id,
    long_multibyte_id,
    canonical_id.map(lambda h: h + "x"),
)
content_id = st.one_of(
    st.text(HEX_UPPER, min_size=32, max_size=32),
    st.text(HEX_UPPER, max_size=64).filter(lambda s: len(s) % 2 == 1),
    free_text.filter(_fits(64)),
)
path = st.one_of(free_text, st.text("ab/", max_size=1087))
int64 = st.integers(-(2**63), 2**63 - 1)
mtime = st.one_of(st.integers(-5, 40), int64)
version = st.one_of(st.integers(-3, 3), int64)

record = st.tuples(container_id, content_id, chunk_id, mtime, path, version)
