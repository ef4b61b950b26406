"""Type stubs of rdirdb._ceiling: the benchmarks' ceilings (not part of the product)."""

from typing import Sequence

from rdirdb._lmdb import Environment

def raw_insert(
    env: Environment, keys: Sequence[bytes], values: Sequence[bytes], batch: int = 10000, db: str = "chunk_bin"
) -> None:
    """Insert pre-encoded pairs in a C loop, ``batch`` per transaction."""

def raw_scan(env: Environment, db: str = "chunk_bin") -> int:
    """Walk every record of ``db`` in a C loop; returns the count."""
