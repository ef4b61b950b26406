"""The embedded rdir backend: each request served from the LMDB store, in process."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from rdirdb._rdir import CHUNK_DTYPE
from rdirdb.rdir.backend import ChunkEntry, Meta2Record, Page, RdirBackend, listing_limit
from rdirdb.rdir.store import Store, Volume


class EmbeddedBackend(RdirBackend):
    """Serves every volume from a :class:`rdirdb.rdir.store.Store` under ``path``."""

    def __init__(self, path: str | os.PathLike[str], **store_options: Any) -> None:
        self.store = Store(path, **store_options)

    def close(self) -> None:
        self.store.close()

    def _rawx(self, volume: str, create: bool = False) -> Volume:
        return self.store.volume(volume, "rawx", create=create)

    def _meta2(self, volume: str, create: bool = False) -> Volume:
        return self.store.volume(volume, "meta2", create=create)

    def create(self, volume: str, service_type: str, **options: Any) -> None:
        self.store.volume(volume, service_type, create=True)

    # -- chunks -------------------------------------------------------------

    def chunk_push(self, volume: str, records: Any, *, create: bool, **options: Any) -> None:
        self.store.write(volume, "rawx", records, create=create)

    def chunk_delete(self, volume: str, keys: Any, **options: Any) -> None:
        self.store.write(volume, "rawx", keys, delete=True)

    def chunk_page(
        self, volume: str, *, prefix: str | None, marker: str | None, limit: int | None, rebuild: bool,
        **options: Any,
    ) -> tuple[Iterable[ChunkEntry], bool, str | None]:
        vol = self._rawx(volume)
        incident = vol.rebuild_incident(rebuild)
        if incident is None:
            return [], False, None
        return vol.chunks.fetch_entries(prefix=prefix, marker=marker, limit=listing_limit(limit), incident=incident)

    def chunk_array_page(
        self, volume: str, *, prefix: str | None, marker: str | None, limit: int | None, rebuild: bool,
        **options: Any,
    ) -> tuple[np.ndarray, bool, str | None]:
        vol = self._rawx(volume)
        incident = vol.rebuild_incident(rebuild)
        if incident is None:
            return np.empty(0, CHUNK_DTYPE), False, None
        return vol.chunks.fetch_arrays(
            prefix=prefix, marker=marker, limit=listing_limit(limit), incident=incident
        )

    def status_page(
        self, volume: str, *, prefix: str | None, marker: str | None, limit: int | None,
        **options: Any,
    ) -> tuple[dict[str, Any], bool, str | None]:
        return self._rawx(volume).status_page(prefix=prefix, marker=marker, limit=listing_limit(limit))

    # -- admin --------------------------------------------------------------

    def incident_set(self, volume: str, date: int, *, create: bool, **options: Any) -> None:
        self._rawx(volume, create).set_incident(date)

    def incident_get(self, volume: str, **options: Any) -> int:
        return self._rawx(volume).incident

    def lock(self, volume: str, who: str, *, create: bool, **options: Any) -> None:
        self._rawx(volume, create).lock(who)

    def unlock(self, volume: str, **options: Any) -> None:
        self._rawx(volume).unlock()

    def show(self, volume: str, **options: Any) -> dict[str, str]:
        return self._rawx(volume).admin_show()

    def clear(self, volume: str, *, all: bool, before_incident: bool, repair: bool, **options: Any) -> dict[str, int]:
        return self._rawx(volume).clear(all=all, before_incident=before_incident, repair=repair)

    # -- meta2 --------------------------------------------------------------

    def meta2_clear(self, volume: str, **options: Any) -> dict[str, int]:
        return {"removed": self._meta2(volume).clear_records()}

    def meta2_push(self, volume: str, records: list[dict[str, Any]], **options: Any) -> None:
        # meta2 pushes create the volume, as the reference server does by default.
        self.store.write(volume, "meta2", records, create=True)

    def meta2_delete(self, volume: str, records: list[dict[str, Any]], **options: Any) -> None:
        self.store.write(volume, "meta2", records, delete=True)

    def meta2_page(
        self, volume: str, *, prefix: str | None, marker: str | None, limit: int | None,
        **options: Any,
    ) -> Page[list[Meta2Record]]:
        return self._meta2(volume).meta2.fetch(prefix=prefix, marker=marker, limit=listing_limit(limit))
