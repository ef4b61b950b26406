"""``rdirdb import-leveldb DB_PATH``: migrate an OpenIO rdir data directory.

OpenIO's rdir keeps one LevelDB per volume under its ``db_path``
(rdir-reference.md §4):

* ``<db_path>/<volume id>``, a rawx volume:
  ``chunk|<container_id>|<chunk_id>`` → ``{"content_id","mtime"?,"path","version"}``
  (since 2021); the legacy ``chunk|<container_id>|<content_id>|<chunk_id>`` →
  ``{"container_id","content_id","chunk_id","mtime"[,"rtime"]}`` (2017 to 2021);
  ``admin|incident_date`` (decimal) and ``admin|lock`` (the owner, raw);
* ``<db_path>/meta2-<address>``, a meta2 volume:
  ``container|<url>`` → ``{"container_id","container_url","extra_data","mtime"}``.

Decisions:

* Volume ids. A rawx database's directory name is its volume id. A meta2
  database is named ``meta2-`` + its address with the *first* ``:`` replaced
  by ``-``, which cannot be undone in general (a service id such as
  ``OPENIO-meta2-1`` is used as is). The rule: ``meta2-<IPv4>-<port>`` gives
  ``<IPv4>:<port>``; ``meta2-[<IPv6>…`` gets its first ``-`` back as ``:``;
  any other name is kept as is. ``--meta2-volume NAME=ID`` overrides it (for
  host names).
* Legacy records take their ids from the key and ``mtime = max(mtime, rtime)``
  (how the 2018 server read them). They have no path nor version: those come
  from ``path``/``content_path`` and ``version``/``content_version`` when the
  value has them, else ``""`` and ``0``.
* A chunk under both key formats keeps its current record; among legacy keys
  of one chunk (different content ids), the first in key order wins. The
  others count as ``duplicates``.
* Entries that cannot be imported (keys or values not in the formats above,
  records the engine rejects) fail the import, nothing imported, with their
  reason; with ``--skip-bad`` they are skipped and reported, and the rest is
  imported.
* Counts are verified: each volume must hold exactly the record entries
  counted in a first pass over the LevelDB, minus those skipped and the
  duplicates. Volumes are built in a staging area and moved into the store
  only when every one of them checks out: on any failure the store is untouched.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from rdirdb.errors import BadRequest
from rdirdb.progress import Progress
from rdirdb.rdir.store import Volume
from rdirdb.tools.common import (
    BATCH,
    CommandError,
    Record,
    Staging,
    Subparsers,
    add_json_flag,
    add_store_flag,
    format_admin,
    handler,
    print_json,
    print_table,
    put,
    record_count,
)

SAMPLES = 10  # skipped entries shown per volume
_json = json.JSONDecoder().decode
_IPV4_PORT = re.compile(r"([0-9]{1,3}(?:\.[0-9]{1,3}){3})-([0-9]+)")


class Malformed(Exception):
    """An entry that cannot be imported."""


@dataclass
class Source:
    """One LevelDB of the data directory and what importing it did."""

    name: str
    path: str
    type: str
    volume: str
    entries: int = 0  # keys in the LevelDB
    record_entries: int = 0  # chunk|… or container|… keys
    legacy: int = 0  # chunk keys in the legacy format
    duplicates: int = 0
    malformed: int = 0  # record entries skipped
    ignored: int = 0  # other keys skipped (unknown keys, bad admin values)
    records: int = 0  # what the volume holds at the end
    admin: dict[str, str] = field(default_factory=dict)
    samples: list[dict[str, str]] = field(default_factory=list)

    @property
    def expected(self) -> int:
        return self.record_entries - self.malformed - self.duplicates

    def skip(self, key: bytes, reason: str, *, record: bool = True) -> None:
        if record:
            self.malformed += 1
        else:
            self.ignored += 1
        if len(self.samples) < SAMPLES:
            self.samples.append({"key": key.decode("utf-8", "backslashreplace")[:200], "reason": reason})

    def report(self) -> dict[str, Any]:
        return {
            "type": self.type, "volume": self.volume, "leveldb": self.name, "entries": self.entries,
            "records": self.records, "legacy": self.legacy, "duplicates": self.duplicates,
            "skipped": self.malformed + self.ignored, "admin": self.admin, "skipped_samples": self.samples,
        }


# -- names ----------------------------------------------------------------------


def meta2_volume_id(db_name: str) -> str:
    """The volume id of a ``meta2-…`` database (see the module's docstring)."""
    name = db_name[len("meta2-"):]
    match = _IPV4_PORT.fullmatch(name)
    if match:
        return f"{match[1]}:{match[2]}"
    if name.startswith("[") and "-" in name.partition("]")[0]:
        return name.replace("-", ":", 1)
    return name


def find_sources(db_path: str, overrides: dict[str, str]) -> tuple[list[Source], list[str]]:
    """The LevelDB databases under ``db_path`` and the names of the other entries."""
    try:
        entries = sorted(os.scandir(db_path), key=lambda e: e.name)
    except OSError as exc:
        raise CommandError(f"cannot read the rdir data directory {db_path!r}: {exc.strerror}") from None
    sources, others = [], []
    for entry in entries:
        if not (entry.is_dir() and os.path.isfile(os.path.join(entry.path, "CURRENT"))):
            others.append(entry.name)
        elif entry.name.startswith("meta2-"):
            volume = overrides.get(entry.name) or meta2_volume_id(entry.name)
            sources.append(Source(entry.name, entry.path, "meta2", volume))
        else:
            sources.append(Source(entry.name, entry.path, "rawx", entry.name))
    unknown = set(overrides) - {s.name for s in sources if s.type == "meta2"}
    if unknown:
        raise CommandError(f"--meta2-volume names no meta2 database: {', '.join(sorted(unknown))}")
    return sources, others


# -- decoding ------------------------------------------------------------------


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed(f"{what} is not UTF-8") from None


def _object(value: bytes) -> dict[str, Any]:
    try:
        obj = _json(value.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError included
        raise Malformed("the value is not UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise Malformed("the value is not a JSON object")
    return obj


def _required(obj: dict[str, Any], name: str) -> Any:
    if obj.get(name) is None:
        raise Malformed(f"the value has no {name}")
    return obj[name]


def _time(obj: dict[str, Any], name: str) -> int:
    value = obj.get(name) or 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise Malformed(f"{name} is not an integer")
    return value


def decode_current(cid: bytes, chunk: bytes, value: bytes) -> Record:
    obj = _object(value)
    return {
        "container_id": _text(cid, "container_id"), "chunk_id": _text(chunk, "chunk_id"),
        "content_id": _required(obj, "content_id"), "mtime": _time(obj, "mtime"),
        "path": _required(obj, "path"), "version": _required(obj, "version"),
    }


def decode_legacy(cid: bytes, content: bytes, chunk: bytes, value: bytes) -> Record:
    obj = _object(value)
    return {
        "container_id": _text(cid, "container_id"), "chunk_id": _text(chunk, "chunk_id"),
        "content_id": _text(content, "content_id"),
        "mtime": max(_time(obj, "mtime"), _time(obj, "rtime")),
        "path": obj.get("path", obj.get("content_path", "")),
        "version": obj.get("version", obj.get("content_version", 0)),
    }


def decode_meta2(url: bytes, value: bytes) -> Record:
    obj = _object(value)
    return {
        "container_url": _text(url, "container_url"), "container_id": _required(obj, "container_id"),
        "extra_data": obj.get("extra_data"), "mtime": _time(obj, "mtime"),
    }


def _chunk_parts(key: bytes) -> list[bytes] | None:
    """The parts of a ``chunk|`` key after the prefix (2: current, 3: legacy)."""
    return key[len(b"chunk|"):].split(b"|") if key.startswith(b"chunk|") else None


# -- import ------------------------------------------------------------------


def _write(vol: Volume, records: list[Record], keys: list[bytes], source: Source) -> None:
    """Write a batch; when the engine rejects it, write record by record, skipping the bad ones."""
    try:
        put(vol, records)
        return
    except (BadRequest, TypeError):
        pass
    for record, key in zip(records, keys):
        try:
            put(vol, [record])
        except (BadRequest, TypeError) as exc:
            source.skip(key, str(exc).removeprefix("record 0: "))


class _Batcher:
    def __init__(self, vol: Volume, source: Source) -> None:
        self.vol, self.source = vol, source
        self.records: list[Record] = []
        self.keys: list[bytes] = []

    def add(self, record: Record, key: bytes) -> None:
        self.records.append(record)
        self.keys.append(key)
        if len(self.records) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self.records:
            _write(self.vol, self.records, self.keys, self.source)
            self.records, self.keys = [], []


def _set_admin(vol: Volume, source: Source, key: bytes, value: bytes) -> None:
    name = key[len(b"admin|"):].decode("utf-8", "replace")
    try:
        text = _text(value, name)
        if name == "incident_date":
            if not re.fullmatch(r"-?[0-9]+", text):
                raise Malformed("the incident date is not a decimal integer")
            text = str(int(text))
        elif name == "lock":
            if not text:
                raise Malformed("the lock has no owner")
        else:
            raise Malformed("unknown admin key")
    except Malformed as exc:
        source.skip(key, str(exc), record=False)
        return
    vol.admin_set(name, text)
    source.admin[name] = text


def _import_rawx(db: Any, vol: Volume, source: Source, bar: Progress) -> None:
    batch = _Batcher(vol, source)
    for key, value in db.iterator(fill_cache=False):
        parts = _chunk_parts(key)
        if parts is not None and len(parts) == 3:
            continue  # legacy: second pass, so that current records win
        bar.update(1)
        try:
            if parts is not None and len(parts) == 2:
                batch.add(decode_current(parts[0], parts[1], value), key)
            elif key.startswith(b"admin|"):
                _set_admin(vol, source, key, value)
            else:
                source.skip(key, "unknown key format", record=parts is not None)
        except Malformed as exc:
            source.skip(key, str(exc))
    batch.flush()
    if source.legacy:
        _import_legacy(db, vol, source, bar)


def _import_legacy(db: Any, vol: Volume, source: Source, bar: Progress) -> None:
    pending: dict[tuple[str, str], tuple[Record, bytes]] = {}

    def flush() -> None:
        fresh = [(rec, key) for rec, key in pending.values() if not _indexed(vol, rec)]
        source.duplicates += len(pending) - len(fresh)
        _write(vol, [rec for rec, _ in fresh], [key for _, key in fresh], source)
        pending.clear()

    for key, value in db.iterator(prefix=b"chunk|", fill_cache=False):
        parts = _chunk_parts(key)
        if parts is None or len(parts) != 3:
            continue
        bar.update(1)
        try:
            record = decode_legacy(parts[0], parts[1], parts[2], value)
        except Malformed as exc:
            source.skip(key, str(exc))
            continue
        ident = (record["container_id"], record["chunk_id"])
        if ident in pending:
            source.duplicates += 1
        else:
            pending[ident] = (record, key)
            if len(pending) >= BATCH:
                flush()
    flush()


def _indexed(vol: Volume, record: Record) -> bool:
    try:
        return vol.chunks.get(record["container_id"], record["chunk_id"]) is not None
    except (BadRequest, TypeError):
        return False  # invalid ids: the write rejects and reports the record


def _import_meta2(db: Any, vol: Volume, source: Source, bar: Progress) -> None:
    batch = _Batcher(vol, source)
    for key, value in db.iterator(fill_cache=False):
        bar.update(1)
        if not key.startswith(b"container|"):
            source.skip(key, "unknown key format", record=False)
            continue
        try:
            batch.add(decode_meta2(key[len(b"container|"):], value), key)
        except Malformed as exc:
            source.skip(key, str(exc))
    batch.flush()


def _count(db: Any, source: Source, bar: Progress) -> None:
    """First pass: how many entries of each kind (the reference for the verification)."""
    for key in db.iterator(include_value=False, fill_cache=False):
        source.entries += 1
        if source.type == "meta2":
            source.record_entries += key.startswith(b"container|")
        else:
            parts = _chunk_parts(key)
            if parts is not None:
                source.record_entries += 1
                source.legacy += len(parts) == 3
        bar.update(1)


def _plyvel() -> Any:
    try:
        import plyvel
    except ImportError:
        raise CommandError("import-leveldb needs plyvel: pip install 'rdirdb[leveldb]'") from None
    return plyvel


@contextlib.contextmanager
def _open(plyvel: Any, source: Source) -> Iterator[Any]:
    try:
        db = plyvel.DB(source.path, create_if_missing=False)
    except (plyvel.Error, OSError) as exc:
        raise CommandError(
            f"cannot open the LevelDB {source.path!r}: {exc} (is an OpenIO rdir still using it?)"
        ) from None
    try:
        yield db
    finally:
        db.close()


def migrate(
    db_path: str, store_path: str, overrides: dict[str, str] | None = None, *, skip_bad: bool = False
) -> tuple[list[Source], list[str]]:
    """Import every LevelDB under ``db_path`` into new volumes of the store, all or nothing.

    An entry that cannot be imported fails the import, unless ``skip_bad``: then it is
    skipped, and reported in its source's ``samples``.
    """
    plyvel = _plyvel()
    sources, others = find_sources(db_path, overrides or {})
    if not sources:
        raise CommandError(f"no LevelDB database under {db_path!r}")
    with Staging(store_path) as staging:
        for source in sources:
            staging.check_absent(source.volume, source.type)
        with Progress(None, "counting", unit="keys") as bar:
            for source in sources:
                with _open(plyvel, source) as db:
                    _count(db, source, bar)
        with Progress(sum(s.entries for s in sources), "importing") as bar:
            for source in sources:
                vol = staging.volume(source.volume, source.type)
                with _open(plyvel, source) as db:
                    (_import_rawx if source.type == "rawx" else _import_meta2)(db, vol, source, bar)
                source.records = record_count(vol)
        wrong = [s for s in sources if s.records != s.expected]
        if wrong:
            details = "; ".join(f"{s.type} volume {s.volume!r} holds {s.records:,}, expected {s.expected:,}"
                                for s in wrong)
            raise CommandError(f"record counts do not match: {details}; nothing was imported")
        bad = [s for s in sources if s.malformed + s.ignored]
        if bad and not skip_bad:
            raise CommandError(_bad_entries(bad))
        staging.publish()
    return sources, others


def _bad_entries(sources: list[Source]) -> str:
    total = sum(s.malformed + s.ignored for s in sources)
    samples = [f"{s.name}: {sample['key']!r}: {sample['reason']}" for s in sources for sample in s.samples]
    shown = "; ".join(samples[:3]) + ("; …" if total > 3 else "")
    return (f"{total:,} entries cannot be imported ({shown}); nothing was imported "
            "(--skip-bad imports the others and reports these)")


# -- command line ----------------------------------------------------------------


def _override(text: str) -> tuple[str, str]:
    name, sep, volume = text.partition("=")
    if not sep or not name.startswith("meta2-") or not volume:
        raise argparse.ArgumentTypeError(f"expected meta2-NAME=VOLUME_ID, not {text!r}")
    return name, volume


def add_parser(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "import-leveldb",
        help="migrate an OpenIO rdir data directory (LevelDB) into a store",
        description="Import every LevelDB of an OpenIO rdir data directory (rawx volumes named by "
        "volume id, meta2 databases named meta2-ADDRESS) into new volumes of a store: current and "
        "legacy chunk keys, meta2 records, incident dates and locks. Record counts are verified. "
        "An entry that cannot be imported fails the import (nothing imported), unless --skip-bad. "
        "Stop the OpenIO rdir first.",
    )
    p.add_argument("leveldb_path", metavar="DB_PATH", help="the OpenIO rdir data directory (its db_path)")
    add_store_flag(p)
    p.add_argument("--meta2-volume", metavar="NAME=ID", type=_override, action="append", default=[],
                   help="the volume id of meta2 database NAME (default: meta2-IP-PORT gives IP:PORT, "
                   "other names are kept after the 'meta2-' prefix); repeatable")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip the entries that cannot be imported (and report them) instead of failing")
    add_json_flag(p)
    p.set_defaults(handler=handler(_main))


def _main(args: argparse.Namespace) -> int:
    sources, others = migrate(args.leveldb_path, args.db_path, dict(args.meta2_volume), skip_bad=args.skip_bad)
    reports = [s.report() for s in sources]
    if args.json:
        print_json({"volumes": reports, "ignored_files": others})
        return 0
    rows = [(r["type"], r["volume"], r["leveldb"], r["entries"], r["records"], r["legacy"], r["duplicates"],
             r["skipped"], format_admin(r["admin"])) for r in reports]
    print_table(("TYPE", "VOLUME", "LEVELDB", "ENTRIES", "RECORDS", "LEGACY", "DUPLICATES", "SKIPPED", "ADMIN"), rows)
    for r in reports:
        for sample in r["skipped_samples"]:
            print(f"skipped in {r['leveldb']}: {sample['key']!r}: {sample['reason']}")
        if r["skipped"] > len(r["skipped_samples"]):
            print(f"skipped in {r['leveldb']}: … {r['skipped'] - len(r['skipped_samples']):,} more")
    if others:
        print(f"not LevelDB databases, ignored: {', '.join(others)}")
    return 0
