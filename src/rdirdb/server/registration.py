"""The server's entry in the service registry: registered at start, refreshed
on a heartbeat with the stats the dispatcher balances on."""

from __future__ import annotations

import logging
import threading
from typing import Callable

from rdirdb.registry import Service, open_registry

log = logging.getLogger("rdirdb.server")


class Heartbeat(threading.Thread):
    """Registers ``service`` in the registry at ``url`` and refreshes its stats
    (``stats()``) every ``interval`` seconds until ``stop()``. A registry that
    is down is retried at the next beat: serving never depends on it."""

    def __init__(
        self, url: str, service: Service, stats: Callable[[], dict], interval: float = 5.0
    ) -> None:
        super().__init__(name="rdir-heartbeat", daemon=True)
        self.url = url
        self.service = service
        self.stats = stats
        self.interval = interval
        self._stop = threading.Event()

    def beat(self) -> None:
        self.service.stats = self.stats()
        with open_registry(self.url) as registry:
            registry.register(self.service)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except Exception as exc:  # a registry outage must not stop the server
                log.warning("cannot refresh %s in the registry: %s", self.service.id, exc)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
