"""The object index (reference §3.19–3.25, §7, §10), on both backends."""

import hashlib
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sb_helpers import obj_id

from rdirdb import ShardState
from rdirdb.errors import FencingError

S = ShardState
SOMETHING = bytes.fromhex("866878b165607851782d8d233edf0c261172ff67926330d3bbd10c705b92d24f")


def record(base, ids):
    with base.transaction() as db:
        return base.record_new_obj_ids(db, ids)


def test_record_and_read(base):
    assert hashlib.sha256(b"SOMETHING").digest() == SOMETHING  # winery's test vector
    shard_id = base.locked_shard_id
    assert record(base, [SOMETHING]) == {SOMETHING: shard_id}
    assert base.contains(SOMETHING) == shard_id
    assert base.get(SOMETHING) == (base.locked_shard, S.WRITING)
    assert base.count_objects() == 1
    assert base.count_objects(base.locked_shard) == 1


def test_unknown_objects(base):
    assert base.contains(obj_id("unknown")) is None
    assert base.get(obj_id("unknown")) is None


def test_record_returns_sorted_unique_ids(base):
    ids = [obj_id(i) for i in (3, 1, 2, 1, 3)]
    owners = record(base, ids)
    assert list(owners) == sorted(set(ids))
    assert set(owners.values()) == {base.locked_shard_id}
    assert base.count_objects() == 3
    assert record(base, []) == {}


def test_record_new_obj_id_singular(base):
    with base.transaction() as db:
        assert base.record_new_obj_id(db, obj_id(1)) == base.locked_shard_id
    assert base.record_new_obj_id(None, obj_id(2)) == base.locked_shard_id  # its own transaction
    assert base.count_objects() == 2


def test_present_objects_keep_their_shard(open_base):
    first, second = open_base(), open_base()
    record(first, [obj_id(1), obj_id(2)])
    owners = record(second, [obj_id(2), obj_id(3)])
    assert owners == {obj_id(2): first.locked_shard_id, obj_id(3): second.locked_shard_id}
    assert first.count_objects() == 2 and second.count_objects() == 1


def test_batch_mixing_new_present_and_deleted_ids(open_base, dsn):
    """The conflict path of a batch (new ids first try a plain insert, rolled
    back to a savepoint on a conflict), with lookups between."""
    other, base = open_base(), open_base(**({} if dsn.startswith("lmdb:") else {"max_size": 2}))
    for _ in range(12):  # psycopg prepares, on each connection, what it ran 5 times
        base.get_shard_state("nothing")
    for round in range(8):
        present, deleted, new = obj_id(f"p{round}"), obj_id(f"d{round}"), obj_id(f"n{round}")
        record(other, [present, deleted])
        other.delete(deleted)
        owners = record(base, [new, present, deleted])
        assert owners == {new: base.locked_shard_id, present: other.locked_shard_id,
                          deleted: base.locked_shard_id}
        assert base.contains(present) == other.locked_shard_id
        assert base.get(deleted) == (base.locked_shard, S.WRITING)
        assert list(base.deleted_objects()) == []
    assert base.count_objects() == 16 and other.count_objects() == 8


def test_aborted_transaction_records_nothing(base):
    with pytest.raises(RuntimeError, match="abort"):
        with base.transaction() as db:
            base.record_new_obj_ids(db, [obj_id(1)])
            raise RuntimeError("abort")
    assert base.contains(obj_id(1)) is None
    # The instance still writes afterwards (on LMDB its shard lock was rolled back too).
    assert record(base, [obj_id(1)]) == {obj_id(1): base.locked_shard_id}


@pytest.mark.parametrize("bad, error", [
    ([b"short"], ValueError),
    (["a" * 32], TypeError),
    (b"x" * 32, TypeError),  # one id, not a list of ids
    ([obj_id(9), 42], TypeError),
])
def test_bad_obj_ids_change_nothing(base, bad, error):
    with pytest.raises(error):
        record(base, bad)
    assert base.contains(obj_id(9)) is None
    assert list(base.list_shards()) == []
    for write in (base.delete, base.clean_deleted_object):
        with pytest.raises(ValueError, match="32-byte"):
            write(b"unknown")


def test_lookups_of_ids_of_another_size_find_nothing(base):
    """winery's test_winery_add_get reads b"unknown" and expects "not found"."""
    record(base, [obj_id(1)])
    for other_size in (b"", b"unknown", obj_id(1)[:31], obj_id(1) + b"\0"):
        assert base.contains(other_size) is None
        assert base.get(other_size) is None
    assert base.contains(bytearray(obj_id(1))) == base.locked_shard_id
    for not_bytes in ("a" * 32, None, 42):
        with pytest.raises(TypeError, match="obj_id must be bytes"):
            base.contains(not_bytes)
        with pytest.raises(TypeError, match="obj_id must be bytes"):
            base.get(not_bytes)


def test_delete_and_tombstones(base):
    record(base, [obj_id(1), obj_id(2)])
    base.delete(obj_id(1))
    base.delete(obj_id("never recorded"))  # silently nothing
    assert base.contains(obj_id(1)) is None and base.get(obj_id(1)) is None
    assert base.count_objects() == 1
    assert list(base.list_signatures()) == [obj_id(2)]
    assert list(base.deleted_objects()) == [(obj_id(1), base.locked_shard, S.WRITING, "pool-a")]
    assert list(base.deleted_objects(pool_name="pool-b")) == []
    base.clean_deleted_object(obj_id(2))  # not a tombstone: kept
    assert base.contains(obj_id(2)) is not None
    base.clean_deleted_object(obj_id(1))
    assert list(base.deleted_objects()) == []


def test_deleted_objects_are_grouped_by_pool_then_shard(open_base):
    """winery's cleaner groups them with itertools.groupby: one run per shard."""
    writers = [open_base(active_pool_name=pool) for pool in ("pool-b", "pool-a", "pool-c", "pool-a")]
    expected = []
    for n, writer in enumerate(writers):
        ids = [obj_id(f"{n}-{i}") for i in range(4)]
        record(writer, ids)
        for i in ids:
            writer.delete(i)
        expected += [(i, writer.locked_shard, S.WRITING, writer.active_pool_name) for i in ids]
    entries = list(writers[0].deleted_objects())
    assert sorted(entries) == sorted(expected)
    assert [(e[3], e[1]) for e in entries] == sorted((e[3], e[1]) for e in expected)
    assert sorted(writers[0].deleted_objects("pool-a")) == sorted(e for e in expected if e[3] == "pool-a")


def test_re_add_after_delete_moves_to_the_current_shard(open_base):
    old, new = open_base(), open_base()
    record(old, [obj_id(1)])
    old.delete(obj_id(1))
    assert record(new, [obj_id(1)]) == {obj_id(1): new.locked_shard_id}
    assert new.get(obj_id(1)) == (new.locked_shard, S.WRITING)
    assert old.count_objects() == 0 and new.count_objects() == 1
    assert list(new.deleted_objects()) == []
    new.clean_deleted_object(obj_id(1))  # re-added meanwhile: not wiped
    assert new.contains(obj_id(1)) == new.locked_shard_id


def test_count_objects(base):
    assert base.count_objects("nothing") == 0
    with pytest.raises(ValueError, match="Can't count objects, no shard specified or locked"):
        base.count_objects()
    assert base.count_objects(base.locked_shard) == 0


def test_list_signatures(base):
    ids = sorted(obj_id(i) for i in range(20))
    record(base, ids)
    base.delete(ids[5])
    present = ids[:5] + ids[6:]
    assert list(base.list_signatures()) == present
    assert list(base.list_signatures(limit=3)) == present[:3]
    assert list(base.list_signatures(after_id=ids[4], limit=2)) == present[5:7]
    assert list(base.list_signatures(after_id=ids[-1])) == []


def test_list_signatures_pages(base, monkeypatch):
    import rdirdb.sharedbase.base as base_module

    monkeypatch.setattr(base_module, "_SIGNATURES_PAGE", 3)
    ids = sorted(obj_id(i) for i in range(10))
    record(base, ids)
    assert list(base.list_signatures()) == ids
    assert list(base.list_signatures(limit=7)) == ids[:7]


def test_contains_many(base):
    ids = [obj_id(i) for i in range(10)]
    record(base, ids[:6])
    base.delete(ids[0])
    expected = [base.contains(i) or 0 for i in ids]
    assert expected.count(0) == 5
    as_list = base.contains_many(ids)
    assert as_list.dtype == np.int64 and as_list.tolist() == expected
    matrix = np.frombuffer(b"".join(ids), dtype=np.uint8).reshape(-1, 32)
    assert base.contains_many(matrix).tolist() == expected
    assert base.contains_many(np.array(ids, dtype="S32")).tolist() == expected
    assert base.contains_many([]).tolist() == []
    with pytest.raises(ValueError, match=r"\(n, 32\) uint8"):
        base.contains_many(np.zeros((3, 16), dtype=np.uint8))
    with pytest.raises(ValueError, match="32-byte"):
        base.contains_many([b"short"])


def test_fenced_writer_fails_and_writes_nothing(open_base):
    writer, operator = open_base(), open_base()
    record(writer, [obj_id(1)])
    name = writer.locked_shard
    operator.release_lock(name)  # the operator thinks the writer is dead
    with pytest.raises(FencingError, match="nothing was recorded"):
        record(writer, [obj_id(2), obj_id(3)])
    assert operator.contains(obj_id(2)) is None and operator.contains(obj_id(3)) is None
    assert operator.contains(obj_id(1)) is not None  # earlier writes are kept
    # The writer moves on to a shard of its own.
    owners = record(writer, [obj_id(2)])
    assert owners[obj_id(2)] == writer.locked_shard_id
    assert writer.locked_shard == name  # it re-adopted the released STANDBY shard


def test_fencing_after_packing_started(open_base):
    writer, packer = open_base(), open_base()
    record(writer, [obj_id(1)])
    packer.set_shard_state(ShardState.FULL, name=writer.locked_shard)
    packer.shard_packing_starts(writer.locked_shard)
    with pytest.raises(FencingError):
        record(writer, [obj_id(2)])
    assert packer.count_objects(packer.get_shard_info(1)[0]) == 1


def test_create_shard_for_import(base):
    with base.create_shard_for_import("image-1", "pool-z") as db:
        assert base.get_shard_state("image-1") is S.IMPORTING
        owners = base.record_new_obj_ids(db, [obj_id(1), obj_id(2)])
    assert set(owners.values()) == {1}  # the first shard of an empty base
    assert base.get_shard_info(1) == ("image-1", S.READONLY)
    assert base.get_shard_pool("image-1") == "pool-z"
    assert base._locked_shard is None
    assert base.get(obj_id(1)) == ("image-1", S.READONLY)


def test_create_shard_for_import_rolls_back(base):
    with pytest.raises(OSError, match="bad image"):
        with base.create_shard_for_import("image-2", "pool-z") as db:
            base.record_new_obj_ids(db, [obj_id(1)])
            raise OSError("bad image")
    assert base.get_shard_state("image-2") is None
    assert base.contains(obj_id(1)) is None
    assert base._locked_shard is None


def test_create_shard_for_import_needs_a_free_instance(base):
    base.locked_shard
    with pytest.raises(RuntimeError, match="A shard is already locked"):
        with base.create_shard_for_import("image-3", "pool-z"):
            pass
    assert base.get_shard_state("image-3") is None


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["record", "delete", "clean"]),
                          st.lists(st.integers(0, 15), max_size=6)), max_size=12))
def test_index_matches_a_model(base, operations):
    """Random record/delete/clean sequences agree with a dict model."""
    salt = uuid.uuid4()  # fresh ids per example: the base is shared by the examples
    ids = [obj_id(f"{salt}-{i}") for i in range(16)]
    shard_id = base.locked_shard_id
    model = {}  # obj_id -> "present" | "deleted"
    for op, picks in operations:
        chosen = [ids[i] for i in picks]
        if op == "record":
            owners = record(base, chosen)
            assert set(owners) == set(chosen) and set(owners.values()) <= {shard_id}
            model.update({i: "present" for i in chosen})
        for i in chosen:
            if op == "delete":
                base.delete(i)
                if i in model:
                    model[i] = "deleted"
            elif op == "clean":
                base.clean_deleted_object(i)
                if model.get(i) == "deleted":
                    del model[i]
    present = sorted(i for i, s in model.items() if s == "present")
    assert [i for i in ids if base.contains(i)] == [i for i in ids if i in present]
    assert base.contains_many(ids).tolist() == [shard_id if i in present else 0 for i in ids]
    tombstones = {t[0] for t in base.deleted_objects()}
    assert {i for i in ids if i in tombstones} == {i for i, s in model.items() if s == "deleted"}


def test_unrecorded_ids_are_an_error(base, monkeypatch):
    """Winery's check (dead there: its set difference is reversed) fires here."""
    record_all = base._backend.record

    def record_but_one(db, shard_id, locker, ids):
        owners = record_all(db, shard_id, locker, ids)
        owners.pop(ids[0])
        return owners

    monkeypatch.setattr(base._backend, "record", record_but_one)
    ids = sorted([obj_id(1), obj_id(2)])
    with pytest.raises(RuntimeError, match=f"Could not record all objects in any shard: missing {ids[0].hex()}"):
        record(base, ids)


def test_db_must_be_an_open_transaction(base):
    with pytest.raises(TypeError, match="db must be"):
        base.record_new_obj_ids("not a transaction", [obj_id(1)])
    with base.transaction() as db:
        pass
    with pytest.raises(ValueError, match="open"):
        base.record_new_obj_ids(db, [obj_id(1)])  # committed already
    assert base.contains(obj_id(1)) is None


def test_shard_ids_out_of_range(base):
    assert base.get_shard_info(0) is None
    assert base.get_shard_info(-1) is None
    assert base.get_shard_info(2**64) is None
    with pytest.raises(TypeError):
        base.get_shard_info("1")


def test_lmdb_map_grows_under_a_big_batch(tmp_path):
    from rdirdb import SharedBase
    from rdirdb.errors import MapFullError

    ids = [obj_id(i) for i in range(40_000)]
    with SharedBase(f"lmdb://{tmp_path}", active_pool_name="pool-a", map_size=1 << 20) as base:
        with pytest.raises(MapFullError, match="run the transaction again"):
            with base.transaction() as db:  # the caller's transaction: not replayed
                base.record_new_obj_ids(db, ids)
        assert base.contains(ids[0]) is None
        more = ids + [obj_id(f"more-{i}") for i in range(80_000)]  # needs several growths
        owners = base.record_new_obj_ids(None, more)  # our own transaction: replayed
        assert set(owners.values()) == {base.locked_shard_id}
        assert base.contains_many(more).all()


def test_winery_style_transaction(base, dsn):
    if dsn.startswith("lmdb:"):
        with pytest.raises(AttributeError, match="use base.transaction"):
            base.pool
        return
    with base.pool.connection() as db, db.transaction():
        assert base.record_new_obj_ids(db, [obj_id(1)]) == {obj_id(1): base.locked_shard_id}
    assert base.contains(obj_id(1)) == base.locked_shard_id
