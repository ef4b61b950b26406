"""A plain-Python model of the rdir listing semantics (reference §5.2 and §5.3).

Records live in a dict; every listing sorts them by the documented order and
walks them the way the reference server walks its database, with the exact
truncation rule (truncated only when one more match exists) and the marker
being the key visited just before the next match.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

TEXT_PREFIX = 478


def text_order_key(text: str) -> bytes:
    """Listing order of a ``cid|chunk`` text (a marker is any such text)."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= TEXT_PREFIX:
        return raw
    return raw[:TEXT_PREFIX] + b"\x00" + hashlib.sha256(raw).digest()


def order_key(container_id: str, chunk_id: str) -> bytes:
    return text_order_key(f"{container_id}|{chunk_id}")


@dataclass
class ChunkModel:
    records: dict[tuple[str, str], tuple[str, int, str, int]] = field(default_factory=dict)

    def put(self, cid, content, chunk, mtime, path, version):
        self.records[(cid, chunk)] = (content, max(mtime, 0), path, version)

    def delete(self, cid, chunk) -> bool:
        return self.records.pop((cid, chunk), None) is not None

    def _walk(self, prefix, marker):
        """Keys in listing order from the start position, within the prefix."""
        prefix_b = (prefix or "").encode("utf-8", "surrogatepass")
        keys = sorted(self.records, key=lambda k: order_key(*k))
        after = text_order_key(marker) if marker else None
        for key in keys:
            if not f"{key[0]}|{key[1]}".encode("utf-8", "surrogatepass").startswith(prefix_b):
                continue
            if after is not None and order_key(*key) <= after:
                continue
            yield key

    def fetch(self, prefix=None, marker=None, limit=1000, incident=0):
        page, prev = [], None
        for key in self._walk(prefix, marker):
            content, mtime, path, version = self.records[key]
            if incident > 0 and mtime > incident:
                prev = key
                continue
            if len(page) == limit:
                return page, True, f"{prev[0]}|{prev[1]}"
            page.append((key[0], content, key[1], mtime, path, version))
            prev = key
        return page, False, None

    def status(self, prefix=None, marker=None, limit=1000, incident=0):
        total = to_rebuild = 0
        containers: dict[str, list[int]] = {}
        prev = None
        for key in self._walk(prefix, marker):
            if total == limit:
                return total, to_rebuild, _tuples(containers), True, f"{prev[0]}|{prev[1]}"
            mtime = self.records[key][1]
            counts = containers.setdefault(key[0], [0, 0])
            total += 1
            counts[0] += 1
            if incident > 0 and mtime <= incident:
                to_rebuild += 1
                counts[1] += 1
            prev = key
        return total, to_rebuild, _tuples(containers), False, None


def _tuples(containers):
    return {cid: tuple(counts) for cid, counts in containers.items()}
