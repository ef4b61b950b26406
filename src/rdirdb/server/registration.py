"""The server's entry in the service registry: registered at start, refreshed
on a heartbeat with the stats the dispatcher balances on, removed at the end.

The heartbeat is a child process, not a thread: the master forks replacement
workers, and forking a process while another of its threads holds a lock is
unsafe."""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any, Callable, Iterable

from rdirdb.errors import NotFound
from rdirdb.rdir.registry import Service, open_registry

log = logging.getLogger("rdirdb.server")

MASTER_CHECK = 0.5  # seconds between two checks that the master is alive


def beat(url: str, service: Service, stats: Callable[[], dict[str, Any]]) -> None:
    """Register ``service`` (or refresh it) with its current ``stats()``."""
    service.stats = stats()
    with open_registry(url) as registry:
        registry.register(service)


def deregister(url: str, service_id: str) -> None:
    """Remove the server's entry (gone already is fine)."""
    with open_registry(url) as registry:
        try:
            registry.remove(service_id)
        except NotFound:
            pass


def run_heartbeat(
    url: str, service: Service, stats: Callable[[], dict[str, Any]], interval: float, master: int,
    stop_signals: Iterable[int],
) -> int:
    """The heartbeat process: beat every ``interval`` seconds until one of
    ``stop_signals`` arrives or the ``master`` process is gone; then deregister.

    The master forks it with the stop signals blocked; it waits for them with
    ``sigtimedwait``, so that a signal never interrupts a registry write. A
    registry that is down is retried at the next beat: serving never depends on it.
    """
    waited = set(stop_signals)
    next_beat = time.monotonic()
    while os.getppid() == master:
        if time.monotonic() >= next_beat:
            try:
                beat(url, service, stats)
            except Exception as exc:
                log.warning("cannot refresh %s in the registry: %s", service.id, exc)
            next_beat = time.monotonic() + interval
        wait = min(MASTER_CHECK, max(0.0, next_beat - time.monotonic()))
        if signal.sigtimedwait(waited, wait) is not None:
            break
    try:
        deregister(url, service.id)
    except Exception as exc:
        log.warning("cannot remove %s from the registry: %s", service.id, exc)
        return 1
    return 0
