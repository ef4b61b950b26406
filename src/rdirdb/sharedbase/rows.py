"""The record both backends return for a shard."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import NamedTuple, Optional

from rdirdb.sharedbase.states import ShardState


class ShardRow(NamedTuple):
    id: int
    name: str
    state: ShardState
    locker: Optional[uuid.UUID]
    locker_ts: Optional[datetime]
    pool_name: str
    mapped_on_hosts: list[str]

    def open_shard_tuple(self) -> tuple[str, ShardState, Optional[datetime], Optional[str]]:
        """The shape of list_open_shards/list_stale_shards items."""
        return (self.name, self.state, self.locker_ts, str(self.locker) if self.locker else None)
