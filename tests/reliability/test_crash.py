"""Crash safety: SIGKILL a writer at random moments; nothing acknowledged is lost,
nothing is half applied, scans and counts agree (see tests/stress/crash_harness.py)."""

from __future__ import annotations

import pytest

from tests.stress import crash_harness


WRITEMAP = pytest.mark.parametrize("writemap", [False, True], ids=["plain", "writemap"])


@WRITEMAP
@pytest.mark.parametrize("sync", [True, False], ids=["sync", "nosync"])
def test_sigkill_rounds(tmp_path, sync, writemap):
    figures = crash_harness.run_rounds(6, sync, str(tmp_path), seed=7, max_delay=0.25, writemap=writemap)
    assert figures.errors == []
    assert figures.rounds == 6
    assert figures.acked_puts > 0


def test_stale_reader_slots_are_cleared_on_open(tmp_path):
    result = crash_harness.stale_readers(str(tmp_path))
    assert result.errors == []
    assert result.full_before and result.cleared_by_opener and result.left_after == 0


def test_killed_write_lock_holder_hands_the_lock_over(tmp_path):
    result = crash_harness.killed_lock_holder(str(tmp_path), hold=0.3)
    assert result.errors == []
    assert result.waiter_blocked and result.uncommitted_gone


def test_check_detects_a_half_applied_batch(tmp_path):
    """The checker itself: a batch missing one record is reported."""
    from rdirdb.rdir.store import Store

    store_path, log_path = str(tmp_path / "store"), str(tmp_path / "ack.log")
    records = crash_harness.batch_records("r000b00000", 10)
    with Store(store_path) as store:
        store.volume(crash_harness.VOLUME, create=True).chunks.put_batch(records[:-1])
    with open(log_path, "w") as log:
        log.write("P r000b00000 10\n")
    check = crash_harness.check_store(store_path, log_path, True)
    assert any("half applied" in e for e in check.errors)


@pytest.mark.stress
@pytest.mark.timeout(1800)
@WRITEMAP
@pytest.mark.parametrize("sync", [True, False], ids=["sync", "nosync"])
def test_sigkill_50_rounds(tmp_path, sync, writemap):
    figures = crash_harness.run_rounds(50, sync, str(tmp_path), seed=50, writemap=writemap)
    assert figures.errors == []
    assert figures.rounds == 50
