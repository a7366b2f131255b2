-- Schema 2: one heartbeat row per gateway (RFC 3074 load balancing, src/ha.rs). `seen` is
-- the PostgreSQL server's clock in unix milliseconds, so the gateways' clocks never matter.
-- Not an audit record: rows are overwritten every heartbeat.
CREATE TABLE gateways (
    id   TEXT   NOT NULL PRIMARY KEY CHECK (id <> ''),
    seen BIGINT NOT NULL
);
