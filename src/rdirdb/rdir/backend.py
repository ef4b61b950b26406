"""The backend interface of RdirClient: one rdir request per method.

:class:`RdirBackend` is answered by :class:`rdirdb.rdir.embedded.EmbeddedBackend`
(LMDB in this process) and :class:`rdirdb.rdir.remote.RemoteBackend` (rdir
servers over HTTP). Both, and the client above them, share the page limits and
record shapes defined here, and the one paging loop, :func:`pages`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from rdirdb.errors import BadRequest, ServerException

DEFAULT_LIMIT = 1000  # page size of chunk and meta2 listings when none is given
MAX_LIMIT = 10000  # the server caps every page at this size
META2_FETCH_LIMIT = 4096  # OpenIO's client default for meta2_index_fetch
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

# chunk_push fills in the fields a caller omits with what the reference server
# renders for a record that lacks them (§5.2): no mtime (so "to rebuild" after
# any incident), an empty path, version 0.
CHUNK_DEFAULTS: dict[str, Any] = {"mtime": 0, "path": "", "version": 0}

ChunkValue = dict[str, Any]  # {"content_id", "mtime", "path", "version"}
ChunkEntry = tuple[str, str, ChunkValue]  # (container_id, chunk_id, value)
ChunkInput = Sequence[Mapping[str, Any]] | np.ndarray
Meta2Record = dict[str, Any]  # {"container_url", "container_id", "mtime", "extra_data"}
P = TypeVar("P")

# A page of a listing, as every listing of the engine and of the backends
# returns it: (records, truncated, next_marker). ``truncated`` is true only when
# another record follows, and the next page starts right after next_marker.
Page = tuple[P, bool, str | None]


def pages(fetch: Callable[..., Page[P]], marker: str | None = None, **params: Any) -> Iterator[P]:
    """The records of every page of a listing, page by page: ``fetch(marker=...,
    **params)`` answers one, the next one starts after its marker."""
    while True:
        records, truncated, marker = fetch(marker=marker, **params)
        yield records
        if not truncated:
            return
        if marker is None:
            raise ServerException("a truncated page came without the marker of the next one")


def listing_limit(limit: Any) -> int:
    """The page size the reference server applies to a requested ``limit``: the
    default for none or a limit <= 0, at most MAX_LIMIT."""
    if limit is None:
        return DEFAULT_LIMIT
    limit = integer_field("limit", limit)
    return DEFAULT_LIMIT if limit <= 0 else min(limit, MAX_LIMIT)


_TRUE = frozenset(("yes", "true", "on", "enable", "enabled", "1", "yeah"))
_FALSE = frozenset(("no", "false", "off", "disable", "disabled", "0", "nope"))


def parse_bool(value: Any, default: bool = False) -> bool:
    """A boolean as OpenIO reads one from a query or a configuration: text in its
    true or false words, anything else is its truth value; None or other text is
    ``default``."""
    if value is None:
        return default
    if not isinstance(value, str):
        return bool(value)
    value = value.lower()
    if value in _TRUE:
        return True
    return False if value in _FALSE else default


def integer_field(name: str, value: Any) -> int:
    # OpenIO's client sends int(value), so floats and numeric strings are accepted.
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"Invalid type for field [{name}]: {value!r}") from None


class RdirBackend(ABC):
    """One rdir request per method, answered as an rdir server would.

    Listings return one page and say whether another one follows
    (``truncated``) and where it starts (``marker``, an exclusive position).
    ``limit`` is passed as the caller gave it: the backend applies the
    server's default and cap (:func:`listing_limit`).
    """

    @abstractmethod
    def create(self, volume: str, service_type: str, **options: Any) -> None: ...

    @abstractmethod
    def chunk_push(self, volume: str, records: Any, *, create: bool, **options: Any) -> None:
        """Write records (complete dicts, tuples or a structured array), all or nothing."""

    @abstractmethod
    def chunk_delete(self, volume: str, keys: Any, **options: Any) -> None: ...

    @abstractmethod
    def chunk_page(
        self, volume: str, *, prefix: str | None, marker: str | None, limit: int | None, rebuild: bool,
        **options: Any,
    ) -> tuple[Iterable[ChunkEntry], bool, str | None]:
        """One page of ``(container_id, chunk_id, value)`` entries, to be iterated once."""

    @abstractmethod
    def chunk_array_page(
        self, volume: str, *, prefix: str | None, marker: str | None, limit: int | None, rebuild: bool,
        **options: Any,
    ) -> tuple[np.ndarray, bool, str | None]: ...

    @abstractmethod
    def status_page(
        self, volume: str, *, prefix: str | None, marker: str | None, limit: int | None,
        **options: Any,
    ) -> tuple[dict[str, Any], bool, str | None]:
        """The server's status body for one page (§5.3), truncated, marker."""

    @abstractmethod
    def incident_set(self, volume: str, date: int, *, create: bool, **options: Any) -> None: ...

    @abstractmethod
    def incident_get(self, volume: str, **options: Any) -> int: ...

    @abstractmethod
    def lock(self, volume: str, who: str, *, create: bool, **options: Any) -> None: ...

    @abstractmethod
    def unlock(self, volume: str, **options: Any) -> None: ...

    @abstractmethod
    def show(self, volume: str, **options: Any) -> dict[str, str]: ...

    @abstractmethod
    def clear(self, volume: str, *, all: bool, before_incident: bool, repair: bool, **options: Any) -> dict[str, int]: ...

    @abstractmethod
    def meta2_clear(self, volume: str, **options: Any) -> dict[str, int]: ...

    @abstractmethod
    def meta2_push(self, volume: str, records: list[dict[str, Any]], **options: Any) -> None: ...

    @abstractmethod
    def meta2_delete(self, volume: str, records: list[dict[str, Any]], **options: Any) -> None: ...

    @abstractmethod
    def meta2_page(
        self, volume: str, *, prefix: str | None, marker: str | None, limit: int | None,
        **options: Any,
    ) -> Page[list[Meta2Record]]: ...

    def container_path(self, volume: str, container_id: str, **options: Any) -> str | None:
        """The container URL (``NS/account/container``) of a container id, if the
        volume's own records know it (a full scan)."""
        for records in pages(self.meta2_page, volume=volume, prefix=None, limit=None, **options):
            for record in records:
                if record["container_id"] == container_id:
                    return str(record["container_url"])
        return None

    def close(self) -> None:
        """Release what the backend holds. Idempotent."""
