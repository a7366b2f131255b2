-- Retention (issue 15): the event log keeps a bounded past, and discovered hosts expire.
-- The same rules as migrations/sqlite/20261207000001_retention.sql: the log stays
-- append-only above `event_horizon.below_id`; only rows below it may be deleted, and the
-- horizon only moves forward. Two gateways may both prune: each batch moves the horizon
-- with GREATEST() under the horizon row's lock, so the second finds nothing left to do.
CREATE TABLE event_horizon (
    one          INTEGER NOT NULL PRIMARY KEY CHECK (one = 1),
    below_id     BIGINT  NOT NULL CHECK (below_id >= 0),
    pruned_total BIGINT  NOT NULL CHECK (pruned_total >= 0),
    pruned_at    BIGINT
);

INSERT INTO event_horizon (one, below_id, pruned_total, pruned_at) VALUES (1, 0, 0, NULL);

CREATE FUNCTION event_horizon_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.below_id >= OLD.below_id THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the event horizon only moves forward: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER event_horizon_forward BEFORE UPDATE OR DELETE ON event_horizon
    FOR EACH ROW EXECUTE FUNCTION event_horizon_forward();

-- UPDATE stays refused; DELETE only below the horizon (TRUNCATE keeps events_no_truncate).
CREATE FUNCTION events_prune_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.id < (SELECT below_id FROM event_horizon WHERE one = 1) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'events are append-only: % refused above the retention horizon', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

DROP TRIGGER events_no_change ON events;

CREATE TRIGGER events_no_change BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_prune_only();

CREATE INDEX hosts_source_updated ON hosts (source, updated);
