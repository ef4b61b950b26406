"""Type stubs of rdirdb._batch: validated batches and their writer."""

from typing import final

from rdirdb._lmdb import Transaction

@final
class Batch:
    """A validated, encoded and sorted batch; ``len()`` is its number of distinct keys."""

    @property
    def meta2(self) -> bool: ...
    @property
    def key_only(self) -> bool: ...
    def __new__(cls, expected: int, meta2: bool = False, key_only: bool = False) -> Batch: ...
    def __len__(self) -> int: ...

def _write_into(txn: Transaction, batch: Batch) -> int: ...
