"""``rdirdb export`` and ``rdirdb import``: volumes to and from checksummed JSON lines.

A dump is UTF-8 text, one compact JSON object per line::

    {"format":"rdirdb-dump","version":1,"checksum":"xxh3_64"}
    {"volume":"127.0.0.1:6200","type":"rawx","admin":{"incident_date":"1533039131"}}
    {"container_id":"…","content_id":"…","chunk_id":"…","mtime":1533039000,"path":"a","version":1}
    {"end":"127.0.0.1:6200","type":"rawx","records":1}
    {"volume":"127.0.0.1:6120","type":"meta2","admin":{}}
    {"container_id":"…","container_url":"NS/acct/ct","extra_data":null,"mtime":0}
    {"end":"127.0.0.1:6120","type":"meta2","records":1}
    {"checksum":"0123456789abcdef"}

The last line holds the xxh3_64 digest (hex) of every byte before it. Both
sides stream: memory stays bounded by one page (export) or one batch (import).
Export reads each volume, its admin keys and all its records, in one LMDB
read transaction (:meth:`~rdirdb.rdir.store.Volume.snapshot`): on a store
that is being written, each volume's dump is the state it had when its turn
came, whatever the writers commit meanwhile. Volumes are separate LMDB
environments, so each has its own instant (the first volume's is the oldest).

Import writes into a staging area (see :class:`~rdirdb.tools.common.Staging`)
while it hashes the stream, because stdin cannot be read twice; only when the
checksum and every volume's record count match are the volumes moved into the
store. A corrupted or truncated dump therefore imports nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import uuid
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, Iterator, TextIO, TypedDict

from rdirdb.errors import RdirdbError
from rdirdb.progress import Progress
from rdirdb.rdir.store import SERVICE_TYPES, Store, Volume
from rdirdb.tools.common import (
    BATCH,
    CommandError,
    Staging,
    Subparsers,
    VolumeExists,
    add_filter_flags,
    add_json_flag,
    add_store_flag,
    describe,
    format_admin,
    handler,
    open_store,
    print_json,
    print_table,
    put,
    record_count,
    scan,
    select_volumes,
)

if TYPE_CHECKING:
    import xxhash

FORMAT = "rdirdb-dump"
VERSION = 1
ALGORITHM = "xxh3_64"


class VolumeSummary(TypedDict):
    """What an export or an import reports of one volume."""

    type: str
    volume: str
    records: int
    admin: dict[str, str]


def _hasher() -> xxhash.xxh3_64:
    try:
        import xxhash
    except ImportError:
        raise CommandError("dumps need the xxhash package: pip install xxhash") from None
    return xxhash.xxh3_64()


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


# -- export -------------------------------------------------------------------


def export(store: Store, selected: list[tuple[str, str]], out: BinaryIO, bar: Progress) -> list[VolumeSummary]:
    """Write the selected volumes as a dump; returns one summary per volume."""
    digest = _hasher()

    def write(obj: dict[str, Any]) -> None:
        line = _encode(obj)
        digest.update(line)
        out.write(line)

    write({"format": FORMAT, "version": VERSION, "checksum": ALGORITHM})
    summary: list[VolumeSummary] = []
    for service_type, volume_id in selected:
        vol = store.volume(volume_id, service_type)
        with vol.snapshot() as txn:
            admin = vol.admin_show(txn) if service_type == "rawx" else {}
            write({"volume": volume_id, "type": service_type, "admin": admin})
            records = 0
            for page in scan(vol, txn):
                for record in page:
                    write(record)
                records += len(page)
                bar.update(len(page))
        write({"end": volume_id, "type": service_type, "records": records})
        summary.append({"type": service_type, "volume": volume_id, "records": records, "admin": admin})
    out.write(_encode({"checksum": digest.hexdigest()}))
    return summary


@contextlib.contextmanager
def _output(path: str) -> Iterator[BinaryIO]:
    """stdout for ``-`` (closed early by its reader: rdirdb.cli stops quietly); otherwise a
    temporary file renamed to ``path`` on success only."""
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.partial")
    try:
        f = open(tmp, "xb", buffering=1 << 20)  # mode 0666 & ~umask, like any new file
    except OSError as exc:
        raise CommandError(f"cannot write {path!r}: {exc.strerror}") from None
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# -- import -------------------------------------------------------------------


def read_dump(stream: Iterable[bytes], bar: Progress) -> Iterator[tuple[int, bytes]]:
    """``(line number, line)`` for every line before the checksum line.

    After the last line, raises ``CommandError`` unless the checksum line is
    there and matches: consumers must not trust what they got before that.
    """
    digest = _hasher()
    held: bytes | None = None
    lineno = 0
    for line in stream:
        bar.update(len(line))
        if held is not None:
            digest.update(held)
            yield lineno, held
        held = line
        lineno += 1
    try:
        expected = json.loads(held)["checksum"] if held is not None else None
    except (ValueError, TypeError, KeyError):
        expected = None
    if expected is None:
        raise CommandError("the dump is truncated or corrupted: its last line is not the checksum line")
    if expected != digest.hexdigest():
        raise CommandError(
            f"checksum mismatch ({ALGORITHM} {digest.hexdigest()}, the dump says {expected}): "
            "the dump is corrupted; nothing was imported"
        )


class _Loader:
    """Applies the lines of a dump to a staging area, checking its structure."""

    def __init__(self, staging: Staging, bar: Progress) -> None:
        self.staging = staging
        self.bar = bar
        self.vol: Volume | None = None
        self.batch: list[dict[str, Any]] = []
        self.admin: dict[str, str] = {}
        self.summary: list[VolumeSummary] = []
        self.header = False

    def line(self, lineno: int, line: bytes) -> None:
        obj = json.loads(line)
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        if lineno == 1:
            if obj.get("format") != FORMAT or obj.get("version") != VERSION or obj.get("checksum") != ALGORITHM:
                raise ValueError(f"not an {FORMAT} version {VERSION} dump with an {ALGORITHM} checksum")
            self.header = True
        elif "volume" in obj:
            self._begin(obj)
        elif "end" in obj:
            self._end(obj)
        elif self.vol is None:
            raise ValueError("a record outside of any volume")
        else:
            self.batch.append(obj)
            if len(self.batch) >= BATCH:
                self._flush()

    def _begin(self, obj: dict[str, Any]) -> None:
        if self.vol is not None:
            raise ValueError(f"volume {self.vol.volume_id!r} has no end line")
        volume_id, service_type, admin = obj["volume"], obj["type"], obj.get("admin") or {}
        if not isinstance(volume_id, str) or service_type not in SERVICE_TYPES:
            raise ValueError(f"bad volume line: {obj}")
        if not all(isinstance(v, str) for v in admin.values()) or (admin and service_type != "rawx"):
            raise ValueError(f"bad admin keys for {service_type} volume {volume_id!r}: {admin}")
        self.vol = self.staging.volume(volume_id, service_type)
        for key, value in admin.items():
            self.vol.admin_set(key, value)
        self.admin = admin

    def _end(self, obj: dict[str, Any]) -> None:
        vol = self.vol
        if vol is None or obj["end"] != vol.volume_id or obj.get("type") != vol.service_type:
            raise ValueError(f"end line without its volume line: {obj}")
        self._flush()
        count = record_count(vol)
        if count != obj.get("records"):
            raise ValueError(f"volume {vol.volume_id!r}: {count:,} records imported, the dump says {obj.get('records')}")
        self.summary.append({"type": vol.service_type, "volume": vol.volume_id, "records": count, "admin": self.admin})
        self.vol = None

    def _flush(self) -> None:
        if self.batch:
            assert self.vol is not None
            put(self.vol, self.batch)
            self.bar.count(len(self.batch))
            self.batch = []

    def finish(self) -> None:
        if not self.header:
            raise CommandError("the dump is empty")
        if self.vol is not None:
            raise CommandError(f"volume {self.vol.volume_id!r} has no end line")


def import_dump(store_path: str, stream: Iterable[bytes], bar: Progress) -> list[VolumeSummary]:
    """Load a dump into new volumes of the store, all or nothing; one summary per volume."""
    with Staging(store_path) as staging:
        loader = _Loader(staging, bar)
        lines = read_dump(stream, bar)
        for lineno, line in lines:
            try:
                loader.line(lineno, line)
            except VolumeExists:
                raise
            except (RdirdbError, ValueError, TypeError, KeyError) as exc:
                for _ in lines:  # read on: a corrupted dump is reported as such
                    pass
                raise CommandError(f"line {lineno}: {describe(exc)}; nothing was imported") from exc
        loader.finish()
        staging.publish()
    return loader.summary


# -- command line ----------------------------------------------------------------


def add_parser(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="dump volumes as checksummed JSON lines",
        description="Dump a volume (or all) as JSON lines, with an xxh3_64 checksum as the last line. "
        "Safe on a served store: each volume is dumped as of one instant (one LMDB read transaction).",
    )
    add_store_flag(p)
    add_filter_flags(p)
    p.add_argument("-o", "--output", metavar="FILE", default="-",
                   help="the dump file, written only on success ('-', the default: stdout)")
    add_json_flag(p)
    p.set_defaults(handler=handler(_export_main))

    p = subparsers.add_parser(
        "import",
        help="load a dump written by 'rdirdb export'",
        description="Load a dump into new volumes of a store. The checksum and the record counts "
        "are verified before any volume is added: a corrupted dump imports nothing.",
    )
    add_store_flag(p)
    p.add_argument("-i", "--input", metavar="FILE", default="-", help="the dump ('-', the default: stdin)")
    add_json_flag(p)
    p.set_defaults(handler=handler(_import_main))


def _report(args: argparse.Namespace, summary: list[VolumeSummary], out: TextIO) -> None:
    if args.json:
        print_json({"volumes": summary, "records": sum(v["records"] for v in summary)}, out)
    else:
        rows = [(v["type"], v["volume"], v["records"], format_admin(v["admin"]))
                for v in summary]
        print_table(("TYPE", "VOLUME", "RECORDS", "ADMIN"), rows, out)


@contextlib.contextmanager
def _sigterm_ends_cleanly() -> Iterator[None]:
    """SIGTERM (kill, timeout, systemd) exits through the context managers, as Ctrl-C does.

    By default it kills the process at once, and the reader slot of the open
    snapshot would then keep the writers from reusing pages (the file grows)
    until some process opens the volume again.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _export_main(args: argparse.Namespace) -> int:
    with _sigterm_ends_cleanly(), open_store(args.db_path, readonly=True) as store:
        selected = select_volumes(store, args.volume, args.type)
        total = sum(record_count(store.volume(v, t)) for t, v in selected)
        with Progress(total, "exporting") as bar, _output(args.output) as out:
            summary = export(store, selected, out, bar)
    # stdout may carry the dump itself
    _report(args, summary, sys.stderr if args.output == "-" else sys.stdout)
    return 0


def _import_main(args: argparse.Namespace) -> int:
    if args.input == "-":
        summary = _import_from(args.db_path, sys.stdin.buffer, None)
    else:
        with open(args.input, "rb", buffering=1 << 20) as stream:
            summary = _import_from(args.db_path, stream, os.fstat(stream.fileno()).st_size)
    _report(args, summary, sys.stdout)
    return 0


def _import_from(store_path: str, stream: BinaryIO, size: int | None) -> list[VolumeSummary]:
    with Progress(size, "importing", unit="bytes", also="records") as bar:
        return import_dump(store_path, stream, bar)
