"""RdirDispatcher: decide which rdir services hold the index of each rawx or
meta2 volume, and record it in the registry.

The rules are OpenIO's (reference §7), with the conscience's load balancer
replaced by a small deterministic one:

* each volume gets ``replicas`` rdir services with a score above 0;
* balance: rdir services whose load is above the average are avoided, and
  the least loaded one wins among the best placed; this is a soft rule,
  dropped (one retry) when it leaves no valid placement;
* ``max_per_rdir`` is a hard cap on an rdir's load;
* placement maximises the location distance (``4 - common leading levels``
  of ``dc.rack.host.disk``) from the volume's own service and the rdir
  services already chosen, and never goes below ``min_dist`` (default 1:
  never the very same location);
* a volume that no placement fits is left unassigned, and an error naming it
  and the failed constraint is raised once every other volume was tried.

An rdir's load is the larger of its reported ``opened_db_count`` and the
number of volumes the registry assigns to it: the first is what the server
really holds, the second already counts assignments it has not reported yet.

A run reads, decides and records under the registry's assignment lock (an
advisory lock in PostgreSQL, ``flock`` on a side file for the file registry),
so dispatchers running at once, anywhere, take turns: the later one sees the
earlier one's assignments, keeps them, and its balance counts them. A volume
therefore never gets two different rdir sets, nor more than ``replicas``.
"""

from __future__ import annotations

import logging
import random
from statistics import mean
from typing import Any, Callable, Mapping

from rdirdb.errors import BadRequest, OioException, ServiceUnavailable
from rdirdb.rdir.registry import Registry, Service, location_distance, open_registry, parse_location

log = logging.getLogger(__name__)

UNASSIGNED = "n/a"
STATUS_NO_RDIR = "No rdir found"
STATUS_NOT_ENOUGH = "Not enough replicas"
STATUS_TOO_MANY = "Too many replicas"
STATUS_MIN_DIST = "Minimum distance requirement failure"
STATUS_OK = "OK"

OnAssigned = Callable[[str, list[str]], None]


class PlacementError(OioException):
    """No set of rdir services satisfies a volume's constraints (OpenIO's status 481)."""


def _no_op(volume_id: str, rdir_ids: list[str]) -> None:
    pass


def _placeholder(rdir_id: str) -> dict[str, Any]:
    """An assigned rdir that is not registered (down or expired): shown with score 0."""
    return {"type": "rdir", "id": rdir_id, "addr": rdir_id, "location": "", "score": 0, "stats": {}}


class RdirDispatcher:
    """Assign rdir services to volumes; ``conf["registry"]`` is the registry URL.

    ``on_assigned(volume_id, rdir_ids)`` runs for each assignment the run
    recorded, with the volume's full rdir list, once the assignment lock is
    released, so that a client can create the volume on those servers; its
    errors are logged, not raised (the assignment is already recorded, and
    creating a volume again is harmless).
    """

    def __init__(
        self,
        conf: Mapping[str, Any],
        registry: Registry | None = None,
        on_assigned: OnAssigned | None = None,
        seed: int | None = None,
    ) -> None:
        if registry is None:
            if not conf.get("registry"):
                raise BadRequest("RdirDispatcher needs conf['registry'] (a file:// URL or a PostgreSQL DSN)")
            registry = open_registry(conf["registry"])
        self.registry = registry
        self.on_assigned: OnAssigned = on_assigned or _no_op
        # A fixed default seed: the same registry state gives the same placement,
        # so a dry run shows exactly what the real run will do.
        self.seed: int = int(conf.get("seed", 0)) if seed is None else seed

    # ---- reading ---------------------------------------------------------

    def get_assignments(self, service_type: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """``(services, rdir services)`` as dicts; each service has an ``rdir`` list
        when it is assigned (unregistered rdir services appear as placeholders)."""
        all_rdir = [s.to_dict() for s in self.registry.services("rdir")]
        by_id = {r["id"]: r for r in all_rdir}
        assignments = self.registry.assignments()
        services = []
        for service in self.registry.services(service_type):
            entry = service.to_dict()
            if service.id in assignments:
                entry["rdir"] = [by_id.get(r) or _placeholder(r) for r in assignments[service.id]]
            services.append(entry)
        return services, all_rdir

    def get_aggregated_assignments(self, service_type: str) -> dict[str, list[str]]:
        """``{rdir_id: [service ids]}``; unassigned services under ``"n/a"``, idle rdir with ``[]``."""
        services, all_rdir = self.get_assignments(service_type)
        result: dict[str, list[str]] = {r["id"]: [] for r in all_rdir}
        for service in services:
            for rdir in service.get("rdir") or [{"id": UNASSIGNED}]:
                result.setdefault(rdir["id"], []).append(service["id"])
        return result

    def check_assignments(self, service_type: str, min_dist: int = 3, replicas: int = 3) -> list[dict[str, Any]]:
        """One row per service with its status, as ``openio rdir assignments --check`` shows it.

        ``distance`` is the smallest pairwise distance over the service and its
        rdir services (None when there are fewer than two).
        """
        rows = []
        services, _ = self.get_assignments(service_type)
        for service in services:
            rdirs = service.get("rdir", [])
            locs = [parse_location(Service.from_dict(s)) for s in [service, *rdirs]]
            pairs = [location_distance(a, b) for i, a in enumerate(locs) for b in locs[i + 1 :]]
            distance = min(pairs) if pairs else None
            if not rdirs:
                status = STATUS_NO_RDIR
            elif len(rdirs) < replicas:
                status = STATUS_NOT_ENOUGH
            elif len(rdirs) > replicas:
                status = STATUS_TOO_MANY
            elif distance is not None and distance < min_dist:
                status = STATUS_MIN_DIST
            else:
                status = STATUS_OK
            rows.append(
                {"id": service["id"], "rdir": [r["id"] for r in rdirs], "distance": distance, "status": status}
            )
        return rows

    # ---- assigning -------------------------------------------------------

    def assign_all_rawx(self, **kwargs: Any) -> list[dict[str, Any]]:
        return self.assign_services("rawx", **kwargs)

    def assign_all_meta2(self, **kwargs: Any) -> list[dict[str, Any]]:
        return self.assign_services("meta2", **kwargs)

    def assign_services(
        self,
        service_type: str,
        max_per_rdir: int | None = None,
        min_dist: int | None = None,
        replicas: int = 3,
        service_id: str | None = None,
        reassign: str | None = None,
        dry_run: bool = False,
    ) -> list[dict[str, Any]]:
        """Give every ``service_type`` volume (or only ``service_id``) ``replicas`` rdir services.

        A volume is (re)linked when it holds fewer than ``replicas`` rdir
        services once ``reassign`` is taken out of its list; kept rdir
        services stay. Returns the services as :meth:`get_assignments` does,
        with the new placement (also when ``dry_run``, which writes nothing).
        Errors are collected per volume and raised after trying them all.
        """
        if service_type not in ("rawx", "meta2"):
            raise BadRequest(f"rdir services index rawx and meta2 volumes, not {service_type!r}")
        if replicas < 1:
            raise BadRequest(f"replicas must be at least 1, not {replicas}")
        # One dispatcher at a time reads, decides and records: one that runs
        # meanwhile waits, then sees these assignments and keeps them.
        with self.registry.assignment_lock():
            results, recorded, errors = self._assign_locked(
                service_type, replicas, service_id, reassign, max_per_rdir, min_dist, dry_run
            )
        # Outside the lock: creating the volumes on their rdir servers may take a while.
        for volume_id, rdir_ids in recorded:
            self._notify(volume_id, rdir_ids)
        if len(errors) == 1:
            raise errors[0][1]
        if errors:
            detail = "; ".join(f"{vol}: {exc}" for vol, exc in errors)
            raise OioException(f"Several errors encountered: {detail}")
        return results

    def _assign_locked(
        self,
        service_type: str,
        replicas: int,
        service_id: str | None,
        reassign: str | None,
        max_per_rdir: int | None,
        min_dist: int | None,
        dry_run: bool,
    ) -> tuple[list[dict[str, Any]], list[tuple[str, list[str]]], list[tuple[str, Exception]]]:
        """:meth:`assign_services` under the assignment lock: ``(results, recorded, errors)``."""
        services = self.registry.services(service_type)
        if service_id is not None:
            services = [s for s in services if s.id == service_id]
            if not services:
                raise BadRequest(f"{service_id} isn't a {service_type}")
        rdirs = {r.id: r for r in self.registry.services("rdir")}
        if not rdirs:
            raise ServiceUnavailable("No rdir service found")

        assignments = self.registry.assignments()
        load = self._assigned_load(rdirs, assignments)
        rng = random.Random(self.seed)

        results = []
        recorded: list[tuple[str, list[str]]] = []
        errors: list[tuple[str, Exception]] = []
        for service in services:
            current = assignments.get(service.id, [])
            kept = [r for r in current if r != reassign]
            chosen = list(current)
            down = [r for r in kept if r not in rdirs or rdirs[r].score <= 0]
            if down:
                log.warning("%s %s keeps rdir services that are down or unregistered: %s", service_type, service.id, down)
            if len(kept) < replicas:
                try:
                    new = self._place(
                        service, kept, replicas - len(kept), rdirs, load, max_per_rdir, min_dist, reassign, rng
                    )
                    if not dry_run:
                        self._record(service.id, kept + new)
                        recorded.append((service.id, kept + new))
                except (OioException, ValueError) as exc:
                    log.warning("rdir assignment of %s %s failed: %s", service_type, service.id, exc)
                    errors.append((service.id, exc))
                else:
                    # Count the new placement at once, so that the load spreads within one run.
                    chosen = kept + new
                    for rid in new:
                        load[rid] += 1
                    if reassign in current and reassign in load:
                        load[reassign] -= 1
            entry = service.to_dict()
            if chosen:
                entry["rdir"] = [rdirs[r].to_dict() if r in rdirs else _placeholder(r) for r in chosen]
            results.append(entry)
        return results, recorded, errors

    @staticmethod
    def _assigned_load(rdirs: dict[str, Service], assignments: dict[str, list[str]]) -> dict[str, int]:
        """Per rdir: max(reported opened_db_count, volumes assigned to it)."""
        assigned = dict.fromkeys(rdirs, 0)
        for rdir_ids in assignments.values():
            for rid in set(rdir_ids):
                if rid in assigned:
                    assigned[rid] += 1
        return {rid: max(int(r.stats.get("opened_db_count", 0)), assigned[rid]) for rid, r in rdirs.items()}

    def _record(self, volume_id: str, rdir_ids: list[str]) -> None:
        try:
            self.registry.replace_assignment(volume_id, rdir_ids)
        except OioException as exc:
            exc.add_note(f"while recording the rdir services of {volume_id}")
            raise

    def _notify(self, volume_id: str, rdir_ids: list[str]) -> None:
        """Run ``on_assigned`` for a recorded assignment."""
        try:
            self.on_assigned(volume_id, list(rdir_ids))
        except Exception:  # best effort: the assignment is recorded, creation can be retried
            log.warning("on_assigned(%s, %s) failed", volume_id, rdir_ids, exc_info=True)

    def _place(
        self,
        service: Service,
        kept: list[str],
        count: int,
        rdirs: dict[str, Service],
        load: dict[str, int],
        max_per_rdir: int | None,
        min_dist: int | None,
        reassign: str | None,
        rng: random.Random,
    ) -> list[str]:
        """Pick ``count`` more rdir services for ``service``, which keeps ``kept``."""
        valid = {rid: r for rid, r in rdirs.items() if r.score > 0}
        if not valid:
            raise ServiceUnavailable("No valid rdir service found (every rdir has score 0)")
        excluded = set(kept) | {reassign}
        candidates = [rid for rid in valid if rid not in excluded]
        if max_per_rdir is not None:
            candidates = [rid for rid in candidates if load[rid] < max_per_rdir]
        else:
            # Soft balance: first try without the rdir services above the average.
            average = mean(load[rid] for rid in valid)
            below = [rid for rid in candidates if load[rid] <= average]
            picked = self._pick(service, kept, count, below, rdirs, load, min_dist, rng)
            if picked is not None:
                return picked
        picked = self._pick(service, kept, count, candidates, rdirs, load, min_dist, rng)
        if picked is not None:
            return picked
        raise PlacementError(self._explain(service, count, valid, excluded, load, max_per_rdir, min_dist))

    @staticmethod
    def _pick(
        service: Service,
        kept: list[str],
        count: int,
        candidates: list[str],
        rdirs: dict[str, Service],
        load: dict[str, int],
        min_dist: int | None,
        rng: random.Random,
    ) -> list[str] | None:
        """Greedy load balancer: the farthest candidate, then the least loaded; None if short."""
        floor = 1 if min_dist is None else min_dist
        placed = [parse_location(service)] + [parse_location(rdirs[r]) for r in kept if r in rdirs]
        # One random draw per candidate and call: ties break the same way for a given seed.
        tie = {rid: rng.random() for rid in candidates}
        remaining = list(candidates)
        picked: list[str] = []
        for _ in range(count):
            best = None
            for rid in remaining:
                loc = parse_location(rdirs[rid])
                dist = min(location_distance(loc, p) for p in placed)
                if dist < floor:
                    continue
                key = (-dist, load[rid], -rdirs[rid].score, tie[rid])
                if best is None or key < best[0]:
                    best = (key, rid, loc)
            if best is None:
                return None
            picked.append(best[1])
            placed.append(best[2])
            remaining.remove(best[1])
        return picked

    def _explain(
        self,
        service: Service,
        count: int,
        valid: dict[str, Service],
        excluded: set[str | None],
        load: dict[str, int],
        max_per_rdir: int | None,
        min_dist: int | None,
    ) -> str:
        """Name the constraint that made placement impossible, for the error message."""
        head = f"cannot assign {count} more rdir service(s) to {service.type} {service.id}"
        usable = [rid for rid in valid if rid not in excluded]
        if len(usable) < count:
            return f"{head}: only {len(usable)} usable rdir service(s) with a score above 0"
        under_cap = usable if max_per_rdir is None else [r for r in usable if load[r] < max_per_rdir]
        if len(under_cap) < count:
            return f"{head}: only {len(under_cap)} rdir service(s) below max_per_rdir={max_per_rdir}"
        return (
            f"{head}: no placement satisfies min_dist={1 if min_dist is None else min_dist}"
            f" (location {'.'.join(parse_location(service))!r})"
        )
