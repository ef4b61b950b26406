"""The remote client over several rdir servers: replicas, quorum, copies (§6, §9.5)."""

from __future__ import annotations

import signal
import subprocess

import pytest

from rdirdb.rdir.client import RdirClient
from rdirdb.errors import OioException, OioNetworkException
from tests.server.helpers import Server

from .conftest import entry, make_meta2_record, make_record


@pytest.fixture
def servers(tmp_path):
    started = []
    for i in range(3):
        db = tmp_path / f"rdir-{i}"
        db.mkdir()
        started.append(Server(str(db), workers=1))
    for server in started:
        server.wait_ready()
    yield [f"{s.host}:{s.port}" for s in started], started
    for server in started:
        kill(server)


def kill(server: Server) -> None:
    """SIGKILL a server and its worker processes, as a crashed host would lose them."""
    subprocess.run(["pkill", "-KILL", "-P", str(server.proc.pid)], check=False)
    server.stop(signal.SIGKILL)


def fetch(client, vol, **kwargs):
    return sorted(client.chunk_fetch(vol, **kwargs))


def test_one_replica_down(servers, vol):
    hosts, procs = servers
    with RdirClient({"rdir_hosts": hosts}) as client:
        records = [make_record() for _ in range(20)]
        client.chunk_push_batch(vol, records, create=True)
        kill(procs[0])
        # Reads try the replicas one after another.
        assert fetch(client, vol) == sorted(entry(r) for r in records)
        assert client.status(vol)["chunk"] == {"total": 20}
        # Writes need write_quorum answers out of three.
        more = make_record()
        client.chunk_push_batch(vol, [more], write_quorum=2)
        with pytest.raises(OioNetworkException):
            client.chunk_push_batch(vol, [make_record()], write_quorum=3)
        assert entry(more) in fetch(client, vol)
        # The default quorum (1) also holds with one replica down.
        client.chunk_delete(vol, more["container_id"], more["content_id"], more["chunk_id"])
        assert entry(more) not in fetch(client, vol, rdir_hosts=hosts[1:2])
        assert entry(more) not in fetch(client, vol, rdir_hosts=hosts[2:3])


def test_every_replica_down_is_a_network_error(servers, vol):
    hosts, procs = servers
    with RdirClient({"rdir_hosts": hosts}) as client:
        client.create(vol)
        for proc in procs:
            kill(proc)
        with pytest.raises(OioNetworkException):
            fetch(client, vol, max_attempts=1)
        with pytest.raises(OioNetworkException):
            client.chunk_push_batch(vol, [make_record()])


def test_chunk_copy_vol_moves_every_record(servers, vol):
    (a, b, c), _ = servers
    with RdirClient({"rdir_hosts": [a]}) as client:
        records = [make_record(mtime=i) for i in range(2500)]
        client.chunk_push_batch(vol, records, create=True)
        client.admin_incident_set(vol, 1234)
        client.admin_lock(vol, "rebuilder")
        with pytest.raises(OioException, match="No source"):
            client.chunk_copy_vol(vol, dests=[a])  # the sources less the destinations
        copied = client.chunk_copy_vol(vol, dests=[b, c], batch_size=1000)
        assert copied == 2500
        for host in (b, c):
            assert fetch(client, vol, rdir_hosts=[host]) == fetch(client, vol)
            assert client.admin_show(vol, rdir_hosts=[host]) == {"incident_date": "1234", "lock": "rebuilder"}


def test_meta2_copy_vol(servers, vol):
    (a, b, _), _ = servers
    with RdirClient({"rdir_hosts": [a]}) as client:
        for _ in range(16):
            rec = make_meta2_record()
            client.meta2_index_push(vol, rec["container_url"], rec["container_id"], rec["mtime"])
        assert client.meta2_copy_vol(vol, dests=[b], batch_size=5) == 16
        assert client.meta2_index_fetch_all(vol, rdir_hosts=[b]) == client.meta2_index_fetch_all(vol)
        with pytest.raises(OioException, match="No source"):
            client.meta2_copy_vol(vol, sources=[b], dests=[b])


def test_copy_needs_the_remote_mode(tmp_path, vol):
    with RdirClient({"db_path": str(tmp_path)}) as client:
        client.create(vol)
        with pytest.raises(OioException, match="remote mode"):
            client.chunk_copy_vol(vol, dests=["127.0.0.1:1"])


def test_a_request_finishing_after_close_keeps_no_connection(servers, vol):
    """A replica's write still in flight when the client closes (a failed quorum
    does not wait for it) closes its connection when it ends: no socket is left
    to the garbage collector."""
    from rdirdb.rdir.remote import RemoteBackend

    (a, _, _), _ = servers
    backend = RemoteBackend(rdir_hosts=[a])
    backend.create(vol, "rawx")
    backend.close()
    pool = backend._pool(a)  # what the in-flight request reaches
    status, _, _ = pool.request("GET", f"/v1/rdir/status?vol={vol}", None, {})
    assert status == 200
    assert pool.closed and pool._idle == []
