"""``rdirdb sharedbase ...`` through the ``rdirdb`` entry point, on both backends."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sb_helpers import obj_id

from rdirdb import SharedBase, ShardState
from rdirdb.cli import main

SUBCOMMANDS = ["init", "list-shards", "stats", "release-lock"]


def run(*argv: str) -> int:
    """``rdirdb *argv`` in this process, as the installed command runs it."""
    return main(list(argv))


def rdirdb_command(*argv: str) -> subprocess.CompletedProcess:
    """The installed ``rdirdb`` script of this interpreter's environment."""
    script = Path(sys.executable).with_name("rdirdb")
    assert script.exists(), f"{script}: rdirdb is not installed in this environment"
    return subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ""})


@pytest.mark.parametrize("subcommand", SUBCOMMANDS)
def test_every_subcommand_runs_as_the_installed_command(subcommand, dsn):
    """What the issue found: each one crashed with "'Namespace' object has no attribute 'handler'"."""
    args = [dsn, "nothing"] if subcommand == "release-lock" else [dsn]
    proc = rdirdb_command("sharedbase", subcommand, *args)
    assert "Traceback" not in proc.stderr, proc.stderr
    if subcommand == "release-lock":  # an empty catalogue has no such shard
        assert proc.returncode == 1 and proc.stderr.startswith("rdirdb sharedbase: ")
    else:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout


def test_help_lists_every_subcommand():
    proc = rdirdb_command("sharedbase", "--help")
    assert proc.returncode == 0
    assert all(name in proc.stdout for name in SUBCOMMANDS)
    missing = rdirdb_command("sharedbase")
    assert missing.returncode == 2 and "required" in missing.stderr


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
