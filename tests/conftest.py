"""Fixtures shared by the whole suite: temporary stores and volumes."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from rdirdb.rdir.store import Store
from tests.pg import pg_admin, pg_root_dsn  # noqa: F401 (the PostgreSQL fixtures of every test)

# CI gets more examples than a developer's run; both stay within minutes.
settings.register_profile(
    "default", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store", map_size=1 << 20) as s:
        yield s


@pytest.fixture
def volume(store):
    return store.volume("vol-1", create=True)


@pytest.fixture
def chunks(volume):
    return volume.chunks
