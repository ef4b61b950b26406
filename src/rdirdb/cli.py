"""The ``rdirdb`` command: one entry point, one subcommand per job.

Exit codes: 0 success, 1 the operation failed, 2 bad usage, 130 interrupted (Ctrl-C),
141 the output was closed early (``rdirdb ... | head``): the command stops quietly,
as Unix tools killed by SIGPIPE do.

Errors go to stderr as ``rdirdb COMMAND: what is wrong``; with ``--json`` on the
command line, as one JSON object ``{"command": ..., "error": ...}`` instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Iterator, NoReturn

from rdirdb._version import __version__
from rdirdb.errors import RdirdbError
from rdirdb.tools.common import Main, describe

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

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_PIPE = 1, 2, 130, 141


def _print_error(command: str, message: str, as_json: bool) -> None:
    """``command`` is the subcommand's path (``volume push``), empty for ``rdirdb`` itself."""
    if as_json:
        print(json.dumps({"command": command or None, "error": message}), file=sys.stderr)
    else:
        print(f"rdirdb {command}: {message}" if command else f"rdirdb: {message}", file=sys.stderr)


def _parser_class(json_errors: bool) -> type[argparse.ArgumentParser]:
    class Parser(argparse.ArgumentParser):
        """Usage errors as JSON too when ``--json`` is on the command line."""

        def error(self, message: str) -> NoReturn:
            if not json_errors:
                super().error(message)
            _print_error(self.prog.removeprefix("rdirdb").strip(), message, True)
            self.exit(EXIT_USAGE)

    return Parser


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every leaf subcommand under ``parser``: its path (``("volume", "meta2", "push")``) and parser."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield path, parser
    for group in groups:
        for name, sub in group.choices.items():
            yield from commands(sub, (*path, name))


def build_parser(*, json_errors: bool = False) -> argparse.ArgumentParser:
    parser = _parser_class(json_errors)(prog="rdirdb", description="rdirdb: index engine for object storage")
    parser.add_argument("--version", action="version", version=f"rdirdb {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in _COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    for path, sub in commands(parser):
        sub.set_defaults(command_path=" ".join(path))  # what error messages name
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(json_errors="--json" in argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler: Main = args.handler  # set by every subcommand (tools.common.add_command and the like)
    try:
        return handler(args)
    except BrokenPipeError:
        # The reader went away: no message, and none when Python flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except (RdirdbError, OSError) as exc:
        _print_error(args.command_path, describe(exc), getattr(args, "json", False))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
