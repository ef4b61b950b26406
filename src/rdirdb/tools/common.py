"""What the store subcommands share: flags, output, volume scans and the staging area.

Output: a human table on stdout by default, one JSON document with ``--json``.
Errors raise :class:`CommandError`; ``rdirdb.cli`` prints it and exits with 1.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import sys
import tempfile
from typing import Any, Callable, Iterator, Sequence, TextIO, TypeAlias

from rdirdb._lmdb import Transaction
from rdirdb._rdir import CHUNK_DTYPE_FIELDS
from rdirdb.rdir.backend import pages
from rdirdb.rdir.client import RdirClient
from rdirdb.errors import RdirdbError
from rdirdb.rdir.store import SERVICE_TYPES, Store, Volume, volume_file_name

BATCH = 10_000  # records per write transaction; sorted input: 1,000 to 100,000 run alike (docs/engine.md)
PAGE = 10_000  # records per read page


Main = Callable[[argparse.Namespace], int]  # a subcommand's handler: the exit code
Record = dict[str, Any]  # a record as its JSON holds it, and as ``put_batch`` takes it
# What ``add_parser`` takes (a string: argparse's class is not subscriptable at run time).
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class CommandError(RdirdbError):
    """A subcommand failed; the message says why (exit code 1)."""


class VolumeExists(CommandError):
    """An import would overwrite a volume of the target store."""


def handler(main: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A subcommand's handler, with OS errors (disk full, permission denied) as clear failures."""

    @functools.wraps(main)
    def run(args: argparse.Namespace) -> int:
        try:
            return main(args)
        except BrokenPipeError:
            raise  # the reader went away: rdirdb.cli stops quietly
        except OSError as exc:
            raise CommandError(describe(exc)) from exc

    return run


def describe(exc: BaseException) -> str:
    """What went wrong, in words (no exception reprs, no HTTP status without HTTP)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg} at column {exc.colno})"
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]}" if exc.args else "a field is missing"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


# -- flags ----------------------------------------------------------------------


def count(what: str) -> Callable[[str], int]:
    """An argparse type: a whole number of ``what``, at least 1."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"expected a number of {what}, at least 1, not {text!r}")
        return value

    return parse


def seconds(*, zero: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds, positive (or zero if ``zero``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            least = "zero or more" if zero else "more than zero"
            raise argparse.ArgumentTypeError(f"expected a number of seconds, {least}, not {text!r}")
        return value

    return parse


def add_store_flag(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument(
        "--db-path", metavar="STORE", required=required, help="the rdirdb store directory"
    )


def add_filter_flags(parser: argparse.ArgumentParser) -> None:
    """``--volume`` and ``--type``, as :func:`select_volumes` applies them."""
    parser.add_argument("--volume", metavar="ID", help="only this volume (default: all)")
    parser.add_argument("--type", choices=SERVICE_TYPES, help="only volumes of this type (default: both)")


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON, for scripts")


def add_group(subparsers: Subparsers, name: str, help: str, description: str) -> Subparsers:
    """A command made of subcommands (``rdirdb volume ...``); add them to what it returns."""
    parser = subparsers.add_parser(name, help=help, description=description)
    return parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)


def add_command(commands: Subparsers, name: str, main: Main, help: str) -> argparse.ArgumentParser:
    """A subcommand of a group: ``help`` as its description, ``--json``, ``main`` as its handler."""
    sub = commands.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
    add_json_flag(sub)
    sub.set_defaults(handler=handler(main), parser=sub)
    return sub


def host_list(text: str) -> list[str]:
    """An argparse type: ``host:port[,host:port...]`` (or rdir service ids) as a list."""
    hosts = [h.strip() for h in text.split(",") if h.strip()]
    if not hosts:
        raise argparse.ArgumentTypeError("expected HOST[,HOST...]")
    return hosts


def check_address(host: str) -> str:
    """``host`` if it is ``HOST:PORT``, else a ``CommandError``."""
    name, _, port = host.rpartition(":")
    if not name or not port.isdigit():
        raise CommandError(f"{host!r} is not HOST:PORT")
    return host


def add_target_flags(parser: argparse.ArgumentParser) -> None:
    """Where the volumes are, exactly one of: a store (embedded) or rdir servers (remote)."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--db-path", metavar="STORE", help="the rdirdb store directory (embedded)")
    group.add_argument("--rdir-hosts", metavar="HOST[,HOST]", type=host_list,
                       help="the rdir servers holding the volumes (host:port, comma-separated)")
    add_registry_flag(group, required=False)


def add_registry_flag(parser: Any, *, required: bool = True) -> None:
    parser.add_argument("--registry", metavar="URL", required=required,
                        help="the service registry (file:///path.json or postgresql://...): "
                        "rdir services and their assignments")


def open_client(args: argparse.Namespace, *, create: bool = False) -> RdirClient:
    """The :class:`~rdirdb.rdir.client.RdirClient` of :func:`add_target_flags`; a missing
    store is an error unless ``create``."""
    if args.db_path is not None:
        if not create and not os.path.isdir(args.db_path):
            raise CommandError(f"no store at {args.db_path!r}")
        return RdirClient({"db_path": args.db_path})
    if args.rdir_hosts:
        return RdirClient({"rdir_hosts": [check_address(host) for host in args.rdir_hosts]})
    return RdirClient({"registry": args.registry})


def open_store(path: str, *, readonly: bool) -> Store:
    """An existing store (``CommandError`` when ``path`` is not a directory)."""
    if not os.path.isdir(path):
        raise CommandError(f"no store at {path!r}")
    return Store(path, readonly=readonly)


# -- output -------------------------------------------------------------------


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO | None = None) -> None:
    """Columns sized to their content; numbers right-aligned with thousands separators,
    ``-`` for no value (None)."""
    out = out or sys.stdout
    cells = [[_cell(c) for c in row] for row in rows]
    numeric = [bool(rows) and all(isinstance(r[i], int) for r in rows) for i in range(len(headers))]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    print(line(headers), file=out)
    for row in cells:
        print(line(row), file=out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def format_admin(admin: dict[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in admin.items())


def print_json(data: Any, out: TextIO | None = None) -> None:
    print(json.dumps(data, indent=2, sort_keys=False), file=out or sys.stdout)


# -- volumes ----------------------------------------------------------------------


def select_volumes(store: Store, volume_id: str | None, service_type: str | None) -> list[tuple[str, str]]:
    """``(service_type, volume_id)`` of the stored volumes that match the filters."""
    types = [service_type] if service_type else list(SERVICE_TYPES)
    selected = [(t, v) for t in types for v in store.volumes(t) if volume_id in (None, v)]
    if not selected:
        kind = f"{service_type} volume" if service_type else "volume"
        what = f"{kind} {volume_id!r}" if volume_id else kind
        raise CommandError(f"no {what} in the store {store.path!r}")
    return selected


def record_count(vol: Volume) -> int:
    return vol.chunks.count() if vol.service_type == "rawx" else vol.meta2.count()


def scan(vol: Volume, txn: Transaction | None = None) -> Iterator[list[Record]]:
    """Every record of a volume, page by page, as the dicts ``put_batch`` accepts;
    with ``txn`` (:meth:`~rdirdb.rdir.store.Volume.snapshot`), all as of that one state."""
    for page in pages(vol.index.fetch, limit=PAGE, txn=txn):
        yield page if vol.service_type == "meta2" else [dict(zip(CHUNK_DTYPE_FIELDS, record)) for record in page]


def put(vol: Volume, records: list[Record]) -> None:
    (vol.chunks if vol.service_type == "rawx" else vol.meta2).put_batch(records)


# -- staging ----------------------------------------------------------------------


class Staging:
    """Volumes built in a private store under the target's root, moved in once complete.

    An import writes every volume into ``<root>/.staging-XXXX/`` (invisible to
    the store, on the same file system) and :meth:`publish` renames each
    finished volume directory into place, so a failed or interrupted import
    leaves the target store as it was: ``close()`` (or leaving the ``with``
    block) removes whatever was staged. Imports only create volumes: a volume
    that already exists in the target store is an error, found before writing.
    """

    def __init__(self, root: str) -> None:
        os.makedirs(root, exist_ok=True)
        self.root = root
        self.path = tempfile.mkdtemp(prefix=".staging-", dir=root)
        # Synced once, in publish(). Imports append in key order, which runs
        # faster without MDB_WRITEMAP (benches/batch_size.py).
        self.store = Store(self.path, sync=False, writemap=False)
        self.staged: list[Volume] = []

    def target(self, volume_id: str, service_type: str) -> str:
        return os.path.join(self.root, service_type, volume_file_name(volume_id))

    def check_absent(self, volume_id: str, service_type: str) -> None:
        if os.path.exists(os.path.join(self.target(volume_id, service_type), "data.mdb")):
            raise VolumeExists(
                f"{service_type} volume {volume_id!r} already exists in {self.root!r}; "
                "imports only create volumes (remove it first, or import into another store)"
            )

    def volume(self, volume_id: str, service_type: str) -> Volume:
        self.check_absent(volume_id, service_type)
        if self.store.exists(volume_id, service_type):
            raise CommandError(f"{service_type} volume {volume_id!r} appears twice in the input")
        vol = self.store.volume(volume_id, service_type, create=True)
        self.staged.append(vol)
        return vol

    def publish(self) -> None:
        """Flush the staged volumes and rename them into the store, all or none."""
        for vol in self.staged:
            vol.env.sync(True)
        self.store.close()
        moved: list[tuple[str, str]] = []
        try:
            for vol in self.staged:
                self.check_absent(vol.volume_id, vol.service_type)
                src = os.path.join(self.path, vol.service_type, volume_file_name(vol.volume_id))
                dst = self.target(vol.volume_id, vol.service_type)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                os.rename(src, dst)
                moved.append((src, dst))
        except BaseException:
            for src, dst in reversed(moved):
                os.rename(dst, src)
            raise
        for service_type in {vol.service_type for vol in self.staged}:
            _fsync_dir(os.path.join(self.root, service_type))

    def close(self) -> None:
        self.store.close()
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
