//! The embedded SQLite backend. Every write runs on one writer thread (`writer.rs`, rusqlite)
//! that group-commits whatever is queued in one transaction with `synchronous=FULL`: an
//! acknowledged lease survives `kill -9` and power loss. Reads are served from WAL
//! snapshots, never waiting for the writer: bulk reads by a read-only sqlx pool, the hot
//! paths' point reads by read-only rusqlite connections on the caller's thread (`point.rs`).
//! sqlx also creates and migrates the file. docs/store.md says why there are two drivers.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::rows::{self, Columns, LEASE_COLUMNS, millis};
use super::writes;
use super::{
    BootToken, BootTokenStore, DiscoveryRetention, Event, EventHorizon, EventLog, EventQuery,
    EventRetention, ExpiredHost, HostChange, HostRecord, HostStore, LastSeen, Lease, LeaseFilter,
    LeaseStore, NewEvent, Pruned, StoreError, StoreUrl, TokenCheck, TokenUse,
};
use crate::types::{HostState, MacAddr};

/// Selects hosts with their MACs (in declared order) in one statement, hence one snapshot.
/// Shared by the sqlx reads and the rusqlite statements (`statements.rs`).
macro_rules! host_select {
    () => {
        "SELECT h.name, h.state, h.source, h.ip, h.rack, h.role, h.spec, h.created, h.updated, \
         (SELECT group_concat(m.mac, ',' ORDER BY m.position) FROM host_macs m \
          WHERE m.host = h.name) AS macs \
         FROM hosts h"
    };
}

mod failure;
mod point;
mod statements;
mod writer;

use point::{HostCache, PointReaders};
use statements::{HOST_BY_MAC_SQL, HOST_BY_NAME_SQL, Tx, query_host};
use writer::{Writer, ready};

/// The schema, embedded at build time from `migrations/sqlite/`.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a statement waits for SQLite's lock (another process, a checkpoint) before
/// failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections in the read pool: enough for the API, CLI views and audits to read while
/// the DHCP path writes.
const READ_CONNECTIONS: u32 = 4;

/// The pause between two prune batches: the DHCP path's commits queued meanwhile get the
/// writer thread (and their own group commit) before the next batch is queued.
const PRUNE_PAUSE: Duration = Duration::from_millis(20);

/// The SQLite store. Cheap to share behind an `Arc`; both pools are internally shared.
pub struct SqliteStore {
    /// The sqlx connection that creates the file, sets WAL and runs the migrations (sqlx's
    /// migrator, like PostgreSQL's). No write goes through it after `open`; it closes last.
    /// In a read-only store this is the read pool.
    schema: SqlitePool,
    /// Read-only connections. WAL lets them read the last committed state while the writer
    /// works, so reads never wait for writes.
    reader: SqlitePool,
    /// The thread that runs every write (see `writer.rs`); `None` in a read-only store,
    /// whose writes then fail by name.
    writer: Option<Writer>,
    /// Read-only rusqlite connections for the point reads of hot paths (the host behind a
    /// MAC, once per iPXE script request): a statement on the caller's thread instead of a
    /// round trip to sqlx's worker thread.
    points: PointReaders,
    /// The host behind a MAC, as last read (see [`HostCache`]).
    hosts_by_mac: HostCache,
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

/// Options shared by every sqlx connection: busy timeout, foreign keys, fsync on every
/// commit.
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

/// A rusqlite connection to an existing file (`mode`: read-write or read-only), owned by
/// one thread at a time, with the sqlx connections' busy timeout.
fn open_rusqlite(
    path: &Path,
    mode: rusqlite::OpenFlags,
) -> Result<rusqlite::Connection, rusqlite::Error> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        mode | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
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
        let schema = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                base_options(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal),
            )
            .await
            .map_err(|e| open_error(path, e.to_string()))?;
        MIGRATOR.run(&schema).await?;
        let reader = read_pool(path).await?;
        let writer = Some(Writer::start(path)?);
        Ok(SqliteStore {
            schema,
            reader,
            writer,
            points: PointReaders::new(path),
            hosts_by_mac: HostCache::default(),
        })
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
            schema: reader.clone(),
            reader,
            writer: None,
            points: PointReaders::new(path),
            hosts_by_mac: HostCache::default(),
        })
    }

    /// Closes both pools and stops the writer, waiting for checked-out connections to come
    /// back. Readers go first and the schema connection last, so the last one to close can
    /// checkpoint and remove the WAL.
    pub async fn close(&self) {
        self.reader.close().await;
        if let Some(writer) = &self.writer {
            writer.stop().await;
        }
        self.schema.close().await;
    }

    /// The writer thread; a read-only store (CLI readers) has none.
    fn writer(&self) -> Result<&Writer, StoreError> {
        self.writer.as_ref().ok_or_else(|| {
            StoreError::Db(sqlx::Error::Configuration(
                "the store was opened read-only; writes go through the daemon".into(),
            ))
        })
    }
}

/// The MACs of `host_select!`'s `group_concat` column.
fn split_macs(macs: Option<&str>) -> Vec<String> {
    macs.unwrap_or("")
        .split(',')
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect()
}

impl Columns for SqliteRow {
    fn text(&self, column: &'static str) -> Result<String, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn text_opt(&self, column: &'static str) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn int(&self, column: &'static str) -> Result<i64, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn mac_texts(&self, column: &'static str) -> Result<Vec<String>, StoreError> {
        Ok(split_macs(
            self.try_get::<Option<String>, _>(column)?.as_deref(),
        ))
    }
}

// ---- hosts -------------------------------------------------------------------------------

#[async_trait]
impl HostStore for SqliteStore {
    async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        sqlx::query(concat!(host_select!(), " ORDER BY h.name"))
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(rows::host)
            .collect()
    }

    async fn get_host(&self, name: &str) -> Result<Option<HostRecord>, StoreError> {
        // A point read, like `host_by_mac` (DHCP discovery reads each new MAC's host).
        self.points.with(|c| query_host(c, HOST_BY_NAME_SQL, name))
    }

    async fn host_by_mac(&self, mac: MacAddr) -> Result<Option<HostRecord>, StoreError> {
        // One indexed point read (microseconds, never waits on the writer under WAL): run
        // here rather than through sqlx's worker thread, whose two thread switches cost
        // more than the statement (bench/http.sh, iPXE scripts).
        let generation = self.hosts_by_mac.generation();
        if let Some(found) = self.hosts_by_mac.get(mac, generation) {
            return Ok(found);
        }
        let found = self
            .points
            .with(|c| query_host(c, HOST_BY_MAC_SQL, &mac.to_string()))?;
        self.hosts_by_mac.put(mac, generation, found.clone());
        Ok(found)
    }

    async fn apply_host_changes(
        &self,
        changes: &[HostChange],
        actor: &str,
    ) -> Result<(), StoreError> {
        let (changes, actor) = (changes.to_vec(), actor.to_string());
        let result = self
            .writer()?
            .call(move |c| ready(writes::apply_changes(&mut Tx(c), &changes, &actor)))
            .await;
        self.hosts_by_mac.invalidate();
        result
    }

    async fn expire_discovered(
        &self,
        retention: &DiscoveryRetention,
        now: Timestamp,
        at_most: u32,
        actor: &str,
    ) -> Result<Vec<ExpiredHost>, StoreError> {
        let (retention, actor) = (retention.clone(), actor.to_string());
        let result = self
            .writer()?
            .call(move |c| {
                ready(writes::expire_discovered(
                    &mut Tx(c),
                    &retention,
                    now,
                    at_most,
                    &actor,
                ))
            })
            .await;
        self.hosts_by_mac.invalidate();
        result
    }

    async fn set_host_state(
        &self,
        name: &str,
        from: Option<HostState>,
        to: HostState,
        actor: &str,
        detail: serde_json::Value,
    ) -> Result<HostRecord, StoreError> {
        let (name, actor) = (name.to_string(), actor.to_string());
        let result = self
            .writer()?
            .call(move |c| {
                ready(writes::set_state(
                    &mut Tx(c),
                    &name,
                    from,
                    to,
                    &actor,
                    detail,
                ))
            })
            .await;
        self.hosts_by_mac.invalidate();
        result
    }
}

// ---- leases ------------------------------------------------------------------------------

impl SqliteStore {
    /// `commit_leases` on the writer thread (the batch moves there: one copy per call).
    async fn write_leases(
        &self,
        batch: Vec<(Lease, NewEvent)>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        self.writer()?
            .call(move |c| statements::write_leases(c, &batch))
            .await
    }
}

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn commit_lease(&self, lease: &Lease, event: &NewEvent) -> Result<(), StoreError> {
        let mut results = self
            .write_leases(vec![(lease.clone(), event.clone())])
            .await?;
        results.pop().unwrap_or(Ok(()))
    }

    /// One transaction, one fsync, for the whole batch (group commit). A conflict fails
    /// only its own item: it is checked before anything of that item is written.
    async fn commit_leases(
        &self,
        batch: &[(Lease, NewEvent)],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        self.write_leases(batch.to_vec()).await
    }

    async fn get_lease(&self, ip: Ipv4Addr) -> Result<Option<Lease>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new(format!("SELECT {LEASE_COLUMNS} FROM leases"));
        q.push(" WHERE ip = ").push_bind(ip.to_string());
        q.build()
            .fetch_optional(&self.reader)
            .await?
            .map(|row| rows::lease(&row))
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
            .map(rows::lease)
            .collect::<Result<Vec<_>, _>>()?;
        // Text order would put 10.0.0.10 before 10.0.0.2: sort by the address itself.
        leases.sort_by_key(|l| l.ip);
        Ok(leases)
    }

    async fn expire_leases(&self, now: Timestamp) -> Result<Vec<Lease>, StoreError> {
        self.writer()?
            .call(move |c| statements::expire_leases(c, now))
            .await
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
        .map(rows::lease)
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
                .map(|r| Ok((r.parsed("mac")?, r.timestamp("t")?)))
                .collect::<Result<_, StoreError>>()?,
            hosts: by_host
                .iter()
                .map(|r| Ok((r.text("host")?, r.timestamp("t")?)))
                .collect::<Result<_, StoreError>>()?,
        })
    }
}

// ---- events ------------------------------------------------------------------------------

const EVENT_COLUMNS: &str = "id, time, kind, ip, mac, host, actor, detail";

#[async_trait]
impl EventLog for SqliteStore {
    async fn append(&self, event: &NewEvent) -> Result<i64, StoreError> {
        let event = event.clone();
        self.writer()?
            .call(move |c| statements::insert_event(c, &event, rows::now()))
            .await
    }

    async fn append_many(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        // On the writer thread: the batch shares a transaction (and its fsync) with
        // whatever leases and host changes are queued with it.
        let events = events.to_vec();
        self.writer()?
            .call(move |c| statements::insert_events(c, &events))
            .await
            .map(|_| ())
    }

    async fn query(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        // With a limit: the newest N by id, re-sorted oldest first by the outer SELECT.
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {EVENT_COLUMNS} FROM (SELECT {EVENT_COLUMNS} FROM events WHERE 1 = 1"
        ));
        rows::push_event_filters(&mut q, query);
        q.push(") ORDER BY id");
        q.build()
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(rows::event)
            .collect()
    }

    /// Batches go through the writer thread, each its own small job: a lease commit queued
    /// behind a batch waits for one bounded DELETE, never for the whole prune, and between
    /// batches ([`PRUNE_PAUSE`]) the writer serves whatever the hot path queued. Deleting
    /// through another connection instead would contend for SQLite's one write lock, and the
    /// writer would wait out a busy timeout rather than its turn in the queue.
    async fn prune_events(
        &self,
        retention: &EventRetention,
        now: Timestamp,
    ) -> Result<Pruned, StoreError> {
        let writer = self.writer()?;
        // The cut is read once, off the writer, from index lookups.
        let row = sqlx::query(
            "SELECT (SELECT MIN(id) FROM events) AS min_id, \
             (SELECT MAX(id) FROM events) AS max_id, \
             (SELECT MAX(id) FROM events WHERE time < ?) AS old_max, \
             (SELECT below_id FROM event_horizon WHERE one = 1) AS below",
        )
        .bind(writes::cutoff_ms(retention.retain, now))
        .fetch_one(&self.reader)
        .await?;
        let cut = writes::prune_cut(
            retention,
            (row.try_get("min_id")?, row.try_get("max_id")?),
            row.try_get("old_max")?,
            row.try_get::<Option<i64>, _>("below")?.unwrap_or(0),
        );
        let batch = retention.batch.max(1);
        let mut out = Pruned::default();
        loop {
            let n = writer
                .call(move |c| statements::prune_batch(c, cut, batch, rows::now()))
                .await?;
            out.batches += 1;
            out.deleted += n;
            if n < u64::from(batch) {
                break;
            }
            tokio::time::sleep(PRUNE_PAUSE).await;
        }
        let (deleted, retention) = (out.deleted, retention.clone());
        out.horizon = writer
            .call(move |c| statements::finish_prune(c, deleted, &retention))
            .await?;
        Ok(out)
    }

    async fn event_horizon(&self) -> Result<EventHorizon, StoreError> {
        self.points.with(statements::horizon)
    }
}

// ---- boot tokens -------------------------------------------------------------------------

#[async_trait]
impl BootTokenStore for SqliteStore {
    async fn issue_boot_token(&self, token: &BootToken) -> Result<(), StoreError> {
        let token = token.clone();
        self.writer()?
            .call(move |c| statements::issue_boot_token(c, &token))
            .await
    }

    async fn check_boot_token(
        &self,
        mac: MacAddr,
        offered: &str,
        now: Timestamp,
        use_: TokenUse,
    ) -> Result<TokenCheck, StoreError> {
        if use_ == TokenUse::Consume {
            let offered = offered.to_string();
            return self
                .writer()?
                .call(move |c| statements::consume_boot_token(c, mac, &offered, now))
                .await;
        }
        let row = sqlx::query(concat!(
            "SELECT ",
            rows::token_columns!(),
            " FROM boot_tokens WHERE mac = ?"
        ))
        .bind(mac.to_string())
        .fetch_optional(&self.reader)
        .await?;
        Ok(super::decide_token(
            row.as_ref().map(rows::boot_token).transpose()?,
            offered,
            now,
        ))
    }

    async fn site_key(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        let (name, candidate) = (name.to_string(), candidate.to_vec());
        self.writer()?
            .call(move |c| statements::site_key(c, &name, &candidate))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::rows::now;
    use crate::store::{EventKind, HostSource, LeaseState, RelayInfo};
    use crate::types::Role;
    use serde_json::json;

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
        for pool in [&store.schema, &store.reader] {
            assert_eq!(pragma(pool, "journal_mode").await, "wal");
            assert_eq!(pragma(pool, "synchronous").await, "2", "FULL");
            assert_eq!(pragma(pool, "foreign_keys").await, "1");
            assert_eq!(pragma(pool, "busy_timeout").await, "5000");
        }
        assert_eq!(store.schema.options().get_max_connections(), 1);
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
        let w = &store.schema;
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
        .execute(&store.schema)
        .await
        .unwrap();
        let err = store.query(&EventQuery::default()).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { column: "ip", value } if value == "10.0.0.300"),
            "{err:?}"
        );
    }

    fn test_host(name: &str, mac: MacAddr) -> HostRecord {
        HostRecord {
            name: name.into(),
            state: HostState::Discovered,
            source: HostSource::Discovered,
            macs: vec![mac],
            ip: None,
            rack: None,
            role: None,
            spec: json!({}),
            created: now(),
            updated: now(),
        }
    }

    fn test_lease(ip: [u8; 4], mac: MacAddr) -> (Lease, NewEvent) {
        let lease = Lease {
            ip: Ipv4Addr::from(ip),
            mac,
            client_id: None,
            state: LeaseState::Active,
            starts: now(),
            ends: now() + Duration::from_secs(600),
            host: None,
            subnet: "prov".into(),
            relay: RelayInfo::default(),
        };
        let event = NewEvent::new(EventKind::LeaseCommitted, "test")
            .ip(lease.ip)
            .mac(mac);
        (lease, event)
    }

    /// Jobs queued together share one transaction, but each stays atomic on its own: a
    /// host change refused half-way is rolled back alone, the lease batch and the other
    /// change beside it are committed.
    #[tokio::test]
    async fn jobs_sharing_a_transaction_fail_alone() {
        let (store, _dir) = store().await;
        let m = |n: u8| MacAddr([2, 0, 0, 0, 0, n]);
        store
            .apply_host_changes(&[HostChange::Add(test_host("a", m(1)))], "test")
            .await
            .unwrap();
        let leases = vec![
            test_lease([10, 0, 0, 5], m(5)),
            test_lease([10, 0, 0, 6], m(6)),
        ];
        let bad = [
            HostChange::Add(test_host("c", m(3))),
            HostChange::Add(test_host("b", m(1))),
        ];
        let good = [HostChange::Add(test_host("d", m(4)))];
        let (l, b, g) = tokio::join!(
            store.commit_leases(&leases),
            store.apply_host_changes(&bad, "test"),
            store.apply_host_changes(&good, "test"),
        );
        assert!(l.unwrap().iter().all(Result::is_ok));
        assert!(matches!(b, Err(StoreError::MacTaken { .. })), "{b:?}");
        g.unwrap();
        let names: Vec<String> = store
            .list_hosts()
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.name)
            .collect();
        assert_eq!(names, ["a", "d"], "c went with b's refused batch");
        for ip in [[10, 0, 0, 5], [10, 0, 0, 6]] {
            assert!(store.get_lease(Ipv4Addr::from(ip)).await.unwrap().is_some());
        }
        // A conflict fails only its own item; an event is written per committed lease.
        let r = store
            .commit_leases(&[
                test_lease([10, 0, 0, 5], m(9)),
                test_lease([10, 0, 0, 7], m(7)),
            ])
            .await
            .unwrap();
        assert!(matches!(r[0], Err(StoreError::Conflict { .. })), "{r:?}");
        assert!(r[1].is_ok());
        let committed = store
            .query(&EventQuery {
                kind: Some(EventKind::LeaseCommitted),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(committed.len(), 3);
        // A duplicate host name is a database error, as from sqlx.
        let dup = store
            .apply_host_changes(&[HostChange::Add(test_host("a", m(8)))], "test")
            .await;
        assert!(
            matches!(&dup, Err(StoreError::Db(sqlx::Error::Database(e))) if e.is_unique_violation()),
            "{dup:?}"
        );
    }

    #[tokio::test]
    async fn writes_after_close_fail() {
        let (store, _dir) = store().await;
        store.close().await;
        let (lease, event) = test_lease([10, 0, 0, 9], MacAddr([2, 0, 0, 0, 0, 9]));
        assert!(store.commit_lease(&lease, &event).await.is_err());
    }
}
