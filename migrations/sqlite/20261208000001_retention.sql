-- Retention (issue 15): the event log keeps a bounded past, and discovered hosts expire.
--
-- The log stays append-only above a horizon: `event_horizon.below_id` says that every
-- event with a smaller id may have been pruned (and how many were), and only those rows
-- may be deleted. The horizon only moves forward, so nothing younger than it can ever be
-- removed, and the audit history can say how far back the log reaches.
CREATE TABLE event_horizon (
    one          INTEGER NOT NULL PRIMARY KEY CHECK (one = 1),
    -- events with id < below_id may be gone (0: nothing was ever pruned)
    below_id     INTEGER NOT NULL CHECK (below_id >= 0),
    -- events deleted by retention so far, and when the last prune ran
    pruned_total INTEGER NOT NULL CHECK (pruned_total >= 0),
    pruned_at    INTEGER
) STRICT;

INSERT INTO event_horizon (one, below_id, pruned_total, pruned_at) VALUES (1, 0, 0, NULL);

CREATE TRIGGER event_horizon_forward BEFORE UPDATE ON event_horizon
WHEN NEW.below_id < OLD.below_id
BEGIN
    SELECT RAISE(ABORT, 'the event horizon only moves forward');
END;

CREATE TRIGGER event_horizon_no_delete BEFORE DELETE ON event_horizon
BEGIN
    SELECT RAISE(ABORT, 'the event horizon cannot be deleted');
END;

DROP TRIGGER events_no_delete;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
WHEN OLD.id >= (SELECT below_id FROM event_horizon WHERE one = 1)
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: DELETE refused above the retention horizon');
END;

-- Expiry of discovered hosts walks them oldest-seen first.
CREATE INDEX hosts_source_updated ON hosts (source, updated);
