"""Runs winery's own SharedBase (swh-objstorage) for test_winery_interop.py.

Executed by the interpreter that has swh-objstorage (see that test):
``python winery_peer.py DSN write|read`` with a JSON argument on stdin;
prints a JSON answer.
"""

import json
import sys

from swh.objstorage.backends.winery.sharedbase import SharedBase, ShardState


def main() -> None:
    dsn, mode = sys.argv[1], sys.argv[2]
    request = json.load(sys.stdin)
    base = SharedBase(base_dsn=dsn, active_pool_name="pool-w")
    if mode == "write":
        ids = [bytes.fromhex(h) for h in request["ids"]]
        with base.pool.connection() as db, db.transaction():
            owners = base.record_new_obj_ids(db, ids)
        full, _ = base.create_shard(ShardState.FULL)
        base.set_shard_state(ShardState.FULL, name=full)
        answer = {"shard": base.locked_shard, "owners": {k.hex(): v for k, v in owners.items()}, "full": full}
    else:
        ids = [bytes.fromhex(h) for h in request["ids"]]
        answer = {
            "contains": [base.contains(i) for i in ids],
            "get": [None if (g := base.get(i)) is None else [g[0], g[1].value] for i in ids],
            "shards": [[name.rstrip(), state.value] for name, state in base.list_shards()],
            "version": base.current_version,
        }
        locked = base.lock_one_shard(ShardState.FULL, ShardState.PACKING)
        answer["locked"] = locked[0].rstrip() if locked else None
    base.pool.close()
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
