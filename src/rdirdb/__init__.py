"""rdirdb: the index engine for object storage.

* ``RdirClient`` / ``RdirDispatcher``: OpenIO's reverse directory (rdir), embedded
  on LMDB by default, or remote over rdir HTTP servers;
* ``SharedBase``: Software Heritage winery's shard catalogue, on PostgreSQL or LMDB.

The hot paths are Cython extensions over the system liblmdb.
"""

from __future__ import annotations

import importlib
from typing import Any

from rdirdb import errors
from rdirdb._lmdb import Cursor, Environment, Transaction, lmdb_version
from rdirdb._version import __version__

# Facades are imported on first use, so that ``import rdirdb`` stays cheap and
# does not need the optional dependencies of the parts a program does not use.
_LAZY = {
    "RdirClient": "rdirdb.rdir.client",
    "RdirDispatcher": "rdirdb.rdir.dispatcher",
    "SharedBase": "rdirdb.sharedbase",
    "ShardState": "rdirdb.sharedbase",
    "SignatureState": "rdirdb.sharedbase",
    "TemporaryShardLocker": "rdirdb.sharedbase",
}

__all__ = [
    "Cursor",
    "Environment",
    "Transaction",
    "errors",
    "lmdb_version",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rdirdb' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
