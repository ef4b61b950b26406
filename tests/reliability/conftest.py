"""Reliability tests: the ``stress`` runs are skipped unless asked for.

``make test`` runs ``pytest tests``; stress tests (marked ``@pytest.mark.stress``)
take minutes, so they are deselected unless the ``-m`` expression names them
(``pytest -m stress tests/reliability``) or RDIRDB_STRESS=1 is set.
"""

from __future__ import annotations

import os


def pytest_collection_modifyitems(config, items):
    if "stress" in (config.getoption("-m") or "") or os.environ.get("RDIRDB_STRESS"):
        return
    kept, deselected = [], []
    for item in items:
        (deselected if item.get_closest_marker("stress") else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
