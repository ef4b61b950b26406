"""ShardState / SignatureState and the input checks (no backend needed)."""

import re

import pytest

from rdirdb import ShardState, SignatureState
from rdirdb.sharedbase.states import check_obj_id, check_shard_name, new_shard_name, shard_state

S = ShardState


def test_state_values_are_winerys():
    assert [s.value for s in ShardState] == [
        "standby", "writing", "full", "packing", "packed", "cleaning", "readonly", "importing"]
    assert [s.value for s in SignatureState] == ["inflight", "present", "deleted"]


@pytest.mark.parametrize("state, locked, image_available, readonly", [
    (S.STANDBY, False, False, False),
    (S.WRITING, True, False, False),
    (S.FULL, False, False, False),
    (S.PACKING, True, False, False),
    (S.PACKED, False, True, False),
    (S.CLEANING, True, True, True),
    (S.READONLY, False, True, True),
    (S.IMPORTING, True, False, False),
])
def test_state_properties(state, locked, image_available, readonly):
    assert (state.locked, state.image_available, state.readonly) == (locked, image_available, readonly)


def test_shard_state_coercion():
    assert shard_state("packed") is S.PACKED
    assert shard_state(S.FULL) is S.FULL
    with pytest.raises(ValueError, match="unknown shard state 'bogus'"):
        shard_state("bogus")
    with pytest.raises(TypeError, match="must be a ShardState"):
        shard_state(3)


def test_new_shard_names_match_winerys_format():
    names = {new_shard_name() for _ in range(100)}
    assert len(names) == 100
    assert all(re.fullmatch(r"i[0-9a-f]{31}", name) for name in names)


@pytest.mark.parametrize("name", ["", "1abc", "a" * 33, "has space", "trailing "])
def test_bad_shard_names(name):
    with pytest.raises(ValueError, match="invalid shard name"):
        check_shard_name(name)


def test_obj_id_checks():
    assert check_obj_id(bytearray(32)) == bytes(32)
    with pytest.raises(TypeError, match="obj_id must be bytes"):
        check_obj_id("a" * 32)
    with pytest.raises(ValueError, match="32-byte sha256 digest, got 7 bytes"):
        check_obj_id(b"unknown")
