"""RdirDispatcher placement on a synthetic topology (reference §7 and §9.7)."""

from __future__ import annotations

from collections import Counter

import pytest

from rdirdb.rdir.dispatcher import (
    STATUS_MIN_DIST,
    STATUS_NO_RDIR,
    STATUS_NOT_ENOUGH,
    STATUS_OK,
    STATUS_TOO_MANY,
    PlacementError,
    RdirDispatcher,
)
from rdirdb.errors import BadRequest, OioException, OioTimeout, ServiceBusy, ServiceUnavailable
from rdirdb.rdir.registry import Service, location_distance, open_registry, parse_location

from .conftest import build_topology, takes_lock_within


@pytest.fixture
def dispatcher(registry, registry_url):
    calls = []
    d = RdirDispatcher({"registry": registry_url}, seed=42, on_assigned=lambda vol, ids: calls.append((vol, ids)))
    d.calls = calls
    yield d
    d.registry.close()


def rdir_load(registry) -> Counter:
    load = Counter({s.id: 0 for s in registry.services("rdir")})
    for ids in registry.assignments().values():
        load.update(ids)
    return load


def min_pairwise_distance(registry, volume_id) -> int:
    services = [registry.get(volume_id)] + [registry.get(r) for r in registry.get_assignment(volume_id)]
    locs = [parse_location(s) for s in services]
    return min(location_distance(a, b) for i, a in enumerate(locs) for b in locs[i + 1 :])


def test_no_rdir_service(dispatcher, registry):
    registry.register(Service("rawx", "rawx-1", "10.0.0.1:6200"))
    with pytest.raises(ServiceUnavailable, match="No rdir service found"):
        dispatcher.assign_all_rawx()


def test_unknown_service_id(dispatcher, registry):
    build_topology(registry, dcs=1)
    with pytest.raises(BadRequest, match="nope isn't a rawx"):
        dispatcher.assign_services("rawx", service_id="nope")


@pytest.mark.parametrize("kwargs", [{"service_type": "rdir"}, {"service_type": "rawx", "replicas": 0}])
def test_bad_arguments(dispatcher, registry, kwargs):
    build_topology(registry, dcs=1)
    with pytest.raises(BadRequest):
        dispatcher.assign_services(**kwargs)
    assert registry.assignments() == {}


def test_conf_needs_a_registry():
    with pytest.raises(BadRequest, match="registry"):
        RdirDispatcher({})


@pytest.mark.parametrize("min_dist", [None, 3])
def test_assign_all_rawx_placement(dispatcher, registry, min_dist):
    build_topology(registry)  # 24 rdir, 36 rawx over 3 dc x 2 racks x 2 hosts
    result = dispatcher.assign_all_rawx(min_dist=min_dist)
    rawx = registry.services("rawx")
    assert len(result) == len(rawx) == 36
    assignments = registry.assignments()
    for entry in result:
        ids = [r["id"] for r in entry["rdir"]]
        assert len(set(ids)) == 3 and ids == assignments[entry["id"]]
        assert min_pairwise_distance(registry, entry["id"]) >= (min_dist or 1)
    assert sorted(dispatcher.calls) == sorted(assignments.items())
    load = rdir_load(registry)
    assert max(load.values()) - min(load.values()) <= 1, load
    rows = dispatcher.check_assignments("rawx", min_dist=min_dist or 1, replicas=3)
    assert {r["status"] for r in rows} == {STATUS_OK}


def test_min_dist_respected_when_it_binds(dispatcher, registry):
    """Few rdir per rack: min_dist=3 forbids using the volume's own rack, min_dist=2 allows it."""
    build_topology(registry, dcs=1, racks=4, hosts=2, rdir_per_host=1, rawx_per_host=2)
    dispatcher.assign_all_rawx(min_dist=3)
    for vol in registry.assignments():
        assert min_pairwise_distance(registry, vol) >= 3
    # 4 racks and 4 services (rawx + 3 rdir) per volume: every rack used exactly once.
    for vol, ids in registry.assignments().items():
        racks = {parse_location(registry.get(i))[1] for i in [vol, *ids]}
        assert len(racks) == 4


def test_unachievable_min_dist_leaves_volumes_unassigned(dispatcher, registry):
    build_topology(registry, dcs=1, racks=2, hosts=2, rdir_per_host=2, rawx_per_host=1)
    registry.register(Service("rawx", "rawx-fake", "192.168.0.1:6200", "fake.location.for.test"))
    with pytest.raises(PlacementError, match=r"rawx-fake.*min_dist=4"):
        dispatcher.assign_services("rawx", service_id="rawx-fake", min_dist=4)
    services, _ = dispatcher.get_assignments("rawx")
    fake = next(s for s in services if s["id"] == "rawx-fake")
    assert "rdir" not in fake
    assert registry.get_assignment("rawx-fake") == []
    assert dispatcher.get_aggregated_assignments("rawx")["n/a"] == sorted(s["id"] for s in services)
    assert dispatcher.calls == []


def test_several_errors_are_collected(dispatcher, registry):
    build_topology(registry, dcs=1, racks=2, hosts=2, rdir_per_host=2, rawx_per_host=1)
    with pytest.raises(OioException, match="Several errors encountered") as info:
        dispatcher.assign_all_rawx(min_dist=4)
    for rawx in registry.services("rawx"):
        assert rawx.id in str(info.value)
    assert registry.assignments() == {}


def test_max_per_rdir_is_a_hard_cap(dispatcher, registry):
    build_topology(registry)  # 36 rawx x 3 replicas = 108 over 24 rdir: 4.5 each
    dispatcher.assign_all_rawx(max_per_rdir=5)
    assert len(registry.assignments()) == 36
    assert max(rdir_load(registry).values()) <= 5


def test_max_per_rdir_too_low_fails_clearly(dispatcher, registry):
    build_topology(registry)  # room for 24 x 4 = 96 < 108 placements
    with pytest.raises(OioException, match="max_per_rdir=4") as info:
        dispatcher.assign_all_rawx(max_per_rdir=4)
    assert "Several errors encountered" in str(info.value)
    load = rdir_load(registry)
    assert max(load.values()) <= 4
    assignments = registry.assignments()
    assert 24 <= len(assignments) < 36
    assert all(len(ids) == 3 for ids in assignments.values())


def test_reported_opened_db_count_counts_toward_the_cap(dispatcher, registry):
    build_topology(registry, dcs=1, racks=2, hosts=2, rdir_per_host=1, rawx_per_host=1)
    registry.refresh("rdir-0000", {"opened_db_count": 10})
    dispatcher.assign_all_rawx(replicas=2, max_per_rdir=3)
    assert len(registry.assignments()) == 4
    load = rdir_load(registry)
    assert load["rdir-0000"] == 0 and max(load.values()) <= 3


def test_rawx_and_meta2_repartition(dispatcher, registry):
    """§9.7 test_rdir_repartition: every rdir hosts >= 1 DB and at most round(avg) + 3."""
    build_topology(registry, rdir_per_host=1, rawx_per_host=2)
    for i, rawx in enumerate(registry.services("rawx")[:12]):
        registry.register(Service("meta2", f"meta2-{i}", f"10.9.0.{i}:6120", rawx.location.replace("rawx", "meta2")))
    dispatcher.assign_all_rawx()
    dispatcher.assign_all_meta2()
    load = rdir_load(registry)
    average = sum(load.values()) / len(load)
    assert min(load.values()) >= 1
    assert max(load.values()) <= round(average) + 3
    assert max(load.values()) - min(load.values()) <= 1, load


@pytest.mark.parametrize("replicas", [1, 2, 5])
def test_replicas_honoured(dispatcher, registry, replicas):
    build_topology(registry, dcs=2, racks=2, hosts=2, rdir_per_host=1, rawx_per_host=1)
    dispatcher.assign_all_rawx(replicas=replicas)
    assignments = registry.assignments()
    assert len(assignments) == 8
    assert all(len(set(ids)) == len(ids) == replicas for ids in assignments.values())
    rows = dispatcher.check_assignments("rawx", min_dist=1, replicas=replicas)
    assert {r["status"] for r in rows} == {STATUS_OK}


def test_under_replicated_volume_is_topped_up(dispatcher, registry):
    build_topology(registry, dcs=2, racks=2, hosts=2, rdir_per_host=1, rawx_per_host=1)
    registry.replace_assignment("rawx-0000", ["rdir-1110"])
    dispatcher.assign_all_rawx(replicas=2)
    ids = registry.get_assignment("rawx-0000")
    assert len(ids) == 2 and ids[0] == "rdir-1110"
    dispatcher.assign_all_rawx(replicas=3)
    ids3 = registry.get_assignment("rawx-0000")
    assert ids3[:2] == ids and len(ids3) == 3


def test_reassign_moves_only_the_reassigned_rdir(dispatcher, registry):
    build_topology(registry)
    dispatcher.assign_all_rawx()
    before = registry.assignments()
    victim = rdir_load(registry).most_common(1)[0][0]
    dispatcher.calls.clear()
    dispatcher.assign_all_rawx(reassign=victim)
    after = registry.assignments()
    moved = {vol for vol, ids in before.items() if victim in ids}
    assert moved
    for vol, ids in before.items():
        if vol in moved:
            kept = [r for r in ids if r != victim]
            assert after[vol][:2] == kept and len(after[vol]) == 3 and victim not in after[vol]
        else:
            assert after[vol] == ids
    assert rdir_load(registry)[victim] == 0
    assert sorted(v for v, _ in dispatcher.calls) == sorted(moved)


def test_reassign_one_service(dispatcher, registry):
    build_topology(registry)
    dispatcher.assign_all_rawx()
    before = registry.assignments()
    vol = "rawx-0000"
    victim = before[vol][0]
    dispatcher.assign_services("rawx", service_id=vol, reassign=victim)
    after = registry.assignments()
    assert victim not in after[vol] and after[vol][:2] == before[vol][1:]
    assert {v: i for v, i in after.items() if v != vol} == {v: i for v, i in before.items() if v != vol}


def test_dry_run_writes_nothing(dispatcher, registry, tmp_path):
    build_topology(registry, dcs=2)
    planned = dispatcher.assign_all_rawx(dry_run=True)
    assert registry.assignments() == {}
    assert dispatcher.calls == []
    assert all(len(entry["rdir"]) == 3 for entry in planned)
    # The same seed on the same state gives the same placement for real.
    done = dispatcher.assign_all_rawx()
    assert [[r["id"] for r in e["rdir"]] for e in done] == [[r["id"] for r in e["rdir"]] for e in planned]


def test_deterministic_given_a_seed(tmp_path):
    def run(seed, name):
        with open_registry(f"file://{tmp_path}/{name}.json") as reg:
            build_topology(reg, dcs=2)
            RdirDispatcher({"registry": "unused"}, registry=reg, seed=seed).assign_all_rawx()
            return reg.assignments()

    assert run(7, "a") == run(7, "b")
    assert run(7, "a2") != run(8, "c")
    with open_registry(f"file://{tmp_path}/d.json") as reg:
        build_topology(reg, dcs=2)
        RdirDispatcher({"registry": "unused", "seed": "7"}, registry=reg).assign_all_rawx()
        assert reg.assignments() == run(7, "e")


def test_zero_scored_rawx_is_assigned(dispatcher, registry):
    build_topology(registry, dcs=1, racks=2, hosts=2, rdir_per_host=1, rawx_per_host=0)
    registry.register(Service("rawx", "rawx-zero", "10.0.0.9:6200", "dc0.rack0.host9.rawx0", score=0))
    dispatcher.assign_all_rawx(replicas=2)
    assert len(registry.get_assignment("rawx-zero")) == 2


def test_zero_scored_rdir_is_never_chosen(dispatcher, registry):
    build_topology(registry, dcs=1, racks=2, hosts=2, rdir_per_host=1, rawx_per_host=2)
    for rdir in registry.services("rdir")[:2]:
        registry.refresh(rdir.id, score=0)
    dispatcher.assign_all_rawx(replicas=2)
    load = rdir_load(registry)
    assert load["rdir-0000"] == load["rdir-0010"] == 0
    assert len(registry.assignments()) == 8
    with pytest.raises(PlacementError, match="rawx-0000: only 0 usable rdir"):
        dispatcher.assign_services("rawx", replicas=3, service_id="rawx-0000", reassign="rdir-0100")
    for rdir in registry.services("rdir"):
        registry.refresh(rdir.id, score=0)
    registry.register(Service("rawx", "rawx-new", "10.0.0.9:6200"))
    with pytest.raises(ServiceUnavailable, match="No valid rdir service found"):
        dispatcher.assign_services("rawx", service_id="rawx-new")


def test_aggregated_assignments(dispatcher, registry):
    for i in range(3):
        registry.register(Service("rdir", f"rdir-{i}", f"10.0.0.{i}:6300"))
    for i in range(3):
        registry.register(Service("rawx", f"rawx-{i}", f"10.0.1.{i}:6200"))
    registry.replace_assignment("rawx-0", ["rdir-0", "rdir-gone"])
    registry.replace_assignment("rawx-1", ["rdir-0"])
    assert dispatcher.get_aggregated_assignments("rawx") == {
        "rdir-0": ["rawx-0", "rawx-1"],
        "rdir-1": [],
        "rdir-2": [],
        "rdir-gone": ["rawx-0"],
        "n/a": ["rawx-2"],
    }
    services, all_rdir = dispatcher.get_assignments("rawx")
    assert [r["id"] for r in all_rdir] == ["rdir-0", "rdir-1", "rdir-2"]
    gone = services[0]["rdir"][1]
    assert (gone["id"], gone["score"]) == ("rdir-gone", 0)


def test_check_assignments_statuses(dispatcher, registry):
    for i, loc in enumerate(["dc1.r1.h1.d1", "dc2.r1.h1.d1", "dc3.r1.h1.d1", "dc4.r1.h1.d1", "dc1.r1.h1.d2"]):
        registry.register(Service("rdir", f"rdir-{i}", f"10.0.0.{i}:6300", loc))
    for i in range(5):
        registry.register(Service("rawx", f"rawx-{i}", f"10.0.1.{i}:6200", f"dc9.r1.h{i}.d1"))
    registry.replace_assignment("rawx-1", ["rdir-0", "rdir-1"])
    registry.replace_assignment("rawx-2", ["rdir-0", "rdir-1", "rdir-2", "rdir-3"])
    registry.replace_assignment("rawx-3", ["rdir-0", "rdir-1", "rdir-4"])  # rdir-0 and 4: distance 1
    registry.replace_assignment("rawx-4", ["rdir-0", "rdir-1", "rdir-2"])
    rows = {r["id"]: r for r in dispatcher.check_assignments("rawx")}
    assert {k: r["status"] for k, r in rows.items()} == {
        "rawx-0": STATUS_NO_RDIR,
        "rawx-1": STATUS_NOT_ENOUGH,
        "rawx-2": STATUS_TOO_MANY,
        "rawx-3": STATUS_MIN_DIST,
        "rawx-4": STATUS_OK,
    }
    assert (rows["rawx-3"]["distance"], rows["rawx-4"]["distance"]) == (1, 4)
    assert dispatcher.check_assignments("rawx", min_dist=1)[3]["status"] == STATUS_OK


class FailingRegistry:
    """Delegates to a real registry; recording some volumes raises a given error."""

    def __init__(self, inner, failures):
        self._inner, self._failures = inner, failures

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def replace_assignment(self, volume_id, rdir_ids):
        if volume_id in self._failures:
            raise self._failures[volume_id]
        return self._inner.replace_assignment(volume_id, rdir_ids)


def test_one_write_failure_keeps_its_class_and_every_volume_is_tried(registry):
    build_topology(registry, dcs=1, racks=2, hosts=2, rdir_per_host=1, rawx_per_host=1)
    failing = FailingRegistry(registry, {"rawx-0010": ServiceBusy("meta1 busy")})
    with pytest.raises(ServiceBusy, match="meta1 busy") as info:
        RdirDispatcher({}, registry=failing, seed=1).assign_all_rawx(replicas=2)
    assert any("rawx-0010" in note for note in info.value.__notes__)
    assert sorted(registry.assignments()) == ["rawx-0000", "rawx-0100", "rawx-0110"]


def test_several_write_failures_are_collected(registry):
    build_topology(registry, dcs=1, racks=2, hosts=2, rdir_per_host=1, rawx_per_host=1)
    failing = FailingRegistry(registry, {"rawx-0010": ServiceBusy("busy"), "rawx-0110": OioTimeout("slow")})
    with pytest.raises(OioException, match="Several errors encountered") as info:
        RdirDispatcher({}, registry=failing, seed=1).assign_all_rawx(replicas=2)
    assert "rawx-0010: busy" in str(info.value) and "rawx-0110: slow" in str(info.value)
    assert sorted(registry.assignments()) == ["rawx-0000", "rawx-0100"]
    # The failed volumes did not count toward the load.
    assert sum(rdir_load(registry).values()) == 4


def test_on_assigned_failure_is_not_fatal(registry, caplog):
    build_topology(registry, dcs=1, racks=2, hosts=1, rdir_per_host=1, rawx_per_host=1)

    def boom(vol, ids):
        raise ConnectionError("rdir down")

    RdirDispatcher({}, registry=registry, on_assigned=boom, seed=1).assign_all_rawx(replicas=1)
    assert len(registry.assignments()) == 2
    assert "on_assigned" in caplog.text


def test_on_assigned_runs_once_the_lock_is_released(registry, registry_url):
    """Creating volumes on their rdir servers (slow, remote) must not hold other dispatchers back."""
    build_topology(registry, dcs=1, racks=2, hosts=1, rdir_per_host=1, rawx_per_host=1)
    lock_free = []
    on_assigned = lambda vol, ids: lock_free.append(takes_lock_within(registry_url, 5))  # noqa: E731
    RdirDispatcher({}, registry=registry, on_assigned=on_assigned, seed=1).assign_all_rawx(replicas=1)
    assert lock_free == [True, True]
