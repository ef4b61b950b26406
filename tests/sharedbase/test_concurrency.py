"""Several processes on one catalogue, on both backends (spawned processes:
each opens its own connections / LMDB environment)."""

import multiprocessing
import os
import threading
import time

import pytest
from sb_helpers import foreign_process, lock_worker, obj_id, record_worker, stale_writer

from rdirdb import SharedBase, ShardState

CTX = multiprocessing.get_context("spawn")
PROCESSES = 4


def run(target, args_for, timeout=90):
    """Start PROCESSES processes of ``target``, released together; return their results."""
    start, results = CTX.Event(), CTX.Queue()
    procs = [CTX.Process(target=target, args=(*args_for(i), start, results)) for i in range(PROCESSES)]
    for p in procs:
        p.start()
    start.set()
    out = [results.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(timeout)
        assert p.exitcode == 0
    return out


def test_overlapping_records_leave_each_id_in_one_shard(dsn):
    ids = [obj_id(i) for i in range(3000)]
    # Each process records 2/3 of the ids (a rotation), overlapping the others'.
    reports = run(record_worker, lambda i: (dsn, (ids[i * 750:] + ids[:i * 750])[:2000], 200))
    with SharedBase(dsn) as base:
        final = dict(zip(ids, base.contains_many(ids).tolist()))
        shard_ids = {shard_id for shard_id, _ in reports}
        assert len(shard_ids) == PROCESSES  # one shard per writer
        assert all(final[i] in shard_ids for i in ids)
        for _, owners in reports:  # what each writer was told is what holds
            assert all(final[i] == owner for i, owner in owners.items())
        counts = {base.get_shard_info(s)[0]: base.count_objects(base.get_shard_info(s)[0]) for s in shard_ids}
        assert sum(counts.values()) == len(ids)
        assert base.stats()["objects"] == {"present": len(ids)}


def test_racing_lockers_never_share_a_shard(dsn):
    with SharedBase(dsn, active_pool_name="pool-a") as base:
        made = {base.create_shard(ShardState.FULL)[0] for _ in range(60)}
        for name in made:
            base.set_shard_state(ShardState.FULL, name=name)
    reports = run(lock_worker, lambda i: (dsn,))
    got = [entry for report in reports for entry in report]
    names = [name for name, _, _ in got]
    assert len(names) == len(set(names))  # never twice
    assert set(names) == made  # and none missed
    with SharedBase(dsn) as base:
        lockers = {name: locker for name, _, _, locker in base.list_open_shards(state=ShardState.PACKING)}
    assert lockers == {name: locker for name, _, locker in got}


def test_stale_writer_is_fenced_and_loses_nothing(dsn):
    first = [obj_id(f"first-{i}") for i in range(50)]
    second = [obj_id(f"second-{i}") for i in range(50)]
    events = {"in_flight": CTX.Event(), "released": CTX.Event()}
    results = CTX.Queue()
    writer = CTX.Process(target=stale_writer, args=(dsn, first, second, 1.0, events, results))
    writer.start()
    try:
        kind, name = results.get(timeout=60)
        assert kind == "shard"
        assert events["in_flight"].wait(60)
        with SharedBase(dsn, active_pool_name="pool-a") as operator:
            # The release waits for the writer's open transaction...
            released = []
            thread = threading.Thread(target=lambda: released.append((operator.release_lock(name), time.monotonic())))
            thread.start()
            thread.join(30)
            kind, committed_at = results.get(timeout=30)
            assert kind == "committed"
            assert released and released[0][0] is ShardState.STANDBY
            assert released[0][1] >= committed_at
            # ...so the in-flight batch is kept, in the released shard.
            assert operator.contains(second[0]) is not None
            assert operator.count_objects(name) == len(first) + 1
            # Another writer takes the shard; the stale writer's next batch fails.
            assert operator.locked_shard == name
            events["released"].set()
            assert results.get(timeout=30) == ("fenced", True)
            assert operator.contains_many(second[1:]).tolist() == [0] * 49
            assert operator.contains_many(first).all()
            assert operator.get_shard_state(name) is ShardState.WRITING
    finally:
        writer.join(30)
    assert writer.exitcode == 0


def test_another_process_is_fenced_out_of_our_shards(dsn):
    """Lockers are per process: another process cannot end our packing nor
    release our shards, while our own SharedBases can (winery's handovers)."""
    with SharedBase(dsn, active_pool_name="pool-a") as base:
        writing = base.locked_shard
        packing, _ = base.create_shard(ShardState.FULL)
        base.set_shard_state(ShardState.FULL, name=packing)
        base.shard_packing_starts(packing)
        results = CTX.Queue()
        proc = CTX.Process(target=foreign_process, args=(dsn, packing, writing, results))
        proc.start()
        outcomes = results.get(timeout=60)
        proc.join(30)
        assert outcomes == dict.fromkeys(["end packing", "roll back packing", "release writing"], "FencingError")
        assert base.get_shard_state(packing) is ShardState.PACKING
        assert base.get_shard_state(writing) is ShardState.WRITING
        with SharedBase(dsn) as same_process:
            same_process.shard_packing_ends(packing)
        assert base.get_shard_state(packing) is ShardState.PACKED


def test_concurrent_adds_of_one_object(dsn):
    """winery's test_winery_add_concurrent: writers add one object, each holding
    its transaction open after recording; they finish in reverse order."""
    if dsn.startswith("lmdb:"):
        pytest.skip("LMDB runs one write transaction at a time: writers cannot overlap")
    something = obj_id("SOMETHING")
    bases = [SharedBase(dsn, active_pool_name="pool-a") for _ in range(PROCESSES)]
    events = [threading.Event() for _ in bases]
    owners = [None] * len(bases)

    def add(i):
        with bases[i].transaction() as db:
            owners[i] = bases[i].record_new_obj_ids(db, [something])[something]
            events[i].wait(30)

    try:
        threads = [threading.Thread(target=add, args=(i,)) for i in range(len(bases))]
        for t in threads:
            t.start()
        time.sleep(0.5)  # all are in record_new_obj_ids (or blocked in it)
        for event in reversed(events):
            event.set()
            time.sleep(0.05)
        for t in threads:
            t.join(30)
        winner = bases[0].contains(something)
        assert winner is not None and owners == [winner] * len(bases)
        assert len(list(bases[0].list_shards())) >= len(bases)  # each locked its own shard
    finally:
        for base in bases:
            base.close()


@pytest.mark.stress
@pytest.mark.skipif(os.environ.get("RDIRDB_STRESS") != "1", reason="set RDIRDB_STRESS=1 to run")
def test_stress_overlapping_records(dsn):
    ids = [obj_id(i) for i in range(200_000)]
    reports = run(record_worker, lambda i: (dsn, (ids[i * 50_000:] + ids[:i * 50_000])[:150_000], 5_000),
                  timeout=1200)
    with SharedBase(dsn) as base:
        assert base.contains_many(ids).all()
        assert base.stats()["objects"] == {"present": len(ids)}
        for _, owners in reports:
            final = dict(zip(list(owners), base.contains_many(list(owners)).tolist()))
            assert final == owners
