//! The embedded SQLite backend. One writer connection carries every write transaction (so
//! writes queue in the pool instead of fighting over SQLite's lock) while a small read-only
//! pool serves reads from WAL snapshots. Every write commits with `synchronous=FULL`: an
//! acknowledged lease survives `kill -9` and power loss.

use super::common::{corrupt, host_event, millis, now, state_change_detail, unique_macs};
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use serde_json::json;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::LastSeen;
use super::{
    Event, EventKind, EventLog, EventQuery, HostChange, HostRecord, HostStore, Lease, LeaseFilter,
    LeaseState, LeaseStore, NewEvent, RelayInfo, StoreError, StoreUrl,
};
use crate::types::{HostState, MacAddr};

/// The schema, embedded at build time from `migrations/sqlite/`.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a statement waits for SQLite's lock (another process, a checkpoint) before
/// failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections in the read pool: enough for the API, CLI views and audits to read while
/// the DHCP path writes.
const READ_CONNECTIONS: u32 = 4;

/// The `actor` of the `lease-expired` events `expire_leases` writes.
const EXPIRY_ACTOR: &str = "expiry";

/// The SQLite store. Cheap to share behind an `Arc`; both pools are internally shared.
pub struct SqliteStore {
    /// The only connection that writes. Every write is a `BEGIN IMMEDIATE` transaction on
    /// it, so two commits for the same address are strictly ordered and never interleave.
    /// In a read-only store this is a read-only pool and every write fails.
    writer: SqlitePool,
    /// Read-only connections. WAL lets them read the last committed state while the writer
    /// works, so reads never wait for writes.
    reader: SqlitePool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn open_error(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Open {
        url: StoreUrl::Sqlite(path.to_path_buf()).to_string(),
        reason: reason.into(),
    }
}

/// Options shared by every connection: busy timeout, foreign keys, fsync on every commit.
fn base_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
        .synchronous(SqliteSynchronous::Full)
}

async fn read_pool(path: &Path) -> Result<SqlitePool, StoreError> {
    SqlitePoolOptions::new()
        .max_connections(READ_CONNECTIONS)
        .connect_with(base_options(path).read_only(true))
        .await
        .map_err(|e| open_error(path, format!("opening read connections: {e}")))
}

impl SqliteStore {
    /// Opens the store at `path`, creating the file (and its directory) when missing and
    /// migrating the schema to the current version.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(|e| {
                open_error(
                    path,
                    format!("cannot create directory {}: {e}", dir.display()),
                )
            })?;
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                base_options(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal),
            )
            .await
            .map_err(|e| open_error(path, e.to_string()))?;
        MIGRATOR.run(&writer).await?;
        let reader = read_pool(path).await?;
        Ok(SqliteStore { writer, reader })
    }

    /// Opens an existing store read-only, without migrating: for the CLI reading a running
    /// daemon's state. Every write method fails.
    pub async fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        match tokio::fs::try_exists(path).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(open_error(
                    path,
                    "no such file (is this the daemon's store path?)",
                ));
            }
            Err(e) => return Err(open_error(path, e.to_string())),
        }
        let reader = read_pool(path).await?;
        Ok(SqliteStore {
            writer: reader.clone(),
            reader,
        })
    }

    /// Closes both pools, waiting for checked-out connections to come back. Readers go
    /// first so the writer, closing last, can checkpoint and remove the WAL.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// A write transaction that takes SQLite's write lock up front (`BEGIN IMMEDIATE`), so
    /// a read-then-write inside it can never be invalidated by another writer.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }
}

// ---- value conversions -------------------------------------------------------------------

fn timestamp(row: &SqliteRow, column: &'static str) -> Result<Timestamp, StoreError> {
    let ms: i64 = row.try_get(column)?;
    Timestamp::from_millisecond(ms).map_err(|_| corrupt(column, ms.to_string()))
}

/// A text column parsed into a typed value (enum, MAC, IP); unparsable text is `Corrupt`.
fn parsed<T: FromStr>(row: &SqliteRow, column: &'static str) -> Result<T, StoreError> {
    let text: String = row.try_get(column)?;
    text.parse().map_err(|_| corrupt(column, text))
}

fn parsed_opt<T: FromStr>(row: &SqliteRow, column: &'static str) -> Result<Option<T>, StoreError> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| t.parse().map_err(|_| corrupt(column, t)))
        .transpose()
}

fn json_column(row: &SqliteRow, column: &'static str) -> Result<serde_json::Value, StoreError> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|_| corrupt(column, text))
}

// ---- hosts -------------------------------------------------------------------------------

/// Selects hosts with their MACs (in declared order) in one statement, hence one snapshot.
macro_rules! host_select {
    () => {
        "SELECT h.name, h.state, h.source, h.ip, h.rack, h.role, h.spec, h.created, h.updated, \
         (SELECT group_concat(m.mac, ',' ORDER BY m.position) FROM host_macs m \
          WHERE m.host = h.name) AS macs \
         FROM hosts h"
    };
}

fn host_from_row(row: &SqliteRow) -> Result<HostRecord, StoreError> {
    let macs: Option<String> = row.try_get("macs")?;
    let macs = macs
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|m| !m.is_empty())
        .map(|m| m.parse().map_err(|_| corrupt("mac", m)))
        .collect::<Result<Vec<MacAddr>, _>>()?;
    Ok(HostRecord {
        name: row.try_get("name")?,
        state: parsed(row, "state")?,
        source: parsed(row, "source")?,
        macs,
        ip: parsed_opt(row, "ip")?,
        rack: row.try_get("rack")?,
        role: parsed_opt(row, "role")?,
        spec: json_column(row, "spec")?,
        created: timestamp(row, "created")?,
        updated: timestamp(row, "updated")?,
    })
}

async fn fetch_host(
    conn: &mut SqliteConnection,
    name: &str,
) -> Result<Option<HostRecord>, StoreError> {
    sqlx::query(concat!(host_select!(), " WHERE h.name = ?"))
        .bind(name)
        .fetch_optional(conn)
        .await?
        .map(|row| host_from_row(&row))
        .transpose()
}

/// Refuses any MAC that already belongs to a host other than `host`.
async fn check_macs_free(
    conn: &mut SqliteConnection,
    host: &str,
    macs: &[MacAddr],
) -> Result<(), StoreError> {
    for mac in macs {
        let owner: Option<String> = sqlx::query_scalar("SELECT host FROM host_macs WHERE mac = ?")
            .bind(mac.to_string())
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(owner) = owner
            && owner != host
        {
            return Err(StoreError::MacTaken {
                mac: *mac,
                owner,
                host: host.to_string(),
            });
        }
    }
    Ok(())
}

async fn insert_macs(
    conn: &mut SqliteConnection,
    host: &str,
    macs: &[MacAddr],
) -> Result<(), StoreError> {
    for (position, mac) in (0_i64..).zip(macs) {
        sqlx::query("INSERT INTO host_macs (mac, host, position) VALUES (?, ?, ?)")
            .bind(mac.to_string())
            .bind(host)
            .bind(position)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn add_host(
    conn: &mut SqliteConnection,
    host: &HostRecord,
    actor: &str,
) -> Result<(), StoreError> {
    let macs = unique_macs(&host.macs);
    check_macs_free(conn, &host.name, &macs).await?;
    sqlx::query(
        "INSERT INTO hosts (name, state, source, ip, rack, role, spec, created, updated) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&host.name)
    .bind(host.state.as_str())
    .bind(host.source.as_str())
    .bind(host.ip.map(|ip| ip.to_string()))
    .bind(&host.rack)
    .bind(host.role.map(|r| r.as_str()))
    .bind(host.spec.to_string())
    .bind(millis(host.created))
    .bind(millis(host.updated))
    .execute(&mut *conn)
    .await?;
    insert_macs(conn, &host.name, &macs).await?;
    let event = host_event(EventKind::HostAdded, host, actor)
        .detail(json!({ "state": host.state, "source": host.source }));
    insert_event(conn, &event).await?;
    Ok(())
}

async fn update_host(
    conn: &mut SqliteConnection,
    host: &HostRecord,
    fields: &[String],
    actor: &str,
) -> Result<(), StoreError> {
    if fetch_host(conn, &host.name).await?.is_none() {
        return Err(StoreError::NoSuchHost(host.name.clone()));
    }
    let macs = unique_macs(&host.macs);
    check_macs_free(conn, &host.name, &macs).await?;
    // `state` and `created` are the store's, not the declaration's: left as stored.
    sqlx::query(
        "UPDATE hosts SET source = ?, ip = ?, rack = ?, role = ?, spec = ?, updated = ? \
         WHERE name = ?",
    )
    .bind(host.source.as_str())
    .bind(host.ip.map(|ip| ip.to_string()))
    .bind(&host.rack)
    .bind(host.role.map(|r| r.as_str()))
    .bind(host.spec.to_string())
    .bind(millis(now()))
    .bind(&host.name)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM host_macs WHERE host = ?")
        .bind(&host.name)
        .execute(&mut *conn)
        .await?;
    insert_macs(conn, &host.name, &macs).await?;
    let event = host_event(EventKind::HostChanged, host, actor).detail(json!({ "fields": fields }));
    insert_event(conn, &event).await?;
    Ok(())
}

async fn remove_host(
    conn: &mut SqliteConnection,
    name: &str,
    actor: &str,
) -> Result<(), StoreError> {
    let Some(host) = fetch_host(conn, name).await? else {
        return Err(StoreError::NoSuchHost(name.to_string()));
    };
    // host_macs rows go with it (ON DELETE CASCADE); events have no foreign key and stay.
    sqlx::query("DELETE FROM hosts WHERE name = ?")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    let event =
        host_event(EventKind::HostRemoved, &host, actor).detail(json!({ "state": host.state }));
    insert_event(conn, &event).await?;
    Ok(())
}

#[async_trait]
impl HostStore for SqliteStore {
    async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        sqlx::query(concat!(host_select!(), " ORDER BY h.name"))
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(host_from_row)
            .collect()
    }

    async fn get_host(&self, name: &str) -> Result<Option<HostRecord>, StoreError> {
        let mut conn = self.reader.acquire().await?;
        fetch_host(&mut conn, name).await
    }

    async fn host_by_mac(&self, mac: MacAddr) -> Result<Option<HostRecord>, StoreError> {
        sqlx::query(concat!(
            host_select!(),
            " WHERE h.name = (SELECT host FROM host_macs WHERE mac = ?)"
        ))
        .bind(mac.to_string())
        .fetch_optional(&self.reader)
        .await?
        .map(|row| host_from_row(&row))
        .transpose()
    }

    async fn apply_host_changes(
        &self,
        changes: &[HostChange],
        actor: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        for change in changes {
            // Any error returns early and drops `tx`, which rolls the whole batch back.
            match change {
                HostChange::Add(host) => add_host(&mut tx, host, actor).await?,
                HostChange::Update { host, fields } => {
                    update_host(&mut tx, host, fields, actor).await?
                }
                HostChange::Remove { name } => remove_host(&mut tx, name, actor).await?,
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn set_host_state(
        &self,
        name: &str,
        from: Option<HostState>,
        to: HostState,
        actor: &str,
        detail: serde_json::Value,
    ) -> Result<HostRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let Some(mut host) = fetch_host(&mut tx, name).await? else {
            return Err(StoreError::NoSuchHost(name.to_string()));
        };
        if let Some(expected) = from
            && expected != host.state
        {
            return Err(StoreError::StateMismatch {
                host: name.to_string(),
                expected,
                actual: host.state,
            });
        }
        let previous = host.state;
        host.state = to;
        host.updated = now();
        sqlx::query("UPDATE hosts SET state = ?, updated = ? WHERE name = ?")
            .bind(to.as_str())
            .bind(millis(host.updated))
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let event = host_event(EventKind::HostStateChanged, &host, actor)
            .detail(state_change_detail(previous, to, detail));
        insert_event(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(host)
    }
}

// ---- leases ------------------------------------------------------------------------------

/// Writes one lease and its event on `conn` (inside the caller's transaction), refusing an
/// address another MAC still holds.
async fn write_lease(
    conn: &mut SqliteConnection,
    lease: &Lease,
    event: &NewEvent,
) -> Result<(), StoreError> {
    let held = sqlx::query("SELECT mac, state, ends FROM leases WHERE ip = ?")
        .bind(lease.ip.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = held {
        let holder: MacAddr = parsed(&row, "mac")?;
        let state: LeaseState = parsed(&row, "state")?;
        let until = timestamp(&row, "ends")?;
        if holder != lease.mac && state.holds_address() && until > now() {
            return Err(StoreError::Conflict {
                ip: lease.ip,
                holder,
                until,
                requester: lease.mac,
            });
        }
    }
    sqlx::query(
        "INSERT INTO leases (ip, mac, client_id, state, starts, ends, host, subnet, giaddr, \
             circuit_id, remote_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (ip) DO UPDATE SET mac = excluded.mac, client_id = excluded.client_id, \
             state = excluded.state, starts = excluded.starts, ends = excluded.ends, \
             host = excluded.host, subnet = excluded.subnet, giaddr = excluded.giaddr, \
             circuit_id = excluded.circuit_id, remote_id = excluded.remote_id",
    )
    .bind(lease.ip.to_string())
    .bind(lease.mac.to_string())
    .bind(&lease.client_id)
    .bind(lease.state.as_str())
    .bind(millis(lease.starts))
    .bind(millis(lease.ends))
    .bind(&lease.host)
    .bind(&lease.subnet)
    .bind(lease.relay.giaddr.map(|ip| ip.to_string()))
    .bind(&lease.relay.circuit_id)
    .bind(&lease.relay.remote_id)
    .execute(&mut *conn)
    .await?;
    insert_event(conn, event).await?;
    Ok(())
}

const LEASE_COLUMNS: &str =
    "ip, mac, client_id, state, starts, ends, host, subnet, giaddr, circuit_id, remote_id";

fn lease_from_row(row: &SqliteRow) -> Result<Lease, StoreError> {
    Ok(Lease {
        ip: parsed(row, "ip")?,
        mac: parsed(row, "mac")?,
        client_id: row.try_get("client_id")?,
        state: parsed(row, "state")?,
        starts: timestamp(row, "starts")?,
        ends: timestamp(row, "ends")?,
        host: row.try_get("host")?,
        subnet: row.try_get("subnet")?,
        relay: RelayInfo {
            giaddr: parsed_opt(row, "giaddr")?,
            circuit_id: row.try_get("circuit_id")?,
            remote_id: row.try_get("remote_id")?,
        },
    })
}

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn commit_lease(&self, lease: &Lease, event: &NewEvent) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        write_lease(&mut tx, lease, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// One transaction, one fsync, for the whole batch (group commit). A conflict fails
    /// only its own item: it is checked before anything of that item is written.
    async fn commit_leases(
        &self,
        batch: &[(Lease, NewEvent)],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut out = Vec::with_capacity(batch.len());
        for (lease, event) in batch {
            match write_lease(&mut tx, lease, event).await {
                Err(e @ StoreError::Conflict { .. }) => out.push(Err(e)),
                Err(e) => return Err(e),
                Ok(()) => out.push(Ok(())),
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn get_lease(&self, ip: Ipv4Addr) -> Result<Option<Lease>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new(format!("SELECT {LEASE_COLUMNS} FROM leases"));
        q.push(" WHERE ip = ").push_bind(ip.to_string());
        q.build()
            .fetch_optional(&self.reader)
            .await?
            .map(|row| lease_from_row(&row))
            .transpose()
    }

    async fn list_leases(&self, filter: &LeaseFilter) -> Result<Vec<Lease>, StoreError> {
        let mut q =
            QueryBuilder::<Sqlite>::new(format!("SELECT {LEASE_COLUMNS} FROM leases WHERE 1 = 1"));
        if let Some(subnet) = &filter.subnet {
            q.push(" AND subnet = ").push_bind(subnet.clone());
        }
        if let Some(mac) = filter.mac {
            q.push(" AND mac = ").push_bind(mac.to_string());
        }
        if let Some(state) = filter.state {
            q.push(" AND state = ").push_bind(state.as_str());
        }
        let mut leases = q
            .build()
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(lease_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        // Text order would put 10.0.0.10 before 10.0.0.2: sort by the address itself.
        leases.sort_by_key(|l| l.ip);
        Ok(leases)
    }

    async fn expire_leases(&self, now: Timestamp) -> Result<Vec<Lease>, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE state IN ('offered', 'active') AND ends <= "
        ));
        q.push_bind(millis(now)).push(" ORDER BY ends, ip");
        let mut expired = q
            .build()
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(lease_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        for lease in &mut expired {
            let was = lease.state;
            sqlx::query("UPDATE leases SET state = 'expired' WHERE ip = ?")
                .bind(lease.ip.to_string())
                .execute(&mut *tx)
                .await?;
            lease.state = LeaseState::Expired;
            let mut event = NewEvent::new(EventKind::LeaseExpired, EXPIRY_ACTOR)
                .ip(lease.ip)
                .mac(lease.mac)
                .detail(json!({
                    "was": was,
                    "ends": lease.ends.to_string(),
                    "subnet": lease.subnet,
                }));
            event.host = lease.host.clone();
            insert_event(&mut tx, &event).await?;
        }
        tx.commit().await?;
        Ok(expired)
    }

    async fn live_leases(&self, now: Timestamp) -> Result<Vec<Lease>, StoreError> {
        // leases_state_ends covers the WHERE: the dead rows are never decoded.
        let mut leases = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {LEASE_COLUMNS} FROM leases \
             WHERE state IN ('offered', 'active', 'declined') AND ends > "
        ))
        .push_bind(millis(now))
        .build()
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(lease_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        leases.sort_by_key(|l| l.ip);
        Ok(leases)
    }

    async fn last_seen(&self, macs: &[MacAddr], hosts: &[String]) -> Result<LastSeen, StoreError> {
        // The lists travel as one JSON array each (json_each), not thousands of binds; the
        // IN (subquery) probes events_mac / leases_mac / events_host once per value.
        let macs_json =
            serde_json::Value::from(macs.iter().map(|m| m.to_string()).collect::<Vec<String>>())
                .to_string();
        let hosts_json = serde_json::Value::from(hosts.to_vec()).to_string();
        let by_mac = sqlx::query(
            "SELECT mac, MAX(t) AS t FROM ( \
                 SELECT mac, MAX(time) AS t FROM events \
                 WHERE kind = 'lease-committed' AND mac IN (SELECT value FROM json_each(?)) \
                 GROUP BY mac \
               UNION ALL \
                 SELECT mac, MAX(starts) AS t FROM leases \
                 WHERE mac IN (SELECT value FROM json_each(?)) GROUP BY mac \
             ) GROUP BY mac ORDER BY mac",
        )
        .bind(&macs_json)
        .bind(&macs_json)
        .fetch_all(&self.reader);
        let by_host = sqlx::query(
            "SELECT host, MAX(time) AS t FROM events \
             WHERE kind = 'lease-committed' AND host IN (SELECT value FROM json_each(?)) \
             GROUP BY host ORDER BY host",
        )
        .bind(&hosts_json)
        .fetch_all(&self.reader);
        let (by_mac, by_host) = tokio::try_join!(by_mac, by_host)?;
        Ok(LastSeen {
            macs: by_mac
                .iter()
                .map(|r| Ok((parsed(r, "mac")?, timestamp(r, "t")?)))
                .collect::<Result<_, StoreError>>()?,
            hosts: by_host
                .iter()
                .map(|r| Ok((r.try_get("host")?, timestamp(r, "t")?)))
                .collect::<Result<_, StoreError>>()?,
        })
    }
}

// ---- events ------------------------------------------------------------------------------

const EVENT_COLUMNS: &str = "id, time, kind, ip, mac, host, actor, detail";

/// Appends an event on `conn` (inside the caller's transaction, if any); returns its id.
async fn insert_event(conn: &mut SqliteConnection, event: &NewEvent) -> Result<i64, StoreError> {
    let time = event.time.unwrap_or_else(now);
    let done = sqlx::query(
        "INSERT INTO events (time, kind, ip, mac, host, actor, detail) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(millis(time))
    .bind(event.kind.as_str())
    .bind(event.ip.map(|ip| ip.to_string()))
    .bind(event.mac.map(|mac| mac.to_string()))
    .bind(&event.host)
    .bind(&event.actor)
    .bind(event.detail.to_string())
    .execute(conn)
    .await?;
    Ok(done.last_insert_rowid())
}

fn event_from_row(row: &SqliteRow) -> Result<Event, StoreError> {
    Ok(Event {
        id: row.try_get("id")?,
        time: timestamp(row, "time")?,
        kind: parsed(row, "kind")?,
        ip: parsed_opt(row, "ip")?,
        mac: parsed_opt(row, "mac")?,
        host: row.try_get("host")?,
        actor: row.try_get("actor")?,
        detail: json_column(row, "detail")?,
    })
}

#[async_trait]
impl EventLog for SqliteStore {
    async fn append(&self, event: &NewEvent) -> Result<i64, StoreError> {
        let mut conn = self.writer.acquire().await?;
        insert_event(&mut conn, event).await
    }

    async fn append_many(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        for e in events {
            insert_event(&mut tx, e).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn query(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        // With a limit: the newest N by id, re-sorted oldest first by the outer SELECT.
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {EVENT_COLUMNS} FROM (SELECT {EVENT_COLUMNS} FROM events WHERE 1 = 1"
        ));
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
            q.push(" AND kind = ").push_bind(kind.as_str());
        }
        if let Some(since) = query.since {
            q.push(" AND time >= ").push_bind(millis(since));
        }
        if let Some(until) = query.until {
            q.push(" AND time < ").push_bind(millis(until));
        }
        q.push(" ORDER BY id DESC");
        if let Some(limit) = query.limit {
            q.push(" LIMIT ").push_bind(i64::from(limit));
        }
        q.push(") ORDER BY id");
        q.build()
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(event_from_row)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::HostSource;
    use crate::types::Role;

    async fn store() -> (SqliteStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        (store, dir)
    }

    async fn pragma(pool: &SqlitePool, name: &'static str) -> String {
        let sql = match name {
            "journal_mode" => "PRAGMA journal_mode",
            "synchronous" => "PRAGMA synchronous",
            "foreign_keys" => "PRAGMA foreign_keys",
            "busy_timeout" => "PRAGMA busy_timeout",
            _ => unreachable!(),
        };
        let row = sqlx::query(sql).fetch_one(pool).await.unwrap();
        match row.try_get::<String, _>(0) {
            Ok(s) => s,
            Err(_) => row.try_get::<i64, _>(0).unwrap().to_string(),
        }
    }

    #[tokio::test]
    async fn connections_are_wal_full_sync_with_foreign_keys() {
        let (store, _dir) = store().await;
        for pool in [&store.writer, &store.reader] {
            assert_eq!(pragma(pool, "journal_mode").await, "wal");
            assert_eq!(pragma(pool, "synchronous").await, "2", "FULL");
            assert_eq!(pragma(pool, "foreign_keys").await, "1");
            assert_eq!(pragma(pool, "busy_timeout").await, "5000");
        }
        assert_eq!(store.writer.options().get_max_connections(), 1);
        // The read pool really is read-only.
        assert!(
            sqlx::query("DELETE FROM hosts")
                .execute(&store.reader)
                .await
                .is_err()
        );
    }

    /// The CHECK lists in the migration must name exactly the Rust enums' values.
    #[tokio::test]
    async fn check_constraints_match_the_enums() {
        let (store, _dir) = store().await;
        let w = &store.writer;
        let host = |name: String, state: &str, source: &str, role: Option<&str>| {
            sqlx::query(
                "INSERT INTO hosts (name, state, source, role, spec, created, updated) \
                 VALUES (?, ?, ?, ?, 'null', 0, 0)",
            )
            .bind(name)
            .bind(state.to_string())
            .bind(source.to_string())
            .bind(role.map(str::to_string))
            .execute(w)
        };
        for s in HostState::ALL {
            host(format!("s-{s}"), s.as_str(), "inventory", None)
                .await
                .unwrap();
        }
        for s in HostSource::ALL {
            host(format!("src-{s}"), "registered", s.as_str(), None)
                .await
                .unwrap();
        }
        for r in Role::ALL {
            host(
                format!("r-{r}"),
                "registered",
                "inventory",
                Some(r.as_str()),
            )
            .await
            .unwrap();
        }
        assert!(host("x1".into(), "bogus", "inventory", None).await.is_err());
        assert!(host("x2".into(), "ready", "bogus", None).await.is_err());
        assert!(
            host("x3".into(), "ready", "inventory", Some("bogus"))
                .await
                .is_err()
        );

        let lease = |ip: String, state: &str| {
            sqlx::query(
                "INSERT INTO leases (ip, mac, state, starts, ends, subnet) \
                 VALUES (?, '52:54:00:00:00:01', ?, 0, 0, 'prov')",
            )
            .bind(ip)
            .bind(state.to_string())
            .execute(w)
        };
        for (n, s) in LeaseState::ALL.iter().enumerate() {
            lease(format!("10.0.0.{n}"), s.as_str()).await.unwrap();
        }
        assert!(lease("10.0.1.1".into(), "bogus").await.is_err());

        let event = |kind: &str| {
            sqlx::query(
                "INSERT INTO events (time, kind, actor, detail) VALUES (0, ?, 'test', 'null')",
            )
            .bind(kind.to_string())
            .execute(w)
        };
        for k in EventKind::ALL {
            event(k.as_str()).await.unwrap();
        }
        assert!(event("Not A Kind").await.is_err());
    }

    #[tokio::test]
    async fn rows_with_bad_text_are_corrupt_not_panics() {
        let (store, _dir) = store().await;
        sqlx::query(
            "INSERT INTO events (time, kind, ip, actor, detail) \
             VALUES (0, 'daemon-started', '10.0.0.300', 'test', 'null')",
        )
        .execute(&store.writer)
        .await
        .unwrap();
        let err = store.query(&EventQuery::default()).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { column: "ip", value } if value == "10.0.0.300"),
            "{err:?}"
        );
    }

    #[test]
    fn state_change_detail_merges_the_callers_detail() {
        let d = state_change_detail(
            HostState::Registered,
            HostState::Ready,
            json!({ "reason": "phone-home", "to": "forged" }),
        );
        assert_eq!(
            d,
            json!({ "reason": "phone-home", "from": "registered", "to": "ready" })
        );
        let d = state_change_detail(HostState::Ready, HostState::Failed, serde_json::Value::Null);
        assert_eq!(d, json!({ "from": "ready", "to": "failed" }));
        let d = state_change_detail(HostState::Ready, HostState::Failed, json!("bmc timeout"));
        assert_eq!(
            d,
            json!({ "detail": "bmc timeout", "from": "ready", "to": "failed" })
        );
    }

    #[test]
    fn unique_macs_keeps_first_occurrence_order() {
        let m = |n: u8| MacAddr([0, 0, 0, 0, 0, n]);
        assert_eq!(
            unique_macs(&[m(2), m(1), m(2), m(3)]),
            vec![m(2), m(1), m(3)]
        );
    }
}
