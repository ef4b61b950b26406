"""The installed ``rdirdb`` command, as users run it (``make install`` puts it next
to the interpreter), on this tree's sources."""

from __future__ import annotations

import os
import sys

import rdirdb

SRC = os.path.dirname(os.path.dirname(os.path.abspath(rdirdb.__file__)))
RDIRDB = os.path.join(os.path.dirname(sys.executable), "rdirdb")


def rdirdb_command(*args: object) -> list[str]:
    """The argv of ``rdirdb ARGS...``; fails when the command is not installed."""
    if not os.access(RDIRDB, os.X_OK):
        raise RuntimeError(f"no rdirdb command at {RDIRDB}: install the package (make install)")
    return [RDIRDB, *map(str, args)]


def rdirdb_env() -> dict[str, str]:
    """The environment to run it in: this tree's sources come first."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])))
