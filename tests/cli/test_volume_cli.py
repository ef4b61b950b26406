"""``rdirdb volume ...`` end to end: on a store, and on real rdir servers."""

from __future__ import annotations

import json

import pytest

from rdirdb.rdir.registry import Service, open_registry
from tests.server.helpers import Server

VOL = "127.0.0.1:6200"


def chunks(n: int, start: int = 0) -> list[dict]:
    return [
        {"container_id": f"{i % 3:064X}", "content_id": f"{i:032X}", "chunk_id": f"{i:064X}",
         "mtime": 1000 + i, "path": f"obj/{i}", "version": i % 2}
        for i in range(start, start + n)
    ]


def jsonl(records: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def key(record: dict) -> tuple:
    return record["container_id"], record["chunk_id"]


def fetch_all(cli, *target: object, volume: str = VOL, extra: tuple = ()) -> list[dict]:
    proc = cli("volume", "fetch", volume, *target, *extra, "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    return [json.loads(line) for line in proc.stdout.splitlines()]


def ok(proc) -> str:
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def failed(proc, code: int = 1) -> str:
    """The command failed with ``code``; its one-line error (exit 1) or usage (exit 2)."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.decode()
    if code == 1:
        assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture
def store(tmp_path):
    return ("--db-path", tmp_path / "store")


def test_create_push_fetch(cli, store, tmp_path):
    assert cli.json("volume", "create", VOL, "other", *store)["volumes"] == [
        {"volume": VOL, "type": "rawx", "status": "created"}, {"volume": "other", "type": "rawx", "status": "created"}]
    records = chunks(25)
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl(records[:20]) + b"\n")  # a blank line is skipped
    assert cli.json("volume", "push", VOL, *store, "-i", path, "--batch-size", "7") == {"volume": VOL, "records": 20}
    # from stdin; omitted fields take the reference's defaults
    partial = {k: records[20][k] for k in ("container_id", "content_id", "chunk_id")}
    ok(cli("volume", "push", VOL, *store, input=jsonl([partial] + records[21:])))
    records[20].update(mtime=0, path="", version=0)

    got = fetch_all(cli, *store)
    assert got == sorted(records, key=key)
    # the table has one row per record
    table = ok(cli("volume", "fetch", VOL, *store)).splitlines()
    assert table[0].split()[:3] == ["CONTAINER", "ID", "CONTENT"] and len(table) == 26

    # --limit and --marker page through the listing; the next marker goes to stderr
    proc = cli("volume", "fetch", VOL, *store, "--limit", "10", "--json")
    first = [json.loads(line) for line in ok(proc).splitlines()]
    assert first == got[:10]
    marker = f"{got[9]['container_id']}|{got[9]['chunk_id']}"
    assert marker in proc.stderr.decode()
    assert fetch_all(cli, *store, extra=("--marker", marker)) == got[10:]
    assert fetch_all(cli, *store, extra=("--limit", "100")) == got
    prefix = f"{1:064X}"
    assert fetch_all(cli, *store, extra=("--prefix", prefix)) == [r for r in got if r["container_id"] == prefix]

    # fetch --json | push copies a volume
    ok(cli("volume", "push", "copy", *store, "--create", input=b"".join(
        json.dumps(r).encode() + b"\n" for r in got)))
    assert fetch_all(cli, *store, volume="copy") == got


def test_push_errors(cli, store, tmp_path):
    ok(cli("volume", "create", VOL, *store))
    bad = jsonl(chunks(3)) + b"{not json\n" + jsonl(chunks(2, 3))
    err = failed(cli("volume", "push", VOL, *store, "--batch-size", "2", input=bad))
    assert "line 4: not valid JSON (" in err and "nothing was pushed" in err
    assert fetch_all(cli, *store) == []
    err = failed(cli("volume", "push", VOL, *store, "--batch-size", "2", "--stream", input=bad))
    assert "line 4: not valid JSON (" in err and "2 records pushed before the error" in err
    assert len(fetch_all(cli, *store)) == 2
    err = failed(cli("volume", "push", VOL, *store, input=b'{"chunk_id": "x"}\n'))
    assert "line 1: missing fields container_id, content_id" in err
    assert "line 1: not a JSON object" in failed(cli("volume", "push", VOL, *store, input=b"[1]\n"))
    err = failed(cli("volume", "meta2", "push", "m2", *store, input=b'{"mtime": 1}\n'))
    assert "line 1: missing field container_url" in err
    for err in (err, *(failed(cli("volume", "push", VOL, *store, input=line)) for line in (b"{x\n", b"{}\n"))):
        assert not any(word in err for word in ("Error(", "KeyError", "(HTTP", "Traceback")), err
    # the volume must exist unless --create
    assert "not found" in failed(cli("volume", "push", "new", *store, input=jsonl(chunks(1)))).lower()
    assert cli.json("volume", "push", "new", *store, "--create", input=jsonl(chunks(1)))["records"] == 1
    err = failed(cli("volume", "push", VOL, *store, "-i", tmp_path / "missing.jsonl"))
    assert f"{tmp_path / 'missing.jsonl'}: No such file or directory" in err and "Errno" not in err
    assert "argument --batch-size" in failed(cli("volume", "push", VOL, *store, "--batch-size", "0", input=b""), 2)


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_push_is_all_or_nothing(cli, store, tmp_path, source):
    """A bad line 1,501 used to leave the first batches written."""
    ok(cli("volume", "create", VOL, *store))
    records = chunks(2000)
    lines = jsonl(records).splitlines(keepends=True)
    lines[1500] = b'{"container_id": "A|B", "content_id": "C", "chunk_id": "D"}\n'  # the engine refuses '|'
    data = b"".join(lines)
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    args = ("-i", path) if source == "file" else ()
    err = failed(cli("volume", "push", VOL, *store, *args, input=None if args else data))
    assert "line 1501: container_id contains '|'" in err and "nothing was pushed" in err
    assert fetch_all(cli, *store) == []
    # --stream writes the batches before the bad one, and says so
    err = failed(cli("volume", "push", VOL, *store, "--stream", *args, input=None if args else data))
    assert "line 1501" in err and "1,000 records pushed before the error" in err
    assert len(fetch_all(cli, *store)) == 1000
    # a good input: every record, read twice (checked, then pushed)
    del lines[1500]
    assert cli.json("volume", "push", VOL, *store, input=b"".join(lines))["records"] == 1999
    assert len(fetch_all(cli, *store)) == 1999


def test_status_incident_lock_clear(cli, store):
    ok(cli("volume", "push", VOL, *store, "--create", input=jsonl(chunks(12))))
    status = cli.json("volume", "status", VOL, *store)
    assert status == {"chunk": {"total": 12}, "container": {f"{i:064X}": {"total": 4} for i in range(3)}}

    assert cli.json("volume", "incident", "get", VOL, *store)["volumes"] == [{"volume": VOL, "incident_date": 0}]
    assert cli.json("volume", "incident", "set", VOL, *store, "--date", "1004")["volumes"][0]["incident_date"] == 1004
    status = cli.json("volume", "status", VOL, *store)
    assert status["chunk"] == {"total": 12, "to_rebuild": 5}
    table = ok(cli("volume", "status", VOL, *store)).splitlines()
    assert table[0].split() == ["CONTAINER", "CHUNKS", "TO", "REBUILD"] and table[-1].split() == ["(all)", "12", "5"]
    rebuild = fetch_all(cli, *store, extra=("--rebuild",))
    assert sorted(r["mtime"] for r in rebuild) == list(range(1000, 1005))

    ok(cli("volume", "lock", VOL, *store, "--who", "rebuilder"))
    ok(cli("volume", "lock", VOL, *store, "--key", "rebuilder"))  # same owner: idempotent
    assert "locked" in failed(cli("volume", "lock", VOL, *store, "--who", "other")).lower()
    assert cli.json("volume", "show", VOL, *store)["volumes"][0]["admin"] == {
        "incident_date": "1004", "lock": "rebuilder"}
    assert "lock=rebuilder" in ok(cli("volume", "show", VOL, *store))
    # clear is forbidden while another owner holds the lock
    failed(cli("volume", "clear", VOL, *store, "--before-incident"))
    ok(cli("volume", "unlock", VOL, *store))
    assert cli.json("volume", "show", VOL, *store)["volumes"][0]["admin"] == {"incident_date": "1004"}

    cleared = cli.json("volume", "clear", VOL, *store, "--before-incident")["volumes"][0]
    assert cleared == {"volume": VOL, "removed": 5, "repaired": 0, "errors": 0}
    assert cli.json("volume", "incident", "get", VOL, *store)["volumes"][0]["incident_date"] == 0
    assert len(fetch_all(cli, *store)) == 7
    assert cli.json("volume", "clear", VOL, *store, "--all", "--repair")["volumes"][0]["removed"] == 7
    assert fetch_all(cli, *store) == []
    # incident set without --date: now
    assert cli.json("volume", "incident", "set", VOL, *store)["volumes"][0]["incident_date"] > 1_700_000_000


def test_meta2(cli, store):
    records = [{"container_url": f"NS/acct/c{i}", "mtime": i, "extra_data": None} for i in range(12)]
    assert cli.json("volume", "meta2", "push", "m2", *store, "--batch-size", "5",
                    input=jsonl(records))["records"] == 12
    proc = cli("volume", "meta2", "fetch", "m2", *store, "--json")
    got = [json.loads(line) for line in ok(proc).splitlines()]
    assert [r["container_url"] for r in got] == sorted(r["container_url"] for r in records)
    from rdirdb.rdir.client import cid_from_name

    assert got[0]["container_id"] == cid_from_name("acct", "c0")
    proc = cli("volume", "meta2", "fetch", "m2", *store, "--limit", "3", "--json")
    assert [json.loads(line) for line in ok(proc).splitlines()] == got[:3]
    assert json.loads(proc.stderr) == {"next_marker": "NS/acct/c10"}
    proc = cli("volume", "meta2", "fetch", "m2", *store, "--limit", "3")
    assert proc.stderr.decode() == "more records follow: --marker NS/acct/c10\n"
    # no value is '-', as in the other tables
    table = ok(cli("volume", "meta2", "fetch", "m2", *store)).splitlines()
    assert table[1].split()[-1] == "-" and "None" not in "\n".join(table)
    proc = cli("volume", "meta2", "fetch", "m2", *store, "--marker", "NS/acct/c10", "--prefix", "NS/acct/c1", "--json")
    assert [json.loads(line)["container_url"] for line in ok(proc).splitlines()] == ["NS/acct/c11"]

    ok(cli("volume", "meta2", "delete", "m2", *store, "--container-url", "NS/acct/c0"))
    ok(cli("volume", "meta2", "delete", "m2", *store, "--container-id", cid_from_name("acct", "c1")))
    table = ok(cli("volume", "meta2", "fetch", "m2", *store)).splitlines()
    assert len(table) == 11 and "NS/acct/c0 " not in "\n".join(table) and "NS/acct/c1 " not in "\n".join(table)
    failed(cli("volume", "meta2", "delete", "m2", *store), 2)
    ok(cli("volume", "create", "empty", "--type", "meta2", *store))
    assert ok(cli("volume", "meta2", "fetch", "empty", *store)).split() == ["CONTAINER", "URL", "CONTAINER", "ID",
                                                                           "MTIME", "EXTRA", "DATA"]
    assert "line 1" in failed(cli("volume", "meta2", "push", "m2", *store, input=b'{"container_url": "bad"}\n'))


def test_targets_and_usage(cli, store, tmp_path):
    assert "no store" in failed(cli("volume", "fetch", VOL, "--db-path", tmp_path / "missing"))
    ok(cli("volume", "create", VOL, *store))
    assert "not found" in failed(cli("volume", "fetch", "nope", *store)).lower()
    failed(cli("volume", "fetch", VOL), 2)  # no target
    failed(cli("volume", "fetch", VOL, *store, "--rdir-hosts", "127.0.0.1:1"), 2)  # two targets
    failed(cli("volume", "fetch", VOL, "--rdir-hosts", ","), 2)
    assert "not HOST:PORT" in failed(cli("volume", "fetch", VOL, "--rdir-hosts", "localhost"))
    # a volume of several that fails is named, with those done before it
    err = failed(cli("volume", "lock", VOL, "nope", *store, "--who", "me"))
    assert "'nope'" in err and f"done before: {VOL}" in err
    failed(cli("volume"), 2)
    failed(cli("volume", "incident"), 2)
    failed(cli("volume", "lock", VOL, *store), 2)  # no --who
    for limit in ("-1", "0", "x"):
        err = failed(cli("volume", "fetch", VOL, *store, "--limit", limit), 2)
        assert "argument --limit: expected a number of records, at least 1" in err and "None" not in err
    # a server that is not there: a network error, exit 1
    failed(cli("volume", "show", VOL, "--rdir-hosts", "127.0.0.1:1"))


COMMANDS = [("create",), ("push",), ("fetch",), ("status",), ("incident", "get"), ("incident", "set"), ("lock",),
            ("unlock",), ("show",), ("clear",), ("meta2", "push"), ("meta2", "fetch"), ("meta2", "delete")]


def help_text(capsys, *argv: str) -> str:
    """``rdirdb ARGV --help`` in process (the subprocess path is tested once per group)."""
    from rdirdb.cli import build_parser

    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args([*argv, "--help"])
    assert exit.value.code == 0
    return capsys.readouterr().out


def test_help(cli, capsys):
    assert "incident" in ok(cli("volume", "--help")) and "COMMAND" in ok(cli("volume", "meta2", "--help"))
    for command in COMMANDS:
        out = help_text(capsys, "volume", *command)
        assert all(flag in out for flag in ("--db-path", "--rdir-hosts", "--registry", "--json")), command


def test_remote(cli, tmp_path):
    """The same commands on two rdir servers: --rdir-hosts writes to both, --registry finds them."""
    servers = []
    try:
        for i in range(2):
            (tmp_path / f"db{i}").mkdir()
            servers.append(Server(str(tmp_path / f"db{i}")))
        for server in servers:
            server.wait_ready()
        hosts = [f"{s.host}:{s.port}" for s in servers]
        both = ("--rdir-hosts", ",".join(hosts))
        records = chunks(30)
        ok(cli("volume", "create", VOL, *both))
        assert cli.json("volume", "push", VOL, *both, "--batch-size", "8", input=jsonl(records))["records"] == 30
        for host in hosts:  # every replica has every record
            assert fetch_all(cli, "--rdir-hosts", host) == sorted(records, key=key)
        ok(cli("volume", "incident", "set", VOL, *both, "--date", "1009"))
        assert cli.json("volume", "status", VOL, "--rdir-hosts", hosts[1])["chunk"] == {"total": 30, "to_rebuild": 10}

        url = f"file://{tmp_path}/registry.json"
        with open_registry(url) as registry:
            for i, host in enumerate(hosts):
                registry.register(Service("rdir", f"rdir-{i}", host))
            registry.replace_assignment(VOL, ["rdir-1"])
        assert len(fetch_all(cli, "--registry", url, extra=("--rebuild",))) == 10
        assert cli.json("volume", "clear", VOL, "--registry", url, "--all")["volumes"][0]["removed"] == 30
        assert fetch_all(cli, "--rdir-hosts", hosts[1]) == [] and len(fetch_all(cli, "--rdir-hosts", hosts[0])) == 30
        assert "no rdir" in failed(cli("volume", "show", "unassigned", "--registry", url)).lower()
        assert "(HTTP 404)" in failed(cli("volume", "show", "unknown", "--rdir-hosts", hosts[0]))  # a server's answer

        ok(cli("volume", "meta2", "push", "m2", *both, input=b'{"container_url": "NS/a/c"}\n'))
        out = ok(cli("volume", "meta2", "fetch", "m2", "--rdir-hosts", hosts[1]))
        assert "NS/a/c" in out
    finally:
        for server in servers:
            server.stop()


def test_errors_are_json_with_json_and_words_without(cli, store):
    ok(cli("volume", "create", VOL, *store))
    proc = cli("volume", "show", "nope", *store, "--json")
    assert proc.returncode == 1 and proc.stdout == b""
    error = json.loads(proc.stderr)
    assert error["command"] == "volume show" and error["error"].startswith("volume 'nope': ")
    assert "(HTTP" not in error["error"]  # an embedded store: no HTTP
    proc = cli("volume", "fetch", VOL, *store, "--limit", "0", "--json")  # a usage error
    assert proc.returncode == 2 and proc.stdout == b""
    error = json.loads(proc.stderr)
    assert error["command"] == "volume fetch" and error["error"].startswith("argument --limit: ")
    proc = cli("volume", "push", VOL, *store, "--json", input=b"{oops\n")
    assert json.loads(proc.stderr)["error"].startswith("line 1: not valid JSON (")
    # without --json: one line of text
    assert failed(cli("volume", "show", "nope", *store)).startswith("rdirdb volume show: volume 'nope': ")


def test_output_closed_early_stops_quietly(cli, tmp_path):
    """``rdirdb ... | head``: no 'Broken pipe' message nor traceback, exit 141 as Unix tools."""
    import subprocess

    from rdirdb.rdir.store import Store
    from tests.entry_point import rdirdb_command, rdirdb_env

    store_path = tmp_path / "store"
    with Store(store_path) as st:
        st.volume(VOL, create=True).chunks.put_batch([tuple(r.values()) for r in chunks(30_000)])
    for argv in (("volume", "fetch", VOL), ("volume", "fetch", VOL, "--json"), ("export",)):
        head = subprocess.Popen(["head", "-n", "2"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        proc = subprocess.run(rdirdb_command(*argv, "--db-path", store_path), stdout=head.stdin,
                              stderr=subprocess.PIPE, env=rdirdb_env(), timeout=120)
        head.stdin.close()
        with head.stdout:
            assert len(head.stdout.read().splitlines()) == 2
        head.wait(timeout=30)
        assert (proc.returncode, proc.stderr) == (141, b""), argv
