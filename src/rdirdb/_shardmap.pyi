"""Type stubs of rdirdb._shardmap (SharedBase's LMDB lookups and recording batch)."""

import numpy as np
import numpy.typing as npt

from rdirdb._lmdb import Environment, Transaction

SIG_INFLIGHT: int
SIG_PRESENT: int
SIG_DELETED: int

def lookup_one(env: Environment, db: str, obj_id: bytes) -> int | None: ...
def lookup_many(env: Environment, db: str, obj_ids: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]: ...
def record_new(
    txn: Transaction, shard_id: int, fences: tuple[bytes, ...], ids: bytes
) -> npt.NDArray[np.int64] | None:
    """Record ``ids`` (32 bytes each, sorted) in shard ``shard_id`` within ``txn``, without
    the GIL: the owner of each id, or None (nothing written) unless the shard's row
    starts with one of ``fences``."""
