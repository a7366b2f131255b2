-- Per-boot phone-home tokens (issue 4): issued when an install or rescue script is
-- rendered, checked (and used up) when the booted host phones home. Kept here rather than
-- in memory so a daemon restart, or the other gateway, still accepts the phone-home.
-- Only the token's SHA-256 is stored. One live token per MAC: a new boot replaces it.
-- `host` is a plain name, not a foreign key: a removed host's token just expires.
CREATE TABLE boot_tokens (
    mac          TEXT    NOT NULL PRIMARY KEY,
    host         TEXT    NOT NULL,
    token_sha256 TEXT    NOT NULL CHECK (length(token_sha256) = 64),
    purpose      TEXT    NOT NULL CHECK (purpose IN ('install', 'rescue')),
    issued       INTEGER NOT NULL,
    expires      INTEGER NOT NULL
) STRICT;

CREATE INDEX boot_tokens_expires ON boot_tokens (expires);
