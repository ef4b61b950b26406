"""Run ``python -m rdirdb`` in a subprocess, on the worktree's sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


class Cli:
    def __call__(self, *args: object, input: bytes | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=str(SRC))
        return subprocess.run(
            [sys.executable, "-m", "rdirdb", *map(str, args)],
            input=input, capture_output=True, env=env, timeout=120,
        )

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
