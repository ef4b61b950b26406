"""The PostgreSQL schema (winery 7.4.1, version 5) and the version checks."""

import psycopg
import pytest

from rdirdb import SharedBase
from rdirdb.errors import SchemaVersionError
from rdirdb.sharedbase import SCHEMA_VERSION, init_schema


@pytest.fixture
def conn(pg_scratch_db):
    with psycopg.connect(pg_scratch_db, autocommit=True) as conn:
        yield conn


def column_types(conn, table):
    return conn.execute(
        "SELECT column_name, udt_name, is_nullable, column_default FROM information_schema.columns "
        "WHERE table_name = %s ORDER BY ordinal_position", (table,)).fetchall()


def test_schema_matches_winerys(conn, pg_scratch_db):
    assert init_schema(pg_scratch_db) is True
    labels = conn.execute(
        "SELECT t.typname, array_agg(e.enumlabel::text ORDER BY e.enumsortorder) FROM pg_enum e "
        "JOIN pg_type t ON t.oid = e.enumtypid GROUP BY t.typname ORDER BY 1").fetchall()
    assert labels == [
        ("shard_state", ["standby", "writing", "full", "packing", "packed", "cleaning", "readonly", "importing"]),
        ("signature_state", ["inflight", "present", "deleted"]),
    ]
    assert column_types(conn, "shards") == [
        ("id", "int8", "NO", "nextval('shards_id_seq'::regclass)"),
        ("state", "shard_state", "NO", "'standby'::shard_state"),
        ("locker_ts", "timestamptz", "YES", None),
        ("locker", "uuid", "YES", None),
        ("name", "bpchar", "NO", None),
        ("mapped_on_hosts_when_packed", "_text", "NO", "'{}'::text[]"),
        ("pool_name", "text", "NO", None),
    ]
    assert column_types(conn, "signature2shard") == [
        ("signature", "bytea", "NO", None),
        ("state", "signature_state", "NO", "'inflight'::signature_state"),
        ("shard", "int8", "NO", None),
    ]
    indexes = dict(conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'").fetchall())
    assert set(indexes) == {
        "shards_pkey", "shards_name_key", "signature2shard_pkey", "signature2shard_deleted",
        "signature2shard_shard_state", "shard_template_pkey", "dbversion_pkey", "dbmodule_pkey"}
    assert indexes["signature2shard_deleted"].endswith(
        "USING btree (signature, shard) WHERE (state = 'deleted'::signature_state)")
    assert indexes["signature2shard_shard_state"].endswith("USING btree (shard, state)")
    fkeys = conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE contype = 'f'").fetchall()
    assert fkeys == [("signature2shard_shard_fkey", "FOREIGN KEY (shard) REFERENCES shards(id)")]
    options = conn.execute("SELECT reloptions FROM pg_class WHERE relname = 'shard_template'").fetchone()
    assert options == (["autovacuum_enabled=false"],)
    assert conn.execute("SELECT version FROM dbversion").fetchall() == [(5,)]
    assert conn.execute("SELECT dbmodule FROM dbmodule").fetchall() == [("objstorage:winery",)]


def test_init_twice_changes_nothing(conn, pg_scratch_db):
    assert init_schema(pg_scratch_db) is True
    assert init_schema(pg_scratch_db) is False
    assert conn.execute("SELECT count(*) FROM dbversion").fetchone() == (1,)


def first_use(dsn: str) -> None:
    """Open a SharedBase and use it: the constructor does not touch the database."""
    with SharedBase(dsn) as base:
        base.get_shard_state("nothing")


def test_constructor_does_not_connect():
    with SharedBase("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2") as base:
        with pytest.raises(psycopg.OperationalError):
            base.contains(b"x" * 32)


def test_empty_database_is_refused(conn, pg_scratch_db):
    with pytest.raises(SchemaVersionError, match="rdirdb sharedbase init"):
        first_use(pg_scratch_db)


@pytest.mark.parametrize("version, advice", [(4, "swh db upgrade"), (6, "newer rdirdb")])
def test_other_versions_are_refused(conn, pg_scratch_db, version, advice):
    init_schema(pg_scratch_db)
    conn.execute("INSERT INTO dbversion (version, release) VALUES (%s, now())", (version,))
    if version < SCHEMA_VERSION:
        conn.execute("DELETE FROM dbversion WHERE version = 5")
    with pytest.raises(SchemaVersionError, match=rf"schema version {version}, .* version 5 only: .*{advice}"):
        first_use(pg_scratch_db)
    with pytest.raises(SchemaVersionError):
        init_schema(pg_scratch_db)


def test_database_of_another_module_is_refused(conn, pg_scratch_db):
    init_schema(pg_scratch_db)
    conn.execute("UPDATE dbmodule SET dbmodule = 'storage'")
    with pytest.raises(SchemaVersionError, match="swh module 'storage'"):
        first_use(pg_scratch_db)


def test_lmdb_of_another_version_is_refused(tmp_path):
    from rdirdb import Environment

    with SharedBase(f"lmdb://{tmp_path}"):
        pass
    with Environment(str(tmp_path), databases=("meta",)) as env, env.begin(write=True) as txn:
        txn.put(b"version", b"4", db="meta")
    with pytest.raises(SchemaVersionError, match="version 4, .* version 5 only"):
        SharedBase(f"lmdb://{tmp_path}")


@pytest.mark.parametrize("dsn", ["lmdb://host/path", "lmdb:"])
def test_bad_lmdb_dsn(dsn):
    with pytest.raises(ValueError, match="lmdb:///absolute/path"):
        SharedBase(dsn)


def test_unknown_dsn_scheme_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown SharedBase DSN scheme 'mysql' .*postgresql://.*lmdb:///"):
        SharedBase("mysql://x")


def test_postgresql_without_psycopg_names_the_extra():
    """In a fresh interpreter where psycopg cannot be imported."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from rdirdb import SharedBase\n"
        "try:\n"
        "    SharedBase('postgresql://db/winery')\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'rdirdb[pg]'" in out and "psycopg" in out
