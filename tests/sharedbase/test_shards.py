"""The shard state machine (reference §3, §7, §10), on both backends."""

import os
import re
from datetime import datetime, timedelta, timezone

import pytest

from rdirdb import ShardState, TemporaryShardLocker
from rdirdb.errors import FencingError, ShardExists, ShardNotFound

S = ShardState


def state(base, name):
    return base.get_shard_state(name)


# -- the locked shard of a writer (TestWinery.test_winery_sharedbase) -----------


def test_locked_shard_lifecycle(base):
    name = base.locked_shard
    assert re.fullmatch(r"i[0-9a-f]{31}", name)
    assert base.locked_shard_id == base.locked_shard_id
    assert state(base, name) is S.WRITING
    assert base.get_shard_pool(name) == "pool-a"

    base.release_locked_shard()
    assert base._locked_shard is None
    assert state(base, name) is S.STANDBY

    # The only STANDBY shard is adopted again.
    assert base.locked_shard == name
    assert state(base, name) is S.WRITING


def test_standby_adoption_respects_the_active_pool(open_base):
    other = open_base(active_pool_name="pool-b")
    foreign, _ = other.create_shard(S.STANDBY)
    base = open_base(active_pool_name="pool-a")
    assert base.locked_shard != foreign
    assert state(base, foreign) is S.STANDBY
    assert base.get_shard_pool(base.locked_shard) == "pool-a"


def test_instances_of_a_process_share_its_locker(open_base):
    a, b = open_base(), open_base()
    assert a.locker == b.locker  # winery's WRITER_UUID
    assert a.locked_shard != b.locked_shard  # each still writes to a shard of its own
    own = open_base(locker_scope="instance")
    assert own.locker not in (a.locker, open_base(locker_scope="instance").locker)
    with pytest.raises(ValueError, match="locker_scope must be one of process, instance"):
        open_base(locker_scope="thread")


def test_a_forked_child_has_a_locker_of_its_own(base):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once
        os.write(write, str(base.locker).encode())
        os._exit(0)
    os.close(write)
    child_locker = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child_locker and child_locker != str(base.locker)


def test_standby_shards_need_an_active_pool_to_be_adopted(open_base):
    foreign, _ = open_base(active_pool_name="pool-b").create_shard(S.STANDBY)
    base = open_base(active_pool_name=None)
    with pytest.raises(ValueError, match="The writable pool name must be configured"):
        base.locked_shard
    assert state(base, foreign) is S.STANDBY


# -- lock_one_shard ---------------------------------------------------------------------


def test_lock_one_shard_refuses_unlocked_states(base):
    with pytest.raises(ValueError, match=r"^ShardState.FULL is not a locked state$"):
        base.lock_one_shard(S.STANDBY, S.FULL)


def test_lock_one_shard_none_when_nothing_qualifies(base):
    assert base.lock_one_shard(S.FULL, S.PACKING) is None


def test_lock_one_shard_takes_oldest_first_and_sets_locker(base):
    created = [base.create_shard(S.FULL) for _ in range(3)]
    for name, _ in created:
        base.set_shard_state(S.FULL, name=name)  # clears the creation lock
    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    assert base.lock_one_shard(S.FULL, S.PACKING) == created[0]
    [(name, st, ts, locker)] = base.list_open_shards(state=S.PACKING)
    assert (name, st, locker) == (created[0][0], S.PACKING, str(base.locker))
    assert ts > before
    assert base.lock_one_shard("full", "packing") == created[1]


def test_lock_one_shard_mapped_hosts_is_at_least(base):
    name, _ = base.create_shard(S.PACKED)
    assert base.lock_one_shard(S.PACKED, S.CLEANING, min_mapped_hosts=1) is None
    base.record_shard_mapped("host1", name)
    assert base.lock_one_shard(S.PACKED, S.CLEANING, min_mapped_hosts=2) is None
    assert base.lock_one_shard(S.PACKED, S.CLEANING, min_mapped_hosts=1)[0] == name


def test_lock_one_shard_pool_filter(open_base):
    a, b = open_base("pool-a"), open_base("pool-b")
    name_b, _ = b.create_shard(S.FULL)
    assert a.lock_one_shard(S.FULL, S.PACKING, from_pool="pool-a") is None
    assert a.lock_one_shard(S.FULL, S.PACKING, from_pool="pool-b")[0] == name_b


# -- set_shard_state --------------------------------------------------------------------


def test_set_shard_state_without_name_or_lock(base):
    with pytest.raises(ValueError, match="Can't set shard state, no shard specified or locked"):
        base.set_shard_state(S.FULL)


def test_set_shard_state_defaults_to_the_locked_shard(base):
    name = base.locked_shard
    base.set_shard_state(S.PACKING)  # a locked state: still ours
    assert base._locked_shard is not None
    base.set_shard_state(S.FULL)  # an unlocked state: no longer ours
    assert base._locked_shard is None
    assert state(base, name) is S.FULL


def test_set_shard_state_clears_the_locker_unless_asked(base):
    name, _ = base.create_shard(S.WRITING)
    base.set_shard_state(S.PACKING, name=name)
    [(_, _, ts, locker)] = base.list_open_shards()
    assert (ts, locker) == (None, None)
    base.set_shard_state(S.PACKING, name=name, set_locker=True)
    [(_, _, ts, locker)] = base.list_open_shards()
    assert locker == str(base.locker) and ts is not None


def test_set_shard_state_check_locker(open_base):
    a, b = open_base(), open_base(locker_scope="instance")
    name, _ = a.create_shard(S.PACKING)
    with pytest.raises(FencingError, match=rf"set_shard_state\({name}\) affected 0 rows, expected 1"):
        b.set_shard_state(S.FULL, name=name, check_locker=True)
    assert state(a, name) is S.PACKING
    a.set_shard_state(S.FULL, name=name, check_locker=True)
    # An unlocked shard (NULL locker) never matches.
    with pytest.raises(ValueError, match="affected 0 rows"):
        a.set_shard_state(S.PACKING, name=name, check_locker=True)


def test_set_shard_state_unknown_shard(base):
    with pytest.raises(ShardNotFound, match=r"set_shard_state\(nothing\) affected 0 rows, expected 1"):
        base.set_shard_state(S.FULL, name="nothing")


def test_set_shard_state_bad_state_changes_nothing(base):
    name = base.locked_shard
    with pytest.raises(ValueError, match="unknown shard state"):
        base.set_shard_state("nonsense", name=name)
    with pytest.raises(TypeError):
        base.set_shard_state(None, name=name)
    assert state(base, name) is S.WRITING


def test_release_locked_shard_checks_the_locker(open_base):
    a, b = open_base(), open_base(locker_scope="instance")
    name = a.locked_shard
    b.release_lock(name)  # an operator releases it...
    assert b.locked_shard == name  # ...and another writer adopts it
    with pytest.raises(FencingError):
        a.release_locked_shard()
    assert state(a, name) is S.WRITING
    assert a._locked_shard is None


# -- create_shard -----------------------------------------------------------------------


def test_create_shard(base):
    name, shard_id = base.create_shard(S.PACKED, name="imported-image", pool_name="pool-z")
    assert name == "imported-image" and shard_id >= 1
    assert base.get_shard_info(shard_id) == ("imported-image", S.PACKED)
    assert base.get_shard_pool(name) == "pool-z"
    [(_, _, ts, locker)] = base.list_open_shards()
    assert locker == str(base.locker) and ts is not None  # winery always sets it
    with pytest.raises(ShardExists):
        base.create_shard(S.PACKED, name="imported-image")
    with pytest.raises(ValueError, match="invalid shard name"):
        base.create_shard(S.PACKED, name="9starts-with-digit")
    assert [n for n, _ in base.list_shards()] == ["imported-image"]


# -- packing --------------------------------------------------------------------------------


def test_packing_starts_and_ends(base):
    name = base.locked_shard
    with pytest.raises(ValueError, match=r"Cannot pack shard in state ShardState.WRITING, expected ShardState.FULL"):
        base.shard_packing_starts(name)
    with pytest.raises(ValueError, match=r"Cannot finalize packing for shard in state ShardState.WRITING, "
                                         r"expected ShardState.PACKING or ShardState.IMPORTING"):
        base.shard_packing_ends(name)
    base.set_shard_state(S.FULL)
    base.shard_packing_starts(name)
    [(_, st, _, locker)] = base.list_open_shards()
    assert (st, locker) == (S.PACKING, str(base.locker))
    base.shard_packing_ends(name)
    [(_, st, ts, locker)] = base.list_open_shards()
    assert (st, ts, locker) == (S.PACKED, None, None)


def test_packing_unknown_shard(base):
    with pytest.raises(ShardNotFound, match="Could not get shard state for nothing"):
        base.shard_packing_starts("nothing")
    with pytest.raises(ShardNotFound, match="Could not get shard state for nothing"):
        base.shard_packing_ends("nothing")


def test_packing_ends_only_for_the_packer(open_base):
    packer, other = open_base(locker_scope="instance"), open_base(locker_scope="instance")
    name, _ = packer.create_shard(S.FULL)
    packer.shard_packing_starts(name)
    with pytest.raises(FencingError):
        other.shard_packing_ends(name)
    assert state(packer, name) is S.PACKING
    other.shard_packing_ends(name, check_locker=False)  # winery's behaviour
    assert state(packer, name) is S.PACKED


def test_winery_pack_path_hands_the_shard_to_a_new_sharedbase(open_base):
    """WineryWriter.pack starts packing with the writer's SharedBase;
    housekeeping.pack ends it with a new one, in the same process."""
    writer = open_base()
    name = writer.locked_shard
    writer.set_shard_state(S.FULL)
    writer.shard_packing_starts(name)
    open_base().shard_packing_ends(name)
    assert state(writer, name) is S.PACKED


# -- TemporaryShardLocker -------------------------------------------------------------------


def test_temporary_locker_nothing_to_lock(base):
    locker = base.maybe_lock_one_shard(S.FULL, S.PACKING)
    assert not locker and locker.name is None and locker.id is None
    with pytest.raises(ValueError, match="No shard was locked"):
        with locker:
            pass


def test_temporary_locker_rolls_back_on_error(base):
    name, shard_id = base.create_shard(S.FULL)
    locker = base.maybe_lock_one_shard(S.FULL, S.PACKING)
    assert isinstance(locker, TemporaryShardLocker)
    assert (locker.name, locker.id) == (name, shard_id)
    with pytest.raises(RuntimeError, match="boom"):
        with locker:
            assert state(base, name) is S.PACKING
            raise RuntimeError("boom")
    assert state(base, name) is S.FULL


def test_temporary_locker_keeps_the_state_on_success(base):
    name, _ = base.create_shard(S.FULL)
    with base.maybe_lock_one_shard(S.FULL, S.PACKING):
        pass
    assert state(base, name) is S.PACKING


def test_temporary_locker_rollback_after_moving_on_is_swallowed(base, caplog):
    name, _ = base.create_shard(S.FULL)
    with pytest.raises(RuntimeError, match="late"):
        with base.maybe_lock_one_shard(S.FULL, S.PACKING):
            base.shard_packing_ends(name)  # clears the locker
            raise RuntimeError("late")
    assert state(base, name) is S.PACKED
    assert f"Could not unlock shard {name}" in caplog.text


# -- other shard operations -----------------------------------------------------------------


def test_record_shard_mapped(base):
    name, _ = base.create_shard(S.PACKED)
    assert base.record_shard_mapped("test", name) == {"test"}
    assert base.record_shard_mapped("test", name) == {"test"}
    assert base.record_shard_mapped(host="test2", name=name) == {"test", "test2"}
    with pytest.raises(ShardNotFound, match="Can't update shard nothing"):
        base.record_shard_mapped("test", "nothing")


def test_shard_lookups_of_unknown_shards(base):
    assert base.get_shard_info(1234) is None
    assert base.get_shard_state("nothing") is None
    assert base.get_shard_pool("nothing") is None


def test_list_shards_in_creation_order(base):
    made = [base.create_shard(S.STANDBY)[0] for _ in range(5)]
    base.set_shard_state(S.READONLY, name=made[2])
    assert [n for n, _ in base.list_shards()] == made
    assert [n for n, *_ in base.list_open_shards()] == made[:2] + made[3:]
    assert [n for n, *_ in base.list_open_shards(state=S.READONLY)] == []


def test_list_stale_shards(base):
    locked, _ = base.create_shard(S.WRITING)
    released, _ = base.create_shard(S.WRITING)
    base.set_shard_state(S.STANDBY, name=released)
    assert list(base.list_stale_shards()) == []  # nothing a day old
    stale = list(base.list_stale_shards(delay=timedelta(0)))
    assert [(n, s, locker) for n, s, _, locker in stale] == [(locked, S.WRITING, str(base.locker))]
    assert list(base.list_stale_shards(delay=timedelta(0), state=S.PACKING)) == []


def test_timestamps_are_utc_on_both_backends(base):
    base.locked_shard
    [(_, _, ts, _)] = base.list_open_shards()
    assert ts.tzinfo is timezone.utc
    assert abs(datetime.now(timezone.utc) - ts) < timedelta(minutes=5)


def test_list_shard_tables(base, dsn):
    if dsn.startswith("lmdb:"):
        with pytest.raises(NotImplementedError, match="no shard tables"):
            base.list_shard_tables()
        return
    import psycopg

    assert base.list_shard_tables() == []
    names = sorted(base.create_shard(S.WRITING)[0] for _ in range(2))
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in names:  # as winery's RWShard creates them
            conn.execute(f"CREATE TABLE shard_{name} (LIKE shard_template INCLUDING ALL)")
        try:
            assert base.list_shard_tables() == names
        finally:
            for name in names:
                conn.execute(f"DROP TABLE shard_{name}")


def test_release_lock(open_base):
    crashed, operator = open_base(), open_base()
    name = crashed.locked_shard
    assert operator.release_lock(name) is S.STANDBY
    assert state(operator, name) is S.STANDBY
    with pytest.raises(ValueError, match="no lock to release"):
        operator.release_lock(name)
    with pytest.raises(ShardNotFound):
        operator.release_lock("nothing")


def test_move_shard(base):
    name, _ = base.create_shard(S.PACKED, pool_name="pool-a")
    with pytest.raises(ValueError, match=f"Image {name} is in pool-a, not in pool-x"):
        base.move_shard(name, "pool-x", "pool-b")
    with pytest.raises(ValueError, match=rf"move_shard\({name}\) from pool-a to pool-b affected 0 rows"):
        base.move_shard(name, "pool-a", "pool-b")  # not readonly yet
    base.set_shard_state(S.READONLY, name=name)
    base.move_shard(name, "pool-a", "pool-b")
    assert base.get_shard_pool(name) == "pool-b"
