"""What a user trial of repair found missing: stamps far in the future, one refused entry
holding back a whole repair, clearing a meta2 replica, a repair of a volume no replica
holds, and the cost of purging tombstones (docs/reliability.md, "Replicas that converge")."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

pytest.importorskip("httptools")

from rdirdb.rdir.repair import b64, describe_key, unb64  # noqa: E402
from rdirdb.rdir.store import Store, stamp_at  # noqa: E402
from tests.cli.conftest import Cli  # noqa: E402
from tests.entry_point import rdirdb_command, rdirdb_env  # noqa: E402
from tests.repair.test_cluster import VOL, Cluster, _meta2, _push, _record  # noqa: E402

YEAR = 365 * 86400


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


def _entries(server, service_type: str = "rawx") -> list:
    reply = server.request("POST", "/v1/rdirdb/repair/range", {"vol": VOL, "type": service_type},
                           json_body={"lo": "", "limit": 100_000})
    assert reply.status == 200, reply.json
    return reply.json["entries"]


def _stamped(entry: list, stamp: int, key: bytes | None = None) -> list:
    """``entry`` (as the range route lists it) restamped, under ``key`` if given."""
    k, _, value = entry
    return [k if key is None else b64(key), stamp, b64(unb64(value, "value")[:-8] + stamp.to_bytes(8, "big"))]


def _future_record(cluster: Cluster, i: int, n: int, ahead: float) -> bytes:
    """Write on replica ``i``, through the apply route, record ``n`` stamped ``ahead`` seconds
    ahead of the clock; returns its full key."""
    s = cluster.servers[i]
    template = _entries(s)[0]
    key = b"\x00" + bytes.fromhex(_record(n)["container_id"] + _record(n)["chunk_id"])
    reply = s.request("POST", "/v1/rdirdb/repair/apply", {"vol": VOL},
                      json_body={"entries": [_stamped(template, stamp_at(time.time() + ahead), key)]})
    assert reply.json == {"applied": 1}, reply.json
    return key


def _restart_with(cluster: Cluster, i: int, *args: str) -> None:
    cluster.stop(i)
    cluster.servers[i] = cluster._start(i, cluster.ports[i], *args)


def test_a_stamp_too_far_ahead_is_refused_with_nothing_applied_and_the_clock_untouched(cluster):
    s = cluster.servers[0]
    with cluster.alone(0) as c0:
        _push(c0, range(3))
    entry = _entries(s)[0]
    before = _entries(s)
    future = stamp_at(time.time() + YEAR)
    fresh_key = b"\x00" + bytes.fromhex(_record(99)["container_id"] + _record(99)["chunk_id"])
    body = {"entries": [_stamped(entry, stamp_at(time.time()), fresh_key), _stamped(entry, future)]}
    reply = s.request("POST", "/v1/rdirdb/repair/apply", {"vol": VOL}, json_body=body)
    assert reply.status == 400, reply.json
    message = reply.json["message"]
    assert describe_key(unb64(entry[0], "key")) in message and str(future) in message, message
    assert message.startswith("1 entry refused, nothing applied") and "maximum clock skew" in message
    assert [r["entry"] for r in reply.json["refused"]] == [1] and reply.json["refused"][0]["key"] == entry[0]
    assert _entries(s) == before  # nothing of the request: not even the good entry
    # The clock did not move towards the refused stamp: a later write is stamped now.
    with cluster.alone(0) as c0:
        _push(c0, range(3, 4))
    assert max(st for _, st, _ in _entries(s)) < stamp_at(time.time() + 60)
    # Within the bound it is taken; a server told to allow more takes the year.
    near = stamp_at(time.time() + 60)
    assert s.request("POST", "/v1/rdirdb/repair/apply", {"vol": VOL},
                     json_body={"entries": [_stamped(entry, near)]}).json == {"applied": 1}
    _restart_with(cluster, 0, "--max-clock-skew", str(2 * YEAR))
    s = cluster.servers[0]
    assert s.request("POST", "/v1/rdirdb/repair/apply", {"vol": VOL},
                     json_body={"entries": [_stamped(entry, future)]}).json == {"applied": 1}
    assert s.request("GET", "/config").json["rdir.max_clock_skew"] == 2 * YEAR


def test_refused_entries_are_reported_and_everything_else_is_repaired(cluster):
    """Replica 0 (which allows any skew) holds a record stamped a year ahead: replicas 1
    and 2 refuse it, the repair still gives them the 100 records they miss, reports the
    refusals (text and --json) and fails; a rerun has nothing else to move."""
    _restart_with(cluster, 0, "--max-clock-skew", str(2 * YEAR))
    with cluster.alone(0) as c0:
        _push(c0, range(100))
    key = _future_record(cluster, 0, 1000, YEAR)
    cli = Cli()
    hosts = ",".join(cluster.hosts)
    proc = cli("rdir", "repair", VOL, "--hosts", hosts, "--json")
    assert proc.returncode == 1, proc.stderr
    assert b"2 entries refused" in proc.stderr
    report = json.loads(proc.stdout)
    assert report["refused"] == 2 and report["records_applied"] == 200
    assert sorted(r["replica"] for r in report["refusals"]) == sorted(cluster.hosts[1:])
    assert {r["key"] for r in report["refusals"]} == {describe_key(key)}
    assert all("ahead of this server's clock" in r["reason"] for r in report["refusals"])
    for i in (1, 2):
        keys = {unb64(k, "key") for k, _, _ in _entries(cluster.servers[i])}
        assert len(keys) == 100 and key not in keys
    proc = cli("rdir", "repair", VOL, "--hosts", hosts)
    assert proc.returncode == 1 and b"refused by a replica" in proc.stdout, proc.stdout
    assert describe_key(key).encode() in proc.stdout and b"APPLIED" in proc.stdout
    again = json.loads(cli("rdir", "repair", VOL, "--hosts", hosts, "--json").stdout)
    assert again["records_applied"] == 0 and again["refused"] == 2


def test_a_meta2_replica_down_longer_than_the_retention_is_cleared_then_repaired(cluster, tmp_path):
    """Replica 2 misses deletes whose tombstones outlive the retention: a plain repair
    would bring the deleted containers back; cleared with `rdirdb volume meta2 clear`, it
    is copied from the others and nothing deleted comes back."""
    with cluster.client() as client:
        _push(client, range(50), "meta2")
        cluster.stop(2)
        for n in range(0, 50, 5):
            client.meta2_index_delete(VOL, _meta2(n)["container_url"], _meta2(n)["container_id"])
    cluster.restart(2)
    time.sleep(1.2)  # the tombstones are older than a retention of 1 s
    cli = Cli()
    hosts = ",".join(cluster.hosts)
    dry = cli.json("rdir", "repair", VOL, "--type", "meta2", "--hosts", hosts, "--retention", "1", "--dry-run")
    assert dry["differences"] == 10  # without the tombstones, replica 2's records would win
    cleared = cli.json("volume", "meta2", "clear", VOL, "--rdir-hosts", cluster.hosts[2])
    assert cleared == {"volumes": [{"volume": VOL, "removed": 50}]}
    assert _entries(cluster.servers[2], "meta2") == []  # no record, no tombstone
    report = cli.json("rdir", "repair", VOL, "--type", "meta2", "--hosts", hosts, "--retention", "1")
    assert report["records_applied"] == 40
    expected = sorted(_meta2(n)["container_url"] for n in range(50) if n % 5)
    for i in range(3):
        with cluster.alone(i) as c:
            assert sorted(r["container_url"] for r in c.meta2_index_fetch_all(VOL)) == expected
    # A volume the server does not hold: an error naming it, and nothing created.
    proc = cli("volume", "meta2", "clear", "absent", "--rdir-hosts", cluster.hosts[2])
    assert proc.returncode == 1 and b"'absent'" in proc.stderr, proc.stderr
    assert not (cluster.root / "db2" / "meta2" / "absent").exists()
    # The embedded store too.
    db = tmp_path / "embedded"
    cli.json("volume", "meta2", "push", VOL, "--db-path", str(db),
             input=b"".join(json.dumps(_meta2(n)).encode() + b"\n" for n in range(3)))
    assert cli.json("volume", "meta2", "clear", VOL, "--db-path", str(db))["volumes"][0]["removed"] == 3


def test_a_volume_no_replica_holds_is_an_error_not_zero_differences(cluster):
    cli = Cli()
    hosts = ",".join(cluster.hosts)
    proc = cli("rdir", "repair", "nowhere", "--hosts", hosts)
    assert proc.returncode == 1, proc.stdout
    assert b"'nowhere' exists on none of the replicas" in proc.stderr, proc.stderr
    proc = cli("rdir", "repair", "nowhere", "--type", "meta2", "--hosts", hosts, "--dry-run")
    assert proc.returncode == 1 and b"exists on none" in proc.stderr
    # An empty volume that one replica holds is a repair with nothing to do.
    cli.json("volume", "create", "empty", "--rdir-hosts", cluster.hosts[0])
    assert cli.json("rdir", "repair", "empty", "--hosts", hosts)["differences"] == 0


def test_a_purge_with_nothing_expired_costs_one_read(tmp_path):
    """The tombstone floor: set by a purge to the oldest stamp kept, lowered by an apply of
    an older tombstone; a purge at or below it has nothing to do, one above it removes
    exactly the expired tombstones."""
    with Store(tmp_path) as store:
        chunks = store.volume(VOL, create=True).chunks
        records = [_record(n) for n in range(20)]
        chunks.put_batch(records)
        chunks.delete_batch([(r["container_id"], r["chunk_id"]) for r in records[:10]])
        stamps = chunks.stamps
        oldest = min(s for _, s, v in stamps.entries(b"", None)[0] if v is None)
        assert stamps.purge(1) == 0 and stamps.tombstone_floor() == oldest
        last = stamps.last_stamp()
        # The floor says nothing is below it: no walk (benches/purge.py measures the cost).
        assert stamps.purge(oldest) == 0 and stamps.last_stamp() == last
        # An older tombstone from another replica lowers the floor...
        key = b"\x00" + bytes.fromhex(_record(500)["container_id"] + _record(500)["chunk_id"])
        assert stamps.apply_entries([(key, oldest - 5, None)]) == 1
        assert stamps.tombstone_floor() == oldest - 5 and stamps.tombstone_count() == 11
        # ... so that a purge between the two removes it, and only it.
        assert stamps.purge(oldest) == 1 and stamps.tombstone_count() == 10
        assert stamps.tombstone_floor() == oldest
        assert stamps.purge(stamps.last_stamp() + 1) == 10
        assert stamps.tombstone_floor() == stamps.last_stamp() + 1


@pytest.mark.parametrize("skew, message", [("-1", b"expected a number of seconds"),
                                           ("1e12", b"--max-clock-skew: the maximum clock skew")])
def test_serve_refuses_a_max_clock_skew_that_is_not_seconds(tmp_path, skew, message):
    proc = subprocess.run(rdirdb_command("serve", "--db-path", str(tmp_path), "--bind", "127.0.0.1:0",
                                         "--max-clock-skew", skew),
                          env=rdirdb_env(), capture_output=True, timeout=60)
    assert proc.returncode in (1, 2) and message in proc.stderr, proc.stderr
    assert b"Traceback" not in proc.stderr
