//! The stored form of the store's values, both ways, once for every backend and driver:
//! records decoded from a row of sqlx SQLite, sqlx PostgreSQL or rusqlite through the small
//! [`Columns`] trait, and the column values a write binds ([`HostRow`], [`LeaseRow`],
//! [`EventRow`]). Times are unix milliseconds, enums/MACs/IPs text, JSON text.

use std::str::FromStr;

use jiff::Timestamp;

use super::{BootPurpose, Event, EventQuery, HostRecord, Lease, NewEvent, RelayInfo, StoreError};
use crate::types::MacAddr;

pub(crate) fn corrupt(column: &'static str, value: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        column,
        value: value.into(),
    }
}

pub(crate) fn millis(t: Timestamp) -> i64 {
    t.as_millisecond()
}

/// The `WHERE` conditions and the newest-N (or, after a cursor, next-N) limit of an event query, for the inner SELECT
/// of either SQL backend (the caller re-sorts oldest first around it).
pub(crate) fn push_event_filters<DB>(q: &mut sqlx::QueryBuilder<DB>, query: &EventQuery)
where
    DB: sqlx::Database,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    if let Some(ip) = query.ip {
        q.push(" AND ip = ").push_bind(ip.to_string());
    }
    if let Some(mac) = query.mac {
        q.push(" AND mac = ").push_bind(mac.to_string());
    }
    if let Some(host) = &query.host {
        q.push(" AND host = ").push_bind(host.clone());
    }
    if let Some(kind) = query.kind {
        q.push(" AND kind = ").push_bind(kind.as_str().to_string());
    }
    if let Some(since) = query.since {
        q.push(" AND time >= ").push_bind(millis(since));
    }
    if let Some(until) = query.until {
        q.push(" AND time < ").push_bind(millis(until));
    }
    // A page after a cursor reads forward from it; otherwise the newest come first.
    match query.after {
        Some(after) => {
            q.push(" AND id > ").push_bind(after);
            q.push(" ORDER BY id");
        }
        None => {
            q.push(" ORDER BY id DESC");
        }
    }
    if let Some(limit) = query.limit {
        q.push(" LIMIT ").push_bind(i64::from(limit));
    }
}

/// Now, at the precision the store keeps (milliseconds).
pub(crate) fn now() -> Timestamp {
    let now = Timestamp::now();
    Timestamp::from_millisecond(now.as_millisecond()).unwrap_or(now)
}

/// The columns of one result row, as each driver reads them. Only the host's MAC list
/// differs by dialect (SQLite's `group_concat` text, PostgreSQL's array); everything else is
/// decoded by the provided methods, so a corrupt value reads the same from every backend.
pub(crate) trait Columns {
    /// A non-NULL text column.
    fn text(&self, column: &'static str) -> Result<String, StoreError>;
    fn text_opt(&self, column: &'static str) -> Result<Option<String>, StoreError>;
    /// A non-NULL integer column.
    fn int(&self, column: &'static str) -> Result<i64, StoreError>;
    /// The host's MACs in declared order, as text (see the `host_select!` of each backend).
    fn mac_texts(&self, column: &'static str) -> Result<Vec<String>, StoreError>;

    fn timestamp(&self, column: &'static str) -> Result<Timestamp, StoreError> {
        let ms = self.int(column)?;
        Timestamp::from_millisecond(ms).map_err(|_| corrupt(column, ms.to_string()))
    }

    /// A text column parsed into a typed value (enum, MAC, IP); unparsable text is `Corrupt`.
    fn parsed<T: FromStr>(&self, column: &'static str) -> Result<T, StoreError> {
        let text = self.text(column)?;
        text.parse().map_err(|_| corrupt(column, text))
    }

    fn parsed_opt<T: FromStr>(&self, column: &'static str) -> Result<Option<T>, StoreError> {
        self.text_opt(column)?
            .map(|t| t.parse().map_err(|_| corrupt(column, t)))
            .transpose()
    }

    /// A JSON document stored (or selected, `col::text AS col`) as text.
    fn json(&self, column: &'static str) -> Result<serde_json::Value, StoreError> {
        let text = self.text(column)?;
        serde_json::from_str(&text).map_err(|_| corrupt(column, text))
    }
}

/// A host row with its `macs` column (each backend's `host_select!`).
pub(crate) fn host(row: &impl Columns) -> Result<HostRecord, StoreError> {
    let macs = row
        .mac_texts("macs")?
        .into_iter()
        .map(|m| m.parse().map_err(|_| corrupt("mac", m)))
        .collect::<Result<Vec<MacAddr>, _>>()?;
    Ok(HostRecord {
        name: row.text("name")?,
        state: row.parsed("state")?,
        source: row.parsed("source")?,
        macs,
        ip: row.parsed_opt("ip")?,
        rack: row.text_opt("rack")?,
        role: row.parsed_opt("role")?,
        spec: row.json("spec")?,
        created: row.timestamp("created")?,
        updated: row.timestamp("updated")?,
    })
}

/// The lease columns every lease read selects, in [`LeaseRow`]'s order.
pub(crate) const LEASE_COLUMNS: &str =
    "ip, mac, client_id, state, starts, ends, host, subnet, giaddr, circuit_id, remote_id";

/// A lease row (the [`LEASE_COLUMNS`]).
pub(crate) fn lease(row: &impl Columns) -> Result<Lease, StoreError> {
    Ok(Lease {
        ip: row.parsed("ip")?,
        mac: row.parsed("mac")?,
        client_id: row.text_opt("client_id")?,
        state: row.parsed("state")?,
        starts: row.timestamp("starts")?,
        ends: row.timestamp("ends")?,
        host: row.text_opt("host")?,
        subnet: row.text("subnet")?,
        relay: RelayInfo {
            giaddr: row.parsed_opt("giaddr")?,
            circuit_id: row.text_opt("circuit_id")?,
            remote_id: row.text_opt("remote_id")?,
        },
    })
}

/// An event row (`id, time, kind, ip, mac, host, actor, detail`).
pub(crate) fn event(row: &impl Columns) -> Result<Event, StoreError> {
    Ok(Event {
        id: row.int("id")?,
        time: row.timestamp("time")?,
        kind: row.parsed("kind")?,
        ip: row.parsed_opt("ip")?,
        mac: row.parsed_opt("mac")?,
        host: row.text_opt("host")?,
        actor: row.text("actor")?,
        detail: row.json("detail")?,
    })
}

/// The stored row of a MAC's boot token, what [`super::decide_token`] decides on.
#[derive(Debug, Clone)]
pub(crate) struct TokenRow {
    pub hash: String,
    pub host: String,
    pub purpose: BootPurpose,
    pub expires: Timestamp,
    /// When the token was used up (`installed`/`failed`), if it was.
    pub consumed: Option<Timestamp>,
}

/// The columns a boot-token read selects (`consumed` as 0 when unused, so both dialects
/// read it as a non-NULL integer); a macro so each backend's query stays one literal.
macro_rules! token_columns {
    () => {
        "token_sha256, host, purpose, expires, COALESCE(consumed, 0) AS consumed"
    };
}
pub(crate) use token_columns;

/// A boot-token row (the [`token_columns!`]).
pub(crate) fn boot_token(row: &impl Columns) -> Result<TokenRow, StoreError> {
    let consumed = row.int("consumed")?;
    Ok(TokenRow {
        hash: row.text("token_sha256")?,
        host: row.text("host")?,
        purpose: row.parsed("purpose")?,
        expires: row.timestamp("expires")?,
        consumed: match consumed {
            0 => None,
            _ => Some(row.timestamp("consumed")?),
        },
    })
}

/// The `hosts` columns of a record as written (`name, state, source, ip, rack, role, spec,
/// created, updated`); its MACs go to `host_macs` separately.
pub(crate) struct HostRow<'a> {
    pub name: &'a str,
    pub state: &'static str,
    pub source: &'static str,
    pub ip: Option<String>,
    pub rack: Option<&'a str>,
    pub role: Option<&'static str>,
    pub spec: String,
    pub created: i64,
    pub updated: i64,
}

impl<'a> HostRow<'a> {
    pub fn new(host: &'a HostRecord) -> HostRow<'a> {
        HostRow {
            name: &host.name,
            state: host.state.as_str(),
            source: host.source.as_str(),
            ip: host.ip.map(|ip| ip.to_string()),
            rack: host.rack.as_deref(),
            role: host.role.map(|r| r.as_str()),
            spec: host.spec.to_string(),
            created: millis(host.created),
            updated: millis(host.updated),
        }
    }
}

/// The [`LEASE_COLUMNS`] of a lease as written.
pub(crate) struct LeaseRow<'a> {
    pub ip: String,
    pub mac: String,
    pub client_id: Option<&'a str>,
    pub state: &'static str,
    pub starts: i64,
    pub ends: i64,
    pub host: Option<&'a str>,
    pub subnet: &'a str,
    pub giaddr: Option<String>,
    pub circuit_id: Option<&'a str>,
    pub remote_id: Option<&'a str>,
}

impl<'a> LeaseRow<'a> {
    pub fn new(lease: &'a Lease) -> LeaseRow<'a> {
        LeaseRow {
            ip: lease.ip.to_string(),
            mac: lease.mac.to_string(),
            client_id: lease.client_id.as_deref(),
            state: lease.state.as_str(),
            starts: millis(lease.starts),
            ends: millis(lease.ends),
            host: lease.host.as_deref(),
            subnet: &lease.subnet,
            giaddr: lease.relay.giaddr.map(|ip| ip.to_string()),
            circuit_id: lease.relay.circuit_id.as_deref(),
            remote_id: lease.relay.remote_id.as_deref(),
        }
    }
}

/// The columns an event insert writes, in [`EventRow`]'s order (`id` is the database's).
pub(crate) const EVENT_INSERT_COLUMNS: &str = "time, kind, ip, mac, host, actor, detail";

/// An event as written; `time` is `stamp` when the event brings none.
pub(crate) struct EventRow<'a> {
    pub time: i64,
    pub kind: &'static str,
    pub ip: Option<String>,
    pub mac: Option<String>,
    pub host: Option<&'a str>,
    pub actor: &'a str,
    pub detail: String,
}

impl<'a> EventRow<'a> {
    pub fn new(event: &'a NewEvent, stamp: Timestamp) -> EventRow<'a> {
        EventRow {
            time: millis(event.time.unwrap_or(stamp)),
            kind: event.kind.as_str(),
            ip: event.ip.map(|ip| ip.to_string()),
            mac: event.mac.map(|mac| mac.to_string()),
            host: event.host.as_deref(),
            actor: &event.actor,
            detail: event.detail.to_string(),
        }
    }
}
