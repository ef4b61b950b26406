"""Stores written before the id rule: records whose ids it now refuses.

rdirdb once accepted an empty container or chunk id and control characters in
them. Such a store must still list completely; these helpers write its records
the way the engine stored them, below the validator.
"""

from __future__ import annotations

from rdirdb import _rdir
from rdirdb.rdir.store import Volume


def write_legacy_chunks(volume: Volume, records: list[tuple[str, str, str, int, str, int]]) -> None:
    """Store ``(container_id, content_id, chunk_id, mtime, path, version)`` records as is
    (keys of at most MAX_PREFIX bytes: a longer one also stores its tail in the value)."""
    with volume.env.begin(write=True) as txn:
        for cid, content, chunk, mtime, path, version in records:
            canonical, key = _rdir.encode_chunk_key(cid, chunk)
            assert len(key) <= _rdir.MAX_PREFIX, "a long key needs its tail in the value"
            value = _rdir.encode_chunk_value(content, mtime, path, version)
            txn.put(key, value, db="chunk_bin" if canonical else "chunk_text")
