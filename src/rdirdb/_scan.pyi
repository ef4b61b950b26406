"""Type stubs of rdirdb._scan: scans and the records they return."""

from typing import Any, Sequence, final

import numpy as np

CHUNK_DTYPE_FIELDS: tuple[str, ...]
CHUNK_DTYPE: np.dtype[Any]

@final
class Entries:
    """A page of chunk records as OpenIO's ``(container_id, chunk_id, value)`` entries,
    each made when asked for (ChunkIndex.fetch_entries)."""

    def __iter__(self) -> Entries: ...
    def __next__(self) -> tuple[str, str, dict[str, Any]]: ...
    def __length_hint__(self) -> int: ...

def chunk_array(records: Sequence[tuple[Any, ...]]) -> np.ndarray:
    """Records as one array of CHUNK_DTYPE (text fields as UTF-8 bytes)."""

def decode_chunk_key(canonical: bool, key: bytes, value: bytes | None = None) -> tuple[str, str]: ...
def decode_chunk_value(value: bytes) -> tuple[str, int, str, int]: ...
def split_marker(marker: str) -> tuple[str, str]: ...
