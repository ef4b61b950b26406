"""rdirdb.rdir.repair.repair_volume on replicas in process, against the plain-Python model:
every replica ends with the newest version of every key, whatever the page and request
sizes (the paged merge of large ranges, the batches of applies)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rdirdb.errors import BadRequest
from rdirdb.rdir import repair
from rdirdb.rdir.repair import LocalReplica, repair_volume
from rdirdb.rdir.store import Store
from tests.repair.test_engine import _model_winner, _write, ops


def _content(vol):
    """What a replica holds, stamps aside: (full key, value without its stamp, or None)."""
    out = []
    for key, stamp, value in vol.stamps.entries(b"", None)[0]:
        if value is not None and stamp:
            value = bytes([value[0] & 0x7F]) + value[1:-8]
        out.append((key, value))
    return out


@given(st.lists(ops, min_size=2, max_size=3), st.integers(1, 5), st.integers(1, 6), st.integers(2, 4),
       st.integers(1, 4))
@settings(max_examples=40)
def test_replicas_converge_to_the_newest_versions(tmp_path_factory, histories, list_limit, apply_batch, parts, leaf):
    root = tmp_path_factory.mktemp("r")
    stores = [Store(root / str(i), map_size=1 << 20) for i in range(len(histories))]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(repair, "LIST_LIMIT", list_limit)
        mp.setattr(repair, "APPLY_BATCH", apply_batch)
        try:
            vols = [s.volume("v", create=True) for s in stores]
            for vol, history in zip(vols, histories):
                _write(vol.chunks, history)
            before: dict[bytes, list] = {}
            for vol in vols:
                for e in vol.stamps.entries(b"", None)[0]:
                    before.setdefault(e[0], []).append(e)
            winners = {k: _model_winner(v) for k, v in before.items()}
            replicas = [LocalReplica(s, "v") for s in stores]
            held = [_content(v) for v in vols]
            dry = repair_volume(replicas, dry_run=True, parts=parts, leaf=leaf)
            assert dry.records_sent == 0 and [_content(v) for v in vols] == held  # nothing moved
            report = repair_volume(replicas, parts=parts, leaf=leaf)
            assert report.differing == dry.differing
            expected = [(k, None if e[2] is None else bytes([e[2][0] & 0x7F]) + e[2][1:-8])
                        for k, e in sorted(winners.items())]
            for vol in vols:
                assert _content(vol) == expected
            assert len({tuple(map(str, v.chunks.fetch(limit=1000)[0])) for v in vols}) == 1
            assert repair_volume(replicas, parts=parts, leaf=leaf).records_moved == 0
        finally:
            for s in stores:
                s.close()


def test_an_empty_replica_is_copied_in_pages(tmp_path, monkeypatch):
    monkeypatch.setattr(repair, "LIST_LIMIT", 100)
    monkeypatch.setattr(repair, "APPLY_BATCH", 250)
    with Store(tmp_path / "a") as a, Store(tmp_path / "b") as b:
        a.volume("v", create=True).chunks.put_batch(
            [(f"{n % 7:064X}", "C", f"{n:064X}", n, "p", 1) for n in range(2000)])
        calls = []
        replica_b = LocalReplica(b, "v")
        apply = replica_b.apply
        monkeypatch.setattr(replica_b, "apply", lambda entries: calls.append(len(entries)) or apply(entries))
        report = repair_volume([LocalReplica(a, "v"), replica_b])
        assert report.records_applied == 2000 and b.volume("v").chunks.count() == 2000
        assert max(calls) <= 250 and sum(calls) == 2000
        # The empty replica is copied without splitting the range further.
        assert report.ranges_compared == 1 and report.records_listed <= 2000 + 2000 // 100 * 100


def test_repair_needs_two_replicas(tmp_path):
    with Store(tmp_path) as s:
        with pytest.raises(BadRequest):
            repair_volume([LocalReplica(s, "v")])
