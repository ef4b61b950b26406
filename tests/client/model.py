"""A plain-Python model of the rdir semantics the client promises.

It follows the reference (docs/compatibility.md says where we fixed it): one
dict of chunk records and one dict of admin keys per rawx volume, one dict of
container records per meta2 volume, and listings that filter a sorted list.
Listing methods return the records and how many pages (requests) the client
needs to fetch them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rdirdb.errors import BadRequest, Forbidden, NotFound

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10000
# The reference server's buffer sizes, in UTF-8 bytes.
MAX_IDS = {"container_id": 64, "content_id": 64, "chunk_id": 511, "path": 1087}
CLEAR_OWNER = "admin_clear"


def page_size(limit: int | None) -> int:
    if limit is None or limit <= 0:
        return DEFAULT_LIMIT
    return min(limit, MAX_LIMIT)


def page_count(matches: int, limit: int | None) -> int:
    """Exact truncation: ceil(matches / limit) requests, and one for no match."""
    return max(1, math.ceil(matches / page_size(limit)))


def chunk_value(content_id: str, mtime: int, path: str, version: int) -> dict[str, Any]:
    return {"content_id": content_id, "mtime": max(mtime, 0), "path": path, "version": version}


@dataclass
class RawxVolume:
    chunks: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    admin: dict[str, str] = field(default_factory=dict)

    @property
    def incident(self) -> int:
        return int(self.admin.get("incident_date", 0))

    def listing(self, prefix: str | None, marker: str | None) -> list[tuple[str, str, dict]]:
        """Records in ``cid|chunk`` text order, under ``prefix``, strictly after ``marker``."""
        keyed = sorted((f"{cid}|{chunk}", cid, chunk, v) for (cid, chunk), v in self.chunks.items())
        return [
            (cid, chunk, value)
            for key, cid, chunk, value in keyed
            if key.startswith(prefix or "") and (not marker or key > marker)
        ]


def check_volume(volume: str) -> None:
    if not isinstance(volume, str):
        raise TypeError("volume id must be str")
    if not volume:
        raise BadRequest("volume id is empty")


def check_field(record: dict[str, Any], name: str, kind: type) -> None:
    """A missing field (or None) is a BadRequest, a value of another type a TypeError."""
    value = record.get(name)
    if value is None:
        raise BadRequest(f"Missing field [{name}]")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{name} must be {kind.__name__}")


def check_record(record: dict[str, Any]) -> tuple[tuple[str, str], dict[str, Any]]:
    for name in ("container_id", "content_id", "chunk_id", "path"):
        check_field(record, name, str)
        value = record[name]
        if "\0" in value or len(value.encode()) > MAX_IDS[name]:
            raise BadRequest(f"invalid {name}")
    if "|" in record["container_id"]:
        raise BadRequest("'|' in container_id")
    for name in ("container_id", "chunk_id"):  # the id rule: not empty, no control character
        if not record[name] or any(c < " " or c == "\x7f" for c in record[name]):
            raise BadRequest(f"invalid {name}")
    for name in ("mtime", "version"):
        check_field(record, name, int)
    key = (record["container_id"], record["chunk_id"])
    value = chunk_value(record["content_id"], record["mtime"], record["path"], record["version"])
    return key, value


class Model:
    def __init__(self) -> None:
        self.rawx: dict[str, RawxVolume] = {}
        self.meta2: dict[str, dict[str, dict[str, Any]]] = {}

    def volume(self, volume: str, create: bool = False) -> RawxVolume:
        check_volume(volume)
        if volume not in self.rawx:
            if not create:
                raise NotFound(f"DB not found: {volume}")
            self.rawx[volume] = RawxVolume()
        return self.rawx[volume]

    # -- chunks -------------------------------------------------------------

    def create(self, volume: str) -> None:
        self.volume(volume, create=True)

    def chunk_push_batch(self, volume: str, records: list[dict[str, Any]], create: bool = False) -> None:
        # As the reference server: every record is checked before the volume is
        # opened (or created): all or nothing.
        checked = [check_record(r) for r in records]
        self.volume(volume, create).chunks.update(checked)

    def chunk_delete_batch(self, volume: str, keys: list[tuple[str, str]]) -> None:
        vol = self.volume(volume)
        for key in keys:
            vol.chunks.pop(key, None)

    def chunk_fetch(
        self,
        volume: str,
        limit: int | None = DEFAULT_LIMIT,
        rebuild: bool = False,
        container_id: str | None = None,
        start_after: str | None = None,
    ) -> tuple[list[tuple[str, str, dict]], int]:
        vol = self.volume(volume)
        incident = vol.incident
        if rebuild and incident <= 0:
            return [], 1
        entries = [
            e for e in vol.listing(container_id, start_after)
            if not rebuild or e[2]["mtime"] <= incident
        ]
        return entries, page_count(len(entries), limit)

    def status(
        self, volume: str, max: int | None = DEFAULT_LIMIT, prefix: str | None = None, marker: str | None = None
    ) -> tuple[dict[str, Any], int]:
        vol = self.volume(volume)
        incident = vol.incident
        entries = vol.listing(prefix, marker)
        chunk = {"total": len(entries)}
        containers: dict[str, dict[str, int]] = {}
        to_rebuild = 0
        for cid, _, value in entries:
            counters = containers.setdefault(cid, {"total": 0})
            counters["total"] += 1
            if incident > 0 and value["mtime"] <= incident:
                counters["to_rebuild"] = counters.get("to_rebuild", 0) + 1
                to_rebuild += 1
        if incident > 0:
            chunk["to_rebuild"] = to_rebuild
        return {"chunk": chunk, "container": containers}, page_count(len(entries), max)

    # -- admin --------------------------------------------------------------

    def incident_set(self, volume: str, date: int, create: bool = False) -> None:
        self.volume(volume, create).admin["incident_date"] = str(int(date))

    def incident_get(self, volume: str) -> int:
        return self.volume(volume).incident

    def lock(self, volume: str, who: str, create: bool = False) -> None:
        if not who:
            raise BadRequest("'who' not set")
        vol = self.volume(volume, create)
        current = vol.admin.get("lock")
        if current is not None and current != who:
            raise Forbidden(f"Already locked by {current}")
        vol.admin["lock"] = who

    def unlock(self, volume: str) -> None:
        self.volume(volume).admin.pop("lock", None)

    def show(self, volume: str) -> dict[str, str]:
        return dict(self.volume(volume).admin)

    def clear(
        self, volume: str, clear_all: bool = False, before_incident: bool = False, repair: bool = False
    ) -> dict[str, int]:
        vol = self.volume(volume)
        self.lock(volume, CLEAR_OWNER)
        incident = vol.incident
        doomed = [
            key for key, value in vol.chunks.items()
            if clear_all or (before_incident and incident > 0 and value["mtime"] <= incident)
        ]
        for key in doomed:
            del vol.chunks[key]
        vol.admin.pop("incident_date", None)
        vol.admin.pop("lock", None)
        return {"removed": len(doomed), "repaired": len(vol.chunks) if repair else 0, "errors": 0}

    # -- meta2 --------------------------------------------------------------

    def meta2_volume(self, volume: str) -> dict[str, dict[str, Any]]:
        check_volume(volume)
        if volume not in self.meta2:
            raise NotFound(f"DB not found: {volume}")
        return self.meta2[volume]

    def meta2_push(self, volume: str, url: str, cid: str, mtime: int, extra_data: str | None = None) -> None:
        check_volume(volume)
        record = {"container_id": cid, "container_url": url, "extra_data": extra_data, "mtime": mtime}
        self.meta2.setdefault(volume, {})[url] = record

    def meta2_delete(self, volume: str, url: str) -> None:
        self.meta2_volume(volume).pop(url, None)

    def meta2_fetch(
        self, volume: str, prefix: str | None = None, marker: str | None = None, limit: int | None = 4096
    ) -> dict[str, Any]:
        records = self.meta2_volume(volume)
        urls = [u for u in sorted(records) if u.startswith(prefix or "") and (not marker or u > marker)]
        size = page_size(limit)
        return {"records": [records[u] for u in urls[:size]], "truncated": len(urls) > size}
