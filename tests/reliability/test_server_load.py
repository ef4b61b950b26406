"""The server under a bounded concurrent load from client processes (tests/stress/server_load.py)."""

from __future__ import annotations

import pytest

from tests.stress import server_load


def test_concurrent_clients_on_two_workers():
    fig = server_load.run(clients=4, ops=300, workers=2, timeout=40)
    assert fig.ok, fig.errors
    assert fig.requests == 4 * 300
    assert fig.pushed and fig.deleted and fig.fetches
    assert len(fig.records) == 5  # the shared volume and one per client


@pytest.mark.stress
def test_concurrent_clients_long():
    fig = server_load.run(clients=8, ops=2000, workers=2, timeout=300)
    assert fig.ok, fig.errors
