"""Anti-entropy repair end to end: three ``rdirdb serve`` on loopback, one stopped while
the others take pushes and deletes, restarted, repaired through the installed
``rdirdb rdir repair`` (docs/reliability.md, "Replicas that converge")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest

pytest.importorskip("httptools")

from rdirdb.errors import BadRequest  # noqa: E402
from rdirdb.rdir.client import RdirClient  # noqa: E402
from rdirdb.rdir.registry import open_registry  # noqa: E402
from rdirdb.rdir.repair import HttpReplica, b64, repair_hosts, unb64  # noqa: E402
from rdirdb.rdir.store import Store  # noqa: E402
from rdirdb.server.repairer import repair_round  # noqa: E402
from tests.cli.conftest import Cli  # noqa: E402
from tests.entry_point import rdirdb_command, rdirdb_env  # noqa: E402
from tests.server.helpers import Server  # noqa: E402

VOL = "replicated"
# Small enough for `make test`; the full size (100,000 pushes, 10,000 deletes) runs under -m stress.
PUSHES, DELETES = 20_000, 2_000


def _record(n: int) -> dict:
    return {"container_id": f"{n % 64:064X}", "content_id": "C" * 32, "chunk_id": f"{n:064X}",
            "mtime": n, "path": f"obj-{n}", "version": 1}


def _meta2(n: int) -> dict:
    return {"container_url": f"NS/acct/c{n:07d}", "container_id": f"{n:064X}", "mtime": n}


class Cluster:
    def __init__(self, root, n: int = 3, args: tuple[str, ...] = ()) -> None:
        self.root = root
        self.args = args
        self.servers: list[Server] = []
        self.ports: list[int] = []
        for i in range(n):
            db = root / f"db{i}"
            db.mkdir()
            self.servers.append(self._start(i, 0))
            self.ports.append(self.servers[i].port)

    def _start(self, i: int, port: int, *args: str) -> Server:
        for attempt in range(10):
            try:
                return Server(str(self.root / f"db{i}"), "--service-id", f"rdir-{i}", "--bind", f"127.0.0.1:{port}",
                              *self.args, *args, log_path=str(self.root / f"server{i}-{time.monotonic_ns()}.log")).wait_ready()
            except RuntimeError as exc:
                if "Address already in use" not in str(exc) or attempt == 9:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")

    @property
    def hosts(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def stop(self, i: int, sig: int = signal.SIGTERM) -> None:
        self.servers[i].stop(sig)

    def restart(self, i: int) -> None:
        self.servers[i] = self._start(i, self.ports[i])

    def client(self, **conf) -> RdirClient:
        return RdirClient({"rdir_hosts": self.hosts, "write_quorum": 2, **conf})

    def alone(self, i: int) -> RdirClient:
        return RdirClient({"rdir_hosts": [self.hosts[i]]})

    def close(self) -> None:
        for s in self.servers:
            if s.proc.poll() is None:
                s.stop(signal.SIGTERM)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


def _push(client: RdirClient, ns: range, service_type: str = "rawx") -> None:
    ns = list(ns)
    for i in range(0, len(ns), 1000):
        if service_type == "rawx":
            client.chunk_push_batch(VOL, [_record(n) for n in ns[i:i + 1000]], create=True)
        else:
            for n in ns[i:i + 1000]:
                client.meta2_index_push(VOL, **_meta2(n))


def _delete(client: RdirClient, ns: list[int]) -> None:
    for i in range(0, len(ns), 1000):
        client.chunk_delete_batch(VOL, [{"container_id": _record(n)["container_id"], "chunk_id": _record(n)["chunk_id"]}
                                        for n in ns[i:i + 1000]])


def _listing(client: RdirClient) -> list:
    return sorted((c, k, v["mtime"]) for c, k, v in client.chunk_fetch(VOL))


def _status(client: RdirClient) -> dict:
    return client.status(VOL)


def _diverge(cluster: Cluster, pushes: int, deletes: int) -> tuple[set[int], set[int]]:
    """Half the pushes with every replica up; replica 2 stopped; the other half and the deletes."""
    with cluster.client() as client:
        _push(client, range(pushes // 2))
        cluster.stop(2)
        _push(client, range(pushes // 2, pushes))
        deleted = list(range(0, pushes, pushes // deletes))[:deletes]
        _delete(client, deleted)
    cluster.restart(2)
    return set(range(pushes)) - set(deleted), set(deleted)


@pytest.mark.parametrize("pushes, deletes", [
    (PUSHES, DELETES), pytest.param(100_000, 10_000, marks=pytest.mark.stress, id="issue-size"),
])
def test_a_stopped_replica_converges_and_deletes_stay_deleted(cluster, pushes, deletes):
    alive, deleted = _diverge(cluster, pushes, deletes)
    late = len(range(pushes // 2, pushes)) + sum(1 for n in deleted if n < pushes // 2)
    with cluster.alone(2) as c2:
        assert len(_listing(c2)) == pushes // 2
    cli = Cli()
    hosts = ",".join(cluster.hosts)
    dry = cli.json("rdir", "repair", VOL, "--hosts", hosts, "--dry-run")
    assert dry["dry_run"] and dry["differences"] == late and dry["records_applied"] == 0
    with cluster.alone(2) as c2:
        assert len(_listing(c2)) == pushes // 2  # the dry run moved nothing
    report = cli.json("rdir", "repair", VOL, "--hosts", hosts)
    # Replica 2 got exactly what it missed: the late pushes and the tombstones of the deletes
    # of records it held; the others got nothing.
    assert report["records_sent"] == report["records_applied"] == late
    # Half the keys differ, densely: the listings of the differing ranges, from each replica,
    # still stay below a full copy of every replica.
    assert report["records_listed"] < 3 * pushes
    expected = sorted((_record(n)["container_id"], _record(n)["chunk_id"], n) for n in alive)
    statuses = []
    for i in range(3):
        with cluster.alone(i) as c:
            assert _listing(c) == expected
            statuses.append(_status(c))
    assert statuses[0] == statuses[1] == statuses[2] and statuses[0]["chunk"]["total"] == len(alive)
    again = cli.json("rdir", "repair", VOL, "--hosts", hosts)
    assert again["records_moved"] == 0 and again["ranges_compared"] == 1
    # The table of a real run, not --json.
    proc = cli("rdir", "repair", VOL, "--hosts", hosts)
    assert proc.returncode == 0 and b"DIFFERING KEYS" in proc.stdout


def test_meta2_volumes_converge(cluster):
    with cluster.client() as client:
        _push(client, range(300), "meta2")
        cluster.stop(1)
        _push(client, range(300, 500), "meta2")
        for n in range(0, 100, 2):
            client.meta2_index_delete(VOL, _meta2(n)["container_url"], _meta2(n)["container_id"])
    cluster.restart(1)
    report = repair_hosts(VOL, cluster.hosts, "meta2")
    assert report.records_applied == 200 + 50
    listings = []
    for i in range(3):
        with cluster.alone(i) as c:
            listings.append(sorted(r["container_url"] for r in c.meta2_index_fetch_all(VOL)))
    assert listings[0] == listings[1] == listings[2]
    assert listings[0] == sorted(_meta2(n)["container_url"] for n in range(500) if n >= 100 or n % 2)


def test_admin_keys_are_reported_not_repaired(cluster):
    with cluster.client() as client:
        _push(client, range(10))
    with cluster.alone(0) as c0:
        c0.admin_incident_set(VOL, 1234)
        c0.admin_lock(VOL, "ops")
    report = Cli().json("rdir", "repair", VOL, "--hosts", ",".join(cluster.hosts))
    assert report["admin_differences"] == {
        "incident_date": {cluster.hosts[0]: "1234", cluster.hosts[1]: None, cluster.hosts[2]: None},
        "lock": {cluster.hosts[0]: "ops", cluster.hosts[1]: None, cluster.hosts[2]: None},
    }
    with cluster.alone(1) as c1:
        assert c1.admin_incident_get(VOL) == 0


def test_repair_under_concurrent_writes(cluster):
    """A writer pushes and deletes (quorum 2) while repairs run: nothing deleted comes back,
    nothing acknowledged goes missing, and a repair after the writer stops makes the
    replicas identical."""
    alive, deleted = _diverge(cluster, 4000, 400)
    stop = threading.Event()
    acked_deleted: set[int] = set()
    acked_pushed: set[int] = set()

    def writer() -> None:
        n = 10_000
        with cluster.client() as client:
            while not stop.is_set():
                _push(client, range(n, n + 50))
                acked_pushed.update(range(n, n + 50))
                _delete(client, [n, n + 1, min(alive)])
                acked_deleted.update([n, n + 1, min(alive)])
                alive.discard(min(alive))
                n += 50

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(3):
            repair_hosts(VOL, cluster.hosts)
    finally:
        stop.set()
        thread.join()
    repair_hosts(VOL, cluster.hosts)
    assert repair_hosts(VOL, cluster.hosts).records_moved == 0
    listings = []
    for i in range(3):
        with cluster.alone(i) as c:
            listings.append(_listing(c))
    assert listings[0] == listings[1] == listings[2]
    present = {k for _, k, _ in listings[0]}
    assert not present & {_record(n)["chunk_id"] for n in deleted | acked_deleted}
    assert {_record(n)["chunk_id"] for n in (acked_pushed - acked_deleted) | alive} <= present


def _consistent(db: str, service_type: str = "rawx") -> int:
    """The replica's volume opens, and its scan, status and count agree."""
    with Store(db, readonly=True) as store:
        vol = store.volume(VOL, service_type)
        records, truncated, _ = vol.chunks.fetch(limit=10**6)
        total = vol.chunks.status(limit=10**6)[0]
        assert not truncated and len(records) == total == vol.chunks.count()
        return total


@pytest.mark.parametrize("victim", ["repair", "replica"])
def test_kill_9_mid_repair_leaves_replicas_consistent_and_a_rerun_finishes(cluster, victim):
    alive, _ = _diverge(cluster, PUSHES, DELETES)
    proc = subprocess.Popen(rdirdb_command("rdir", "repair", VOL, "--hosts", ",".join(cluster.hosts), "--json"),
                            env=rdirdb_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db2 = str(cluster.root / "db2")
    before = _consistent(db2)

    def count() -> int:
        with Store(db2, readonly=True) as store:
            return store.volume(VOL).chunks.count()

    # Kill as soon as replica 2 has taken some of what it lacks, not all of it.
    deadline = time.monotonic() + 60
    while count() == before and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    assert proc.poll() is None, "the repair ended before the kill"
    if victim == "repair":
        proc.kill()
    else:
        server = cluster.servers[2]
        with open(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children") as f:
            workers = [int(p) for p in f.read().split()]
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        cluster.stop(2, signal.SIGKILL)
    proc.communicate(timeout=60)
    for i in range(3):
        _consistent(str(cluster.root / f"db{i}"))
    if victim == "replica":
        cluster.restart(2)
    report = repair_hosts(VOL, cluster.hosts)
    assert report.records_applied > 0 or victim == "repair"
    for i in range(3):
        assert _consistent(str(cluster.root / f"db{i}")) == len(alive)
    assert repair_hosts(VOL, cluster.hosts).records_moved == 0


def test_bad_repair_requests_are_400(cluster):
    replica = HttpReplica(cluster.hosts[0], VOL)
    s = cluster.servers[0]
    for body in [{"bounds": "x"}, {"bounds": [["!!"]]}, {"bounds": [[None, None]], "cutoff": -1}]:
        reply = s.request("POST", "/v1/rdirdb/repair/digest", {"vol": VOL}, json_body=body)
        assert reply.status == 400 and "message" in reply.json
    reply = s.request("POST", "/v1/rdirdb/repair/apply", {"vol": VOL},
                      json_body={"entries": [["AWM=", 5, b64(b"\x80garb" + (5).to_bytes(8, "big"))]]})
    assert reply.status == 400 and "not a chunk record" in reply.json["message"]
    reply = s.request("POST", "/v1/rdirdb/repair/split", {"vol": VOL, "type": "nope"}, json_body={"parts": 2})
    assert reply.status == 400
    assert replica.digest([[b"", None]], 0) == [[(0, 0)]]  # an absent volume is empty, not created
    assert not os.path.exists(cluster.root / "db0" / "rawx" / VOL)
    replica.close()


def test_serve_repairs_periodically(tmp_path):
    """``rdirdb serve --repair-interval``: each server repairs the volumes it holds with
    their other replicas, found in the registry."""
    url = f"file://{tmp_path}/registry.json"
    cluster = Cluster(tmp_path, 2, ("--registry", url, "--heartbeat", "0.2", "--repair-interval", "0.3"))
    try:
        with open_registry(url) as registry:
            registry.add_assignment(VOL, ["rdir-0", "rdir-1"])
        with cluster.alone(0) as c0:
            _push(c0, range(100))
            _delete(c0, list(range(0, 100, 10)))
            expected = _listing(c0)
        deadline = time.monotonic() + 30
        with cluster.alone(1) as c1:
            while time.monotonic() < deadline:
                try:
                    if _listing(c1) == expected:
                        break
                except Exception:  # not there yet
                    pass
                time.sleep(0.1)
            assert _listing(c1) == expected and len(expected) == 90
        logged = [line for s in cluster.servers for line in s.output().splitlines() if "repair of rawx volume" in line]
        assert logged and all(line.rstrip().endswith("}") and "{'" not in line for line in logged), logged
        report = json.loads(logged[0][logged[0].index("{"):])  # a JSON report, not a Python repr
        assert report["records_applied"] > 0
        # The command finds the replicas in the registry too.
        report = Cli().json("rdir", "repair", VOL, "--registry", url)
        assert report["replicas"] == cluster.hosts and report["differences"] == 0
    finally:
        cluster.close()


def test_a_round_purges_expired_tombstones(tmp_path):
    """Without a registry a round of the periodic task only purges."""
    with Store(tmp_path) as store:
        chunks = store.volume(VOL, create=True).chunks
        _push_local(chunks)
        assert chunks.stamps.tombstone_count() == 5
    time.sleep(0.01)
    assert repair_round(str(tmp_path), False, 3600, None, "127.0.0.1:1")["tombstones"] == 5
    figures = repair_round(str(tmp_path), False, 0.005, None, "127.0.0.1:1")
    assert figures == {"volumes": 1, "tombstones": 0, "repaired": 0, "applied": 0, "refused": 0, "failed": 0}


def _push_local(chunks) -> None:
    records = [_record(n) for n in range(10)]
    chunks.put_batch(records)
    chunks.delete_batch([(r["container_id"], r["chunk_id"]) for r in records[:5]])


def test_out_of_order_ranges_and_stamps_the_clock_cannot_follow_are_400(cluster):
    """A range whose end is below its start is a client mistake, on every route; an entry
    stamped so far ahead that the volume's clock would wrap past 2**64 (then stamp later
    writes older than it) is refused, and changes nothing."""
    s = cluster.servers[0]
    with cluster.alone(0) as c0:
        _push(c0, range(3))
    lo, hi = b64(b"\x01"), b64(b"\x00")
    for path, body in [("split", {"parts": 2, "ranges": [[lo, hi]]}), ("range", {"lo": lo, "hi": hi, "limit": 5})]:
        reply = s.request("POST", f"/v1/rdirdb/repair/{path}", {"vol": VOL}, json_body=body)
        assert reply.status == 400 and "below" in reply.json["message"], (path, reply.json)
    listed = s.request("POST", "/v1/rdirdb/repair/range", {"vol": VOL}, json_body={"lo": "", "limit": 10}).json
    key, _, value = listed["entries"][0]
    before = s.request("POST", "/v1/rdirdb/repair/digest", {"vol": VOL}, json_body={"bounds": [["", None]]}).json
    for stamp in [2**64 - 1, 2**63]:
        body = {"entries": [[key, stamp, b64(unb64(value, "v")[:-8] + stamp.to_bytes(8, "big"))]]}
        reply = s.request("POST", "/v1/rdirdb/repair/apply", {"vol": VOL}, json_body=body)
        assert reply.status == 400 and "2**63" in reply.json["message"], reply.json
    after = s.request("POST", "/v1/rdirdb/repair/digest", {"vol": VOL}, json_body={"bounds": [["", None]]}).json
    assert after == before
    # A stamp ahead of the clock, within the maximum skew, still leaves later writes newer than it.
    stamp = int((time.time() + 60) * 1000) << 16
    body = {"entries": [[key, stamp, b64(unb64(value, "v")[:-8] + stamp.to_bytes(8, "big"))]]}
    assert s.request("POST", "/v1/rdirdb/repair/apply", {"vol": VOL}, json_body=body).json == {"applied": 1}
    with cluster.alone(0) as c0:
        _push(c0, range(3, 4))
    stamps = [st for _, st, _ in s.request("POST", "/v1/rdirdb/repair/range", {"vol": VOL},
                                            json_body={"lo": "", "limit": 10}).json["entries"]]
    assert len(stamps) == 4 and sorted(stamps)[-2:] == [stamp, max(stamps)] and max(stamps) > stamp


@pytest.mark.parametrize("retention", ["-5", "0", "nan", "inf", "abc"])
def test_repair_refuses_a_retention_that_is_not_seconds(retention):
    """A retention of zero or less would leave every tombstone out (deletes would not
    converge); nan or inf used to end in a traceback."""
    proc = Cli()("rdir", "repair", VOL, "--hosts", "127.0.0.1:1,127.0.0.1:2", f"--retention={retention}")
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr, proc.stderr
    assert b"--retention: expected a number of seconds, more than zero" in proc.stderr, proc.stderr


@pytest.mark.parametrize("retention", [-5, 0, float("nan"), float("inf")])
def test_the_library_refuses_a_retention_that_is_not_seconds(tmp_path, retention):
    from rdirdb.errors import BadRequest
    from rdirdb.rdir.repair import LocalReplica, repair_volume

    with Store(str(tmp_path / "a")) as a, Store(str(tmp_path / "b")) as b:
        with pytest.raises(BadRequest, match="retention"):
            repair_volume([LocalReplica(a, VOL), LocalReplica(b, VOL)], retention=retention)
        with pytest.raises(BadRequest, match="retention"):
            Store(str(tmp_path / "c"), tombstone_retention=retention)


def test_repair_refuses_a_replica_listed_twice():
    proc = Cli()("rdir", "repair", VOL, "--hosts", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:1")
    assert proc.returncode == 1 and proc.stderr.decode().strip().endswith(
        "127.0.0.1:1 listed twice: each replica once"), proc.stderr


@pytest.mark.parametrize("status, content_type, body, message", [
    (200, "application/json", b"{}", "unexpected answer to /v1/rdirdb/repair/digest"),
    (200, "application/json", b"[]", "unexpected answer to /v1/rdirdb/repair/digest"),
    (200, "application/json", b'{"digests": "x"}', "unexpected answer to /v1/rdirdb/repair/digest"),
    (200, "application/json", b'{"digests": [[[1]]]}', "unexpected answer to /v1/rdirdb/repair/digest"),
    (501, "text/html", b"<html>\n<p>Unsupported method ('POST')</p>\n</html>\n",
     "<html> <p>Unsupported method ('POST')</p> </html> (HTTP 501)"),
])
def test_repair_against_a_server_that_is_not_rdirdb_fails_with_a_message(status, content_type, body, message):
    """What another HTTP server answers is reported with its host, never as a traceback or
    a Python bytes repr."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hosts = [f"127.0.0.1:{server.server_address[1]}" for server in servers]
        proc = Cli()("rdir", "repair", VOL, "--hosts", ",".join(hosts))
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err and "b'" not in err, err
    assert err.startswith(f"rdirdb rdir repair: {hosts[0]}: ") and message in err, err


def test_a_request_for_more_parts_than_a_repair_asks_is_400(cluster):
    """A small request must not make a server build a huge answer: split answers at most
    MAX_SPLIT_PARTS parts (ranges x parts), digest computes at most as many ranges."""
    from rdirdb.rdir.repair import MAX_SPLIT_PARTS

    s = cluster.servers[0]
    with cluster.alone(0) as c0:
        _push(c0, range(3))
    ranges = [["", None]] * (MAX_SPLIT_PARTS // 4096 + 1)
    reply = s.request("POST", "/v1/rdirdb/repair/split", {"vol": VOL}, json_body={"parts": 4096, "ranges": ranges})
    assert reply.status == 400 and f"at most {MAX_SPLIT_PARTS} parts" in reply.json["message"], reply.json
    bounds = [[""] * 4097] * (MAX_SPLIT_PARTS // 4096 + 1)
    reply = s.request("POST", "/v1/rdirdb/repair/digest", {"vol": VOL}, json_body={"bounds": bounds})
    assert reply.status == 400 and f"at most {MAX_SPLIT_PARTS} ranges" in reply.json["message"], reply.json
    reply = s.request("POST", "/v1/rdirdb/repair/split", {"vol": VOL},
                      json_body={"parts": 4096, "ranges": ranges[1:]})
    assert reply.status == 200 and len(reply.json["ranges"]) == len(ranges) - 1


def test_a_repair_with_many_parts_stays_within_a_request(tmp_path, monkeypatch):
    """repair_volume's requests stay within what the servers take, whatever ``parts``."""
    from rdirdb.rdir import repair as repair_module

    calls = []

    class Counting(repair_module.LocalReplica):
        def split(self, ranges, parts, cutoff):
            calls.append(len(ranges) * parts)
            return super().split(ranges, parts, cutoff)

    monkeypatch.setattr(repair_module, "MAX_SPLIT_PARTS", 8)
    with Store(str(tmp_path / "a")) as a, Store(str(tmp_path / "b")) as b:
        with RdirClient({"db_path": str(tmp_path / "a")}) as ca, RdirClient({"db_path": str(tmp_path / "b")}) as cb:
            _push(ca, range(3000))
            _push(cb, range(1500, 4500))
        report = repair_module.repair_volume([Counting(a, VOL), Counting(b, VOL)], parts=4, leaf=1)
        assert report.records_applied == 3000
        assert repair_module.repair_volume([Counting(a, VOL), Counting(b, VOL)]).records_moved == 0
        with pytest.raises(BadRequest, match="parts"):
            repair_module.repair_volume([Counting(a, VOL), Counting(b, VOL)], parts=4097)
    assert len(calls) > 2 and max(calls) <= 8
