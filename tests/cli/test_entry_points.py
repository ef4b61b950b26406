"""Every subcommand of the real parser is run by some test through the installed command.

Tests that built their own parser once let every ``rdirdb sharedbase`` subcommand ship
broken (the parser set no handler). This module reads the test sources and fails when a
subcommand of ``rdirdb.cli.build_parser()`` is never called as ``cli("group", "command", ...)``
(the fixture that runs the installed ``rdirdb``) or ``main(["group", "command", ...])``
(``rdirdb.cli.main``).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from rdirdb._version import __version__
from rdirdb.cli import build_parser, commands
from tests.entry_point import RDIRDB, rdirdb_command, rdirdb_env

TESTS = Path(__file__).resolve().parents[1]
# Groups whose entry-point tests live with their owners (checked there, by name here).
DELEGATED = {"sharedbase": TESTS / "sharedbase" / "test_cli.py"}


def _leading_strings(nodes: list[ast.expr]) -> tuple[str, ...]:
    words = []
    for node in nodes:
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            break
        words.append(node.value)
    return tuple(words)


def entry_point_calls(source: str) -> set[tuple[str, ...]]:
    """The leading literal words of every ``cli(...)``, ``cli.json(...)`` and ``main([...])`` call."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (isinstance(func, ast.Name) and func.id == "cli") or (
            isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "cli"
        ):
            found.add(_leading_strings(node.args))
        elif ((isinstance(func, ast.Name) and func.id == "main")
              or (isinstance(func, ast.Attribute) and func.attr == "main")) and node.args:
            if isinstance(node.args[0], (ast.List, ast.Tuple)):
                found.add(_leading_strings(node.args[0].elts))
    return found


def test_every_subcommand_has_an_entry_point_test():
    calls: set[tuple[str, ...]] = set()
    for path in TESTS.rglob("*.py"):
        if "stress" not in path.parts:
            calls |= entry_point_calls(path.read_text(encoding="utf-8"))
    leaves = [path for path, _ in commands(build_parser())]
    assert len(leaves) > 20 and ("volume", "meta2", "push") in leaves and ("serve",) in leaves
    missing = [
        " ".join(path) for path in leaves
        if path[0] not in DELEGATED and not any(call[: len(path)] == path for call in calls)
    ]
    assert not missing, f"subcommands never run through the installed rdirdb command by a test: {missing}"
    for group, where in DELEGATED.items():
        assert any(path[0] == group for path in leaves) and where.exists(), (group, where)


def test_the_scan_sees_what_it_must():
    source = '''
def test_a(cli):
    cli("volume", "meta2", "push", "v", *store)
    cli.json("rdir", "copy", x)
    main(["stats", path])
    rdirdb.cli.main(("demo", "--count", "1"))
    help_text(capsys, "volume", "lock")  # an in-process parser: not the entry point
    other("export")
'''
    assert entry_point_calls(source) == {
        ("volume", "meta2", "push", "v"), ("rdir", "copy"), ("stats",), ("demo", "--count", "1"),
    }


def test_the_cli_fixture_runs_the_installed_command(cli):
    assert RDIRDB == os.path.join(os.path.dirname(sys.executable), "rdirdb")
    assert rdirdb_command("stats")[0] == RDIRDB
    proc = cli("--version")
    assert (proc.returncode, proc.stdout.decode()) == (0, f"rdirdb {__version__}\n")
    # the command and ``python -m rdirdb`` are the same program
    module = subprocess.run([sys.executable, "-m", "rdirdb", "--version"], capture_output=True, env=rdirdb_env())
    assert module.stdout == proc.stdout


def test_serve_through_the_entry_point(cli, tmp_path):
    """The handler runs (the other server tests start ``rdirdb serve`` for real)."""
    proc = cli("serve", "--db-path", tmp_path / "missing", "--bind", "127.0.0.1:0")
    assert proc.returncode == 1
    assert f"cannot start: database directory '{tmp_path / 'missing'}' does not exist" in proc.stderr.decode()
