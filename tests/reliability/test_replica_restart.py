"""One replica of three stopped and restarted during quorum-2 writes, then caught up by copy
(tests/stress/replica_restart.py)."""

from __future__ import annotations

import pytest

from tests.stress import replica_restart


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_replica_stopped_and_restarted_during_writes(kill):
    fig = replica_restart.run(kill=kill, down_seconds=1.0, timeout=40)
    assert fig.errors == []
    assert fig.batches_while_down > 0 and fig.quorum3_refused
    assert fig.identical, fig
