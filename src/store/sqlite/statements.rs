//! The rusqlite statements of the SQLite backend: everything the writer thread runs (lease
//! commits, expiry, events, boot tokens, and the [`WriteTx`] under the shared host writes)
//! and the host point queries. Column values come from `store/rows.rs`, so only the SQL
//! text here is SQLite's.

use jiff::Timestamp;
use rusqlite::OptionalExtension;

use super::super::rows::{
    self, Columns, EventRow, HostRow, LEASE_COLUMNS, LeaseRow, corrupt, millis, now,
};
use super::super::writes::{self, WriteTx};
use super::super::{
    BootToken, EventHorizon, EventRetention, HostRecord, Lease, LeaseState, NewEvent, StoreError,
    TokenCheck,
};
use super::split_macs;
use crate::types::{HostState, MacAddr};

impl Columns for rusqlite::Row<'_> {
    fn text(&self, column: &'static str) -> Result<String, StoreError> {
        Ok(self.get(column)?)
    }
    fn text_opt(&self, column: &'static str) -> Result<Option<String>, StoreError> {
        Ok(self.get(column)?)
    }
    fn int(&self, column: &'static str) -> Result<i64, StoreError> {
        Ok(self.get(column)?)
    }
    fn mac_texts(&self, column: &'static str) -> Result<Vec<String>, StoreError> {
        Ok(split_macs(
            self.get::<_, Option<String>>(column)?.as_deref(),
        ))
    }
}

// ---- hosts -------------------------------------------------------------------------------

pub(super) const HOST_BY_NAME_SQL: &str = concat!(host_select!(), " WHERE h.name = ?1");
pub(super) const HOST_BY_MAC_SQL: &str = concat!(
    host_select!(),
    " WHERE h.name = (SELECT host FROM host_macs WHERE mac = ?1)"
);

/// The host `sql` (one of the `HOST_BY_*_SQL`) selects with `key` as its one parameter.
pub(super) fn query_host(
    conn: &rusqlite::Connection,
    sql: &str,
    key: &str,
) -> Result<Option<HostRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query([key])?;
    rows.next()?.map(rows::host).transpose()
}

/// The host statements of [`WriteTx`] on the writer thread's open transaction.
pub(super) struct Tx<'c>(pub(super) &'c rusqlite::Connection);

impl WriteTx for Tx<'_> {
    async fn host(&mut self, name: &str) -> Result<Option<HostRecord>, StoreError> {
        query_host(self.0, HOST_BY_NAME_SQL, name)
    }

    async fn host_exists(&mut self, name: &str) -> Result<bool, StoreError> {
        let exists: Option<i64> = self
            .0
            .prepare_cached("SELECT 1 FROM hosts WHERE name = ?1")?
            .query_row([name], |r| r.get(0))
            .optional()?;
        Ok(exists.is_some())
    }

    async fn mac_owner(&mut self, mac: MacAddr) -> Result<Option<String>, StoreError> {
        Ok(self
            .0
            .prepare_cached("SELECT host FROM host_macs WHERE mac = ?1")?
            .query_row([mac.to_string()], |r| r.get(0))
            .optional()?)
    }

    async fn insert_host(&mut self, h: &HostRow<'_>) -> Result<(), StoreError> {
        self.0
            .prepare_cached(
                "INSERT INTO hosts (name, state, source, ip, rack, role, spec, created, updated) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(rusqlite::params![
                h.name, h.state, h.source, h.ip, h.rack, h.role, h.spec, h.created, h.updated,
            ])?;
        Ok(())
    }

    async fn update_host(&mut self, h: &HostRow<'_>) -> Result<(), StoreError> {
        self.0
            .prepare_cached(
                "UPDATE hosts SET source = ?1, ip = ?2, rack = ?3, role = ?4, spec = ?5, \
                 updated = ?6 WHERE name = ?7",
            )?
            .execute(rusqlite::params![
                h.source, h.ip, h.rack, h.role, h.spec, h.updated, h.name,
            ])?;
        Ok(())
    }

    async fn set_state(
        &mut self,
        name: &str,
        state: HostState,
        updated: i64,
    ) -> Result<(), StoreError> {
        self.0
            .prepare_cached("UPDATE hosts SET state = ?1, updated = ?2 WHERE name = ?3")?
            .execute(rusqlite::params![state.as_str(), updated, name])?;
        Ok(())
    }

    async fn delete_host(&mut self, name: &str) -> Result<(), StoreError> {
        self.0
            .prepare_cached("DELETE FROM hosts WHERE name = ?1")?
            .execute([name])?;
        Ok(())
    }

    async fn insert_macs(&mut self, host: &str, macs: &[MacAddr]) -> Result<(), StoreError> {
        let mut stmt = self
            .0
            .prepare_cached("INSERT INTO host_macs (mac, host, position) VALUES (?1, ?2, ?3)")?;
        for (position, mac) in (0_i64..).zip(macs) {
            stmt.execute(rusqlite::params![mac.to_string(), host, position])?;
        }
        Ok(())
    }

    async fn delete_macs(&mut self, host: &str) -> Result<(), StoreError> {
        self.0
            .prepare_cached("DELETE FROM host_macs WHERE host = ?1")?
            .execute([host])?;
        Ok(())
    }

    async fn insert_event(&mut self, event: &NewEvent) -> Result<i64, StoreError> {
        insert_event(self.0, event, now())
    }

    async fn discovered_count(&mut self) -> Result<u64, StoreError> {
        let n: i64 = self
            .0
            .prepare_cached("SELECT COUNT(*) FROM hosts WHERE source = 'discovered'")?
            .query_row([], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn expiry_candidates(
        &mut self,
        seen_before: i64,
        over: u64,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let over = i64::try_from(over).unwrap_or(i64::MAX);
        let mut stmt = self.0.prepare_cached(
            "SELECT name FROM hosts WHERE source = 'discovered' AND (updated < ?1 OR name IN \
             (SELECT name FROM hosts WHERE source = 'discovered' ORDER BY updated, name \
             LIMIT ?2)) ORDER BY updated, name LIMIT ?3",
        )?;
        let names = stmt
            .query_map(rusqlite::params![seen_before, over, limit], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(names)
    }

    async fn delete_discovered(&mut self, name: &str) -> Result<bool, StoreError> {
        let n = self
            .0
            .prepare_cached("DELETE FROM hosts WHERE name = ?1 AND source = 'discovered'")?
            .execute([name])?;
        Ok(n > 0)
    }
}

// ---- retention ---------------------------------------------------------------------------

/// One prune batch on the writer thread: moves the horizon to `cut` (never back), deletes
/// at most `batch` events below it, oldest first, and counts them in the horizon row.
pub(super) fn prune_batch(
    conn: &rusqlite::Connection,
    cut: i64,
    batch: u32,
    stamp: Timestamp,
) -> Result<u64, StoreError> {
    conn.prepare_cached("UPDATE event_horizon SET below_id = max(below_id, ?1) WHERE one = 1")?
        .execute([cut])?;
    let n = conn
        .prepare_cached(
            "DELETE FROM events WHERE id IN \
             (SELECT id FROM events WHERE id < ?1 ORDER BY id LIMIT ?2)",
        )?
        .execute(rusqlite::params![cut, batch])?;
    if n > 0 {
        conn.prepare_cached(
            "UPDATE event_horizon SET pruned_total = pruned_total + ?1, pruned_at = ?2 \
             WHERE one = 1",
        )?
        .execute(rusqlite::params![n as i64, millis(stamp)])?;
    }
    Ok(n as u64)
}

/// The end of a prune run: the horizon as it now stands, and, when the run deleted
/// anything, its `events-pruned` summary.
pub(super) fn finish_prune(
    conn: &rusqlite::Connection,
    deleted: u64,
    retention: &EventRetention,
) -> Result<EventHorizon, StoreError> {
    let horizon = horizon(conn)?;
    if deleted > 0 {
        let event = writes::pruned_event(deleted, horizon.below_id, horizon.oldest, retention);
        insert_event(conn, &event, now())?;
    }
    Ok(horizon)
}

/// The `event_horizon` row and the time of the oldest event kept.
pub(super) fn horizon(conn: &rusqlite::Connection) -> Result<EventHorizon, StoreError> {
    let (below_id, pruned_total, pruned_at): (i64, i64, Option<i64>) = conn
        .prepare_cached(
            "SELECT below_id, pruned_total, pruned_at FROM event_horizon WHERE one = 1",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    let oldest: Option<i64> = conn
        .prepare_cached("SELECT time FROM events ORDER BY id LIMIT 1")?
        .query_row([], |r| r.get(0))
        .optional()?;
    let ts = |ms: i64, column| {
        Timestamp::from_millisecond(ms).map_err(|_| corrupt(column, ms.to_string()))
    };
    Ok(EventHorizon {
        below_id,
        pruned_total: u64::try_from(pruned_total).unwrap_or(0),
        pruned_at: pruned_at.map(|ms| ts(ms, "pruned_at")).transpose()?,
        oldest: oldest.map(|ms| ts(ms, "time")).transpose()?,
    })
}

// ---- events ------------------------------------------------------------------------------

/// The SQLite backend's one event insert (every event it stores goes through here, on the
/// writer thread); returns the new id.
pub(super) fn insert_event(
    conn: &rusqlite::Connection,
    event: &NewEvent,
    stamp: Timestamp,
) -> Result<i64, StoreError> {
    let e = EventRow::new(event, stamp);
    // The columns of `rows::EVENT_INSERT_COLUMNS`, spelled out: a literal is prepared
    // from the statement cache without building the text on every event.
    conn.prepare_cached(
        "INSERT INTO events (time, kind, ip, mac, host, actor, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(rusqlite::params![
        e.time, e.kind, e.ip, e.mac, e.host, e.actor, e.detail
    ])?;
    Ok(conn.last_insert_rowid())
}

/// `append_many`: the events in order, each stamped now unless it brings its time.
pub(super) fn insert_events(
    conn: &rusqlite::Connection,
    events: &[NewEvent],
) -> Result<Vec<i64>, StoreError> {
    events
        .iter()
        .map(|e| insert_event(conn, e, now()))
        .collect()
}

// ---- leases ------------------------------------------------------------------------------

/// `commit_leases`: a conflict fails only its own item (checked before anything of that
/// item is written); any other error fails the batch.
pub(super) fn write_leases(
    conn: &rusqlite::Connection,
    batch: &[(Lease, NewEvent)],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut out = Vec::with_capacity(batch.len());
    let now = now();
    for (lease, event) in batch {
        match write_lease(conn, lease, event, now) {
            Err(e @ StoreError::Conflict { .. }) => out.push(Err(e)),
            Err(e) => return Err(e),
            Ok(()) => out.push(Ok(())),
        }
    }
    Ok(out)
}

/// Writes one lease and its event, refusing an address another MAC still holds. The
/// single writer makes the read-then-write safe: nothing else writes in between.
fn write_lease(
    conn: &rusqlite::Connection,
    lease: &Lease,
    event: &NewEvent,
    now: Timestamp,
) -> Result<(), StoreError> {
    let l = LeaseRow::new(lease);
    let held = conn
        .prepare_cached("SELECT mac, state, ends FROM leases WHERE ip = ?1")?
        .query_row([&l.ip], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .optional()?;
    if let Some((mac, state, ends)) = held {
        let holder: MacAddr = mac.parse().map_err(|_| corrupt("mac", mac))?;
        let state: LeaseState = state.parse().map_err(|_| corrupt("state", state))?;
        let until =
            Timestamp::from_millisecond(ends).map_err(|_| corrupt("ends", ends.to_string()))?;
        if holder != lease.mac && state.holds_address() && until > now {
            return Err(StoreError::Conflict {
                ip: lease.ip,
                holder,
                until,
                requester: lease.mac,
            });
        }
    }
    conn.prepare_cached(
        "INSERT INTO leases (ip, mac, client_id, state, starts, ends, host, subnet, giaddr, \
             circuit_id, remote_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
             ON CONFLICT (ip) DO UPDATE SET mac = excluded.mac, client_id = excluded.client_id, \
             state = excluded.state, starts = excluded.starts, ends = excluded.ends, \
             host = excluded.host, subnet = excluded.subnet, giaddr = excluded.giaddr, \
             circuit_id = excluded.circuit_id, remote_id = excluded.remote_id",
    )?
    .execute(rusqlite::params![
        l.ip,
        l.mac,
        l.client_id,
        l.state,
        l.starts,
        l.ends,
        l.host,
        l.subnet,
        l.giaddr,
        l.circuit_id,
        l.remote_id,
    ])?;
    insert_event(conn, event, now)?;
    Ok(())
}

/// `expire_leases`: marks every offered/active lease ended by `now` expired, with an event
/// each, oldest end first.
pub(super) fn expire_leases(
    conn: &rusqlite::Connection,
    now: Timestamp,
) -> Result<Vec<Lease>, StoreError> {
    let mut expired = Vec::new();
    {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE state IN ('offered', 'active') \
             AND ends <= ?1 ORDER BY ends, ip"
        ))?;
        let mut rows = stmt.query([millis(now)])?;
        while let Some(row) = rows.next()? {
            expired.push(rows::lease(row)?);
        }
    }
    let stamp = rows::now();
    for lease in &mut expired {
        let was = lease.state;
        conn.prepare_cached("UPDATE leases SET state = 'expired' WHERE ip = ?1")?
            .execute([lease.ip.to_string()])?;
        lease.state = LeaseState::Expired;
        insert_event(conn, &writes::expired_event(lease, was), stamp)?;
    }
    Ok(expired)
}

// ---- boot tokens -------------------------------------------------------------------------

/// `issue_boot_token`: drops expired tokens, then stores this one as its MAC's.
pub(super) fn issue_boot_token(
    conn: &rusqlite::Connection,
    token: &BootToken,
) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM boot_tokens WHERE expires <= ?1")?
        .execute([millis(token.issued)])?;
    conn.prepare_cached(
        "INSERT INTO boot_tokens (mac, host, token_sha256, purpose, issued, expires) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (mac) DO UPDATE SET host = excluded.host, \
         token_sha256 = excluded.token_sha256, purpose = excluded.purpose, \
         issued = excluded.issued, expires = excluded.expires, consumed = NULL \
         WHERE boot_tokens.token_sha256 <> excluded.token_sha256",
    )?
    .execute(rusqlite::params![
        token.mac.to_string(),
        token.host,
        super::super::boot_token_hash(&token.token),
        token.purpose.as_str(),
        millis(token.issued),
        millis(token.expires),
    ])?;
    Ok(())
}

/// `check_boot_token` with `TokenUse::Consume`: the check and the marking of an accepted
/// token as used in one transaction, so two reports cannot both use it.
pub(super) fn consume_boot_token(
    conn: &rusqlite::Connection,
    mac: MacAddr,
    offered: &str,
    now: Timestamp,
) -> Result<TokenCheck, StoreError> {
    let stored = {
        let mut stmt = conn.prepare_cached(concat!(
            "SELECT ",
            rows::token_columns!(),
            " FROM boot_tokens WHERE mac = ?1"
        ))?;
        let mut rows = stmt.query([mac.to_string()])?;
        rows.next()?.map(rows::boot_token).transpose()?
    };
    let check = super::super::decide_token(stored, offered, now);
    if matches!(check, TokenCheck::Accepted { .. }) {
        conn.prepare_cached("UPDATE boot_tokens SET consumed = ?2 WHERE mac = ?1")?
            .execute(rusqlite::params![mac.to_string(), millis(now)])?;
    }
    Ok(check)
}

/// `site_key`: inserts `candidate` unless the key exists, then reads the one stored.
pub(super) fn site_key(
    conn: &rusqlite::Connection,
    name: &str,
    candidate: &[u8],
) -> Result<Vec<u8>, StoreError> {
    conn.prepare_cached("INSERT OR IGNORE INTO site_keys (name, key) VALUES (?1, ?2)")?
        .execute(rusqlite::params![name, candidate])?;
    let key: Vec<u8> = conn
        .prepare_cached("SELECT key FROM site_keys WHERE name = ?1")?
        .query_row([name], |r| r.get(0))?;
    Ok(key)
}
