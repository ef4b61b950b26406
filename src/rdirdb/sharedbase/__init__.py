"""Winery's SharedBase (the shard catalogue), on PostgreSQL or embedded LMDB."""

from rdirdb.sharedbase.base import ONEDAY, SharedBase, TemporaryShardLocker
from rdirdb.sharedbase.schema import SCHEMA_VERSION, init_schema
from rdirdb.sharedbase.states import ShardState, SignatureState

__all__ = [
    "ONEDAY",
    "SCHEMA_VERSION",
    "ShardState",
    "SharedBase",
    "SignatureState",
    "TemporaryShardLocker",
    "init_schema",
]
