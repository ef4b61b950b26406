"""Service registry: which rdir, rawx and meta2 services exist, and which rdir
services hold each volume's index.

It replaces OpenIO's conscience (services, locations, scores, stats) and the
meta1 ``_RDIR`` references (volume -> rdir assignments) with one small store.
Two backends share one interface, chosen by URL (:func:`open_registry`):

* ``file:///path/registry.json``: one JSON file, for one machine (the embedded
  default). Writers take an ``fcntl`` lock on a side file and replace the JSON
  atomically, so several processes can share it and readers never see half a
  file.
* ``postgresql://...`` (or a keyword DSN): tables in the ``rdirdb_registry``
  schema, shared by every host.

Services register themselves (:meth:`Registry.register`), then refresh their
score and stats (an rdir reports ``opened_db_count`` and ``volumes``);
:meth:`Registry.expire` drops the ones that stopped refreshing. Assignments
outlive their rdir services: a down rdir still holds its volumes until the
dispatcher reassigns them.

Each write is atomic on its own. A dispatcher that reads the assignments,
decides and writes holds :meth:`Registry.assignment_lock` throughout, so two
dispatchers (other threads, processes or hosts) never decide from the same
state: the second one sees what the first recorded.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, TypedDict
from urllib.parse import unquote, urlparse

from rdirdb.errors import BadRequest, NotFound, OioException, ServiceUnavailable, VolumeException

log = logging.getLogger(__name__)

SERVICE_TYPES = ("rdir", "rawx", "meta2")
LOCATION_LEVELS = 4


@dataclass
class Service:
    """One registered service; ``stats`` holds what it reports (free-form JSON)."""

    type: str
    id: str
    addr: str
    location: str = ""
    score: int = 100
    stats: dict[str, Any] = field(default_factory=dict)
    last_refresh: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Service:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def parse_location(service: Service) -> tuple[str, ...]:
    """The 4 levels ``(dc, rack, host, disk)`` of a service's location.

    Shorter locations are left-padded with ``""``; extra levels stay in the
    disk level. A service without a location is placed by its address
    (host, port), as OpenIO does, so that two services never look co-located
    by accident.
    """
    if service.location:
        parts = service.location.split(".")
        if len(parts) > LOCATION_LEVELS:
            parts = parts[: LOCATION_LEVELS - 1] + [".".join(parts[LOCATION_LEVELS - 1 :])]
    else:
        host, _, port = service.addr.rpartition(":")
        parts = [host, port] if host else [service.addr]
    return ("",) * (LOCATION_LEVELS - len(parts)) + tuple(parts)


def location_distance(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """``4 - common leading levels``: 0 for the same disk, 4 for other datacenters."""
    common = 0
    for x, y in zip(a, b):
        if x != y:
            break
        common += 1
    return LOCATION_LEVELS - common


def _check_service(service: Service) -> None:
    if service.type not in SERVICE_TYPES:
        raise BadRequest(f"unknown service type {service.type!r} (expected one of {SERVICE_TYPES})")
    if not service.id or not service.addr:
        raise BadRequest("a service needs an id and an address")


def _dedup(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


class Registry(ABC):
    """The interface both backends implement; assignment edits are shared here."""

    # ---- services ------------------------------------------------------

    @abstractmethod
    def register(self, service: Service) -> None:
        """Insert or replace ``service`` (keyed by id) and stamp its refresh time."""

    @abstractmethod
    def refresh(self, service_id: str, stats: dict[str, Any] | None = None, score: int | None = None) -> None:
        """Merge ``stats`` into the service's stats, update its score and refresh time.

        Raises NotFound for a service that never registered (or expired), so a
        server knows it must register again.
        """

    @abstractmethod
    def expire(self, older_than: float) -> list[str]:
        """Remove the services last refreshed before the timestamp ``older_than``; their ids."""

    @abstractmethod
    def remove(self, service_id: str) -> None:
        """Deregister a service (graceful shutdown); NotFound if unknown."""

    @abstractmethod
    def services(self, service_type: str | None = None) -> list[Service]:
        """Registered services of one type (all types if None), sorted by id."""

    def get(self, service_id: str) -> Service:
        """One service by id; NotFound if unknown."""
        for service in self.services():
            if service.id == service_id:
                return service
        raise NotFound(f"service {service_id!r} is not registered")

    # ---- assignments ---------------------------------------------------

    @abstractmethod
    def assignments(self) -> dict[str, list[str]]:
        """Every assignment: ``{volume_id: [rdir_id, ...]}``."""

    @abstractmethod
    def _update_assignment(self, volume_id: str, change: Callable[[list[str]], list[str]]) -> list[str]:
        """Atomically replace a volume's rdir list by ``change(old)``; empty deletes it."""

    @abstractmethod
    def assignment_lock(self) -> AbstractContextManager[None]:
        """Hold the registry-wide assignment lock for the ``with`` block; not re-entrant.

        Serializes whole read-decide-write runs of dispatchers, across
        threads, processes and (PostgreSQL) hosts. The writes made inside
        still commit one by one. Reading needs no lock.
        """

    def get_assignment(self, volume_id: str) -> list[str]:
        """The rdir ids holding ``volume_id``, first assigned first ([] if none)."""
        return self.assignments().get(volume_id, [])

    def rdir_services(self, volume_id: str) -> list[Service]:
        """The registered rdir services holding ``volume_id``, in assignment order.

        What a remote client needs to reach a volume; unregistered (expired)
        rdir services are left out since their address is unknown.
        Raises VolumeException when the volume has no assignment at all.
        """
        rdir_ids = self.get_assignment(volume_id)
        if not rdir_ids:
            raise VolumeException(f"no rdir service assigned to volume {volume_id!r}")
        known = {s.id: s for s in self.services("rdir")}
        return [known[r] for r in rdir_ids if r in known]

    def replace_assignment(self, volume_id: str, rdir_ids: list[str]) -> list[str]:
        return self._update_assignment(volume_id, lambda old: _dedup(list(rdir_ids)))

    def add_assignment(self, volume_id: str, rdir_ids: list[str]) -> list[str]:
        return self._update_assignment(volume_id, lambda old: _dedup(old + list(rdir_ids)))

    def remove_assignment(self, volume_id: str, rdir_ids: list[str] | None = None) -> list[str]:
        """Remove some rdir services from a volume (all of them if None)."""
        if rdir_ids is None:
            return self._update_assignment(volume_id, lambda old: [])
        gone = set(rdir_ids)
        return self._update_assignment(volume_id, lambda old: [r for r in old if r not in gone])

    def close(self) -> None:
        pass

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------
# Local file backend
# --------------------------------------------------------------------------


class _RegistryFile(TypedDict):
    """The JSON document of a :class:`FileRegistry`."""

    services: dict[str, dict[str, Any]]  # id -> Service.to_dict() + last_refresh
    assignments: dict[str, list[str]]  # volume id -> rdir ids


class FileRegistry(Registry):
    """A JSON file; writers serialize on ``<path>.lock`` and replace the file atomically.

    The assignment lock is another file, ``<path>.assign.lock``, so that the
    writes of its holder take the (short) write lock as any other.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock_path = self.path + ".lock"
        self._assign_lock_path = self.path + ".assign.lock"
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)

    def _read(self) -> _RegistryFile:
        data: _RegistryFile
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            data = {"services": {}, "assignments": {}}
        except ValueError as exc:
            raise OioException(f"registry file {self.path} is not valid JSON: {exc}") from exc
        data.setdefault("services", {})
        data.setdefault("assignments", {})
        return data

    @contextmanager
    def _write(self) -> Iterator[_RegistryFile]:
        """Read-modify-write under an exclusive lock; nothing is written on error."""
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            data = self._read()
            yield data
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(self.path)), prefix=".registry-")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(data, f, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise

    def register(self, service: Service) -> None:
        _check_service(service)
        with self._write() as data:
            data["services"][service.id] = {**service.to_dict(), "last_refresh": time.time()}

    def refresh(self, service_id: str, stats: dict[str, Any] | None = None, score: int | None = None) -> None:
        with self._write() as data:
            service = data["services"].get(service_id)
            if service is None:
                raise NotFound(f"service {service_id!r} is not registered")
            service["stats"].update(stats or {})
            if score is not None:
                service["score"] = score
            service["last_refresh"] = time.time()

    def expire(self, older_than: float) -> list[str]:
        with self._write() as data:
            gone = sorted(i for i, s in data["services"].items() if s["last_refresh"] < older_than)
            for service_id in gone:
                del data["services"][service_id]
        return gone

    def remove(self, service_id: str) -> None:
        with self._write() as data:
            if data["services"].pop(service_id, None) is None:
                raise NotFound(f"service {service_id!r} is not registered")

    def services(self, service_type: str | None = None) -> list[Service]:
        found = self._read()["services"]
        return [
            Service.from_dict(found[i])
            for i in sorted(found)
            if service_type is None or found[i]["type"] == service_type
        ]

    def assignments(self) -> dict[str, list[str]]:
        return self._read()["assignments"]

    @contextmanager
    def assignment_lock(self) -> Iterator[None]:
        # flock: it conflicts between open files, so threads of one process
        # wait for each other too, and it dies with its holder.
        with open(self._assign_lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another dispatcher to release %s", self._assign_lock_path)
                fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _update_assignment(self, volume_id: str, change: Callable[[list[str]], list[str]]) -> list[str]:
        with self._write() as data:
            new = change(data["assignments"].get(volume_id, []))
            if new:
                data["assignments"][volume_id] = new
            else:
                data["assignments"].pop(volume_id, None)
        return new


# --------------------------------------------------------------------------
# PostgreSQL backend
# --------------------------------------------------------------------------

PG_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS rdirdb_registry;
CREATE TABLE IF NOT EXISTS rdirdb_registry.services (
    id           text PRIMARY KEY,
    type         text NOT NULL,
    addr         text NOT NULL,
    location     text NOT NULL DEFAULT '',
    score        integer NOT NULL DEFAULT 100,
    stats        jsonb NOT NULL DEFAULT '{}',
    last_refresh double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS rdirdb_registry.assignments (
    volume_id text PRIMARY KEY,
    rdir_ids  text[] NOT NULL
);
"""
_SERVICE_COLUMNS = "type, id, addr, location, score, stats, last_refresh"
# The advisory lock key of assignment runs (rdirdb_registry.assignments' own key would
# do as well; a text keeps it readable in pg_locks through hashtext).
_ASSIGNMENT_LOCK_KEY = "rdirdb_registry.assignments"


class PostgresRegistry(Registry):
    """Tables in the ``rdirdb_registry`` schema; every write is one transaction.

    The assignment lock is a session-level advisory lock on the registry's own
    connection: the holder's writes run in the session that holds it, so if
    the connection is lost (and the server releases the lock), they fail
    rather than go on unlocked on a new connection.
    """

    def __init__(self, dsn: str) -> None:
        import psycopg  # optional dependency: only this backend needs it

        self._psycopg = psycopg
        self._dsn = dsn
        self._conn: Any = None
        self._lock = threading.Lock()  # one connection, shared by the threads
        # Advisory locks are re-entrant within a session: threads sharing the
        # connection take turns here first.
        self._assigning = threading.Lock()
        self._assign_session: Any = None  # the connection that holds the assignment lock
        with self._tx() as cur:
            # Concurrent CREATE ... IF NOT EXISTS can still collide: serialize them.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('rdirdb_registry'))")
            cur.execute(PG_SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """One transaction; a lost connection is reopened by the next call.

        Connection failures become ServiceUnavailable, so that a caller (a
        server refreshing itself, the dispatcher) handles them like any other
        unreachable service.
        """
        with self._lock:
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    if self._assign_session is not None:
                        raise ServiceUnavailable(
                            "registry connection lost while holding the assignment lock: nothing more is "
                            "recorded until the dispatcher runs again"
                        )
                    self._conn = self._psycopg.connect(self._dsn, autocommit=True, connect_timeout=10)
                with self._conn.transaction(), self._conn.cursor() as cur:
                    yield cur
            except self._psycopg.OperationalError as exc:
                raise ServiceUnavailable(f"registry database unreachable: {exc}") from exc

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def register(self, service: Service) -> None:
        from psycopg.types.json import Jsonb

        _check_service(service)
        with self._tx() as cur:
            cur.execute(
                f"INSERT INTO rdirdb_registry.services ({_SERVICE_COLUMNS})"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET type = EXCLUDED.type, addr = EXCLUDED.addr,"
                " location = EXCLUDED.location, score = EXCLUDED.score, stats = EXCLUDED.stats,"
                " last_refresh = EXCLUDED.last_refresh",
                (service.type, service.id, service.addr, service.location, service.score,
                 Jsonb(service.stats), time.time()),
            )

    def refresh(self, service_id: str, stats: dict[str, Any] | None = None, score: int | None = None) -> None:
        from psycopg.types.json import Jsonb

        with self._tx() as cur:
            cur.execute(
                "UPDATE rdirdb_registry.services SET stats = stats || %s,"
                " score = COALESCE(%s, score), last_refresh = %s WHERE id = %s",
                (Jsonb(stats or {}), score, time.time(), service_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"service {service_id!r} is not registered")

    def expire(self, older_than: float) -> list[str]:
        with self._tx() as cur:
            cur.execute(
                "DELETE FROM rdirdb_registry.services WHERE last_refresh < %s RETURNING id", (older_than,)
            )
            return sorted(row[0] for row in cur.fetchall())

    def remove(self, service_id: str) -> None:
        with self._tx() as cur:
            cur.execute("DELETE FROM rdirdb_registry.services WHERE id = %s", (service_id,))
            if cur.rowcount == 0:
                raise NotFound(f"service {service_id!r} is not registered")

    def services(self, service_type: str | None = None) -> list[Service]:
        with self._tx() as cur:
            cur.execute(
                f"SELECT {_SERVICE_COLUMNS} FROM rdirdb_registry.services"
                " WHERE %s::text IS NULL OR type = %s ORDER BY id",
                (service_type, service_type),
            )
            return [Service(*row) for row in cur.fetchall()]

    def get(self, service_id: str) -> Service:
        with self._tx() as cur:
            cur.execute(f"SELECT {_SERVICE_COLUMNS} FROM rdirdb_registry.services WHERE id = %s", (service_id,))
            row = cur.fetchone()
        if row is None:
            raise NotFound(f"service {service_id!r} is not registered")
        return Service(*row)

    def assignments(self) -> dict[str, list[str]]:
        with self._tx() as cur:
            cur.execute("SELECT volume_id, rdir_ids FROM rdirdb_registry.assignments ORDER BY volume_id")
            return dict(cur.fetchall())

    def get_assignment(self, volume_id: str) -> list[str]:
        with self._tx() as cur:
            cur.execute("SELECT rdir_ids FROM rdirdb_registry.assignments WHERE volume_id = %s", (volume_id,))
            row = cur.fetchone()
        return row[0] if row else []

    @contextmanager
    def assignment_lock(self) -> Iterator[None]:
        with self._assigning:
            with self._tx() as cur:
                cur.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (_ASSIGNMENT_LOCK_KEY,))
                if not cur.fetchone()[0]:
                    log.info("waiting for another dispatcher to release the registry's assignment lock")
                    # Other threads of this registry wait for the connection meanwhile.
                    cur.execute("SELECT pg_advisory_lock(hashtext(%s))", (_ASSIGNMENT_LOCK_KEY,))
                self._assign_session = self._conn
            try:
                yield
            finally:
                session, self._assign_session = self._assign_session, None
                # A lost session released the lock with it; else release it here.
                if session is self._conn and not (session.closed or session.broken):
                    with suppress(ServiceUnavailable), self._tx() as cur:
                        cur.execute("SELECT pg_advisory_unlock(hashtext(%s))", (_ASSIGNMENT_LOCK_KEY,))

    def _update_assignment(self, volume_id: str, change: Callable[[list[str]], list[str]]) -> list[str]:
        with self._tx() as cur:
            # Create the row first so that FOR UPDATE locks it even for a new volume.
            cur.execute(
                "INSERT INTO rdirdb_registry.assignments VALUES (%s, '{}') ON CONFLICT DO NOTHING", (volume_id,)
            )
            cur.execute(
                "SELECT rdir_ids FROM rdirdb_registry.assignments WHERE volume_id = %s FOR UPDATE", (volume_id,)
            )
            new = change(cur.fetchone()[0])
            if new:
                cur.execute(
                    "UPDATE rdirdb_registry.assignments SET rdir_ids = %s WHERE volume_id = %s", (new, volume_id)
                )
            else:
                cur.execute("DELETE FROM rdirdb_registry.assignments WHERE volume_id = %s", (volume_id,))
        return new


def open_registry(url: str) -> Registry:
    """The registry at ``url``: ``file:///path.json``, ``postgresql://...`` or a keyword DSN."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise BadRequest(f"registry URL {url!r}: a file URL cannot name a remote host")
        if not parsed.path:
            raise BadRequest(f"registry URL {url!r} has no path")
        return FileRegistry(unquote(parsed.path))
    if parsed.scheme in ("postgres", "postgresql") or (not parsed.scheme and "=" in url):
        return PostgresRegistry(url)
    raise BadRequest(f"registry URL {url!r}: expected file:///path.json or a postgresql:// DSN")
