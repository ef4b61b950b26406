"""Shard and signature states, and the validation of names and obj_ids.

The string values are winery's (they are the PostgreSQL enum labels).
"""

from __future__ import annotations

import re
import uuid
from enum import Enum
from typing import Any

OBJ_ID_SIZE = 32  # a sha256 digest
SHARD_NAME_SIZE = 32  # shards.name is char(32)


class ShardState(Enum):
    STANDBY = "standby"  # idle, ready to be locked for writing
    WRITING = "writing"  # locked by a writer, receiving objects
    FULL = "full"  # reached its size threshold, ready to be packed
    PACKING = "packing"  # being packed into its read-only image
    PACKED = "packed"  # image finalized; write shard awaiting cleanup
    CLEANING = "cleaning"  # write shard locked for cleanup
    READONLY = "readonly"  # only the read-only image remains
    IMPORTING = "importing"  # an existing image is being registered

    @property
    def locked(self) -> bool:
        """A process holds the shard (its locker is set) while in this state."""
        return self not in _UNLOCKED

    @property
    def image_available(self) -> bool:
        """The read-only image exists; readers try it first."""
        return self in _IMAGE_AVAILABLE

    @property
    def readonly(self) -> bool:
        """The write shard is gone or going away."""
        return self in _READONLY


_UNLOCKED = frozenset({ShardState.STANDBY, ShardState.FULL, ShardState.PACKED, ShardState.READONLY})
_IMAGE_AVAILABLE = frozenset({ShardState.PACKED, ShardState.CLEANING, ShardState.READONLY})
_READONLY = frozenset({ShardState.CLEANING, ShardState.READONLY})

# What an operator's forced release returns a locked shard to (winery's
# release-stale-shards map). IMPORTING has no earlier state: its row is deleted.
RELEASED_STATE = {
    ShardState.WRITING: ShardState.STANDBY,
    ShardState.PACKING: ShardState.FULL,
    ShardState.CLEANING: ShardState.PACKED,
}


class SignatureState(Enum):
    INFLIGHT = "inflight"  # legacy: nothing writes it since 2024
    PRESENT = "present"  # the only state readers see
    DELETED = "deleted"  # a tombstone awaiting physical cleanup


def shard_state(value: Any, what: str = "state") -> ShardState:
    """``value`` as a ShardState (a member or its string value)."""
    if isinstance(value, ShardState):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a ShardState, not {type(value).__name__}")
    try:
        return ShardState(value)
    except ValueError:
        known = ", ".join(s.value for s in ShardState)
        raise ValueError(f"unknown shard state {value!r} (known: {known})") from None


def check_obj_id(obj_id: Any) -> bytes:
    """``obj_id`` as bytes, checked to be a 32-byte sha256 digest."""
    checked = lookup_obj_id(obj_id)
    if checked is None:
        raise ValueError(f"obj_id must be a {OBJ_ID_SIZE}-byte sha256 digest, got {len(obj_id)} bytes")
    return checked


def lookup_obj_id(obj_id: Any) -> bytes | None:
    """``obj_id`` as bytes for a lookup, None when it is not 32 bytes long: no
    such id is ever stored, so it is simply not found (winery's readers turn
    that into ObjNotFoundError). A value that is not bytes is a TypeError."""
    if isinstance(obj_id, (bytearray, memoryview)):
        obj_id = bytes(obj_id)
    if not isinstance(obj_id, bytes):
        raise TypeError(f"obj_id must be bytes, not {type(obj_id).__name__}")
    return obj_id if len(obj_id) == OBJ_ID_SIZE else None


def check_obj_ids(obj_ids: Any) -> list[bytes]:
    """A list of checked obj_ids (any iterable of bytes)."""
    if isinstance(obj_ids, (bytes, str)):
        raise TypeError("obj_ids must be an iterable of obj_ids, not a single value")
    # The common case inline: batches of 50,000 ids are checked on the hot path.
    return [i if type(i) is bytes and len(i) == OBJ_ID_SIZE else check_obj_id(i) for i in obj_ids]


# Winery's rule: at most 32 characters, not starting with a digit (names were
# once database names). We also refuse whitespace, which char(32) would strip.
_NAME = re.compile(r"[^\d\s]\S{0,%d}" % (SHARD_NAME_SIZE - 1))


def check_shard_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"shard name must be a str, not {type(name).__name__}")
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid shard name {name!r}: 1 to {SHARD_NAME_SIZE} characters without "
            "whitespace, not starting with a digit"
        )
    return name


def new_shard_name() -> str:
    """A fresh name, ``i`` followed by 31 hex digits, as winery makes them."""
    return "i" + uuid.uuid4().hex[1:]


def check_pool_name(pool_name: Any) -> str:
    if not isinstance(pool_name, str):
        raise TypeError(f"pool name must be a str, not {type(pool_name).__name__}")
    if not pool_name:
        raise ValueError("pool name must not be empty")
    return pool_name
