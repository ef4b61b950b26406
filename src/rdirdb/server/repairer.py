"""``rdirdb serve --repair-interval SECONDS``: the periodic anti-entropy repair.

A child process of the server's master, as the heartbeat is (a fork, not a thread:
the master forks workers). Every interval it purges the expired tombstones of the
volumes this server holds and, with a registry, repairs each of them with its other
replicas (``rdirdb.rdir.repair``), through the servers' routes, this one's too. Every
replica of a volume does so: a repair of replicas that agree costs one digest each.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
from typing import Iterable

from rdirdb.errors import RdirdbError, VolumeException
from rdirdb.rdir.registry import open_registry
from rdirdb.rdir.repair import repair_hosts
from rdirdb.rdir.store import SERVICE_TYPES, Store

log = logging.getLogger("rdirdb.server")

MASTER_CHECK = 0.5  # seconds between two checks that the master is alive


def repair_round(db_path: str, sync: bool, retention: float, registry_url: str | None, addr: str) -> dict[str, int]:
    """One round: purge, then repair every volume held here that has other replicas; returns
    how many volumes, tombstones kept, volumes repaired, entries applied, entries refused by
    a replica, failed repairs."""
    figures = {"volumes": 0, "tombstones": 0, "repaired": 0, "applied": 0, "refused": 0, "failed": 0}
    with Store(db_path, sync=sync, tombstone_retention=retention) as store:  # opening a volume purges
        held = [(t, v) for t in SERVICE_TYPES for v in store.volumes(t)]
        for service_type, volume_id in held:
            figures["volumes"] += 1
            figures["tombstones"] += store.volume(volume_id, service_type).stamps.tombstone_count()
    if registry_url is None:
        return figures
    with open_registry(registry_url) as registry:
        replicas = {}
        for service_type, volume_id in held:
            try:
                replicas[(service_type, volume_id)] = [s.addr for s in registry.rdir_services(volume_id)]
            except VolumeException:
                continue
    for (service_type, volume_id), hosts in replicas.items():
        if addr not in hosts or len(hosts) < 2:
            continue
        try:
            report = repair_hosts(volume_id, hosts, service_type, retention=retention)
        except (RdirdbError, OSError) as exc:
            figures["failed"] += 1
            log.warning("repair of %s volume %r failed: %s", service_type, volume_id, exc)
            continue
        figures["repaired"] += 1
        figures["applied"] += report.records_applied
        figures["refused"] += report.refused
        if report.refused:
            log.warning("repair of %s volume %r: %d entries refused: %s", service_type, volume_id, report.refused,
                        "; ".join(f"{r.replica} {r.key!r}: {r.reason}" for r in report.refusals[:3]))
        if report.records_applied or report.admin_differences:
            log.info("repair of %s volume %r: %s", service_type, volume_id, json.dumps(report.as_dict(), sort_keys=True))
    return figures


def run_repairer(
    db_path: str, sync: bool, retention: float, registry_url: str | None, addr: str, interval: float,
    master: int, stop_signals: Iterable[int],
) -> int:
    """Run :func:`repair_round` every ``interval`` seconds (with 10% of jitter, so that the
    replicas of a volume do not all start at once) until a stop signal arrives or the
    master is gone."""
    waited = set(stop_signals)
    while os.getppid() == master:
        wait = interval * random.uniform(0.9, 1.1)
        while wait > 0 and os.getppid() == master:
            if signal.sigtimedwait(waited, min(MASTER_CHECK, wait)) is not None:
                return 0
            wait -= MASTER_CHECK
        if os.getppid() != master:
            break
        try:
            figures = repair_round(db_path, sync, retention, registry_url, addr)
        except Exception as exc:  # the next round tries again; serving never depends on it
            log.warning("repair round failed: %s", exc)
            continue
        log.debug("repair round: %s", figures)
    return 0
