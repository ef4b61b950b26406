"""Run the installed ``rdirdb`` command in a subprocess, on the worktree's sources."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.entry_point import rdirdb_command, rdirdb_env


class Cli:
    """``cli(*args)`` runs ``rdirdb ARGS...`` and returns the completed process."""

    def __call__(self, *args: object, input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(rdirdb_command(*args), input=input, capture_output=True, env=rdirdb_env(),
                              timeout=timeout)

    def json(self, *args: object, input: bytes | None = None) -> dict:
        """Run with --json; the command must succeed."""
        proc = self(*args, "--json", input=input)
        assert proc.returncode == 0, proc.stderr.decode()
        return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def cli() -> Cli:
    return Cli()


def staging_leftovers(store_path: Path) -> list[str]:
    return [p.name for p in store_path.glob(".staging-*")] if store_path.exists() else []
