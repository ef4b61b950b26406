"""``rdirdb rdir ...`` end to end: four real rdir servers, a file registry, fake rawx and meta2."""

from __future__ import annotations

import json
import uuid

import pytest

from rdirdb.rdir.client import RdirClient
from rdirdb.rdir.registry import Service, open_registry
from tests.cli.test_volume_cli import chunks, failed, fetch_all, help_text, jsonl, key, ok
from tests.server.helpers import Server

RDIRS = 4


def on(addr: str) -> RdirClient:
    """A client of one rdir server, to check what a command left there (in process: fast)."""
    return RdirClient({"rdir_hosts": [addr]})


def chunk_keys(addr: str, volume: str) -> list[tuple]:
    with on(addr) as client:
        return [(cid, chunk) for cid, chunk, _ in client.chunk_fetch(volume)]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("rdir")
    started = []
    try:
        for i in range(RDIRS):
            (root / f"db{i}").mkdir()
            started.append(Server(str(root / f"db{i}")))
        for server in started:
            server.wait_ready()
        yield [f"{s.host}:{s.port}" for s in started]
    finally:
        for server in started:
            server.stop()


class Cluster:
    """A fresh registry: the rdir servers (one rack each) and fake rawx/meta2 services.

    Service ids are unique per test, so tests share the servers but no volume.
    """

    def __init__(self, path, hosts: list[str]) -> None:
        self.url = f"file://{path}"
        tag = uuid.uuid4().hex[:6]
        self.rdir = [f"rdir-{tag}-{i}" for i in range(RDIRS)]
        self.addr = dict(zip(self.rdir, hosts))
        self.rawx = [f"rawx-{tag}-{i}" for i in range(4)]
        self.meta2 = [f"meta2-{tag}-{i}" for i in range(2)]
        with open_registry(self.url) as registry:
            for i, rid in enumerate(self.rdir):
                registry.register(Service("rdir", rid, hosts[i], f"dc1.rack{i}.h{i}.d0"))
            for i, sid in enumerate(self.rawx):
                registry.register(Service("rawx", sid, f"10.0.1.{i}:6200", f"dc1.rawx.h{i}.d0"))
            for i, sid in enumerate(self.meta2):
                registry.register(Service("meta2", sid, f"10.0.2.{i}:6120", f"dc1.meta2.h{i}.d0"))

    def assignments(self) -> dict[str, list[str]]:
        with open_registry(self.url) as registry:
            return registry.assignments()


@pytest.fixture
def cluster(tmp_path, servers):
    return Cluster(tmp_path / "registry.json", servers)


def test_bootstrap_and_assignments(cli, cluster):
    reg = ("--registry", cluster.url)
    # before: nothing assigned, the check fails
    proc = cli("rdir", "assignments", "rawx", *reg, "--check")
    assert proc.returncode == 1 and b"4 of 4 rawx assignments are not OK" in proc.stderr
    assert proc.stdout.decode().count("No rdir found") == 4

    dry = cli.json("rdir", "bootstrap", "rawx", *reg, "--dry-run")["assignments"]
    assert len(dry) == 4 and all(len(a["rdir"]) == 3 for a in dry)
    assert cluster.assignments() == {}

    done = cli.json("rdir", "bootstrap", "rawx", *reg)["assignments"]
    assert done == dry  # a dry run shows exactly what the real run does
    assigned = cluster.assignments()
    assert {sid: assigned[sid] for sid in cluster.rawx} == {a["id"]: a["rdir"] for a in done}
    assert all(a["rdir_location"] == [f"dc1.rack{cluster.rdir.index(r)}.h{cluster.rdir.index(r)}.d0"
                                      for r in a["rdir"]] for a in done)

    check = cli.json("rdir", "assignments", "rawx", *reg, "--check")["check"]
    assert sorted(r["id"] for r in check) == cluster.rawx
    assert {r["status"] for r in check} == {"OK"} and {r["distance"] for r in check} == {3}
    table = ok(cli("rdir", "assignments", "rawx", *reg, "--check")).splitlines()
    assert table[0].split() == ["RAWX", "RDIR", "DISTANCE", "STATUS"] and all(r.endswith("OK") for r in table[1:])
    proc = cli("rdir", "assignments", "rawx", *reg, "--check", "--replicas", "4")
    assert proc.returncode == 1 and proc.stdout.decode().count("Not enough replicas") == 4
    proc = cli("rdir", "assignments", "rawx", *reg, "--check", "--min-dist", "4")
    assert proc.returncode == 1 and "Minimum distance requirement failure" in proc.stdout.decode()

    aggregated = cli.json("rdir", "assignments", "rawx", *reg, "--aggregated")["rdir"]
    assert set(aggregated) == set(cluster.rdir) and sum(map(len, aggregated.values())) == 12
    table = ok(cli("rdir", "assignments", "rawx", *reg, "--aggregated")).splitlines()
    assert table[0].split() == ["RDIR", "VOLUMES", "RAWX"] and len(table) == 1 + RDIRS
    table = ok(cli("rdir", "assignments", "rawx", *reg)).splitlines()
    assert table[0].split() == ["RAWX", "RDIR", "RAWX", "LOCATION", "RDIR", "LOCATION"] and len(table) == 5

    # bootstrap created every volume on its rdir servers
    for a in done:
        for rid in a["rdir"]:
            with on(cluster.addr[rid]) as client:
                assert client.admin_show(a["id"]) == {}
    # bootstrapping again changes nothing
    assert cli.json("rdir", "bootstrap", "rawx", *reg)["assignments"] == done

    # meta2, one service only, then the check sees the other unassigned
    one = cli.json("rdir", "bootstrap", "meta2", *reg, "--service-id", cluster.meta2[0], "--replicas", "2")
    assert [len(a["rdir"]) for a in one["assignments"]] == [2]
    proc = cli("rdir", "assignments", "meta2", *reg, "--check", "--replicas", "2", "--json")
    assert proc.returncode == 1
    check = {r["id"]: r["status"] for r in json.loads(proc.stdout)["check"]}
    assert check == {cluster.meta2[0]: "OK", cluster.meta2[1]: "No rdir found"}


def test_bootstrap_failures(cli, cluster):
    reg = ("--registry", cluster.url)
    # 5 replicas out of 4 rdir services: fails, shows the assignments, records nothing
    proc = cli("rdir", "bootstrap", "rawx", *reg, "--replicas", "5")
    assert failed(proc).startswith("rdirdb rdir bootstrap: ")
    assert proc.stdout.decode().splitlines()[0].split()[:2] == ["RAWX", "RDIR"]
    assert cluster.assignments() == {}
    assert "isn't a rawx" in failed(cli("rdir", "bootstrap", "rawx", *reg, "--service-id", "nope"))
    failed(cli("rdir", "bootstrap", "rawx"), 2)  # --registry is required
    failed(cli("rdir", "bootstrap", "rdir", *reg), 2)
    failed(cli("rdir", "assignments", "rawx", *reg, "--check", "--aggregated"), 2)
    assert "No rdir service" in failed(cli("rdir", "bootstrap", "rawx", "--registry", cluster.url + ".empty"))

    # the only rdir service is down: assigned, not created, and the error says how to retry
    url = cluster.url + ".down"
    with open_registry(url) as registry:
        registry.register(Service("rdir", "rdir-down", "127.0.0.1:1", "dc1.rack9.h9.d0"))
        registry.register(Service("rawx", "rawx-lonely", "10.0.3.1:6200", "dc1.rawx.h1.d0"))
    proc = cli("rdir", "bootstrap", "rawx", "--registry", url, "--replicas", "1")
    assert "rdirdb volume create rawx-lonely --type rawx" in failed(proc) and "rdir-down" in proc.stdout.decode()
    with open_registry(url) as registry:
        assert registry.assignments() == {"rawx-lonely": ["rdir-down"]}


def test_copy(cli, cluster):
    reg = ("--registry", cluster.url)
    vol = cluster.rawx[0]
    with open_registry(cluster.url) as registry:
        registry.replace_assignment(vol, [cluster.rdir[0]])
        registry.replace_assignment(cluster.meta2[0], [cluster.rdir[0]])
    records = chunks(2500)  # more than one copy batch
    ok(cli("volume", "push", vol, *reg, "--create", input=jsonl(records)))
    ok(cli("volume", "incident", "set", vol, *reg, "--date", "1100"))
    ok(cli("volume", "lock", vol, *reg, "--who", "rebuilder"))

    out = cli.json("rdir", "copy", "rawx", vol, *reg, "--dest", f"{cluster.rdir[1]},{cluster.addr[cluster.rdir[2]]}")
    assert out["records"] == 2500 and out["sources"] == [cluster.addr[cluster.rdir[0]]]
    assert out["dests"] == [cluster.addr[cluster.rdir[1]], cluster.addr[cluster.rdir[2]]]
    assert fetch_all(cli, "--rdir-hosts", cluster.addr[cluster.rdir[1]], volume=vol) == sorted(records, key=key)
    for rid in cluster.rdir[1:3]:
        assert chunk_keys(cluster.addr[rid], vol) == sorted(map(key, records))
        with on(cluster.addr[rid]) as client:
            assert client.admin_show(vol) == {"incident_date": "1100", "lock": "rebuilder"}
    # an explicit source, the table
    table = ok(cli("rdir", "copy", "rawx", vol, *reg, "--source", cluster.rdir[1], "--dest", cluster.rdir[3]))
    assert table.splitlines()[1].split()[-1] == "2,500"
    assert len(chunk_keys(cluster.addr[cluster.rdir[3]], vol)) == 2500

    meta2 = [{"container_url": f"NS/a/c{i}", "mtime": i} for i in range(1500)]
    ok(cli("volume", "meta2", "push", cluster.meta2[0], *reg, input=jsonl(meta2)))
    assert cli.json("rdir", "copy", "meta2", cluster.meta2[0], *reg, "--dest", cluster.rdir[3])["records"] == 1500
    with on(cluster.addr[cluster.rdir[3]]) as client:
        copied = client.meta2_index_fetch_all(cluster.meta2[0])
    assert [r["container_url"] for r in copied] == sorted(r["container_url"] for r in meta2)

    # failures: no assignment, no source left, usage
    assert "no rdir" in failed(cli("rdir", "copy", "rawx", cluster.rawx[1], *reg, "--dest", cluster.rdir[1])).lower()
    assert "No source" in failed(cli("rdir", "copy", "rawx", vol, *reg, "--dest", cluster.rdir[0]))
    assert "not HOST:PORT" in failed(cli("rdir", "copy", "rawx", vol, *reg, "--dest", "unknown-rdir"))
    failed(cli("rdir", "copy", "rawx", vol, *reg), 2)


def test_reassign(cli, cluster):
    reg = ("--registry", cluster.url)
    ok(cli("rdir", "bootstrap", "rawx", *reg))
    before = cluster.assignments()
    leaving = cluster.rdir[0]
    moved = sorted(v for v, rdirs in before.items() if leaving in rdirs)
    assert moved  # 4 volumes x 3 replicas on 4 rdir services: each holds some
    for i, vol in enumerate(moved):
        ok(cli("volume", "push", vol, *reg, input=jsonl(chunks(50 + i))))  # to every replica

    dry = cli.json("rdir", "reassign", "rawx", leaving, *reg, "--dry-run")
    assert cluster.assignments() == before and all(r["copied"] is None for r in dry["volumes"])

    out = cli.json("rdir", "reassign", "rawx", leaving, *reg)
    assert [r["volume"] for r in out["volumes"]] == moved
    after = cluster.assignments()
    for i, row in enumerate(out["volumes"]):
        vol = row["volume"]
        assert leaving not in after[vol] and len(after[vol]) == 3 and row["new"] == after[vol]
        assert row["copied"] == 50 + i and row["error"] is None
        (new,) = set(after[vol]) - set(before[vol])
        assert len(chunk_keys(cluster.addr[new], vol)) == 50 + i
    for vol in set(before) - set(moved):
        assert after[vol] == before[vol]
    assert cli.json("rdir", "assignments", "rawx", *reg, "--aggregated")["rdir"][leaving] == []
    assert ok(cli("rdir", "assignments", "rawx", *reg, "--check")).count("OK") == 4

    # the rdir service holds nothing now; an unknown one is an error
    assert cli.json("rdir", "reassign", "rawx", leaving, *reg)["volumes"] == []
    assert "not a registered rdir" in failed(cli("rdir", "reassign", "rawx", "nope", *reg))


def test_reassign_no_copy_and_failure(cli, cluster):
    reg = ("--registry", cluster.url)
    ok(cli("rdir", "bootstrap", "rawx", *reg, "--replicas", "2", "--service-id", cluster.rawx[0]))
    (first, second) = cluster.assignments()[cluster.rawx[0]]
    out = cli.json("rdir", "reassign", "rawx", first, *reg, "--replicas", "2", "--no-copy")
    row = out["volumes"][0]
    assert row["copied"] is None and first not in row["new"] and second in row["new"]
    # 4 replicas out of 3 usable rdir services: the volume is reported, exit 1
    proc = cli("rdir", "reassign", "rawx", second, *reg, "--replicas", "4")
    err = failed(proc)
    assert "1 of 1 volumes failed" in err and cluster.rawx[0] in proc.stdout.decode()
    assert second in cluster.assignments()[cluster.rawx[0]]

    # an rdir service that is down: the volume moves, the copy fails, and the error says how to retry
    with open_registry(cluster.url) as registry:
        registry.register(Service("rdir", "rdir-down", "127.0.0.1:1", "dc1.rack9.h9.d0"))
        registry.replace_assignment(cluster.rawx[1], ["rdir-down"])
    proc = cli("rdir", "reassign", "rawx", "rdir-down", *reg, "--replicas", "1")
    err = failed(proc)
    (new,) = cluster.assignments()[cluster.rawx[1]]
    assert new in cluster.rdir and f"rdirdb rdir copy rawx {cluster.rawx[1]} --dest {new}" in err
    assert "reassigned, but the copy failed" in proc.stdout.decode()


def test_help(cli, capsys):
    assert "reassign" in ok(cli("rdir", "--help"))
    for command in ("bootstrap", "assignments", "reassign", "copy"):
        out = help_text(capsys, "rdir", command)
        assert "--registry" in out and "--json" in out and "TYPE" in out, command
