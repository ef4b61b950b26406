"""Reliability tests: the ``stress`` runs are skipped unless asked for.

``make test`` runs ``pytest tests``; stress tests (marked ``@pytest.mark.stress``)
take minutes, so they are deselected unless ``-m`` names a marker expression
(``pytest -m stress tests/reliability``) or RDIRDB_STRESS=1 is set.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if config.getoption("-m") or os.environ.get("RDIRDB_STRESS"):
        return
    kept, deselected = [], []
    for item in items:
        (deselected if item.get_closest_marker("stress") else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
