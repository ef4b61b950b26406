"""Dispatchers racing in several processes, on both registries (issue 11, item 2).

Each round registers a fresh topology, then starts four processes behind one
barrier: two assign every rawx volume and two every meta2 volume, each with its
own seed (so two runs that both decide would decide differently). Whatever the
interleaving, every volume must end with exactly ``REPLICAS`` rdir services,
decided once: ``on_assigned`` (which creates the volume on its rdir services)
runs once per volume over all the processes, with the set the registry holds,
and every process returns that same set.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from rdirdb.errors import NotFound
from rdirdb.rdir.client import RdirClient
from rdirdb.rdir.dispatcher import RdirDispatcher
from rdirdb.rdir.registry import Service, open_registry
from tests.server.helpers import Server

REPLICAS = 3
ROUNDS = 3
RAWX, META2, RDIR = 60, 30, 12
RUNS = [("rawx", 1), ("rawx", 2), ("meta2", 3), ("meta2", 4)]  # (service type, seed) per process


def _topology(url: str) -> None:
    """RDIR rdir services, one host each over 3 datacenters; RAWX rawx and META2 meta2 volumes."""
    with open_registry(url) as registry:
        for i in range(RDIR):
            registry.register(Service("rdir", f"rdir-{i:02}", f"10.0.{i}.1:6300", f"dc{i % 3}.r{i}.h{i}.rdir"))
        for kind, count, port in (("rawx", RAWX, 6200), ("meta2", META2, 6120)):
            for i in range(count):
                registry.register(Service(kind, f"{kind}-{i:03}", f"10.1.{i}.1:{port}", f"dc{i % 3}.v{i}.h{i}.{kind}"))


def _assign(url: str, service_type: str, seed: int, barrier, results) -> None:
    """One dispatcher run; puts ``(type, on_assigned calls, {volume: returned rdir ids})`` on ``results``."""
    calls: list[tuple[str, list[str]]] = []
    with open_registry(url) as registry:
        registry.services()  # connect before the barrier: the race starts at the decision
        dispatcher = RdirDispatcher({}, registry=registry, seed=seed, on_assigned=lambda v, ids: calls.append((v, ids)))
        barrier.wait(60)
        assign_all = dispatcher.assign_all_rawx if service_type == "rawx" else dispatcher.assign_all_meta2
        services = assign_all(replicas=REPLICAS)
    results.put((service_type, calls, {s["id"]: [r["id"] for r in s.get("rdir", [])] for s in services}))


def _race(url: str) -> list[tuple[str, list[tuple[str, list[str]]], dict[str, list[str]]]]:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(len(RUNS)), ctx.Queue()
    procs = [ctx.Process(target=_assign, args=(url, kind, seed, barrier, results)) for kind, seed in RUNS]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    return outcomes


def _fresh(registry_url: str, round_: int, tmp_path) -> str:
    """An empty registry for this round (a new file, or emptied tables)."""
    if registry_url.startswith("file://"):
        return f"file://{tmp_path}/registry-{round_}.json"
    import psycopg

    with psycopg.connect(registry_url, autocommit=True) as conn:
        conn.execute("TRUNCATE rdirdb_registry.services, rdirdb_registry.assignments")
    return registry_url


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_concurrent_dispatchers_decide_each_volume_once(registry_url, round_, tmp_path):
    url = _fresh(registry_url, round_, tmp_path)
    _topology(url)
    outcomes = _race(url)

    with open_registry(url) as registry:
        final = registry.assignments()
    volumes = [f"rawx-{i:03}" for i in range(RAWX)] + [f"meta2-{i:03}" for i in range(META2)]
    assert sorted(final) == sorted(volumes)
    assert all(len(set(final[v])) == len(final[v]) == REPLICAS for v in volumes)

    decided = defaultdict(list)
    for _, calls, _ in outcomes:
        for volume, ids in calls:
            decided[volume].append(ids)
    twice = {v: sets for v, sets in decided.items() if len(sets) > 1}
    assert not twice, f"{len(twice)} volumes decided more than once, e.g. {next(iter(twice.items()))}"
    assert {v: sets[0] for v, sets in decided.items()} == final

    for kind, _, returned in outcomes:
        assert returned == {v: ids for v, ids in final.items() if v.startswith(kind)}


# -- `rdirdb rdir bootstrap` twice at once, through the installed entry point ----------

RDIRDB = Path(sys.executable).with_name("rdirdb")
SERVERS = 4
BOOTSTRAP_VOLUMES = 40


@pytest.fixture(scope="module")
def rdir_servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("rdir")
    for i in range(SERVERS):
        (root / f"db{i}").mkdir()
    started = [Server(str(root / f"db{i}")) for i in range(SERVERS)]
    try:
        yield [f"{s.host}:{s.port}" for s in (s.wait_ready() for s in started)]
    finally:
        for server in started:
            server.stop()


def test_two_bootstraps_at_once(registry_url, rdir_servers):
    tag = uuid.uuid4().hex[:6]
    rdir_ids = {f"rdir-{tag}-{i}": addr for i, addr in enumerate(rdir_servers)}
    volumes = [f"rawx-{tag}-{i:02}" for i in range(BOOTSTRAP_VOLUMES)]
    with open_registry(registry_url) as registry:
        for i, (rid, addr) in enumerate(rdir_ids.items()):
            registry.register(Service("rdir", rid, addr, f"dc1.rack{i}.h{i}.rdir"))
        for i, vol in enumerate(volumes):
            registry.register(Service("rawx", vol, f"10.0.1.{i}:6200", f"dc1.rawx.h{i}.rawx"))

    cmd = [str(RDIRDB), "rdir", "bootstrap", "rawx", "--registry", registry_url, "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err.decode()

    with open_registry(registry_url) as registry:
        final = registry.assignments()
    assert sorted(final) == volumes and all(len(set(final[v])) == len(final[v]) == 3 for v in volumes)
    for out, _ in outputs:  # both commands show the one placement recorded
        assert {a["id"]: a["rdir"] for a in json.loads(out)["assignments"]} == final
    # every volume exists on its 3 rdir servers, and on no other
    for rid, addr in rdir_ids.items():
        with RdirClient({"rdir_hosts": [addr]}) as client:
            for vol in volumes:
                try:
                    client.admin_show(vol)
                    exists = True
                except NotFound:
                    exists = False
                assert exists == (rid in final[vol]), (vol, rid, final[vol])
