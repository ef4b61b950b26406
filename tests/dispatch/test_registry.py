"""The registry interface, one suite for both backends."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from rdirdb.errors import BadRequest, NotFound, OioException, ServiceUnavailable, VolumeException
from rdirdb.rdir.registry import FileRegistry, PostgresRegistry, Service, location_distance, open_registry, parse_location

from .conftest import takes_lock_within


def rdir(n: int, **kw) -> Service:
    return Service("rdir", f"rdir-{n}", f"127.0.0.1:{6300 + n}", **kw)


def test_register_lists_by_type_sorted(registry):
    registry.register(rdir(2, location="dc1.r1.h1.d2", stats={"opened_db_count": 4}))
    registry.register(rdir(1))
    registry.register(Service("rawx", "rawx-1", "127.0.0.1:6201", score=0))
    assert [s.id for s in registry.services("rdir")] == ["rdir-1", "rdir-2"]
    assert [s.id for s in registry.services()] == ["rawx-1", "rdir-1", "rdir-2"]
    assert registry.services("meta2") == []
    got = registry.get("rdir-2")
    assert (got.type, got.addr, got.location, got.score, got.stats) == (
        "rdir", "127.0.0.1:6302", "dc1.r1.h1.d2", 100, {"opened_db_count": 4}
    )
    assert registry.get("rawx-1").score == 0
    assert got.last_refresh > time.time() - 60


def test_register_again_replaces(registry):
    registry.register(rdir(1, stats={"a": 1}))
    registry.register(rdir(1, location="x.y", stats={"b": 2}))
    [got] = registry.services()
    assert (got.location, got.stats) == ("x.y", {"b": 2})


def test_register_rejects_bad_services(registry):
    with pytest.raises(BadRequest, match="unknown service type"):
        registry.register(Service("meta1", "m", "127.0.0.1:1"))
    with pytest.raises(BadRequest, match="id and an address"):
        registry.register(Service("rdir", "", "127.0.0.1:1"))
    assert registry.services() == []


def test_refresh_merges_stats_and_score(registry):
    registry.register(rdir(1, stats={"opened_db_count": 1, "volumes": ["a"]}))
    before = registry.get("rdir-1").last_refresh
    time.sleep(0.01)
    registry.refresh("rdir-1", {"opened_db_count": 2}, score=0)
    got = registry.get("rdir-1")
    assert got.stats == {"opened_db_count": 2, "volumes": ["a"]}
    assert got.score == 0
    assert got.last_refresh > before
    registry.refresh("rdir-1")
    assert registry.get("rdir-1").score == 0


def test_refresh_unknown_service_is_not_found(registry):
    with pytest.raises(NotFound, match="rdir-9"):
        registry.refresh("rdir-9", {})
    with pytest.raises(NotFound):
        registry.get("rdir-9")
    with pytest.raises(NotFound):
        registry.remove("rdir-9")


def test_expire_drops_stale_services_only(registry):
    registry.register(rdir(1))
    registry.register(rdir(2))
    time.sleep(0.01)
    cutoff = time.time()
    time.sleep(0.01)
    registry.refresh("rdir-2", {})
    registry.replace_assignment("vol", ["rdir-1"])
    assert registry.expire(cutoff) == ["rdir-1"]
    assert [s.id for s in registry.services()] == ["rdir-2"]
    assert registry.get_assignment("vol") == ["rdir-1"]  # assignments outlive the service
    assert registry.expire(cutoff) == []


def test_remove(registry):
    registry.register(rdir(1))
    registry.remove("rdir-1")
    assert registry.services() == []


def test_assignments_replace_add_remove(registry):
    assert registry.get_assignment("vol") == []
    assert registry.replace_assignment("vol", ["b", "a", "b"]) == ["b", "a"]
    assert registry.add_assignment("vol", ["a", "c"]) == ["b", "a", "c"]
    assert registry.add_assignment("other", ["x"]) == ["x"]
    assert registry.assignments() == {"vol": ["b", "a", "c"], "other": ["x"]}
    assert registry.remove_assignment("vol", ["a", "zz"]) == ["b", "c"]
    assert registry.get_assignment("vol") == ["b", "c"]
    assert registry.remove_assignment("vol") == []
    assert registry.replace_assignment("other", []) == []
    assert registry.assignments() == {}


def test_rdir_services_of_a_volume(registry):
    registry.register(rdir(1))
    registry.register(rdir(2))
    with pytest.raises(VolumeException, match="vol"):
        registry.rdir_services("vol")
    registry.replace_assignment("vol", ["rdir-2", "rdir-gone", "rdir-1"])
    assert [s.addr for s in registry.rdir_services("vol")] == ["127.0.0.1:6302", "127.0.0.1:6301"]


def test_second_handle_sees_writes(registry, registry_url):
    registry.register(rdir(1))
    registry.replace_assignment("vol", ["rdir-1"])
    with open_registry(registry_url) as other:
        assert [s.id for s in other.services()] == ["rdir-1"]
        assert other.get_assignment("vol") == ["rdir-1"]


def _hammer(url: str, worker: int, count: int) -> None:
    with open_registry(url) as reg:
        for i in range(count):
            reg.register(Service("rawx", f"rawx-{worker}-{i}", f"10.0.{worker}.{i}:6200"))
            reg.refresh("shared", {f"w{worker}-{i}": i})
            reg.add_assignment("shared-vol", [f"rdir-{worker}-{i}"])


def test_concurrent_processes_lose_nothing(registry, registry_url):
    registry.register(Service("rdir", "shared", "127.0.0.1:6300"))
    workers, count = 4, 15
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(registry_url, w, count)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(registry.services("rawx")) == workers * count
    assert registry.get("shared").stats == {f"w{w}-{i}": i for w in range(workers) for i in range(count)}
    assert sorted(registry.get_assignment("shared-vol")) == sorted(
        f"rdir-{w}-{i}" for w in range(workers) for i in range(count)
    )


def test_file_registry_write_is_atomic(tmp_path):
    """A failed update leaves the previous file intact and no temporary file behind."""
    reg = FileRegistry(tmp_path / "sub" / "reg.json")
    reg.register(rdir(1))

    def boom(old):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        reg._update_assignment("vol", boom)
    assert [s.id for s in reg.services()] == ["rdir-1"]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["reg.json", "reg.json.lock"]


def test_file_registry_corrupted_file_is_a_clear_error(tmp_path):
    (tmp_path / "reg.json").write_text("{not json")
    with pytest.raises(OioException, match="reg.json is not valid JSON"):
        FileRegistry(tmp_path / "reg.json").services()


def test_pg_registry_reconnects_after_a_lost_connection(pg_dsn):
    import psycopg

    with PostgresRegistry(pg_dsn) as reg:
        reg.register(rdir(1))
        pid = reg._conn.info.backend_pid
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(ServiceUnavailable, match="registry database unreachable"):
            reg.refresh("rdir-1", {"opened_db_count": 1})
        reg.refresh("rdir-1", {"opened_db_count": 2})  # a new connection
        assert reg.get("rdir-1").stats == {"opened_db_count": 2}
        reg.remove("rdir-1")


def test_pg_registry_unreachable_is_service_unavailable():
    with pytest.raises(ServiceUnavailable, match="registry database unreachable"):
        PostgresRegistry("postgresql://postgres@127.0.0.1:1/nothing")


@pytest.mark.parametrize(
    "url", ["http://example.com/reg", "file://otherhost/x.json", "file://", "registry.json"]
)
def test_open_registry_rejects_unknown_urls(url):
    with pytest.raises(BadRequest, match="registry URL"):
        open_registry(url)


def test_open_registry_file_url(tmp_path):
    reg = open_registry(f"file://{tmp_path}/r.json")
    assert isinstance(reg, FileRegistry) and reg.path == f"{tmp_path}/r.json"


@pytest.mark.parametrize(
    "a, b, distance",
    [
        ("dc1.r1.h1.d1", "dc1.r1.h1.d1", 0),
        ("dc1.r1.h1.d1", "dc1.r1.h1.d2", 1),
        ("dc1.r1.h1.d1", "dc1.r1.h2.d1", 2),
        ("dc1.r1.h1.d1", "dc1.r2.h1.d1", 3),
        ("dc1.r1.h1.d1", "dc2.r1.h1.d1", 4),
        ("h1.d1", "h2.d1", 2),  # left-padded
        ("h1.d1", "dc1.r1.h1.d1", 4),
        ("dc.r.h.d.e", "dc.r.h.d.f", 1),  # extra levels belong to the disk
    ],
)
def test_location_distance(a, b, distance):
    la, lb = (parse_location(Service("rdir", "x", "1.2.3.4:5", location=loc)) for loc in (a, b))
    assert location_distance(la, lb) == distance == location_distance(lb, la)


def test_location_defaults_to_address():
    a = parse_location(Service("rdir", "a", "10.0.0.1:6300"))
    b = parse_location(Service("rdir", "b", "10.0.0.1:6301"))
    assert a == ("", "", "10.0.0.1", "6300")
    assert location_distance(a, b) == 1


# -- the assignment lock ----------------------------------------------------------


def test_assignment_lock_excludes_other_handles(registry, registry_url):
    with registry.assignment_lock():
        registry.replace_assignment("vol", ["rdir-1"])  # the holder writes as usual
        assert not takes_lock_within(registry_url, 0.5)
    assert takes_lock_within(registry_url, 10)
    # reading needs no lock
    with registry.assignment_lock(), open_registry(registry_url) as other:
        assert other.assignments() == {"vol": ["rdir-1"]}


def _hold_lock(url: str, ready) -> None:
    with open_registry(url) as reg, reg.assignment_lock():
        ready.set()
        time.sleep(600)


def test_assignment_lock_dies_with_its_holder(registry, registry_url):
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(registry_url, ready))
    holder.start()
    try:
        assert ready.wait(60)
        assert not takes_lock_within(registry_url, 0.5)
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs
        holder.join(10)
    assert takes_lock_within(registry_url, 10)


def test_pg_lost_connection_under_the_assignment_lock_stops_writes(pg_dsn):
    """The lock went with the session: the holder must not go on writing on a new connection."""
    import psycopg

    with PostgresRegistry(pg_dsn) as reg:
        reg.remove_assignment("vol")
        with reg.assignment_lock():
            with psycopg.connect(pg_dsn, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (reg._conn.info.backend_pid,))
            for _ in range(2):  # the failed write, then the refused reconnection
                with pytest.raises(ServiceUnavailable):
                    reg.replace_assignment("vol", ["rdir-1"])
            assert takes_lock_within(pg_dsn, 10)  # the server released it
        assert reg.get_assignment("vol") == []
        with reg.assignment_lock():  # a new connection once the block is left
            reg.replace_assignment("vol", ["rdir-1"])
        assert reg.get_assignment("vol") == ["rdir-1"]
