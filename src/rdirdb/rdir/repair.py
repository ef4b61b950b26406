"""Anti-entropy repair of a volume's replicas (docs/reliability.md, "Replicas that converge").

Each replica sees its volume as one sorted key space of entries (records and
tombstones, each with the stamp of its write; rdirdb._repair). Repair compares
the digests of key ranges across the replicas, splits the ranges whose digests
differ (at the keys of the replica that holds the most entries there) until
they hold few entries, lists those ranges on every replica, and sends each
replica the entries it lacks or holds in an older version: the newest write of
each key wins (rdirdb._repair.newer), so a delete is never undone and a push
never lost. Each apply is one transaction of whole ranges, idempotent: a repair
killed at any point leaves every replica consistent and a rerun finishes it.
Clients may write meanwhile: an apply never replaces a newer version.

A replica is a :class:`LocalReplica` (a volume of a Store in this process) or
an :class:`HttpReplica` (an rdirdb server, through the routes of
``rdirdb.server.repair``). The admin keys (incident date, lock) are compared and
reported, never repaired.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import urlencode

from rdirdb._repair import MAX_STAMP, check_entries, newer, same_content
from rdirdb.errors import BadRequest, NotFound, OioException, RefusedEntries, from_status
from rdirdb.rdir.remote import CONNECT_TIMEOUT, READ_TIMEOUT, _json_or_raw, _Pool
from rdirdb.rdir.store import SERVICE_TYPES, TOMBSTONE_RETENTION, Store, Volume, retention_cutoff, volume_file_name

Entry = tuple[bytes, int, "bytes | None"]  # (full key, stamp, value); value None: a tombstone
Digest = tuple[int, int]  # (entries, sum of their hashes mod 2**64)
Range = tuple[bytes, "bytes | None"]  # [lo, hi); hi None: to the end
T = TypeVar("T")
Opener = Callable[[str, str, bool], Volume]  # (volume id, service type, create) -> the open volume

PARTS = 16  # ranges a differing range is split into
LEAF = 8  # a differing range of at most this many entries (on every replica) is listed
APPLY_BATCH = 5000  # entries per apply request (each one transaction, of whole ranges)
MAX_APPLY = 100_000  # the most entries a server applies in one request (a larger range goes in parts)
LIST_LIMIT = 10000  # entries per listing request
RANGES_PER_REQUEST = 1000  # ranges per split or digest request (fewer when parts is large)
MAX_PARTS = 4096  # the most parts a range is split into
MAX_SPLIT_PARTS = 1_000_000  # the most parts (ranges x parts) a server answers or digests per request
MAX_KEPT = 1000  # differing keys a report keeps (all are counted)


class Replica(Protocol):
    """One replica of a volume, as repair sees it."""

    name: str
    volume_id: str

    def exists(self) -> bool: ...

    def digest(self, bounds: list[list[bytes | None]], cutoff: int) -> list[list[Digest]]: ...

    def split(self, ranges: list[Range], parts: int, cutoff: int) -> list[list[tuple[bytes, int, int]]]: ...

    def entries(self, lo: bytes, hi: bytes | None, cutoff: int, limit: int) -> tuple[list[Entry], bytes | None]: ...

    def apply(self, entries: list[Entry]) -> int:
        """Apply entries in one transaction, all or nothing: RefusedEntries lists the
        entries the replica refuses (nothing applied)."""

    def admin(self) -> dict[str, str]: ...


# -- the wire format of the repair routes (the server decodes what HttpReplica encodes) ---------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any, what: str) -> bytes:
    if type(text) is not str:
        raise BadRequest(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise BadRequest(f"{what} is not valid base64") from None


def encode_entries(entries: Sequence[Entry]) -> list[list[Any]]:
    return [[b64(k), s, None if v is None else b64(v)] for k, s, v in entries]


def decode_entries(items: Any) -> list[Entry]:
    if type(items) is not list:
        raise BadRequest("entries must be a list")
    out: list[Entry] = []
    for i, item in enumerate(items):
        if type(item) is not list or len(item) != 3:
            raise BadRequest(f"entry {i} must be [key, stamp, value]")
        key, stamp, value = item
        out.append((unb64(key, f"entry {i} key"), stamp, None if value is None else unb64(value, f"entry {i} value")))
    return out


def decode_bound(text: Any, what: str) -> bytes | None:
    return None if text is None else unb64(text, what)


def encode_refused(refused: list[tuple[int, bytes, str]]) -> list[dict[str, Any]]:
    """The ``refused`` field of a 400 to ``apply`` (RefusedEntries.refused)."""
    return [{"entry": i, "key": b64(key), "reason": reason} for i, key, reason in refused]


def _refused(items: Any, server: str) -> list[tuple[int, bytes, str]]:
    """RefusedEntries.refused from a 400's ``refused`` field."""
    try:
        return [(int(r["entry"]), unb64(r["key"], "key"), str(r["reason"])) for r in items]
    except (LookupError, TypeError, ValueError) as exc:
        raise OioException(f"{server}: unexpected answer to apply (an rdirdb server?)") from exc


def _digest(pair: Any) -> Digest:
    """A ``[count, hash]`` of an answer (ValueError if it is not one)."""
    count, digest = pair
    if type(count) is not int or type(digest) is not int or count < 0 or not 0 <= digest < 2**64:
        raise ValueError("not a digest")
    return count, digest


# -- replicas -----------------------------------------------------------------------------------


class LocalReplica:
    """A volume of a Store in this process (the server's side of the routes, and tests).

    A volume that does not exist is empty; :meth:`apply` creates it."""

    def __init__(
        self, store: Store, volume_id: str, service_type: str = "rawx", *, name: str | None = None,
        opener: Opener | None = None,
    ) -> None:
        if service_type not in SERVICE_TYPES:
            raise BadRequest(f"unknown service type {service_type!r}")
        volume_file_name(volume_id)  # the volume id is checked
        self.store = store
        self.volume_id = volume_id
        self.service_type = service_type
        self.name = name or store.path
        self._open: Opener = opener or (lambda v, t, create: store.volume(v, t, create=create))

    def _volume(self, create: bool = False) -> Volume | None:
        try:
            return self._open(self.volume_id, self.service_type, create)
        except NotFound:
            return None

    def exists(self) -> bool:
        return self._volume() is not None

    def digest(self, bounds: list[list[bytes | None]], cutoff: int) -> list[list[Digest]]:
        vol = self._volume()
        if vol is None:
            return [[(0, 0)] * (len(b) - 1) for b in bounds]
        with vol.snapshot() as txn:
            return [vol.stamps.digest(b, cutoff, txn) for b in bounds]

    def split(self, ranges: list[Range], parts: int, cutoff: int) -> list[list[tuple[bytes, int, int]]]:
        vol = self._volume()
        if vol is None:
            return [[(lo, 0, 0)] for lo, _ in ranges]
        with vol.snapshot() as txn:
            return [vol.stamps.split(lo, hi, parts, cutoff, txn) for lo, hi in ranges]

    def entries(self, lo: bytes, hi: bytes | None, cutoff: int, limit: int) -> tuple[list[Entry], bytes | None]:
        vol = self._volume()
        if vol is None:
            return [], None
        return vol.stamps.entries(lo, hi, cutoff, limit)

    def apply(self, entries: list[Entry]) -> int:
        skew = self.store.max_clock_skew
        vol = self._volume()
        if vol is None and entries:
            check_entries(entries, self.service_type == "meta2", skew)  # a bad request creates nothing
            vol = self._volume(create=True)
        return 0 if vol is None else vol.stamps.apply_entries(entries, skew)

    def admin(self) -> dict[str, str]:
        vol = self._volume()
        if vol is None or self.service_type != "rawx":
            return {}
        return vol.admin_show()


class HttpReplica:
    """A replica on an rdirdb server (``host:port``), through its repair routes."""

    def __init__(
        self,
        host: str,
        volume_id: str,
        service_type: str = "rawx",
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.name = host
        self.volume_id = volume_id
        self.service_type = service_type
        self._pool = _Pool(host, connect_timeout, read_timeout)

    def close(self) -> None:
        self._pool.close()

    def exists(self) -> bool:
        return self._ask("/v1/rdirdb/repair/digest", {"bounds": []}, lambda answer: answer["exists"] is True)

    def _call(self, path: str, body: Any, method: str = "POST") -> Any:
        query = urlencode({"vol": self.volume_id, "type": self.service_type})
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        status, resp_headers, data = self._pool.request(method, f"{path}?{query}", payload, headers)
        decoded = _json_or_raw(status, resp_headers, data)
        if status >= 400:
            if isinstance(decoded, dict):
                message = str(decoded.get("message", ""))
            else:  # not rdirdb's answer: its text, on one line
                message = " ".join(bytes(decoded or b"").decode("utf-8", "replace").split())[:300]
            if status == 400 and isinstance(decoded, dict) and "refused" in decoded:
                raise RefusedEntries(_refused(decoded["refused"], self.name), f"{self.name}: {message}")
            raise from_status(status, f"{self.name}: {message}")
        return decoded

    def _ask(self, path: str, body: Any, parse: Callable[[Any], T]) -> T:
        """``parse`` of the answer to a repair route; an answer of the wrong shape (not an
        rdirdb server, or another version) is an OioException naming this server."""
        answer = self._call(path, body)
        try:
            return parse(answer)
        except (LookupError, TypeError, ValueError) as exc:
            raise OioException(f"{self.name}: unexpected answer to {path} (an rdirdb server?)") from exc

    def digest(self, bounds: list[list[bytes | None]], cutoff: int) -> list[list[Digest]]:
        body = {"cutoff": cutoff, "bounds": [[None if b is None else b64(b) for b in bs] for bs in bounds]}

        def parse(answer: Any) -> list[list[Digest]]:
            digests = [[_digest(d) for d in ds] for ds in answer["digests"]]
            if [len(ds) + 1 for ds in digests] != [len(bs) for bs in bounds]:
                raise ValueError("not a digest per range")
            return digests

        return self._ask("/v1/rdirdb/repair/digest", body, parse)

    def split(self, ranges: list[Range], parts: int, cutoff: int) -> list[list[tuple[bytes, int, int]]]:
        body = {"cutoff": cutoff, "parts": parts,
                "ranges": [[b64(lo), None if hi is None else b64(hi)] for lo, hi in ranges]}

        def parse(answer: Any) -> list[list[tuple[bytes, int, int]]]:
            splits = [[(unb64(s, "start"), *_digest([c, h])) for s, c, h in sp] for sp in answer["ranges"]]
            if len(splits) != len(ranges) or not all(splits):
                raise ValueError("not a split per range")
            return splits

        return self._ask("/v1/rdirdb/repair/split", body, parse)

    def entries(self, lo: bytes, hi: bytes | None, cutoff: int, limit: int) -> tuple[list[Entry], bytes | None]:
        body = {"cutoff": cutoff, "lo": b64(lo), "hi": None if hi is None else b64(hi), "limit": limit}

        def parse(answer: Any) -> tuple[list[Entry], bytes | None]:
            entries, nxt = decode_entries(answer["entries"]), decode_bound(answer["next"], "next")
            if any(type(s) is not int or not 0 <= s <= MAX_STAMP for _, s, _ in entries):
                raise ValueError("a stamp is not a stamp")
            if nxt is not None and nxt <= lo:  # the listing would never end
                raise ValueError("next is not after lo")
            return entries, nxt

        return self._ask("/v1/rdirdb/repair/range", body, parse)

    def apply(self, entries: list[Entry]) -> int:
        return self._ask("/v1/rdirdb/repair/apply", {"entries": encode_entries(entries)},
                         lambda answer: int(answer["applied"]))

    def admin(self) -> dict[str, str]:
        if self.service_type != "rawx":
            return {}
        try:
            answer = self._call("/v1/rdir/admin/show", None, "GET")
        except NotFound:
            return {}
        return dict(answer or {})


# -- the repair -----------------------------------------------------------------------------------


@dataclass
class Difference:
    """A key whose versions differ: which replicas get the newest one (dry run: would get)."""

    key: bytes
    stamp: int
    deleted: bool
    replicas: list[str]


@dataclass
class Refusal:
    """An entry a replica refused to apply (the other entries were applied)."""

    key: bytes
    stamp: int
    replica: str
    reason: str


@dataclass
class RepairReport:
    """What a repair compared and moved."""

    replicas: list[str]
    ranges_compared: int = 0
    records_listed: int = 0  # entries the replicas sent to the repair (listings of differing ranges)
    records_sent: int = 0  # entries the repair sent to replicas
    records_applied: int = 0  # of those, applied (the others had lost to a newer write meanwhile)
    differing: int = 0  # keys whose versions differed
    differences: list[Difference] = field(default_factory=list)  # the first MAX_KEPT of them
    admin_differences: dict[str, dict[str, str | None]] = field(default_factory=dict)
    refused: int = 0  # entries a replica refused to apply (a stamp too far ahead, a bad entry)
    refusals: list[Refusal] = field(default_factory=list)  # the first MAX_KEPT of them
    dry_run: bool = False
    seconds: float = 0.0

    @property
    def records_moved(self) -> int:
        """Entries over the wire, both ways."""
        return self.records_listed + self.records_sent

    def as_dict(self) -> dict[str, Any]:
        return {
            "replicas": self.replicas,
            "ranges_compared": self.ranges_compared,
            "records_listed": self.records_listed,
            "records_sent": self.records_sent,
            "records_applied": self.records_applied,
            "records_moved": self.records_moved,
            "differences": self.differing,
            "admin_differences": self.admin_differences,
            "refused": self.refused,
            "dry_run": self.dry_run,
            "seconds": round(self.seconds, 3),
        }


def _admin_differences(replicas: Sequence[Replica]) -> dict[str, dict[str, str | None]]:
    shown = [r.admin() for r in replicas]
    out: dict[str, dict[str, str | None]] = {}
    for key in sorted(set().union(*shown)):
        values = {r.name: s.get(key) for r, s in zip(replicas, shown)}
        if len(set(values.values())) > 1:
            out[key] = values
    return out


def _winner(a: Entry, b: Entry) -> Entry:
    return a if newer(a[1], a[2] is None, a[2], b[1], b[2] is None, b[2]) >= 0 else b


def _same(a: Entry | None, b: Entry) -> bool:
    return a is not None and same_content(a[2], b[2])


def repair_volume(
    replicas: Sequence[Replica],
    *,
    retention: float = TOMBSTONE_RETENTION,
    dry_run: bool = False,
    parts: int = PARTS,
    leaf: int = LEAF,
    progress: Callable[[int, int], None] | None = None,
    now: float | None = None,
) -> RepairReport:
    """Make the replicas of one volume converge; returns what was compared and moved.

    ``retention``: the tombstone retention of the servers (tombstones older than
    that are left out, as they are due to be purged). ``dry_run`` compares and
    lists, and reports the differences without applying them.
    ``progress(done, known)`` is called as ranges are settled.
    """
    if len(replicas) < 2:
        raise BadRequest("repair needs at least two replicas")
    if not 2 <= parts <= MAX_PARTS or leaf < 1:
        raise BadRequest(f"parts must be 2 to {MAX_PARTS} and leaf at least 1")
    per_request = max(1, min(RANGES_PER_REQUEST, MAX_SPLIT_PARTS // parts))
    start = time.monotonic()
    cutoff = retention_cutoff(retention, now)
    report = RepairReport([r.name for r in replicas], dry_run=dry_run)
    report.admin_differences = _admin_differences(replicas)
    # Round 0: the whole key space.
    top = [r.digest([[b"", None]], cutoff)[0][0] for r in replicas]
    report.ranges_compared = 1
    if all(d == (0, 0) for d in top) and not any(r.exists() for r in replicas):
        raise NotFound(f"volume {replicas[0].volume_id!r} exists on none of the replicas "
                       f"({', '.join(r.name for r in replicas)})")
    pending: list[tuple[Range, list[Digest]]] = [((b"", None), top)] if len(set(top)) > 1 else []
    done, known = 0, 1
    outbox: list[list[list[Entry]]] = [[] for _ in replicas]  # per replica, per range
    while pending:
        # Listed as they are: small ranges, and ranges a replica holds none of (copied).
        listed = [max(c for c, _ in ds) <= leaf or min(c for c, _ in ds) == 0 for _, ds in pending]
        leaves = [rng for (rng, _), x in zip(pending, listed) if x]
        to_split = [p for p, x in zip(pending, listed) if not x]
        for rng in leaves:
            _settle(replicas, rng, cutoff, report, outbox, dry_run)
        done += len(leaves)
        pending = []
        # Split each range at the keys of the replica that holds the most entries there.
        by_leader: dict[int, list[Range]] = {}
        for rng, ds in to_split:
            by_leader.setdefault(max(range(len(ds)), key=lambda i: ds[i][0]), []).append(rng)
        requests = [(leader, rs[f : f + per_request]) for leader, rs in by_leader.items()
                    for f in range(0, len(rs), per_request)]
        for leader, ranges in requests:
            splits = replicas[leader].split(ranges, parts, cutoff)
            bounds: list[list[bytes | None]] = [[*(s for s, _, _ in sp), hi] for sp, (_, hi) in zip(splits, ranges)]
            others = {i: r.digest(bounds, cutoff) for i, r in enumerate(replicas) if i != leader}
            for k, (sp, bs) in enumerate(zip(splits, bounds)):
                report.ranges_compared += len(sp)
                known += len(sp)
                if len(sp) == 1:  # nothing left to split by (writes meanwhile): list it
                    _settle(replicas, ranges[k], cutoff, report, outbox, dry_run)
                    continue
                for j, (lo, count, digest) in enumerate(sp):
                    ds = [(count, digest) if i == leader else others[i][k][j] for i in range(len(replicas))]
                    if len(set(ds)) > 1:
                        pending.append(((lo, bs[j + 1]), ds))
                    else:
                        done += 1
            done += len(ranges)
        _flush(replicas, outbox, report, APPLY_BATCH)
        if progress is not None:
            progress(done, known)
    _flush(replicas, outbox, report, 0)
    if progress is not None:
        progress(known, known)
    report.seconds = time.monotonic() - start
    return report


def _settle(
    replicas: Sequence[Replica], rng: Range, cutoff: int, report: RepairReport, outbox: list[list[list[Entry]]],
    dry_run: bool,
) -> None:
    """List one differing range on every replica and queue for each the newest versions it
    lacks. A large range (a replica that holds none of it: a copy) goes page by page: the
    pages of the replicas are merged up to the first key one of them has not listed yet, the
    rest is listed again with the next pages, and the queues are sent as they fill (each
    apply a whole part of the range), so that memory stays bounded."""
    lo, hi = rng
    while True:
        pages = [r.entries(lo, hi, cutoff, LIST_LIMIT) for r in replicas]
        stops = [nxt for _, nxt in pages if nxt is not None]
        bound = min(stops) if stops else None
        held: list[dict[bytes, Entry]] = []
        for page, _ in pages:
            report.records_listed += len(page)
            held.append({e[0]: e for e in page if bound is None or e[0] < bound})
        queued: list[list[Entry]] = [[] for _ in replicas]
        for key in sorted(set().union(*held)):
            versions = [h[key] for h in held if key in h]
            best = versions[0]
            for v in versions[1:]:
                best = _winner(best, v)
            lacking = [i for i, h in enumerate(held) if not _same(h.get(key), best)]
            if not lacking:
                continue
            report.differing += 1
            if len(report.differences) < MAX_KEPT:
                report.differences.append(Difference(key, best[1], best[2] is None, [replicas[i].name for i in lacking]))
            for i in lacking:
                queued[i].append(best)
        if not dry_run:
            for i, queue in enumerate(queued):
                if queue:
                    outbox[i].append(queue)
            _flush(replicas, outbox, report, APPLY_BATCH)
        if bound is None:
            return
        lo = bound


def _flush(replicas: Sequence[Replica], outbox: list[list[list[Entry]]], report: RepairReport,
           at_least: int) -> None:
    """Send each replica its queued ranges once they hold ``at_least`` entries: whole
    ranges, about APPLY_BATCH entries per request (one transaction each)."""
    for i, r in enumerate(replicas):
        ranges = outbox[i]
        if not ranges or sum(map(len, ranges)) < max(at_least, 1):
            continue
        batch: list[Entry] = []
        for entries in ranges:
            if batch and len(batch) + len(entries) > APPLY_BATCH:
                _send(r, batch, report)
                batch = []
            batch.extend(entries)
        _send(r, batch, report)
        outbox[i] = []


def _send(replica: Replica, entries: list[Entry], report: RepairReport) -> None:
    for k in range(0, len(entries), MAX_APPLY):  # a range larger than a request goes in parts
        part = entries[k : k + MAX_APPLY]
        report.records_sent += len(part)
        report.records_applied += _apply(replica, part, report)


def _apply(replica: Replica, entries: list[Entry], report: RepairReport) -> int:
    """Apply ``entries`` on ``replica``; the entries it refuses are reported, and the others
    sent again (each apply is all or nothing), so that one refused entry holds back
    nothing else."""
    while entries:
        try:
            return replica.apply(entries)
        except RefusedEntries as exc:
            indexes = {i for i, _, _ in exc.refused}
            if not indexes or not all(0 <= i < len(entries) for i in indexes):
                raise OioException(f"{replica.name}: refused entries that were not sent ({exc})") from exc
            for i, _, reason in exc.refused:
                report.refused += 1
                if len(report.refusals) < MAX_KEPT:
                    report.refusals.append(Refusal(entries[i][0], entries[i][1], replica.name, reason))
            entries = [e for i, e in enumerate(entries) if i not in indexes]
    return 0


def repair_hosts(
    volume_id: str,
    hosts: Sequence[str],
    service_type: str = "rawx",
    **kwargs: Any,
) -> RepairReport:
    """:func:`repair_volume` over the rdirdb servers ``hosts`` (``host:port``)."""
    replicas = [HttpReplica(h, volume_id, service_type) for h in hosts]
    try:
        return repair_volume(replicas, **kwargs)
    finally:
        for r in replicas:
            r.close()


def describe_key(key: bytes, service_type: str = "rawx") -> str:
    """A full key as text: ``cid|chunk`` of a chunk record, the url of a meta2 record."""
    if service_type == "rawx" and key[:1] == b"\x00" and len(key) == 65:
        return key[1:33].hex().upper() + "|" + key[33:].hex().upper()
    return key[1:].decode("utf-8", "backslashreplace")


__all__ = [
    "Difference",
    "HttpReplica",
    "LocalReplica",
    "Refusal",
    "RepairReport",
    "repair_hosts",
    "repair_volume",
]
