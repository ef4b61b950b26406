"""RdirClient: OpenIO's rdir client API, served by the embedded LMDB store.

``RdirClient({"db_path": DIR})`` keeps every volume in LMDB environments under
DIR. The methods have the names, parameters and results of OpenIO's
``oio.rdir.client.RdirClient``, so a rawx indexer or a rebuild tool switches by
changing one import. Where the reference loses or hides data, this client
fixes it; docs/compatibility.md lists every decision.

The client does what OpenIO's client does (paging with markers, retries,
aggregating status pages); a backend answers one request at a time, the way
an rdir server would. :class:`RdirBackend` is that interface and
:class:`rdirdb.rdir.embedded.EmbeddedBackend` serves it from LMDB; a remote
backend over HTTP slots in behind the same methods.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from rdirdb.errors import BadRequest, OioException, OioNetworkException
from rdirdb.rdir.backend import (
    CHUNK_DEFAULTS,
    DEFAULT_LIMIT,
    INT64_MAX,
    INT64_MIN,
    META2_FETCH_LIMIT,
    ChunkEntry,
    ChunkInput,
    Meta2Record,
    Page,
    RdirBackend,
    integer_field,
    pages,
    parse_bool,
)

T = TypeVar("T")


def cid_from_name(account: str, container: str) -> str:
    """OpenIO's container id: uppercase hex SHA-256 of account, NUL, container."""
    digest = hashlib.sha256()
    for part in (account, "\0", container):
        digest.update(part.encode("utf-8"))
    return digest.hexdigest().upper()


def _field(name: str, value: Any, data: Mapping[str, Any]) -> Any:
    """A chunk_push field given positionally or in ``data``, else its default."""
    if name in data:
        if value is not None:
            raise TypeError(f"chunk_push() got two values for {name}")
        value = data[name]
    return CHUNK_DEFAULTS[name] if value is None else value


# Keyword arguments of the client's methods that travel to a remote backend.
TRANSPORT_OPTIONS = ("rdir_hosts", "write_quorum", "reqid", "shuffle_hosts")


def _transport(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {name: kwargs[name] for name in TRANSPORT_OPTIONS if name in kwargs}


class RdirClient:
    """OpenIO's rdir client over a backend; ``conf["db_path"]`` selects the embedded one,
    ``conf["rdir_hosts"]`` (or a ``registry`` URL) rdir servers over HTTP.

    ``conf["db_sync"]`` (default true) makes every embedded commit durable on
    power loss; false keeps commits safe from a crash of the process only, as
    the reference server's ``sync=0`` writes.
    ``conf["db_writemap"]`` opens the embedded volumes with MDB_WRITEMAP; by
    default they do when ``db_sync`` is off (docs/engine.md says what it trades).

    ``directory_client``, ``cache_duration``, ``logger`` and the extra keyword
    arguments of the methods (``reqid``, ``headers``, ``write_quorum``,
    timeouts, ...) are accepted for compatibility; they only matter to a remote
    backend.
    """

    def __init__(
        self,
        conf: Mapping[str, Any],
        directory_client: Any = None,
        cache_duration: float = 60.0,
        logger: Any = None,
        *,
        backend: RdirBackend | None = None,
        **kwargs: Any,
    ) -> None:
        self.conf = dict(conf)
        if backend is None:
            if self.conf.get("db_path"):
                from rdirdb.rdir.embedded import EmbeddedBackend

                options = {"sync": parse_bool(self.conf.get("db_sync", True))}
                if self.conf.get("db_writemap") is not None:  # else the Store's default
                    options["writemap"] = parse_bool(self.conf["db_writemap"])
                backend = EmbeddedBackend(self.conf["db_path"], **options)
            else:
                from rdirdb.rdir.remote import remote_backend

                backend = remote_backend(self.conf, **kwargs)
        self.backend = backend

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> RdirClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paging -------------------------------------------------------------

    @staticmethod
    def _attempt(request: Callable[..., T], max_attempts: int, *args: Any, **kwargs: Any) -> T:
        """``request``, retried on network errors only, after 0 s, 1 s, ... (as OpenIO)."""
        for i in range(max_attempts - 1):
            try:
                return request(*args, **kwargs)
            except OioNetworkException:
                time.sleep(i * 1.0)
        return request(*args, **kwargs)

    def _pages(
        self, request: Callable[..., Page[T]], volume: str, max_attempts: int, marker: str | None,
        **params: Any,
    ) -> Iterator[T]:
        """Every page of a backend's listing, each request retried as OpenIO does."""
        return pages(functools.partial(self._attempt, request, max_attempts, volume), marker, **params)

    # -- volumes and chunks -------------------------------------------------

    def create(self, volume_id: str, service_type: str = "rawx", **kwargs: Any) -> None:
        """Create the volume's index (idempotent)."""
        self.backend.create(volume_id, service_type, **_transport(kwargs))

    def chunk_push(
        self,
        volume_id: str,
        container_id: str,
        content_id: str,
        chunk_id: str,
        content_path: str | None = None,
        content_version: int | None = None,
        headers: Mapping[str, str] | None = None,
        mtime: int | None = None,
        *,
        create: bool = False,
        **data: Any,
    ) -> None:
        """Index one chunk. Path and version come positionally (current OpenIO)
        or as ``path=``/``version=`` (older OpenIO); omitted fields take
        :data:`CHUNK_DEFAULTS`. The volume must exist unless ``create``.
        """
        record = (
            container_id,
            content_id,
            chunk_id,
            integer_field("mtime", _field("mtime", mtime, {})),
            _field("path", content_path, data),
            integer_field("version", _field("version", content_version, data)),
        )
        self.backend.chunk_push(volume_id, [record], create=create, **_transport(data))

    def chunk_push_batch(
        self,
        volume_id: str,
        chunk_list: ChunkInput,
        headers: Mapping[str, str] | None = None,
        *,
        create: bool = False,
        **kwargs: Any,
    ) -> None:
        """Index many chunks in one transaction: all or nothing.

        Each item needs container_id, content_id, chunk_id, mtime, path and
        version, as the reference server requires; a numpy structured array
        with those fields works too. An empty batch writes nothing.
        """
        self.backend.chunk_push(volume_id, chunk_list, create=create, **_transport(kwargs))

    def chunk_delete(
        self, volume_id: str, container_id: str, content_id: str, chunk_id: str, **kwargs: Any
    ) -> None:
        """Deindex one chunk (idempotent; only container_id and chunk_id form the key)."""
        self.backend.chunk_delete(volume_id, [(container_id, chunk_id)], **_transport(kwargs))

    def chunk_delete_batch(
        self, volume_id: str, chunk_list: Sequence[Mapping[str, Any]] | np.ndarray, **kwargs: Any
    ) -> None:
        """Deindex many chunks in one transaction."""
        self.backend.chunk_delete(volume_id, chunk_list, **_transport(kwargs))

    def chunk_fetch(
        self,
        volume: str,
        limit: int = DEFAULT_LIMIT,
        rebuild: bool = False,
        container_id: str | None = None,
        max_attempts: int = 3,
        start_after: str | None = None,
        shuffle: bool = False,
        full_urls: bool = False,
        old_format: bool = False,
        **kwargs: Any,
    ) -> Iterator[tuple[Any, ...]]:
        """Every matching record, page by page: ``(container_id, chunk_id, value)``.

        ``container_id`` is a raw prefix of ``container_id|chunk_id`` and
        ``start_after`` an exclusive ``container_id|chunk_id`` position.
        ``rebuild`` keeps the chunks with mtime <= the incident date (none
        without an incident). ``shuffle`` shuffles within each page.
        ``full_urls`` turns chunk ids into ``http://<volume>/<chunk_id>`` and
        ``old_format`` yields ``(container_id, content_id, chunk_id, value)``.
        """
        pages = self._pages(
            self.backend.chunk_page, volume, max_attempts, start_after,
            prefix=container_id, limit=limit, rebuild=rebuild, **_transport(kwargs),
        )
        # chain() hands out the entries from C: no Python frame per entry here.
        return itertools.chain.from_iterable(
            self._entries(volume, page, shuffle, full_urls, old_format) for page in pages
        )

    @staticmethod
    def _entries(
        volume: str, page: Iterable[ChunkEntry], shuffle: bool, full_urls: bool, old_format: bool
    ) -> Iterable[tuple[Any, ...]]:
        """One page of chunk_fetch, in the shape its options ask for."""
        if shuffle:
            page = list(page)
            random.shuffle(page)
        if full_urls:
            page = ((cid, f"http://{volume}/{chunk}", value) for cid, chunk, value in page)
        if old_format:
            return ((cid, value["content_id"], chunk, value) for cid, chunk, value in page)
        return page

    def chunk_fetch_array(
        self,
        volume: str,
        limit: int = DEFAULT_LIMIT,
        rebuild: bool = False,
        container_id: str | None = None,
        max_attempts: int = 3,
        start_after: str | None = None,
        **kwargs: Any,
    ) -> Iterator[np.ndarray]:
        """The records of :meth:`chunk_fetch` as one numpy structured array per page.

        The fields are those of ``chunk_push_batch`` (container_id, content_id,
        chunk_id, mtime, path, version), text fields as UTF-8 bytes; such an
        array can be pushed back as is.
        """
        yield from self._pages(
            self.backend.chunk_array_page, volume, max_attempts, start_after,
            prefix=container_id, limit=limit, rebuild=rebuild, **_transport(kwargs),
        )

    def chunk_search(self, volume: str, chunk_id: str, **kwargs: Any) -> list[tuple[Any, ...]]:
        """The entries of :meth:`chunk_fetch` (same arguments) for ``chunk_id``: a full scan."""
        return [entry for entry in self.chunk_fetch(volume, **kwargs) if entry[1] == chunk_id]

    def status(
        self,
        volume: str,
        max: int = DEFAULT_LIMIT,
        prefix: str | None = None,
        marker: str | None = None,
        max_attempts: int = 3,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """``{"chunk": {"total", "to_rebuild"?}, "container": {cid: {"total", "to_rebuild"?}}}``.

        The sum of every page's counters, as OpenIO's client computes it:
        ``chunk.to_rebuild`` is there iff an incident is set, a container's
        only if it has a chunk to rebuild.
        """
        chunk: dict[str, int] = {}
        containers: dict[str, dict[str, int]] = {}
        for body in self._pages(
            self.backend.status_page, volume, max_attempts, marker, prefix=prefix, limit=max,
            **_transport(kwargs),
        ):
            for key, value in body.get("chunk", {}).items():
                chunk[key] = chunk.get(key, 0) + value
            for cid, counters in body.get("container", {}).items():
                total = containers.setdefault(cid, {})
                for key, value in counters.items():
                    total[key] = total.get(key, 0) + value
        return {"chunk": chunk, "container": containers}

    # -- admin --------------------------------------------------------------

    def admin_incident_set(self, volume: str, date: int | float | str, *, create: bool = False, **kwargs: Any) -> None:
        """Set the incident date (seconds); a date <= 0 means no incident."""
        try:
            # As OpenIO, int(float(date)), without rounding a large int through a float.
            date = date if isinstance(date, int) else int(float(date))
        except (TypeError, ValueError, OverflowError):
            raise BadRequest(f"Invalid type for field [date]: {date!r}") from None
        if not INT64_MIN <= date <= INT64_MAX:  # the reference stores an int64
            raise BadRequest(f"incident date out of the 64-bit range: {date}")
        self.backend.incident_set(volume, date, create=create, **_transport(kwargs))

    def admin_incident_get(self, volume: str, **kwargs: Any) -> int:
        """The incident date, 0 when none is set."""
        return self.backend.incident_get(volume, **_transport(kwargs))

    def admin_lock(self, volume: str, who: str, *, create: bool = False, **kwargs: Any) -> None:
        """Lock the volume for ``who``: idempotent for the same owner, Forbidden for another."""
        if not isinstance(who, str):
            raise TypeError(f"lock owner must be str, not {type(who).__name__}")
        if not who:
            raise BadRequest("'who' not set")  # before create=True could create the volume
        self.backend.lock(volume, who, create=create, **_transport(kwargs))

    def admin_unlock(self, volume: str, **kwargs: Any) -> None:
        """Drop the lock, whoever holds it."""
        self.backend.unlock(volume, **_transport(kwargs))

    def admin_show(self, volume: str, **kwargs: Any) -> dict[str, str]:
        """Every admin key with its value as a string, e.g. ``{"lock": "who"}``."""
        return self.backend.show(volume, **_transport(kwargs))

    def admin_clear(
        self,
        volume: str,
        clear_all: bool = False,
        before_incident: bool = False,
        repair: bool = False,
        **kwargs: Any,
    ) -> dict[str, int]:
        """Clear the volume under the ``admin_clear`` lock; ``{"removed", "repaired", "errors"}``.

        ``clear_all`` removes every chunk record, ``before_incident`` those
        with mtime <= the incident date, ``repair`` rewrites every remaining
        record into the current encoding (``repaired`` counts them, ``errors``
        the unreadable ones). Every call erases the incident date and ends
        with the volume unlocked. Forbidden while another owner holds the lock.
        """
        return self.backend.clear(
            volume, all=clear_all, before_incident=before_incident, repair=repair, **_transport(kwargs)
        )

    # -- meta2 --------------------------------------------------------------

    def meta2_index_create(self, volume_id: str, **kwargs: Any) -> None:
        self.create(volume_id, service_type="meta2", **kwargs)

    def meta2_index_clear(self, volume_id: str, **kwargs: Any) -> dict[str, int]:
        """Clear a meta2 volume: every container record and tombstone, in one commit.

        For a replica down longer than the tombstone retention, cleared before it is
        repaired (docs/reliability.md). ``{"removed": n}``; NotFound for no such volume.
        Over HTTP, rdirdb's own route ``POST /v1/rdirdb/meta2/clear`` (not OpenIO's)."""
        return self.backend.meta2_clear(volume_id, **_transport(kwargs))

    def meta2_index_push(
        self,
        volume_id: str,
        container_url: str,
        container_id: str,
        mtime: int | float,
        extra_data: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Index a container (``container_url`` is ``NS/account/container``); creates the volume."""
        record = {
            "container_url": container_url,
            "container_id": container_id,
            "mtime": integer_field("mtime", mtime),
            "extra_data": extra_data,
        }
        self.backend.meta2_push(volume_id, [record], **_transport(kwargs))

    def meta2_index_delete(
        self,
        volume_id: str,
        container_path: str | None = None,
        container_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Deindex a container given its path, its id, or both (idempotent).

        A missing id is computed from the path; a missing path is looked up in
        the volume's own records (the embedded store has no directory), and an
        id found nowhere deletes nothing.
        """
        if container_path is None:
            if container_id is None:
                raise ValueError("container_path or container_id is required")
            container_path = self.backend.container_path(volume_id, container_id, **_transport(kwargs))
            if container_path is None:
                return
        elif container_id is None:
            parts = container_path.split("/", 2)
            if len(parts) != 3:
                raise BadRequest(f"container path {container_path!r} is not NS/account/container")
            container_id = cid_from_name(parts[1], parts[2])
        self.backend.meta2_delete(
            volume_id, [{"container_url": container_path, "container_id": container_id}],
            **_transport(kwargs),
        )

    def meta2_index_fetch(
        self,
        volume_id: str,
        prefix: str | None = None,
        marker: str | None = None,
        limit: int = META2_FETCH_LIMIT,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """One page: ``{"records": [...], "truncated": bool}``, at most ``limit``
        records (capped at 10000) after the exclusive ``marker``."""
        page = self.backend.meta2_page(volume_id, prefix=prefix, marker=marker, limit=limit, **_transport(kwargs))
        return {"records": page[0], "truncated": page[1]}

    def meta2_index_fetch_all(
        self, volume_id: str, prefix: str | None = None, marker: str | None = None,
        limit: int = META2_FETCH_LIMIT, **kwargs: Any,
    ) -> list[Meta2Record]:
        """Every record of the volume (``prefix``/``limit`` pass through), page by page."""
        return list(itertools.chain.from_iterable(self._pages(
            self.backend.meta2_page, volume_id, 1, marker, prefix=prefix, limit=limit, **_transport(kwargs)
        )))
    # -- moving a volume's index to other rdir servers ------------------------

    def _copy_hosts(self, volume_id: str, service_type: str, sources: Any, dests: Any) -> tuple[list[str], list[str]]:
        hosts = getattr(self.backend, "hosts", None)
        if hosts is None:
            raise OioException("copying a volume needs the remote mode (rdir servers)")
        dests = list(dests or ())
        sources = [h for h in (sources or hosts(volume_id, service_type, {})) if h not in dests]
        if not sources:
            raise OioException("No source available")
        if not dests:
            raise OioException("No destination available")
        return sources, dests

    def chunk_copy_vol(
        self,
        volume_id: str,
        sources: Sequence[str] | None = None,
        dests: Sequence[str] | None = None,
        batch_size: int = 1000,
        progress: Callable[[int], None] | None = None,
        **kwargs: Any,
    ) -> int:
        """Copy a rawx volume's index (admin keys, then records in batches) from
        ``sources`` (default: its current rdir servers) to the rdir servers
        ``dests``, creating it there; returns how many records were copied."""
        sources, dests = self._copy_hosts(volume_id, "rawx", sources, dests)
        admin = self.admin_show(volume_id, rdir_hosts=sources)
        if "incident_date" in admin:
            self.admin_incident_set(volume_id, int(admin["incident_date"]), create=True, rdir_hosts=dests)
        if "lock" in admin:
            self.admin_lock(volume_id, admin["lock"], create=True, rdir_hosts=dests)
        self.create(volume_id, rdir_hosts=dests)
        pages = self._pages(
            self.backend.chunk_page, volume_id, 3, None,
            prefix=None, limit=batch_size, rebuild=False, rdir_hosts=sources,
        )
        batches = ([{"container_id": cid, "chunk_id": chunk, **value} for cid, chunk, value in page]
                   for page in pages)
        return _copy(batches, lambda batch: self.backend.chunk_push(
            volume_id, batch, create=True, rdir_hosts=dests), progress)

    def meta2_copy_vol(
        self,
        volume_id: str,
        sources: Sequence[str] | None = None,
        dests: Sequence[str] | None = None,
        batch_size: int = 1000,
        progress: Callable[[int], None] | None = None,
        **kwargs: Any,
    ) -> int:
        """Copy a meta2 volume's index from ``sources`` to ``dests``; returns how many records."""
        sources, dests = self._copy_hosts(volume_id, "meta2", sources, dests)
        batches = self._pages(self.backend.meta2_page, volume_id, 3, None,
                              prefix=None, limit=batch_size, rdir_hosts=sources)
        return _copy(batches, lambda batch: self.backend.meta2_push(volume_id, batch, rdir_hosts=dests), progress)


def _copy(batches: Iterable[Any], push: Callable[[Any], None], progress: Callable[[int], None] | None) -> int:
    """Push every non-empty batch; returns how many records were pushed."""
    copied = 0
    for batch in batches:
        if batch:
            push(batch)
            copied += len(batch)
            if progress is not None:
                progress(len(batch))
    return copied
