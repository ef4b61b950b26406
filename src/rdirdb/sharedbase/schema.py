"""The PostgreSQL schema: creating it, and checking a database's version."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

from rdirdb.errors import SchemaVersionError

if TYPE_CHECKING:  # psycopg is optional: only PostgreSQL needs it
    import psycopg

SCHEMA_VERSION = 5  # winery's SharedBase.current_version in swh-objstorage 7.4.1
# The module name `swh db init objstorage:winery` records; winery's own test
# harness records the dotted form.
DB_MODULE = "objstorage:winery"
_KNOWN_MODULES = {DB_MODULE, "objstorage.backends.winery", "winery"}


def schema_sql() -> str:
    return resources.files(__package__).joinpath("schema.sql").read_text()


def init_schema(dsn: str) -> bool:
    """Create the schema in the (empty) database ``dsn``.

    Returns False, changing nothing, when it already holds the current
    schema; raises SchemaVersionError for any other version.
    """
    import psycopg

    with psycopg.connect(dsn) as conn:
        version = _stored_version(conn)
        if version is not None:
            check_version(conn)
            return False
        with conn.transaction():
            # One transaction: a failure leaves the database as it was.
            conn.execute(schema_sql())
            conn.execute("INSERT INTO dbmodule (dbmodule) VALUES (%s)", (DB_MODULE,))
            conn.execute(
                "INSERT INTO dbversion (version, release, description) VALUES (%s, now(), %s)",
                (SCHEMA_VERSION, "Created by rdirdb"),
            )
    return True


def _table_exists(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return row is not None and bool(row[0])


def _stored_version(conn: psycopg.Connection[Any]) -> int | None:
    """The newest version row, None when the database has no dbversion table."""
    if not _table_exists(conn, "dbversion"):
        return None
    row = conn.execute("SELECT version FROM dbversion ORDER BY version DESC LIMIT 1").fetchone()
    return row[0] if row else None


def check_version(conn: psycopg.Connection[Any]) -> None:
    """Raise SchemaVersionError unless ``conn``'s database holds schema version 5."""
    version = _stored_version(conn)
    if version is None:
        raise SchemaVersionError(
            "the database has no SharedBase schema (no version in dbversion); "
            "create it with `rdirdb sharedbase init DSN`"
        )
    exists = _table_exists(conn, "dbmodule")
    module = conn.execute("SELECT dbmodule FROM dbmodule LIMIT 1").fetchone() if exists else None
    if module is not None and module[0] not in _KNOWN_MODULES:
        raise SchemaVersionError(
            f"the database belongs to the swh module {module[0]!r}, not to winery's SharedBase"
        )
    if version != SCHEMA_VERSION:
        advice = (
            "upgrade it with winery's tooling (`swh db upgrade objstorage:winery`)"
            if version < SCHEMA_VERSION
            else "use a newer rdirdb"
        )
        raise SchemaVersionError(
            f"the database holds SharedBase schema version {version}, this rdirdb "
            f"supports version {SCHEMA_VERSION} only: {advice}"
        )
