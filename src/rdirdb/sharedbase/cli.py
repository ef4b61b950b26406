"""``rdirdb sharedbase ...``: create, inspect and repair a SharedBase database.

``add_parser(subparsers)`` adds the command group to the main ``rdirdb`` parser;
each handler returns the process exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from rdirdb.sharedbase import SharedBase


def add_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    parser = subparsers.add_parser("sharedbase", help="winery's shard catalogue (SharedBase)")
    commands = parser.add_subparsers(dest="sharedbase_command", metavar="COMMAND", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("dsn", metavar="DSN", help="postgresql://... or host=... dbname=..., or lmdb:///dir")
        sub.set_defaults(handler=handler)
        return sub

    command("init", _init, "create the schema (version 5) in an empty database")
    command("list-shards", _list_shards, "list the shards with their state and object count").add_argument(
        "--json", action="store_true", help="print one JSON document")
    command("stats", _stats, "count shards per state and objects per state")
    command("release-lock", _release_lock,
            "release a locked shard whose holder is gone (WRITING->STANDBY, "
            "PACKING->FULL, CLEANING->PACKED)").add_argument("name", metavar="NAME")
    return parser


def _open(dsn: str) -> SharedBase:
    from rdirdb.sharedbase import SharedBase

    # A small pool: the CLI runs one statement at a time.
    pool: dict[str, Any] = {} if dsn.startswith("lmdb:") else {"min_size": 0, "max_size": 2}
    return SharedBase(dsn, application_name="rdirdb sharedbase CLI", **pool)


def _fail(error: Exception) -> int:
    print(f"rdirdb sharedbase: {error}", file=sys.stderr)
    return 1


def _init(args: argparse.Namespace) -> int:
    if args.dsn.startswith("lmdb:"):
        # The embedded backend creates its schema on open.
        _open(args.dsn).close()
        print(f"initialized {args.dsn}")
        return 0
    from rdirdb.sharedbase.schema import SCHEMA_VERSION, init_schema

    try:
        created = init_schema(args.dsn)
    except Exception as error:  # also psycopg's: connection refused, permissions...
        return _fail(error)
    print(f"{'created' if created else 'already at'} SharedBase schema version {SCHEMA_VERSION}")
    return 0


def _list_shards(args: argparse.Namespace) -> int:
    try:
        with _open(args.dsn) as base:
            shards = [
                {"name": name, "state": state.value, "objects": base.count_objects(name),
                 "pool": base.get_shard_pool(name)}
                for name, state in base.list_shards()
            ]
    except Exception as error:
        return _fail(error)
    if args.json:
        print(json.dumps(shards, indent=2))
    elif not shards:
        print("no shard")
    else:
        for shard in shards:
            print(f"{shard['name']:32}  {shard['state']:9}  {shard['objects']:>12}  {shard['pool']}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    try:
        with _open(args.dsn) as base:
            stats = base.stats()
    except Exception as error:
        return _fail(error)
    for section in ("shards", "objects"):
        counts = stats[section]
        details = ", ".join(f"{state} {count}" for state, count in sorted(counts.items())) or "none"
        print(f"{section}: {sum(counts.values())} ({details})")
    return 0


def _release_lock(args: argparse.Namespace) -> int:
    try:
        with _open(args.dsn) as base:
            state = base.release_lock(args.name)
    except Exception as error:
        return _fail(error)
    print(f"{args.name}: released to {state.value}")
    return 0
