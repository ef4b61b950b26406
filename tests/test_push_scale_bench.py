"""benches/push_scale.py still runs, alone and next to a peer server given by its binary
(here a stand-in that takes the C server's command line and serves with rdirdb); no timing
is checked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from rdirdb.rdir.store import Store

BENCHES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benches")
PUSH_SCALE = os.path.join(BENCHES, "push_scale.py")
sys.path.append(BENCHES)  # after the package: no bench module shadows it
import push_scale  # noqa: E402

needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, PUSH_SCALE, "--records", "3000", "--rounds", "1", "--seconds", "1",
                           "--batches", "2", "--workers", "1", *args], capture_output=True, text=True, timeout=300)


def stand_in_peer(tmp_path) -> str:
    """An executable that reads oio-rdir-server's arguments (``-q``, ``-O SysConfig=off``,
    ``-O Config=FILE`` naming the namespace, then the server's own configuration file)
    and serves their volume directory with rdirdb."""
    path = tmp_path / "oio-rdir-server"
    path.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import configparser, os, sys
        args = sys.argv[1:]
        assert args[:3] == ["-q", "-O", "SysConfig=off"], args
        assert args[3] == "-O" and args[4].startswith("Config="), args
        ns = configparser.ConfigParser()
        ns.read(args[4][len("Config="):])
        conf = configparser.ConfigParser()
        conf.read(args[5])
        server = conf["rdir-server"]
        assert ns.has_section(server["namespace"]), (ns.sections(), server["namespace"])
        os.execv(sys.executable, [sys.executable, "-m", "rdirdb.server", "--db-path", server["db_path"],
                                  "--bind", server["bind_addr"] + ":" + server["bind_port"],
                                  "--service-id", server["service_id"], "--workers", "1", "--no-fsync"])
        """))
    path.chmod(0o755)
    return str(path)


@needs_wrk
def test_push_scale_alone_says_where_the_c_figures_come_from(tmp_path):
    out = run("--db", str(tmp_path / "db"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "single, 8 connections" in out.stdout and "batch records" in out.stdout
    assert "not in this run: give --peer-binary" in out.stdout
    with Store(tmp_path / "db", readonly=True) as store:
        assert store.volume("vol").chunks.count() >= 3000


@needs_wrk
def test_push_scale_runs_a_peer_on_the_same_records(tmp_path):
    peer = stand_in_peer(tmp_path)
    db = tmp_path / "db"
    out = run("--db", str(db), "--peer-binary", peer)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "C server: filled 3,000 random records over HTTP" in out.stdout
    assert "round 1, C server: single pushes to vol,  8 connections" in out.stdout
    assert "The C server ran in this run" in out.stdout
    assert "C server, single pushes, 64 connections: 3,000-record volume / empty volume" in out.stdout
    # The peer's volume holds the same records as rdirdb's (plus the measured pushes of each).
    cid, _, chunk, *_ = next(push_scale.fill_batches(3000))[0]
    with Store(db, readonly=True) as ours, Store(db / "oio-rdir", readonly=True) as theirs:
        for store in (ours, theirs):
            records, _, _ = store.volume("vol").chunks.fetch(prefix=cid)
            assert [r[2] for r in records] == [chunk]
            assert store.volume("vol").chunks.count() >= 3000
    # A second run finds both volumes filled.
    out = run("--db", str(db), "--peer-binary", peer)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "the C server's volume of 3,000 records already in" in out.stdout


def test_push_scale_refuses_a_peer_binary_that_cannot_run(tmp_path):
    out = run("--db", str(tmp_path / "db"), "--peer-binary", str(tmp_path / "missing"))
    assert out.returncode != 0
    assert f"--peer-binary {tmp_path / 'missing'}: not an executable file" in out.stderr
    assert not (tmp_path / "db").exists()
