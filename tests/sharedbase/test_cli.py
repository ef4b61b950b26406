"""``rdirdb sharedbase ...`` through add_parser(), on both backends."""

import argparse
import json

import pytest
from sb_helpers import obj_id

from rdirdb import SharedBase, ShardState
from rdirdb.sharedbase.cli import add_parser


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="rdirdb")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_init_creates_then_keeps(pg_scratch_db, capsys):
    assert run("sharedbase", "init", pg_scratch_db) == 0
    assert run("sharedbase", "init", pg_scratch_db) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["created SharedBase schema version 5", "already at SharedBase schema version 5"]


def test_init_unreachable_server_fails(capsys):
    assert run("sharedbase", "init", "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2") == 1
    assert capsys.readouterr().err.startswith("rdirdb sharedbase: ")


def test_init_lmdb(tmp_path, capsys):
    assert run("sharedbase", "init", f"lmdb://{tmp_path}/new") == 0
    assert (tmp_path / "new" / "data.mdb").exists()


@pytest.fixture
def populated(dsn):
    with SharedBase(dsn, active_pool_name="pool-a") as base:
        with base.transaction() as db:
            base.record_new_obj_ids(db, [obj_id(i) for i in range(3)])
        full, _ = base.create_shard(ShardState.FULL)
        base.set_shard_state(ShardState.FULL, name=full)
        yield base, base.locked_shard, full


def test_list_shards(dsn, populated, capsys):
    base, writing, full = populated
    assert run("sharedbase", "list-shards", "--json", dsn) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"name": writing, "state": "writing", "objects": 3, "pool": "pool-a"},
        {"name": full, "state": "full", "objects": 0, "pool": "pool-a"},
    ]
    assert run("sharedbase", "list-shards", dsn) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [writing, "writing", "3", "pool-a"]


def test_stats(dsn, populated, capsys):
    assert run("sharedbase", "stats", dsn) == 0
    assert capsys.readouterr().out.splitlines() == [
        "shards: 2 (full 1, writing 1)",
        "objects: 3 (present 3)",
    ]


def test_release_lock(dsn, populated, capsys):
    base, writing, full = populated
    assert run("sharedbase", "release-lock", dsn, writing) == 0
    assert capsys.readouterr().out == f"{writing}: released to standby\n"
    assert base.get_shard_state(writing) is ShardState.STANDBY
    assert run("sharedbase", "release-lock", dsn, full) == 1
    assert "no lock to release" in capsys.readouterr().err
    assert run("sharedbase", "release-lock", dsn, "nothing") == 1
