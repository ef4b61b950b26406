"""``rdirdb volume ...``: one volume's index, through an :class:`~rdirdb.rdir.client.RdirClient`.

Every subcommand works on a store (``--db-path``, embedded) or on rdir
servers (``--rdir-hosts`` or ``--registry``, remote), with the semantics of
OpenIO's rdir (reference §5): ``create``, ``push`` and ``fetch`` of chunk
records, ``status``, ``incident get|set``, ``lock``/``unlock``/``show``,
``clear``, and ``meta2 push|fetch|delete`` for meta2 volumes.

``push`` reads JSON lines, the records ``fetch --json`` writes, so
``fetch --json | push`` copies a volume. It is all or nothing for bad input: the
whole input is checked (JSON, fields, the engine's rules) before anything is
written, stdin being spooled to an unlinked temporary file meanwhile; ``--stream``
pushes each batch as it is read instead (one pass, nothing spooled: a bad line
stops the push with the batches before it written).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shlex
import sys
import tempfile
import time
from typing import IO, Any, Callable, Iterable, Iterator

from rdirdb._rdir import CHUNK_DTYPE_FIELDS, encode_chunks, encode_meta2
from rdirdb.rdir.backend import pages
from rdirdb.rdir.backend import CHUNK_DEFAULTS, DEFAULT_LIMIT
from rdirdb.rdir.client import RdirClient, cid_from_name
from rdirdb.errors import RdirdbError
from rdirdb.progress import Progress
from rdirdb.rdir.store import SERVICE_TYPES
from rdirdb.tools.common import (
    CommandError,
    Main,
    Record,
    Subparsers,
    add_command,
    add_group,
    add_target_flags,
    count,
    describe,
    format_admin,
    open_client,
    print_json,
    print_table,
)

PUSH_BATCH = 1000  # records per request (a server caps a page at 10000)
CHUNK_FIELDS = CHUNK_DTYPE_FIELDS
META2_FIELDS = ("container_url", "container_id", "mtime", "extra_data")



# -- command line ----------------------------------------------------------------


def add_parser(subparsers: Subparsers) -> None:
    commands = add_group(
        subparsers, "volume",
        help="a volume's index: create, push, fetch, status, incident, lock, clear, meta2",
        description="Read and administer volume indexes in a store (--db-path) or on rdir servers "
        "(--rdir-hosts, or --registry to find each volume's rdir servers).",
    )

    sub = _command(commands, "create", _create_main, "create volume indexes (idempotent)", many=True)
    sub.add_argument("--type", choices=SERVICE_TYPES, default="rawx", help="the volume type (default: rawx)")

    sub = _command(commands, "push", _push_main,
                   "index chunk records read as JSON lines, in batches (nothing if a line is bad)")
    _add_input_flags(sub)
    sub.add_argument("--create", action="store_true", help="create the volume if it does not exist")

    sub = _command(commands, "fetch", _fetch_main, "list chunk records (--json: JSON lines, as push reads)")
    _add_listing_flags(sub, "container id prefix")
    sub.add_argument("--rebuild", action="store_true",
                     help="only the chunks to rebuild (mtime <= the incident date; none without an incident)")

    sub = _command(commands, "status", _status_main, "chunks (and chunks to rebuild) per container")
    sub.add_argument("--prefix", metavar="CID", help="only the containers whose id starts with CID")

    incident_commands = add_group(commands, "incident", help="get or set the incident date",
                                  description="Get or set the incident date of volumes.")
    _command(incident_commands, "get", _incident_get_main, "show the incident date (0: none)", many=True)
    sub = _command(incident_commands, "set", _incident_set_main,
                   "set the incident date: chunks with an older mtime are to rebuild", many=True)
    sub.add_argument("--date", type=int, help="seconds since the epoch (default: now; 0 removes the incident)")

    sub = _command(commands, "lock", _lock_main, "lock volumes for an owner (Forbidden if another holds it)",
                   many=True)
    sub.add_argument("--who", "--key", dest="who", required=True, metavar="WHO", help="the lock owner")
    _command(commands, "unlock", _unlock_main, "drop the lock, whoever holds it", many=True)
    _command(commands, "show", _show_main, "show the admin keys (lock, incident date)", many=True)

    sub = _command(commands, "clear", _clear_main,
                   "clear volumes; every clear removes the incident date and the lock", many=True)
    sub.add_argument("--all", action="store_true", help="remove every chunk record")
    sub.add_argument("--before-incident", action="store_true", help="remove the chunks to rebuild")
    sub.add_argument("--repair", action="store_true", help="rewrite the remaining records in the current encoding")

    meta2_commands = add_group(commands, "meta2", help="meta2 volumes: push, fetch, delete",
                               description="Index, list and deindex the containers of a meta2 volume.")
    sub = _command(meta2_commands, "push", _meta2_push_main,
                   "index containers read as JSON lines (container_url, container_id, mtime, extra_data); "
                   "nothing if a line is bad")
    _add_input_flags(sub)
    sub = _command(meta2_commands, "fetch", _meta2_fetch_main,
                   "list container records (--json: JSON lines, as meta2 push reads)")
    _add_listing_flags(sub, "container URL prefix")
    _command(meta2_commands, "clear", _meta2_clear_main,
             "remove every container record (and tombstone) of meta2 volumes: a replica down longer "
             "than the tombstone retention, before it is repaired", many=True)
    sub = _command(meta2_commands, "delete", _meta2_delete_main, "deindex one container")
    sub.add_argument("--container-url", metavar="NS/ACCOUNT/CONTAINER", help="the container URL")
    sub.add_argument("--container-id", metavar="CID", help="the container id (found from the URL if omitted)")


def _command(commands: Subparsers, name: str, main: Main, help: str, *,
             many: bool = False) -> argparse.ArgumentParser:
    sub = add_command(commands, name, main, help)
    if many:
        sub.add_argument("volumes", nargs="+", metavar="VOLUME", help="volume ids (rawx: host:port or service id)")
    else:
        sub.add_argument("volume", metavar="VOLUME", help="the volume id")
    add_target_flags(sub)
    return sub


def _add_input_flags(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("-i", "--input", metavar="FILE", default="-", help="JSON lines ('-', the default: stdin)")
    sub.add_argument("--batch-size", type=count("records"), default=PUSH_BATCH, metavar="N",
                     help=f"records per request (default {PUSH_BATCH})")
    sub.add_argument("--stream", action="store_true",
                     help="push each batch as soon as it is read, in one pass (default: check the whole "
                     "input first, so that a bad line writes nothing)")


def _add_listing_flags(sub: argparse.ArgumentParser, prefix: str) -> None:
    sub.add_argument("--prefix", metavar="PREFIX", help=f"only the records whose {prefix} starts with PREFIX")
    sub.add_argument("--marker", metavar="MARKER", help="start after this key (exclusive; rawx: CID|CHUNK_ID)")
    sub.add_argument("--limit", type=count("records"), metavar="N", help="at most N records (default: all)")


# -- per-volume admin commands ----------------------------------------------------


def _headers(keys: Iterable[str]) -> list[str]:
    return [key.upper().replace("_", " ") for key in keys]


def _each(args: argparse.Namespace, action: Callable[[RdirClient, str], dict[str, Any]], *,
          create: bool = False) -> int:
    """Run ``action`` on every volume and report one row per volume."""
    rows: list[dict[str, Any]] = []
    with open_client(args, create=create) as client:
        for volume in args.volumes:
            try:
                rows.append({"volume": volume, **action(client, volume)})
            except RdirdbError as exc:
                done = f" (done before: {', '.join(r['volume'] for r in rows)})" if rows else ""
                raise CommandError(f"volume {volume!r}: {exc}{done}") from exc
    if args.json:
        print_json({"volumes": rows})
    else:
        print_table(_headers(rows[0]), [list(row.values()) for row in rows])
    return 0


def _create_main(args: argparse.Namespace) -> int:
    def create(client: RdirClient, volume: str) -> dict[str, Any]:
        client.create(volume, args.type)
        return {"type": args.type, "status": "created"}

    return _each(args, create, create=True)


def _incident_get_main(args: argparse.Namespace) -> int:
    return _each(args, lambda client, volume: {"incident_date": client.admin_incident_get(volume)})


def _incident_set_main(args: argparse.Namespace) -> int:
    date = int(time.time()) if args.date is None else args.date

    def set_incident(client: RdirClient, volume: str) -> dict[str, Any]:
        client.admin_incident_set(volume, date)
        return {"incident_date": client.admin_incident_get(volume)}

    return _each(args, set_incident)


def _lock_main(args: argparse.Namespace) -> int:
    def lock(client: RdirClient, volume: str) -> dict[str, Any]:
        client.admin_lock(volume, args.who)
        return {"lock": args.who}

    return _each(args, lock)


def _unlock_main(args: argparse.Namespace) -> int:
    def unlock(client: RdirClient, volume: str) -> dict[str, Any]:
        client.admin_unlock(volume)
        return {"status": "unlocked"}

    return _each(args, unlock)


def _show_main(args: argparse.Namespace) -> int:
    if args.json:
        return _each(args, lambda client, volume: {"admin": client.admin_show(volume)})
    return _each(args, lambda client, volume: {"admin": format_admin(client.admin_show(volume)) or "-"})


def _clear_main(args: argparse.Namespace) -> int:
    def clear(client: RdirClient, volume: str) -> dict[str, Any]:
        return dict(client.admin_clear(volume, clear_all=args.all, before_incident=args.before_incident,
                                       repair=args.repair))

    return _each(args, clear)


def _meta2_clear_main(args: argparse.Namespace) -> int:
    return _each(args, lambda client, volume: dict(client.meta2_index_clear(volume)))


def _status_main(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        status = client.status(args.volume, prefix=args.prefix)
    if args.json:
        print_json(status)
        return 0
    rows = [(cid, c.get("total", 0), c.get("to_rebuild", "-")) for cid, c in sorted(status["container"].items())]
    chunk = status["chunk"]
    rows.append(("(all)", chunk.get("total", 0), chunk.get("to_rebuild", "-")))
    print_table(("CONTAINER", "CHUNKS", "TO REBUILD"), rows)
    return 0


# -- push ---------------------------------------------------------------------------


Check = Callable[[list[Record]], object]  # encode_chunks or encode_meta2: raises for a bad batch


def _checked_batches(stream: Iterable[bytes], size: int, record: Callable[[Record], Record], check: Check,
                     bar: Progress) -> Iterator[list[Record]]:
    """The JSON lines of ``stream`` as lists of ``size`` records (blank lines skipped),
    each checked by the engine's rules; a ``CommandError`` names the first bad line."""
    batch: list[Record] = []
    lines: list[int] = []
    for lineno, line in enumerate(stream, 1):
        bar.update(len(line))
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            batch.append(record(obj))
        except (ValueError, TypeError, KeyError) as exc:
            raise CommandError(f"line {lineno}: {describe(exc)}") from None
        lines.append(lineno)
        if len(batch) >= size:
            _check(check, batch, lines)
            yield batch
            batch, lines = [], []
    if batch:
        _check(check, batch, lines)
        yield batch


def _check(check: Check, batch: list[Record], lines: list[int]) -> None:
    try:
        check(batch)
    except (ValueError, TypeError) as exc:
        for record, lineno in zip(batch, lines):  # which line: check them one by one
            try:
                check([record])
            except (ValueError, TypeError) as bad:
                raise CommandError(f"line {lineno}: {describe(bad).removeprefix('record 0: ')}") from None
        raise CommandError(f"lines {lines[0]} to {lines[-1]}: {describe(exc)}") from None


def _push(args: argparse.Namespace, record: Callable[[Record], Record], check: Check,
          send: Callable[[RdirClient, list[Record]], object], *, create: bool) -> int:
    pushed = 0
    with contextlib.ExitStack() as stack:
        stream: IO[bytes] = sys.stdin.buffer
        if args.input != "-":
            stream = stack.enter_context(open(args.input, "rb", buffering=1 << 20))
        try:
            if not args.stream:
                stream = _checked_input(stream, args, record, check, stack)
            size = None if stream is sys.stdin.buffer else os.fstat(stream.fileno()).st_size
            client = stack.enter_context(open_client(args, create=create))
            with Progress(size, "pushing", unit="bytes") as bar:
                for batch in _checked_batches(stream, args.batch_size, record, check, bar):
                    send(client, batch)
                    pushed += len(batch)
        except RdirdbError as exc:
            done = f"{pushed:,} records pushed before the error" if pushed else "nothing was pushed"
            raise CommandError(f"{describe(exc)} ({done})") from exc
    if args.json:
        print_json({"volume": args.volume, "records": pushed})
    else:
        print_table(("VOLUME", "RECORDS"), [(args.volume, pushed)])
    return 0


def _checked_input(stream: IO[bytes], args: argparse.Namespace, record: Callable[[Record], Record], check: Check,
                   stack: contextlib.ExitStack) -> IO[bytes]:
    """Check the whole input, before anything is written; returns it to be read again
    (stdin is copied meanwhile into a temporary file, unlinked from the start)."""
    copy = None
    lines: Iterable[bytes] = stream
    if stream is sys.stdin.buffer:
        copy = stack.enter_context(tempfile.TemporaryFile(prefix="rdirdb-push-"))
        lines = _copied(stream, copy)
    size = None if copy is not None else os.fstat(stream.fileno()).st_size
    with Progress(size, "checking", unit="bytes") as bar:
        for _ in _checked_batches(lines, args.batch_size, record, check, bar):
            pass
    checked = copy if copy is not None else stream
    checked.seek(0)
    return checked


def _copied(stream: Iterable[bytes], copy: IO[bytes]) -> Iterator[bytes]:
    for line in stream:
        copy.write(line)
        yield line


def _chunk_record(obj: Record) -> Record:
    missing = [f for f in ("container_id", "content_id", "chunk_id") if f not in obj]
    if missing:
        raise ValueError(f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return {**CHUNK_DEFAULTS, **obj}


def _meta2_record(obj: Record) -> Record:
    url = obj["container_url"]
    cid = obj.get("container_id")
    if cid is None:
        parts = url.split("/", 2) if isinstance(url, str) else []
        if len(parts) != 3:
            raise ValueError(f"container_url {url!r} is not NS/account/container")
        cid = cid_from_name(parts[1], parts[2])
    return {"container_url": url, "container_id": cid, "mtime": obj.get("mtime", 0),
            "extra_data": obj.get("extra_data")}


def _push_main(args: argparse.Namespace) -> int:
    return _push(args, _chunk_record, encode_chunks,
                 lambda client, batch: client.chunk_push_batch(args.volume, batch, create=args.create),
                 create=args.create)


def _meta2_push_main(args: argparse.Namespace) -> int:
    # As the reference, a meta2 push creates the volume.
    return _push(args, _meta2_record, encode_meta2,
                 lambda client, batch: client.backend.meta2_push(args.volume, batch), create=True)


# -- fetch ---------------------------------------------------------------------------


def _print_records(args: argparse.Namespace, fields: tuple[str, ...], records: Iterable[Record]) -> None:
    """JSON lines (streamed) with ``--json``, else a table; says on stderr where to go on
    after --limit (with ``--json``, as ``{"next_marker": ...}``)."""
    limited = itertools.islice(records, args.limit + 1) if args.limit is not None else records
    shown: list[Record] = []
    for record in limited:
        if len(shown) == args.limit:
            marker = _marker(shown[-1])
            if args.json:
                print(json.dumps({"next_marker": marker}), file=sys.stderr)
            else:
                print(f"more records follow: --marker {shlex.quote(marker)}", file=sys.stderr)
            break
        shown.append(record)
        if args.json:
            sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
    if not args.json:
        print_table(_headers(fields), [[r[f] for f in fields] for r in shown])
    sys.stdout.flush()


def _marker(record: Record) -> str:
    """The listing position of a record, as --marker takes it."""
    if "container_url" in record:
        return str(record["container_url"])
    return f"{record['container_id']}|{record['chunk_id']}"


def _page_size(limit: int | None) -> int:
    return DEFAULT_LIMIT if limit is None else min(limit + 1, DEFAULT_LIMIT)


def _fetch_main(args: argparse.Namespace) -> int:
    page = _page_size(args.limit)
    with open_client(args) as client:
        entries = client.chunk_fetch(args.volume, limit=page, rebuild=args.rebuild, container_id=args.prefix,
                                     start_after=args.marker)
        records = ({"container_id": cid, "chunk_id": chunk, **value} for cid, chunk, value in entries)
        _print_records(args, CHUNK_FIELDS, ({f: r[f] for f in CHUNK_FIELDS} for r in records))
    return 0


def _meta2_fetch_main(args: argparse.Namespace) -> int:
    page = _page_size(args.limit)

    def records(client: RdirClient) -> Iterator[Record]:
        for records in pages(client.backend.meta2_page, args.marker, volume=args.volume, prefix=args.prefix,
                             limit=page):
            for record in records:
                yield {f: record.get(f) for f in META2_FIELDS}

    with open_client(args) as client:
        _print_records(args, META2_FIELDS, records(client))
    return 0


def _meta2_delete_main(args: argparse.Namespace) -> int:
    if args.container_url is None and args.container_id is None:
        args.parser.error("give --container-url, --container-id or both")
    with open_client(args) as client:
        client.meta2_index_delete(args.volume, container_path=args.container_url, container_id=args.container_id)
    result = {"volume": args.volume, "container_url": args.container_url, "container_id": args.container_id,
              "status": "deleted"}
    if args.json:
        print_json(result)
    else:
        print_table(_headers(result), [[v or "-" for v in result.values()]])
    return 0
