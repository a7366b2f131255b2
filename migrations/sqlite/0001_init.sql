-- bootgate embedded store, schema 1.
-- Timestamps are INTEGER unix milliseconds; IPs and MACs are canonical text (`10.0.0.5`,
-- `52:54:00:ab:cd:ef`); enums are text whose CHECK lists mirror the Rust `text_enum!`
-- values (a unit test in src/store/sqlite.rs keeps them in step). Readable with `sqlite3`.

CREATE TABLE hosts (
    name    TEXT    NOT NULL PRIMARY KEY CHECK (name <> ''),
    state   TEXT    NOT NULL CHECK (state IN ('unknown', 'discovered', 'registered',
                        'provisioning', 'provisioned', 'configuring', 'ready', 'failed',
                        'maintenance')),
    source  TEXT    NOT NULL CHECK (source IN ('inventory', 'discovered')),
    ip      TEXT,
    rack    TEXT,
    role    TEXT    CHECK (role IS NULL OR role IN ('gpu', 'storage', 'control-plane', 'login',
                        'switch', 'gateway')),
    -- the full inventory entry (JSON); 'null' for discovered hosts
    spec    TEXT    NOT NULL CHECK (json_valid(spec)),
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL
) STRICT;

CREATE INDEX hosts_ip ON hosts (ip);

-- A MAC belongs to at most one host (the primary key); `position` keeps the declared order
-- so the first MAC stays first.
CREATE TABLE host_macs (
    mac      TEXT    NOT NULL PRIMARY KEY,
    host     TEXT    NOT NULL REFERENCES hosts (name) ON DELETE CASCADE ON UPDATE CASCADE,
    position INTEGER NOT NULL,
    UNIQUE (host, position)
) STRICT;

-- At most one lease per address: the IP is the key, commits use ON CONFLICT(ip).
-- `host` is a plain name, not a foreign key: a lease outlives its host's removal.
CREATE TABLE leases (
    ip         TEXT    NOT NULL PRIMARY KEY,
    mac        TEXT    NOT NULL,
    client_id  TEXT,
    state      TEXT    NOT NULL CHECK (state IN ('offered', 'active', 'released', 'expired',
                           'declined')),
    starts     INTEGER NOT NULL,
    ends       INTEGER NOT NULL,
    host       TEXT,
    subnet     TEXT    NOT NULL,
    giaddr     TEXT,
    circuit_id TEXT,
    remote_id  TEXT
) STRICT;

CREATE INDEX leases_mac ON leases (mac);
CREATE INDEX leases_subnet ON leases (subnet);
-- expire_leases scans live leases by end time
CREATE INDEX leases_state_ends ON leases (state, ends);

CREATE TABLE events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    time   INTEGER NOT NULL,
    -- Kinds are not listed here (unlike the other enums): new kinds arrive with new
    -- features, and an append-only table can't be rebuilt cheaply to widen a CHECK.
    kind   TEXT    NOT NULL CHECK (kind <> '' AND kind NOT GLOB '*[^a-z-]*'),
    ip     TEXT,
    mac    TEXT,
    host   TEXT,
    actor  TEXT    NOT NULL,
    detail TEXT    NOT NULL CHECK (json_valid(detail))
) STRICT;

CREATE INDEX events_ip ON events (ip);
CREATE INDEX events_mac ON events (mac);
CREATE INDEX events_host ON events (host);
CREATE INDEX events_time ON events (time);

-- The event log is the audit trail: rows are appended, never changed or removed.
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: UPDATE refused');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: DELETE refused');
END;
