"""pytest plugin: winery's own test suite, with rdirdb's SharedBase swapped in.

Loaded with ``-p winery_swap`` by ``make peer-test`` (tests/peer/run_peer.py,
docs/sharedbase.md) in the peer virtualenv, which has swh-objstorage and
rdirdb installed.

``RDIRDB_PEER_SHAREDBASE=rdirdb`` replaces, in winery's ``sharedbase``
module, the names a user switching to rdirdb would replace: SharedBase,
ShardState, SignatureState, TemporaryShardLocker and ONEDAY. It happens when
this plugin is imported, before any other winery module (its objstorage,
housekeeping, roshard, cli, and the tests themselves) copies those names
with ``from .sharedbase import ...``. ``winery`` (the baseline) changes
nothing.

The rest stands in for the repository's root ``conftest.py`` and
``pytest.ini``, which the swh-objstorage wheel does not ship: winery's
markers and the ``swh.objstorage.pytest_plugin`` fixtures.
"""

from __future__ import annotations

import os

import pytest

SWAPPED_NAMES = ("SharedBase", "ShardState", "SignatureState", "TemporaryShardLocker", "ONEDAY")

IMPLEMENTATION = os.environ.get("RDIRDB_PEER_SHAREDBASE", "rdirdb")
if IMPLEMENTATION not in ("rdirdb", "winery"):
    raise RuntimeError(f"RDIRDB_PEER_SHAREDBASE must be rdirdb or winery, not {IMPLEMENTATION!r}")

if IMPLEMENTATION == "rdirdb":
    import rdirdb.sharedbase as ours
    import swh.objstorage.backends.winery.sharedbase as theirs

    for _name in SWAPPED_NAMES:
        setattr(theirs, _name, getattr(ours, _name))


def pytest_sessionstart(session: pytest.Session) -> None:
    # Registered last, its fixtures (statsd) override those of swh.core's
    # plugin, as they do when winery's conftest.py registers it.
    session.config.pluginmanager.import_plugin("swh.objstorage.pytest_plugin")


def pytest_configure(config: pytest.Config) -> None:
    # The only marker of winery's root conftest.py that its winery tests use.
    config.addinivalue_line("markers", "shard_max_size(bytes): winery's shard size threshold")


def pytest_report_header(config: pytest.Config) -> str:
    from swh.objstorage.backends.winery import sharedbase

    cls = sharedbase.SharedBase
    return f"winery SharedBase under test: {cls.__module__}.{cls.__qualname__} ({IMPLEMENTATION})"
