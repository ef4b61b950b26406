"""The embedded store: one LMDB environment per volume under one directory.

Layout::

    <root>/rawx/<volume file name>/{data,lock}.mdb    chunk records + admin keys
    <root>/meta2/<volume file name>/{data,lock}.mdb   container records

A volume id is any non-empty text of valid UTF-8 without NUL (``..``, ``/x``
and control characters included: OpenIO names volumes freely). It maps to its
file name by percent-encoding every byte outside ``[A-Za-z0-9_.:-]`` and a
leading dot, so no id can escape the directory and the mapping is reversible
for listings; the file name may not exceed 255 bytes.

:meth:`Store.write` is the one write path of records, for the embedded client
and the HTTP server alike.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from typing import Any, Iterator
from urllib.parse import quote, unquote

from rdirdb._batch import Batch
from rdirdb._lmdb import Environment, Transaction
from rdirdb._rdir import CHUNK_DATABASES, META2_DATABASES, ChunkIndex, Meta2Index, encode_chunks, encode_meta2
from rdirdb._repair import MAX_STAMP, STAMP_BITS_COUNTER, Stamps
from rdirdb.errors import BadRequest, ClosedError, Forbidden, LmdbFileNotFoundError, NotFound, caller_error

SERVICE_TYPES = ("rawx", "meta2")
DEFAULT_MAP_SIZE = 64 << 20  # grows on its own; only the address space is reserved
MAX_VOLUME_ID = 255
_SAFE = "_.:-"

ADMIN_DB = "admin"
LOCK_KEY = "lock"
INCIDENT_KEY = "incident_date"
CLEAR_LOCK_OWNER = "admin_clear"

# How long a delete's tombstone is kept (docs/reliability.md, "Replicas that converge"): a
# replica down longer than this must be cleared and copied, not repaired.
TOMBSTONE_RETENTION = 10 * 86400  # seconds
# A purge walks the tombstones once the oldest is this fraction of the retention past it (and
# removes every expired one): at most one walk per volume per 1% of the retention (2.4 hours),
# however often volumes are opened. Expired tombstones are invisible to repair meanwhile.
PURGE_LAG = 0.01
# How far ahead of a server's clock the stamps it takes from another replica may be (seconds):
# a stamp further ahead would win over every real write of its key until the clocks reach it.
MAX_CLOCK_SKEW = 300.0


def stamp_at(seconds: float) -> int:
    """The first write stamp of the moment ``seconds`` (since the epoch): stamps are
    milliseconds << STAMP_BITS_COUNTER, plus a counter (a hybrid logical clock)."""
    return max(0, int(seconds * 1000)) << STAMP_BITS_COUNTER


def stamp_time(stamp: int) -> float:
    """The wall-clock time (seconds since the epoch) of a write stamp."""
    return (stamp >> STAMP_BITS_COUNTER) / 1000


def check_retention(retention: float) -> float:
    """``retention``, a tombstone retention: a finite number of seconds above 0 (at 0 or
    less every tombstone would be left out of repair, and deletes would not converge)."""
    if not isinstance(retention, (int, float)) or not 0 < retention < math.inf:
        raise BadRequest(f"the tombstone retention must be a finite number of seconds above 0, not {retention}")
    return retention


def check_clock_skew(skew: float) -> float:
    """``skew``, a maximum clock skew: a finite number of seconds, 0 or more."""
    if not isinstance(skew, (int, float)) or not 0 <= skew < 1e9:
        raise BadRequest(f"the maximum clock skew must be a number of seconds in [0, 1e9), not {skew}")
    return skew


def retention_cutoff(retention: float, now: float | None = None) -> int:
    """The stamp below which tombstones have outlived ``retention`` seconds."""
    return stamp_at((time.time() if now is None else now) - check_retention(retention))


def volume_file_name(volume_id: str) -> str:
    """The directory name that stores ``volume_id`` (reversible, traversal-proof).

    This is the rule of volume ids (see the module docstring): BadRequest for
    any other id, TypeError for a value that is not text.
    """
    if not isinstance(volume_id, str):
        raise caller_error(TypeError(f"volume id must be str, not {type(volume_id).__name__}"))
    if not volume_id:
        raise BadRequest("volume id is empty")
    if "\x00" in volume_id:
        raise BadRequest("volume id contains a NUL character")
    try:
        encoded = volume_id.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("volume id is not valid UTF-8 text") from None
    name = quote(encoded, safe=_SAFE)
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) > MAX_VOLUME_ID:
        raise BadRequest(f"volume id is too long ({len(volume_id)} characters)")
    return name


def volume_id_from_file_name(name: str) -> str:
    return unquote(name)


def _admin_key(key: str) -> bytes:
    if not isinstance(key, str):
        raise TypeError(f"admin key must be str, not {type(key).__name__}")
    return key.encode()


def _check_service_type(service_type: str) -> None:
    if service_type not in SERVICE_TYPES:
        raise BadRequest(f"unknown service type {service_type!r} (expected one of {SERVICE_TYPES})")


class Volume:
    """One open volume: its environment and its index."""

    def __init__(self, volume_id: str, service_type: str, env: Environment) -> None:
        self.volume_id = volume_id
        self.service_type = service_type
        self.env = env
        self.index: ChunkIndex | Meta2Index
        if service_type == "rawx":
            self.chunks = self.index = ChunkIndex(env)
        else:
            self.meta2 = self.index = Meta2Index(env)
        self.stamps: Stamps = self.index.stamps

    def purge_tombstones(self, retention: float, now: float | None = None) -> int:
        """Remove the tombstones older than ``retention`` seconds, once the oldest is
        :data:`PURGE_LAG` of the retention past it (else this is one read); returns how many."""
        if self.env.readonly:
            return 0
        lag = min(stamp_at(retention * PURGE_LAG), MAX_STAMP)
        return self.stamps.purge(retention_cutoff(retention, now), lag)

    def clear_records(self) -> int:
        """Remove every record and every tombstone, in one commit; returns how many records.

        A replica cleared to be repaired from the others (docs/reliability.md); the
        clock and the admin keys stay."""
        return self.stamps.clear(records=True)

    def snapshot(self) -> Transaction:
        """A read transaction: the volume as of now, for as long as it stays open.

        Pass it as ``txn`` to :meth:`admin_show` and to the index's ``fetch``
        so that they all read that one state (a point-in-time export); use it
        as a context manager and from one thread at a time. While it is open,
        LMDB cannot reuse the pages that writers free (the file grows by what
        they rewrite meanwhile), and in this process a map growth of this
        volume waits for it: do not write to the volume from the thread that
        holds it.
        """
        return self.env.begin()

    # -- admin keys (rawx volumes) ----------------------------------------

    def admin_show(self, txn: Transaction | None = None) -> dict[str, str]:
        """Every admin key with its value, as strings (like the reference).

        ``txn`` (see :meth:`snapshot`) reads that state."""
        reading = self.env.begin() if txn is None else contextlib.nullcontext(txn)  # the caller's stays open
        with reading as t, t.cursor(db=ADMIN_DB) as cur:
            return {k.decode(): v.decode("utf-8", "replace") for k, v in cur}

    def admin_get(self, key: str) -> str | None:
        with self.env.begin() as txn:
            value = txn.get(_admin_key(key), db=ADMIN_DB)
        return None if value is None else value.decode("utf-8", "replace")

    def admin_set(self, key: str, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"admin value must be str, not {type(value).__name__}")
        with self.env.begin(write=True) as txn:
            txn.put(_admin_key(key), value.encode(), db=ADMIN_DB)

    def admin_delete(self, key: str) -> None:
        with self.env.begin(write=True) as txn:
            txn.delete(_admin_key(key), db=ADMIN_DB)

    @property
    def incident(self) -> int:
        """The incident date (seconds), 0 when none is set."""
        value = self.admin_get(INCIDENT_KEY)
        try:
            return int(value) if value is not None else 0
        except ValueError:
            return 0

    def lock(self, who: str) -> None:
        """Take the admin lock for ``who``; idempotent for the same owner.

        The check and the set run in one write transaction, which LMDB serializes
        across threads and processes, so two lockers can never both win.
        """
        if not isinstance(who, str):
            raise TypeError(f"lock owner must be str, not {type(who).__name__}")
        if not who:
            raise BadRequest("'who' not set")
        with self.env.begin(write=True) as txn:
            current = txn.get(LOCK_KEY.encode(), db=ADMIN_DB)
            if current is not None and current.decode("utf-8", "replace") != who:
                raise Forbidden(f"Already locked by {current.decode('utf-8', 'replace')}")
            txn.put(LOCK_KEY.encode(), who.encode(), db=ADMIN_DB)

    def unlock(self) -> None:
        self.admin_delete(LOCK_KEY)

    # -- the rdir server's volume semantics, shared by the embedded client and
    #    the HTTP server so both answer alike --------------------------------

    def set_incident(self, date: int) -> None:
        """Set the incident date, synchronously (the reference's only synced write)."""
        self.admin_set(INCIDENT_KEY, str(date))
        self.env.sync()

    def rebuild_incident(self, rebuild: bool) -> int | None:
        """The incident filter of a listing: 0 without ``rebuild``; None when a
        rebuild listing is empty because no incident is set."""
        if not rebuild:
            return 0
        incident = self.incident
        return incident if incident > 0 else None

    def status_page(
        self, *, prefix: str | None, marker: str | None, limit: int
    ) -> tuple[dict[str, Any], bool, str | None]:
        """The reference's status body of one page (§5.3), truncated, next marker."""
        incident = self.incident
        total, to_rebuild, containers, truncated, marker = self.chunks.status(
            prefix=prefix, marker=marker, limit=limit, incident=incident
        )
        per_container: dict[str, dict[str, int]] = {}
        for cid in sorted(containers):
            count, count_to_rebuild = containers[cid]
            per_container[cid] = {"total": count}
            if count_to_rebuild:
                per_container[cid]["to_rebuild"] = count_to_rebuild
        body: dict[str, Any] = {"chunk": {"total": total}, "container": per_container}
        if incident > 0:
            body["chunk"]["to_rebuild"] = to_rebuild
            body["rebuild"] = {"incident_date": incident}
        return body, truncated, marker

    def clear(self, *, all: bool, before_incident: bool, repair: bool) -> dict[str, int]:
        """Clear under the ``admin_clear`` lock: Forbidden while another owner holds it.

        Removes records (``all``, or those with mtime <= the incident date),
        rewrites the rest (``repair``) and erases the incident date, in one
        commit; the volume ends unlocked, as the reference leaves it.
        """
        self.lock(CLEAR_LOCK_OWNER)  # atomic check-and-set
        try:
            before = self.incident if before_incident else 0
            removed, repaired, errors = self.chunks.clear(
                all=all, before=before, repair=repair, erase_incident=True
            )
        finally:
            self.unlock()
        return {"removed": removed, "repaired": repaired, "errors": errors}


def warm_budget() -> int:
    """How much of its volumes a :class:`Store` warms (``warm=True``): half of the
    memory available now (MemAvailable: free memory plus what the kernel can
    reclaim), so that volumes larger than that are not read in only to push
    other pages out."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2


def default_writemap(sync: bool) -> bool:
    """Whether volumes use MDB_WRITEMAP when not told: when commits are not
    synced, where it pays (docs/engine.md, "Writes at scale")."""
    return not sync


class Store:
    """Volumes under ``path``; environments are opened on first use and cached.

    ``sync=False`` trades durability on power loss for speed: a commit still
    survives the death of the process. ``writemap`` opens the volumes with
    MDB_WRITEMAP; by default, when ``sync`` is off (:func:`default_writemap`).
    Deletes leave tombstones for ``tombstone_retention`` seconds (10 days), purged
    when a volume opens and by :meth:`purge_tombstones`. Repair's entries stamped more
    than ``max_clock_skew`` seconds (5 minutes) ahead of this host's clock are refused.
    ``warm=True`` reads each volume's pages into memory when it opens, in a thread of
    its own (:meth:`Environment.warm`), as long as the volumes it warmed take less
    than half of the memory available (:func:`warm_budget`): the server's choice, so
    that writes to a large volume do not wait for the disk page by page.
    ``pretouch=True`` (with MDB_WRITEMAP, unsynced) has a thread of each volume fault in, after
    each write, the free pages the next writes will reuse (:meth:`Environment.pretouch`):
    ``rdirdb serve --pretouch``, off by default (it pays only where a CPU is free).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        sync: bool = True,
        readonly: bool = False,
        writemap: bool | None = None,
        tombstone_retention: float = TOMBSTONE_RETENTION,
        max_clock_skew: float = MAX_CLOCK_SKEW,
        warm: bool = False,
        pretouch: bool = False,
    ) -> None:
        self.tombstone_retention = check_retention(tombstone_retention)
        self.max_clock_skew = check_clock_skew(max_clock_skew)
        self.warm = warm
        self.pretouch = pretouch
        self._warmed = 0  # bytes of the volumes warmed
        self.path = os.fspath(path)
        self.map_size = map_size
        self.sync = sync
        self.writemap = default_writemap(sync) if writemap is None else writemap
        self.readonly = readonly
        self._volumes: dict[tuple[str, str], Volume] | None = {}
        self._lock = threading.Lock()
        if not readonly:
            os.makedirs(self.path, exist_ok=True)

    def _dir(self, volume_id: str, service_type: str) -> str:
        _check_service_type(service_type)
        return os.path.join(self.path, service_type, volume_file_name(volume_id))

    def exists(self, volume_id: str, service_type: str = "rawx") -> bool:
        return os.path.exists(os.path.join(self._dir(volume_id, service_type), "data.mdb"))

    def write(
        self, volume_id: str, service_type: str, records: Any, *, delete: bool = False, create: bool = False
    ) -> int:
        """Write records to a volume in one transaction, all or nothing (delete
        them with ``delete``); returns how many were written (or existed).

        The one write path of records: the volume id is checked, then the batch
        is validated and encoded once (the native encoder is the only
        validator), and only then is the volume opened, or created with
        ``create``: a bad batch is refused even for an absent volume, and
        creates nothing. An open volume costs no file system call.
        """
        vol, batch = self.prepare_write(volume_id, service_type, records, delete=delete, create=create)
        return vol.index.apply(batch)

    def prepare_write(
        self, volume_id: str, service_type: str, records: Any, *, delete: bool = False, create: bool = False
    ) -> tuple[Volume, Batch]:
        """What :meth:`write` does before its transaction: the volume (opened, or
        created with ``create``) and the validated batch, for ``vol.index.apply``
        or, with the batches of other writes, ``vol.index.apply_group`` (the
        server's group commit). Raises what :meth:`write` raises for bad input."""
        vol = self._cached(volume_id, service_type)
        if vol is None:
            self._dir(volume_id, service_type)  # the id is checked before the batch
        encode = encode_chunks if service_type == "rawx" else encode_meta2
        batch = encode(records, key_only=delete)
        if vol is None:
            vol = self.volume(volume_id, service_type, create=create)
        return vol, batch

    def _cached(self, volume_id: str, service_type: str) -> Volume | None:
        if self._volumes is None:
            raise ClosedError("store is closed")
        return self._volumes.get((service_type, volume_id))

    def volume(self, volume_id: str, service_type: str = "rawx", *, create: bool = False) -> Volume:
        """The open volume; ``NotFound`` when it does not exist and not ``create``."""
        vol = self._cached(volume_id, service_type)
        if vol is not None:
            return vol
        key = (service_type, volume_id)
        path = self._dir(volume_id, service_type)
        with self._lock:
            if self._volumes is None:
                raise ClosedError("store is closed")
            vol = self._volumes.get(key)
            if vol is not None:
                return vol
            if not os.path.exists(os.path.join(path, "data.mdb")):
                if not create:
                    raise NotFound(f"DB not found: {service_type} volume {volume_id!r}")
                if self.readonly:
                    raise BadRequest(f"cannot create volume {volume_id!r}: the store is read-only")
            databases = CHUNK_DATABASES if service_type == "rawx" else META2_DATABASES
            try:
                env = Environment(
                    path,
                    databases=databases,
                    map_size=self.map_size,
                    sync=self.sync,
                    readonly=self.readonly,
                    writemap=self.writemap,
                    pretouch=self.pretouch,
                )
            except LmdbFileNotFoundError:
                # Read-only, while its creator has not yet made its databases.
                raise NotFound(f"DB not found: {service_type} volume {volume_id!r}") from None
            vol = Volume(volume_id, service_type, env)
            vol.purge_tombstones(self.tombstone_retention)
            if self.warm:
                threading.Thread(target=self._warm, args=(env,), name=f"rdirdb-warm-{path}", daemon=True).start()
            self._volumes[key] = vol
            return vol

    def _warm(self, env: Environment) -> None:
        """Warm ``env`` if it fits in what is left of :func:`warm_budget` (in a thread)."""
        with contextlib.suppress(ClosedError):  # closed meanwhile
            size = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
            with self._lock:
                if self._warmed + size > warm_budget():
                    return
                self._warmed += size
            env.warm()

    def purge_tombstones(self) -> int:
        """Purge the expired tombstones of every open volume; returns how many."""
        return sum(vol.purge_tombstones(self.tombstone_retention) for vol in self)

    def volumes(self, service_type: str = "rawx") -> list[str]:
        """The ids of the volumes stored on disk, sorted."""
        _check_service_type(service_type)
        base = os.path.join(self.path, service_type)
        try:
            names = os.listdir(base)
        except FileNotFoundError:
            return []
        return sorted(
            volume_id_from_file_name(n)
            for n in names
            if os.path.exists(os.path.join(base, n, "data.mdb"))
        )

    @property
    def opened_count(self) -> int:
        """How many volume environments are open (the reference's opened_db_count)."""
        return len(self._volumes or ())

    def __iter__(self) -> Iterator[Volume]:
        return iter(list((self._volumes or {}).values()))

    def close(self) -> None:
        """Close every open environment. Idempotent."""
        volumes, self._volumes = self._volumes, None
        for vol in (volumes or {}).values():
            vol.env.close()

    @property
    def closed(self) -> bool:
        return self._volumes is None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
