-- Boot identity (issue 15). A token is now derived from the site's boot key, the MAC and
-- the DHCP exchange that bound the client's lease, so a re-fetch within the same boot gets
-- the same token back: re-issuing it must not revive a used one. A used token therefore
-- stays, marked with the time it was used, until it expires.
ALTER TABLE boot_tokens ADD COLUMN consumed INTEGER;

-- Secret keys of the site, shared by both gateways through the store. `boot-token`: the
-- HMAC key boot tokens are derived with (32 random bytes, created by the first daemon that
-- needs it).
CREATE TABLE site_keys (
    name TEXT NOT NULL PRIMARY KEY,
    key  BLOB NOT NULL CHECK (length(key) >= 32)
) STRICT;
