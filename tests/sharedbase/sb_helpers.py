"""Helpers shared by the SharedBase tests (imported by name: tests/ has no packages)."""

from __future__ import annotations

import hashlib
import os


def obj_id(n: int | str) -> bytes:
    """A deterministic 32-byte obj_id."""
    return hashlib.sha256(str(n).encode()).digest()


# -- workers of the multi-process tests (module-level: they run in spawned processes) --


def record_worker(dsn, ids, batch_size, start, results):
    """Record ``ids`` in batches into this process's shard; report what it was told."""
    import random

    from rdirdb import SharedBase

    random.Random(os.getpid()).shuffle(ids)
    owners = {}
    with SharedBase(dsn, active_pool_name="pool-a") as base:
        start.wait()
        for i in range(0, len(ids), batch_size):
            with base.transaction() as db:
                owners.update(base.record_new_obj_ids(db, ids[i:i + batch_size]))
        results.put((base.locked_shard_id, owners))


def lock_worker(dsn, start, results):
    """Lock FULL shards until none is left; report (name, id, locker) of each."""
    from rdirdb import SharedBase, ShardState

    got = []
    with SharedBase(dsn) as base:
        start.wait()
        while (locked := base.lock_one_shard(ShardState.FULL, ShardState.PACKING)) is not None:
            got.append((*locked, str(base.locker)))
    results.put(got)


def stale_writer(dsn, first, second, hold_seconds, events, results):
    """Commit ``first``; record ``second`` in a transaction held open ``hold_seconds``
    (an operator releases the shard meanwhile); then try ``second`` again."""
    import time

    from rdirdb import SharedBase
    from rdirdb.errors import FencingError

    with SharedBase(dsn, active_pool_name="pool-a") as base:
        with base.transaction() as db:
            base.record_new_obj_ids(db, first)
        results.put(("shard", base.locked_shard))
        with base.transaction() as db:
            base.record_new_obj_ids(db, second[:1])
            events["in_flight"].set()
            time.sleep(hold_seconds)
            committed_at = time.monotonic()
        results.put(("committed", committed_at))
        events["released"].wait(30)
        try:
            with base.transaction() as db:
                base.record_new_obj_ids(db, second[1:])
            results.put(("fenced", False))
        except FencingError:
            results.put(("fenced", True))


def foreign_process(dsn, packing, writing, results):
    """Another process's SharedBase (default locker scope) meddling with the
    shards ours hold: report what each attempt raised."""
    from rdirdb import SharedBase, ShardState

    outcomes = {}
    with SharedBase(dsn, active_pool_name="pool-a") as base:
        attempts = {
            "end packing": lambda: base.shard_packing_ends(packing),
            "roll back packing": lambda: base.set_shard_state(ShardState.FULL, name=packing, check_locker=True),
            "release writing": lambda: base.set_shard_state(ShardState.STANDBY, name=writing, check_locker=True),
        }
        for what, attempt in attempts.items():
            try:
                attempt()
                outcomes[what] = None
            except Exception as error:
                outcomes[what] = type(error).__name__
    results.put(outcomes)
