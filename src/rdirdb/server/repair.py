"""rdirdb's own routes next to OpenIO's: the replica side of anti-entropy repair.

``POST /v1/rdirdb/repair/{digest,split,range,apply}?vol=V&type=rawx|meta2``, JSON
bodies whose keys and values are base64 (the wire format of
``rdirdb.rdir.repair``, whose ``HttpReplica`` calls them). A volume this server
does not hold reads as empty, and ``apply`` creates it; ``apply`` is all or
nothing, its 400 lists the refused entries (``refused``) so that the repair
sends the others again. ``POST /v1/rdirdb/meta2/clear?vol=V`` clears a meta2
replica before it is repaired. OpenIO's routes and client are untouched.
docs/openapi.yaml describes the bodies.
"""

from __future__ import annotations

from typing import Any, Callable

from rdirdb._repair import MAX_STAMP
from rdirdb.errors import BadRequest, RefusedEntries
from rdirdb.rdir.repair import (
    MAX_APPLY, MAX_PARTS, MAX_SPLIT_PARTS, LocalReplica, Opener, b64, decode_bound, decode_entries, describe_key,
    encode_entries, encode_refused, unb64,
)
from rdirdb.rdir.store import SERVICE_TYPES, Store
from rdirdb.server.fields import field

Handler = Callable[[dict[str, str], Any], Any]

MAX_RANGES = 100_000  # ranges or bounds per request
MAX_LIMIT = MAX_APPLY  # entries listed or applied per request


def repair_routes(store: Store, opener: Opener) -> dict[str, Handler]:
    """The repair routes over ``store``: path -> ``handler(query, body)`` -> the JSON answer
    of a POST. ``opener(volume_id, service_type, create)`` opens a volume (the server
    counts the volumes it opens). A bad request raises BadRequest."""

    def replica(query: dict[str, str]) -> LocalReplica:
        service_type = query.get("type") or "rawx"
        if service_type not in SERVICE_TYPES:
            raise BadRequest(f"unknown type {service_type!r} (expected one of {', '.join(SERVICE_TYPES)})")
        vol = query.get("vol")
        if vol is None:
            raise BadRequest("Missing argument [vol]")
        return LocalReplica(store, vol, service_type, opener=opener)

    def cutoff(body: Any) -> int:
        value = field(body, "cutoff", int, mandatory=False) or 0
        if not 0 <= value <= MAX_STAMP:
            raise BadRequest("cutoff must be in [0, 2**64)")
        return int(value)

    def bounded(body: Any, name: str, low: int, high: int) -> int:
        value = field(body, name, int)
        if not low <= value <= high:
            raise BadRequest(f"{name} must be in [{low}, {high}]")
        return int(value)

    def a_list(value: Any, name: str, limit: int) -> list[Any]:
        if type(value) is not list:
            raise BadRequest(f"{name} must be a list")
        if len(value) > limit:
            raise BadRequest(f"{name}: at most {limit} items")
        return value

    def a_range(lo: bytes, hi: bytes | None, what: str) -> tuple[bytes, bytes | None]:
        if hi is not None and hi < lo:
            raise BadRequest(f"{what}: the end is below the start")
        return lo, hi

    def digest(query: dict[str, str], body: Any) -> Any:
        r, cut = replica(query), cutoff(body)
        bounds, ranges = [], 0
        for i, bs in enumerate(a_list(field(body, "bounds", list), "bounds", MAX_RANGES)):
            bs = a_list(bs, f"bounds[{i}]", MAX_PARTS + 1)
            if len(bs) < 2:
                raise BadRequest(f"bounds[{i}] needs at least two bounds")
            ranges += len(bs) - 1
            if ranges > MAX_SPLIT_PARTS:
                raise BadRequest(f"bounds: at most {MAX_SPLIT_PARTS} ranges in all")
            bounds.append([decode_bound(b, f"bounds[{i}]") for b in bs])
        return {"digests": r.digest(bounds, cut), "exists": r.exists()}

    def split(query: dict[str, str], body: Any) -> Any:
        r, cut = replica(query), cutoff(body)
        parts = bounded(body, "parts", 1, MAX_PARTS)
        ranges = []
        listed = a_list(field(body, "ranges", list), "ranges", MAX_RANGES)
        if len(listed) * parts > MAX_SPLIT_PARTS:
            raise BadRequest(f"ranges x parts: at most {MAX_SPLIT_PARTS} parts")
        for i, rng in enumerate(listed):
            if type(rng) is not list or len(rng) != 2:
                raise BadRequest(f"ranges[{i}] must be [lo, hi]")
            ranges.append(a_range(unb64(rng[0], f"ranges[{i}] lo"), decode_bound(rng[1], f"ranges[{i}] hi"),
                                  f"ranges[{i}]"))
        answer = r.split(ranges, parts, cut)
        return {"ranges": [[[b64(s), c, h] for s, c, h in sp] for sp in answer]}

    def listing(query: dict[str, str], body: Any) -> Any:
        r, cut = replica(query), cutoff(body)
        limit = bounded(body, "limit", 1, MAX_LIMIT)
        lo, hi = a_range(unb64(field(body, "lo", str), "lo"),
                         decode_bound(field(body, "hi", str, mandatory=False), "hi"), "range")
        entries, nxt = r.entries(lo, hi, cut, limit)
        return {"entries": encode_entries(entries), "next": None if nxt is None else b64(nxt)}

    def apply(query: dict[str, str], body: Any) -> Any:
        r = replica(query)
        entries = decode_entries(a_list(field(body, "entries", list), "entries", MAX_LIMIT))
        try:
            return {"applied": r.apply(entries)}
        except RefusedEntries as exc:  # named for people, listed for the sender (it resends the rest)
            refused = RefusedEntries(exc.refused, describe=lambda key: describe_key(key, r.service_type))
            refused.details = {"refused": encode_refused(exc.refused)}
            raise refused from None

    def meta2_clear(query: dict[str, str], body: Any) -> Any:
        vol = query.get("vol")
        if vol is None:
            raise BadRequest("Missing argument [vol]")
        return {"removed": opener(vol, "meta2", False).clear_records()}

    return {
        "/v1/rdirdb/meta2/clear": meta2_clear,
        "/v1/rdirdb/repair/digest": digest,
        "/v1/rdirdb/repair/split": split,
        "/v1/rdirdb/repair/range": listing,
        "/v1/rdirdb/repair/apply": apply,
    }
