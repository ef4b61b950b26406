"""The server's entry in the service registry: registered at start, refreshed
on a heartbeat with the stats the dispatcher balances on.

The heartbeat is a child process, not a thread: the master forks replacement
workers, and forking a process while another of its threads holds a lock is
unsafe."""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Callable

from rdirdb.rdir.registry import Service, open_registry

log = logging.getLogger("rdirdb.server")


def beat(url: str, service: Service, stats: Callable[[], dict]) -> None:
    """Register ``service`` (or refresh it) with its current ``stats()``."""
    service.stats = stats()
    with open_registry(url) as registry:
        registry.register(service)


def start_heartbeat(url: str, service: Service, stats: Callable[[], dict], interval: float) -> int:
    """Fork the heartbeat process; returns its pid. It stops on SIGTERM or when
    its parent dies. A registry that is down is retried at the next beat:
    serving never depends on it."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        while os.getppid() == parent:
            try:
                beat(url, service, stats)
            except Exception as exc:
                log.warning("cannot refresh %s in the registry: %s", service.id, exc)
            time.sleep(interval)
    finally:
        os._exit(0)
