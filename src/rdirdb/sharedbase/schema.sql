-- SharedBase schema, version 5: the database of winery (swh-objstorage 7.4.1).
-- Same types, tables, indexes and metadata tables, so winery's processes and
-- its `swh db` tooling can share a database created here.

CREATE TYPE shard_state AS ENUM (
    'standby', 'writing', 'full', 'packing', 'packed', 'cleaning', 'readonly', 'importing'
);

CREATE TABLE shards (
    id bigserial PRIMARY KEY,
    state shard_state NOT NULL DEFAULT 'standby',
    locker_ts timestamptz,
    locker uuid,
    name char(32) NOT NULL UNIQUE,
    mapped_on_hosts_when_packed text[] NOT NULL DEFAULT '{}',
    pool_name text NOT NULL
);

CREATE TYPE signature_state AS ENUM ('inflight', 'present', 'deleted');

CREATE TABLE signature2shard (
    signature bytea PRIMARY KEY,
    state signature_state NOT NULL DEFAULT 'inflight',
    shard bigint NOT NULL REFERENCES shards (id)
);

CREATE INDEX signature2shard_deleted ON signature2shard (signature, shard) WHERE state = 'deleted';
CREATE INDEX signature2shard_shard_state ON signature2shard (shard, state);

-- Template of the per-shard write tables winery's RWShard creates.
CREATE TABLE shard_template (
    key bytea PRIMARY KEY,
    content bytea
) WITH (autovacuum_enabled = FALSE);

-- swh.core's metadata tables, read by `swh db version` and `swh db upgrade`.
CREATE TABLE IF NOT EXISTS dbversion (
    version int PRIMARY KEY,
    release timestamptz,
    description text
);

CREATE TABLE IF NOT EXISTS dbmodule (
    dbmodule text,
    single_row char(1) PRIMARY KEY DEFAULT 'x',
    CHECK (single_row = 'x')
);
