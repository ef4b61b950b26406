"""Type stubs of rdirdb._rdir: the native rdir engine's Python API (indexes, and the
names of its other modules, re-exported)."""

from typing import Any, Callable, Iterable, Mapping, Sequence, final

import numpy as np

from rdirdb._lmdb import Environment, Transaction
from rdirdb._repair import Stamps

# Named databases of a rawx volume's environment and of a meta2 volume's.
CHUNK_DATABASES: tuple[str, ...]
META2_DATABASES: tuple[str, ...]
# Their tombstones, and the volume's last write stamp.
CHUNK_TOMB_DATABASES: tuple[str, ...]
META2_TOMB_DATABASES: tuple[str, ...]
CLOCK_DATABASE: str

# Limits on ids, in UTF-8 bytes (the reference server's buffer sizes).
MAX_CONTAINER_ID: int
MAX_CONTENT_ID: int
MAX_CHUNK_ID: int
MAX_PATH: int
MAX_CONTAINER_URL: int
MAX_PREFIX: int

# Field selection for scans.
FIELD_CONTENT_ID: int
FIELD_MTIME: int
FIELD_PATH: int
FIELD_VERSION: int
ALL_FIELDS: int

# A chunk record, in the one order of CHUNK_DTYPE_FIELDS:
# (container_id, content_id, chunk_id, mtime, path, version); the fields a scan
# was not asked for are None.
_ChunkRecord = tuple[str, str | None, str, int | None, str | None, int | None]
_ChunkInput = (
    Sequence[tuple[str, str, str, int, str, int]] | Sequence[Mapping[str, Any]] | np.ndarray
)
_KeyInput = Sequence[tuple[str, str]] | Sequence[Mapping[str, Any]] | np.ndarray

from rdirdb._batch import Batch as Batch
from rdirdb._encode import encode_chunk_key as encode_chunk_key
from rdirdb._encode import encode_chunk_value as encode_chunk_value
from rdirdb._encode import encode_chunks as encode_chunks
from rdirdb._encode import encode_meta2 as encode_meta2
from rdirdb._encode import order_key as order_key
from rdirdb._scan import CHUNK_DTYPE as CHUNK_DTYPE
from rdirdb._scan import CHUNK_DTYPE_FIELDS as CHUNK_DTYPE_FIELDS
from rdirdb._scan import Entries as Entries
from rdirdb._scan import chunk_array as chunk_array
from rdirdb._scan import decode_chunk_key as decode_chunk_key
from rdirdb._scan import decode_chunk_value as decode_chunk_value
from rdirdb._scan import split_marker as split_marker

class _StampedIndex:
    """The write path a chunk and a meta2 index share (through their ``stamps``)."""

    env: Environment
    stamps: Stamps
    def apply(self, batch: Batch) -> int:
        """Write a batch (delete its keys if ``key_only``) in one transaction."""
    def apply_group(
        self, batches: list[Batch], *, sync_meta: bool = True, more: Callable[[], list[Batch]] | None = None
    ) -> list[int]:
        """Write several batches in one transaction, in order, all or nothing; each one's count."""

@final
class ChunkIndex(_StampedIndex):
    """The chunk records of one rawx volume, stored in ``env``."""
    def __init__(self, env: Environment) -> None: ...
    def put_batch(self, records: _ChunkInput) -> int:
        """Validate and write every record in one transaction (all or nothing)."""
    def delete_batch(self, keys: _KeyInput) -> int:
        """Delete every key in one transaction; returns how many existed."""
    def get(self, container_id: str, chunk_id: str) -> _ChunkRecord | None: ...
    def fetch(
        self,
        *,
        prefix: str | None = None,
        marker: str | None = None,
        limit: int = 1000,
        incident: int = 0,
        fields: int = ...,
        entries: bool = False,
        txn: Transaction | None = None,
    ) -> tuple[list[Any], bool, str | None]:
        """One page: (records, truncated, next marker); as of ``txn`` when given."""
    def fetch_entries(
        self,
        *,
        prefix: str | None = None,
        marker: str | None = None,
        limit: int = 1000,
        incident: int = 0,
    ) -> tuple[Entries, bool, str | None]:
        """Like fetch with ``entries``, each entry made as it is asked for."""
    def fetch_arrays(
        self,
        *,
        prefix: str | None = None,
        marker: str | None = None,
        limit: int = 1000,
        incident: int = 0,
    ) -> tuple[np.ndarray, bool, str | None]:
        """Like fetch, as one array of CHUNK_DTYPE."""
    def status(
        self,
        *,
        prefix: str | None = None,
        marker: str | None = None,
        limit: int = 1000,
        incident: int = 0,
    ) -> tuple[int, int, dict[str, tuple[int, int]], bool, str | None]:
        """(total, to_rebuild, {container_id: (total, to_rebuild)}, truncated, marker)."""
    def count(self) -> int: ...
    def clear(
        self, *, all: bool = False, before: int = 0, repair: bool = False, erase_incident: bool = False
    ) -> tuple[int, int, int]:
        """(removed, repaired, errors)."""

_Meta2Record = dict[str, Any]

@final
class Meta2Index(_StampedIndex):
    """The container records of one meta2 volume, stored in ``env``."""
    def __init__(self, env: Environment) -> None: ...
    def put_batch(self, records: Iterable[Mapping[str, Any]]) -> int: ...
    def delete_batch(self, container_urls: Iterable[str] | Iterable[Mapping[str, Any]]) -> int: ...
    def fetch(
        self,
        *,
        prefix: str | None = None,
        marker: str | None = None,
        limit: int = 1000,
        txn: Transaction | None = None,
    ) -> tuple[list[_Meta2Record], bool, str | None]:
        """One page: (records, truncated, next marker)."""
    def count(self, prefix: str | None = None) -> int: ...
