"""Type stubs of rdirdb._encode: the one validator of rdir records."""

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from rdirdb._batch import Batch

_ChunkInput = Sequence[tuple[str, str, str, int, str, int]] | Sequence[Mapping[str, Any]] | np.ndarray
_KeyInput = Sequence[tuple[str, str]] | Sequence[Mapping[str, Any]] | np.ndarray

def encode_chunks(records: _ChunkInput | _KeyInput, *, key_only: bool = False) -> Batch:
    """Validate and encode chunk records (keys with ``key_only``)."""

def encode_meta2(records: Iterable[Mapping[str, Any]] | Iterable[str], *, key_only: bool = False) -> Batch:
    """Validate and encode meta2 records (container urls or records to delete with ``key_only``)."""

def encode_chunk_key(container_id: str, chunk_id: str) -> tuple[bool, bytes]:
    """(canonical, stored key) of a chunk; canonical keys take 64 bytes."""

def encode_chunk_value(content_id: str, mtime: int, path: str, version: int) -> bytes: ...
def order_key(container_id: str, chunk_id: str) -> bytes:
    """The sort key that defines the listing order (text order of ``cid|chunk``)."""
