"""Type stubs of rdirdb._shardmap (SharedBase's LMDB lookups)."""

import numpy as np
import numpy.typing as npt

from rdirdb._lmdb import Environment

def lookup_one(env: Environment, db: str, obj_id: bytes) -> int | None: ...
def lookup_many(env: Environment, db: str, obj_ids: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]: ...
