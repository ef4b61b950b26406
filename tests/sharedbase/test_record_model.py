"""record_new_obj_ids against a plain-Python model of its batch semantics, on both
backends: duplicates within a batch, ids present in other shards, tombstones,
and fence failures, which change nothing."""

from __future__ import annotations

import contextlib
import itertools
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sb_helpers import obj_id

from rdirdb import SharedBase, ShardState
from rdirdb.errors import ClosedError, FencingError

S = ShardState
POOL = 6  # ids per example: few, so that batches, writers and tombstones overlap


class Model:
    """What the index holds: each id's owner and state, each shard's present count."""

    def __init__(self) -> None:
        self.owner: dict[bytes, int] = {}
        self.deleted: set[bytes] = set()
        self.counts: dict[int, int] = {}

    def record(self, shard_id: int, ids: list[bytes]) -> dict[bytes, int]:
        """Winery's rule: a new id or a tombstone goes to our shard, a present id keeps its own."""
        self.counts.setdefault(shard_id, 0)
        owners = {}
        for i in sorted(set(ids)):
            if i not in self.owner or i in self.deleted:
                self.owner[i] = shard_id
                self.deleted.discard(i)
                self.counts[shard_id] += 1
            owners[i] = self.owner[i]
        return owners

    def delete(self, i: bytes) -> None:
        if i in self.owner and i not in self.deleted:
            self.deleted.add(i)
            self.counts[self.owner[i]] -= 1


def record(base, ids):
    with base.transaction() as db:
        return base.record_new_obj_ids(db, ids)


def check(reader, model: Model, ids: list[bytes]) -> None:
    present = [model.owner[i] if i in model.owner and i not in model.deleted else 0 for i in ids]
    assert reader.contains_many(ids).tolist() == present
    assert [reader.contains(i) for i in ids] == [p or None for p in present]
    tombstones = {entry[0] for entry in reader.deleted_objects()}
    assert {i for i in ids if i in tombstones} == model.deleted
    for shard_id, count in model.counts.items():
        name, _ = reader.get_shard_info(shard_id)
        assert reader.count_objects(name) == count


batches = st.lists(st.integers(0, POOL - 1), min_size=1, max_size=8)  # duplicates allowed
operations = st.lists(
    st.one_of(
        st.tuples(st.just("record"), st.integers(0, 1), batches),
        st.tuples(st.just("delete"), st.integers(0, POOL - 1)),
        st.tuples(st.sampled_from(["fence by state", "fence by locker"]), st.integers(0, 1), batches),
    ),
    min_size=1, max_size=16,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations)
def test_record_matches_the_model(dsn, ops):
    salt = uuid.uuid4()  # fresh ids per example: the database is shared by the examples
    ids = [obj_id(f"{salt}-{n}") for n in range(POOL)]
    with contextlib.ExitStack() as bases:  # closed after each example: PostgreSQL's connections are few
        pool = {} if dsn.startswith("lmdb:") else {"max_size": 2}

        def open_base(**kwargs):
            return bases.enter_context(SharedBase(dsn, active_pool_name="pool-a", **pool, **kwargs))

        writers, reader = [open_base(), open_base()], open_base()
        run(ops, ids, writers, reader, open_base)


def run(ops, ids, writers, reader, open_base) -> None:
    model = Model()
    for op in ops:
        if op[0] == "record":
            _, w, picks = op
            shard_id = writers[w].locked_shard_id  # a writer fenced earlier takes a new shard here
            chosen = [ids[n] for n in picks]
            owners = record(writers[w], chosen)
            assert owners == model.record(shard_id, chosen)
            assert list(owners) == sorted(set(chosen))
        elif op[0] == "delete":
            reader.delete(ids[op[1]])
            model.delete(ids[op[1]])
        else:
            _, w, picks = op
            name = writers[w].locked_shard
            if op[0] == "fence by state":  # someone moved the shard on
                reader.set_shard_state(S.FULL, name=name)
            else:  # someone else took it over, still WRITING
                open_base(locker_scope="instance").set_shard_state(S.WRITING, set_locker=True, name=name)
            with pytest.raises(FencingError, match="nothing was recorded"):
                record(writers[w], [ids[n] for n in picks])
        check(reader, model, ids)


def test_fence_truth_table(open_base):
    """The fence passes exactly for a shard WRITING or IMPORTING with our locker."""
    base, other = open_base(), open_base(locker_scope="instance")
    backend = base._backend
    name, shard_id = base.create_shard(S.STANDBY, name="fenced")
    new_id = itertools.count()
    for state, locker in itertools.product(S, (base.locker, other.locker, None)):
        backend.update_state(name, state, locker=locker)
        with pytest.raises(RuntimeError, match="roll back"):
            with backend.transaction() as db:
                owners = backend.record(db, shard_id, base.locker, [obj_id(f"t{next(new_id)}")])
                passed = owners is not None
                raise RuntimeError("roll back")
        assert passed == (state in (S.WRITING, S.IMPORTING) and locker == base.locker), (state, locker)
    assert base.count_objects(name) == 0


@pytest.fixture
def lmdb_base(tmp_path):
    from rdirdb import SharedBase

    with SharedBase(f"lmdb://{tmp_path}", active_pool_name="pool-a") as base:
        yield base


def test_native_record_rejects_bad_input(lmdb_base):
    from rdirdb import _shardmap

    backend = lmdb_base._backend
    shard_id = lmdb_base.locked_shard_id
    fence = b'{"state": "writing"'
    with backend.transaction() as txn:
        with pytest.raises(ValueError, match="32 bytes each"):
            _shardmap.record_new(txn, shard_id, (fence,), b"x" * 33)
        with pytest.raises(ValueError, match="1 to 4 fences"):
            _shardmap.record_new(txn, shard_id, (), obj_id(1))
        with pytest.raises(TypeError, match="non-empty bytes"):
            _shardmap.record_new(txn, shard_id, ("text",), obj_id(1))
        assert _shardmap.record_new(txn, shard_id, (b"not the row",), obj_id(1)) is None
    with pytest.raises(ClosedError):  # committed
        _shardmap.record_new(txn, shard_id, (fence,), obj_id(1))
    with backend.env.begin() as txn:
        with pytest.raises(ValueError, match="write transaction"):
            _shardmap.record_new(txn, shard_id, (fence,), obj_id(1))
    assert lmdb_base.contains(obj_id(1)) is None
    assert lmdb_base.count_objects() == 0
