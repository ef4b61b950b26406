"""The ``rdirdb`` command: one entry point, one subcommand per job.

Exit codes: 0 success, 1 the operation failed, 2 bad usage (argparse).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from rdirdb._version import __version__
from rdirdb.errors import RdirdbError

# Modules that add subcommands through ``add_parser(subparsers)``.
_COMMAND_MODULES = (
    "rdirdb.demo",
    "rdirdb.tools.leveldb",
    "rdirdb.tools.dump",
    "rdirdb.tools.stats",
    "rdirdb.tools.volume",
    "rdirdb.tools.rdir",
    "rdirdb.sharedbase.cli",
    "rdirdb.server.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rdirdb", description="rdirdb: index engine for object storage")
    parser.add_argument("--version", action="version", version=f"rdirdb {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in _COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args)
    except (RdirdbError, OSError) as exc:
        print(f"rdirdb {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
