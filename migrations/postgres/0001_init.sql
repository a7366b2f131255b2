-- bootgate shared store (PostgreSQL), schema 1: the same tables, keys and rules as
-- migrations/sqlite/0001_init.sql, so both backends pass one contract battery.
-- Timestamps are BIGINT unix milliseconds; IPs and MACs are canonical text (`10.0.0.5`,
-- `52:54:00:ab:cd:ef`), parsed into typed values by src/store/postgres.rs; enums are text
-- whose CHECK lists mirror the Rust `text_enum!` values (a test keeps them in step).
-- JSON columns are `json`, not `jsonb`: the audit trail keeps exactly what was written.

CREATE TABLE hosts (
    name    TEXT   NOT NULL PRIMARY KEY CHECK (name <> ''),
    state   TEXT   NOT NULL CHECK (state IN ('unknown', 'discovered', 'registered',
                       'provisioning', 'provisioned', 'configuring', 'ready', 'failed',
                       'maintenance')),
    source  TEXT   NOT NULL CHECK (source IN ('inventory', 'discovered')),
    ip      TEXT,
    rack    TEXT,
    role    TEXT   CHECK (role IS NULL OR role IN ('gpu', 'storage', 'control-plane', 'login',
                       'switch', 'gateway')),
    -- the full inventory entry; JSON null for discovered hosts
    spec    JSON   NOT NULL,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL
);

CREATE INDEX hosts_ip ON hosts (ip);

-- A MAC belongs to at most one host (the primary key); `position` keeps the declared order
-- so the first MAC stays first.
CREATE TABLE host_macs (
    mac      TEXT   NOT NULL PRIMARY KEY,
    host     TEXT   NOT NULL REFERENCES hosts (name) ON DELETE CASCADE ON UPDATE CASCADE,
    position BIGINT NOT NULL,
    UNIQUE (host, position)
);

-- At most one lease per address: the IP is the key, commits use ON CONFLICT (ip) with a
-- WHERE that refuses an address another MAC still holds (see write_lease in postgres.rs).
-- `host` is a plain name, not a foreign key: a lease outlives its host's removal.
CREATE TABLE leases (
    ip         TEXT   NOT NULL PRIMARY KEY,
    mac        TEXT   NOT NULL,
    client_id  TEXT,
    state      TEXT   NOT NULL CHECK (state IN ('offered', 'active', 'released', 'expired',
                          'declined')),
    starts     BIGINT NOT NULL,
    ends       BIGINT NOT NULL,
    host       TEXT,
    subnet     TEXT   NOT NULL,
    giaddr     TEXT,
    circuit_id TEXT,
    remote_id  TEXT
);

CREATE INDEX leases_mac ON leases (mac);
CREATE INDEX leases_subnet ON leases (subnet);
-- expire_leases scans live leases by end time
CREATE INDEX leases_state_ends ON leases (state, ends);

CREATE TABLE events (
    id     BIGSERIAL PRIMARY KEY,
    time   BIGINT NOT NULL,
    -- Kinds are not listed here (unlike the other enums): new kinds arrive with new
    -- features, and an append-only table can't be rebuilt cheaply to widen a CHECK.
    kind   TEXT   NOT NULL CHECK (kind ~ '^[a-z-]+$'),
    ip     TEXT,
    mac    TEXT,
    host   TEXT,
    actor  TEXT   NOT NULL,
    detail JSON   NOT NULL
);

CREATE INDEX events_ip ON events (ip);
CREATE INDEX events_mac ON events (mac);
CREATE INDEX events_host ON events (host);
CREATE INDEX events_time ON events (time);

-- The event log is the audit trail: rows are appended, never changed or removed.
CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER events_no_change BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();

-- Row triggers do not fire for TRUNCATE: refuse it too.
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();
