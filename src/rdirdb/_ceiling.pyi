"""Type stubs of rdirdb._ceiling: the benchmarks' ceilings (not part of the product)."""

from typing import Any, Sequence, final

from rdirdb._lmdb import Environment
from rdirdb._repair import Stamps

@final
class Packed:
    """Stored keys and values in one buffer, in their order (made by pack)."""

    n: int
    def __len__(self) -> int: ...

def pack(keys: Sequence[bytes], values: Sequence[bytes]) -> Packed:
    """Pack pre-encoded keys and values for raw_insert."""

def raw_insert(index: Stamps, records: Packed, batch: int = 10000) -> None:
    """Insert packed chunk_bin pairs, ``batch`` per transaction, through the engine's stamped batch writer."""

@final
class RawEntries:
    """raw_entries' iterator."""

    def __new__(cls, env: Environment) -> RawEntries: ...
    def __iter__(self) -> RawEntries: ...
    def __next__(self) -> tuple[str, str, dict[str, Any]]: ...

def raw_entries(env: Environment) -> RawEntries:
    """Every chunk record as chunk_fetch's entries, straight from cursors in one read transaction."""

def raw_scan(env: Environment, db: str = "chunk_bin") -> int:
    """Walk every record of ``db`` in a C loop; returns the count."""
