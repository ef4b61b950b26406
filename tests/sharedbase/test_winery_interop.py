"""winery's SharedBase and ours on one PostgreSQL database.

Needs an interpreter with swh-objstorage: $RDIRDB_PEER_PYTHON, or the
.venv-peer that `make peer-test` builds (which then runs these tests);
skipped otherwise.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sb_helpers import obj_id

from rdirdb import SharedBase, ShardState

ROOT = Path(__file__).resolve().parents[2]


def peer_python():
    python = os.environ.get("RDIRDB_PEER_PYTHON") or str(ROOT / ".venv-peer" / "bin" / "python")
    if not Path(python).exists():
        pytest.skip("no interpreter with swh-objstorage (make peer-test, or set RDIRDB_PEER_PYTHON)")
    return python


def winery(dsn, mode, **request):
    proc = subprocess.run(
        [peer_python(), str(Path(__file__).with_name("winery_peer.py")), dsn, mode],
        input=json.dumps(request), capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def pg_dsn(pg_module_dsn):
    import psycopg

    with psycopg.connect(pg_module_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE signature2shard, shards RESTART IDENTITY")
    return pg_module_dsn


def test_winery_writes_rdirdb_reads(pg_dsn):
    ids = [obj_id(i) for i in range(10)]
    written = winery(pg_dsn, "write", ids=[i.hex() for i in ids])
    with SharedBase(pg_dsn, active_pool_name="pool-a") as base:
        assert [base.contains(i) for i in ids] == [written["owners"][i.hex()] for i in ids]
        assert base.get(ids[0]) == (written["shard"], ShardState.WRITING)
        assert base.get_shard_pool(written["shard"]) == "pool-w"
        # Our writer overlaps winery's ids: they stay in winery's shard.
        with base.transaction() as db:
            owners = base.record_new_obj_ids(db, ids[5:] + [obj_id("ours")])
        assert owners[ids[5]] == written["owners"][ids[5].hex()]
        assert owners[obj_id("ours")] == base.locked_shard_id
        assert base.lock_one_shard(ShardState.FULL, ShardState.PACKING)[0] == written["full"]


def test_rdirdb_writes_winery_reads(pg_dsn):
    ids = [obj_id(i) for i in range(10)]
    with SharedBase(pg_dsn, active_pool_name="pool-a") as base:
        with base.transaction() as db:
            owners = base.record_new_obj_ids(db, ids)
        base.delete(ids[0])
        full, _ = base.create_shard(ShardState.FULL)
        base.set_shard_state(ShardState.FULL, name=full)
        read = winery(pg_dsn, "read", ids=[i.hex() for i in ids])
        assert read["version"] == 5
        assert read["contains"] == [None] + [owners[i] for i in ids[1:]]
        assert read["get"][1] == [base.locked_shard, "writing"]
        assert read["shards"] == [[base.locked_shard, "writing"], [full, "full"]]
        assert read["locked"] == full  # winery's packer takes our FULL shard
        assert base.get_shard_state(full) is ShardState.PACKING
