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
    /// The thread that commits lease batches and host changes (see [`Writer`]); `None` in
    /// a read-only store, whose writes then fail on the read-only `writer` pool.
    fast: Option<Writer>,
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
        let fast = Some(Writer::start(path)?);
        Ok(SqliteStore {
            writer,
            reader,
            fast,
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
            writer: reader.clone(),
            reader,
            fast: None,
            points: PointReaders::new(path),
            hosts_by_mac: HostCache::default(),
        })
    }

    /// Closes both pools, waiting for checked-out connections to come back. Readers go
    /// first so the writer, closing last, can checkpoint and remove the WAL.
    pub async fn close(&self) {
        self.reader.close().await;
        if let Some(fast) = &self.fast {
            fast.stop().await;
        }
        self.writer.close().await;
    }

    /// A write transaction that takes SQLite's write lock up front (`BEGIN IMMEDIATE`), so
    /// a read-then-write inside it can never be invalidated by another writer.
    /// The hot-path writer thread; a read-only store (CLI readers) has none.
    fn writer(&self) -> Result<&Writer, StoreError> {
        self.fast.as_ref().ok_or_else(|| {
            StoreError::Db(sqlx::Error::Configuration(
                "the store was opened read-only; writes go through the daemon".into(),
            ))
        })
    }

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
        // A point read, like `host_by_mac` (DHCP discovery reads each new MAC's host).
        self.points
            .with(|c| query_host_sync(c, HOST_BY_NAME_SQL, name))
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
            .with(|c| query_host_sync(c, HOST_BY_MAC_SQL, &mac.to_string()))?;
        self.hosts_by_mac.put(mac, generation, found.clone());
        Ok(found)
    }

    async fn apply_host_changes(
        &self,
        changes: &[HostChange],
        actor: &str,
    ) -> Result<(), StoreError> {
        let result = self.writer()?.hosts(changes.to_vec(), actor).await;
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
        let result = self.set_host_state_tx(name, from, to, actor, detail).await;
        self.hosts_by_mac.invalidate();
        result
    }
}

impl SqliteStore {
    async fn set_host_state_tx(
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
        let mut results = self
            .writer()?
            .leases(vec![(lease.clone(), event.clone())])
            .await?;
        results.pop().unwrap_or(Ok(()))
    }

    /// One transaction, one fsync, for the whole batch (group commit). A conflict fails
    /// only its own item: it is checked before anything of that item is written.
    async fn commit_leases(
        &self,
        batch: &[(Lease, NewEvent)],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        self.writer()?.leases(batch.to_vec()).await
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

// ---- the hot-path writer -----------------------------------------------------------------
//
// Lease commits and host changes (DHCP discovery, inventory sync) go through one OS thread
// that owns its own connection (rusqlite, the same bundled SQLite as sqlx). sqlx runs every
// statement of a connection on that connection's worker thread, so a one-lease commit
// (BEGIN, SELECT, INSERT, INSERT, COMMIT) cost five round trips between threads; profiled
// under perfdhcp, those context switches, not SQL, were most of the CPU per lease. Here a
// call costs one round trip: the thread drains every job queued meanwhile into one
// `BEGIN IMMEDIATE` transaction (a savepoint per job keeps each call atomic on its own),
// commits it with `synchronous=FULL` (one fsync for all of them: group commit across lease
// batches and discovery), and only then answers the callers.

/// Jobs committed in one transaction at most (bounds a commit's latency).
const MAX_JOBS_PER_COMMIT: usize = 256;

/// While jobs arrive steadily (the previous commit ended less than [`BUSY`] ago), the
/// writer lets a transaction stay open this long after its first job for others to share
/// its fsync (PostgreSQL's `commit_delay`). An idle writer commits at once, so a lone ACK
/// never waits; under load an ACK waits at most this much longer, and every fsync carries
/// more leases.
const COMMIT_DELAY: Duration = Duration::from_millis(4);
const BUSY: Duration = Duration::from_millis(20);

/// What a `commit_leases` call answers.
type LeaseResults = Result<Vec<Result<(), StoreError>>, StoreError>;

enum WriteJob {
    Leases {
        batch: Vec<(Lease, NewEvent)>,
        done: tokio::sync::oneshot::Sender<LeaseResults>,
    },
    Hosts {
        changes: Vec<HostChange>,
        actor: String,
        done: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
    },
    /// Events appended together (all or none), answered with their ids.
    Events {
        events: Vec<NewEvent>,
        done: tokio::sync::oneshot::Sender<Result<Vec<i64>, StoreError>>,
    },
    /// Close the connection (after the jobs queued before) and say so.
    Stop {
        done: tokio::sync::oneshot::Sender<()>,
    },
}

/// The handle of the writer thread; the thread ends when this is dropped or stopped.
struct Writer {
    jobs: std::sync::mpsc::Sender<WriteJob>,
}

/// A SQLite error raised on the writer thread, carried as an `sqlx::Error::Database` so
/// callers see the same `StoreError::Db` as from any other statement.
#[derive(Debug, Clone)]
struct SqliteFailure {
    message: String,
    code: Option<i32>,
    kind: SqliteFailureKind,
}

#[derive(Debug, Clone, Copy)]
enum SqliteFailureKind {
    Unique,
    ForeignKey,
    NotNull,
    Check,
    Other,
}

impl std::fmt::Display for SqliteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SqliteFailure {}

impl sqlx::error::DatabaseError for SqliteFailure {
    fn message(&self) -> &str {
        &self.message
    }
    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.code.map(|c| c.to_string().into())
    }
    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }
    fn kind(&self) -> sqlx::error::ErrorKind {
        use sqlx::error::ErrorKind;
        match self.kind {
            SqliteFailureKind::Unique => ErrorKind::UniqueViolation,
            SqliteFailureKind::ForeignKey => ErrorKind::ForeignKeyViolation,
            SqliteFailureKind::NotNull => ErrorKind::NotNullViolation,
            SqliteFailureKind::Check => ErrorKind::CheckViolation,
            SqliteFailureKind::Other => ErrorKind::Other,
        }
    }
}

impl SqliteFailure {
    fn of(e: &rusqlite::Error) -> SqliteFailure {
        use rusqlite::ffi;
        let (code, kind) = match e {
            rusqlite::Error::SqliteFailure(f, _) => {
                let kind = match f.extended_code {
                    ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                        SqliteFailureKind::Unique
                    }
                    ffi::SQLITE_CONSTRAINT_FOREIGNKEY => SqliteFailureKind::ForeignKey,
                    ffi::SQLITE_CONSTRAINT_NOTNULL => SqliteFailureKind::NotNull,
                    ffi::SQLITE_CONSTRAINT_CHECK => SqliteFailureKind::Check,
                    _ => SqliteFailureKind::Other,
                };
                (Some(f.extended_code), kind)
            }
            _ => (None, SqliteFailureKind::Other),
        };
        SqliteFailure {
            message: e.to_string(),
            code,
            kind,
        }
    }

    fn into_store(self) -> StoreError {
        StoreError::Db(sqlx::Error::Database(Box::new(self)))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        SqliteFailure::of(&e).into_store()
    }
}

fn writer_stopped() -> StoreError {
    StoreError::Batch("the SQLite writer has stopped (store closed)".into())
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

/// Opens the writer thread's connection: WAL (already set by the migration's connection),
/// `synchronous=FULL` (the commit is on disk before a caller hears of it), foreign keys and
/// the same busy timeout as the sqlx connections.
fn open_writer_connection(path: &Path) -> Result<rusqlite::Connection, rusqlite::Error> {
    let conn = open_rusqlite(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))?;
    debug_assert_eq!(mode, "wal");
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Statement journals and sorts in memory: no temporary files on the commit path.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Idle point-read connections kept at most (more are opened under a burst, then closed).
const POINT_READERS: usize = 4;

/// A small pool of read-only rusqlite connections, opened on first use. A read takes one
/// (or opens one), runs its statement on the caller's thread and puts it back: under WAL a
/// reader sees the last commit and never waits for the writer, so this does not block an
/// async task for longer than the statement itself.
struct PointReaders {
    path: std::path::PathBuf,
    idle: std::sync::Mutex<Vec<rusqlite::Connection>>,
}

impl PointReaders {
    fn new(path: &Path) -> PointReaders {
        PointReaders {
            path: path.to_path_buf(),
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn with<T>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_point_reader(&self.path)
                .map_err(|e| open_error(&self.path, format!("opening a read connection: {e}")))?,
        };
        let out = read(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POINT_READERS {
            idle.push(conn);
        }
        out
    }
}

/// How long a cached host-by-MAC answer is trusted without a write of this process in
/// between. Writes of this process (DHCP discovery, phone-home, inventory reloads, API
/// calls) invalidate at once; this bounds what another process writing the same file
/// (`bootgate rack onboard`, `bootgate power` run locally) can leave stale: well under the
/// time a machine takes to power-cycle into PXE.
const HOST_CACHE_TTL: Duration = Duration::from_millis(500);

/// Entries kept at most; past this the cache starts over (a storm of unknown MACs).
const HOST_CACHE_ENTRIES: usize = 65_536;

/// A cached answer: the generation before the read, when it was read, what it found.
type CachedHost = (u64, std::time::Instant, Option<HostRecord>);

/// The host behind a MAC as last read, for the iPXE script path (one lookup per request).
/// Each entry carries the write generation current *before* its read: a host write bumps
/// the generation after it commits, so an answer read before (or during) that write is
/// never served after it.
#[derive(Default)]
struct HostCache {
    generation: std::sync::atomic::AtomicU64,
    entries: std::sync::Mutex<std::collections::HashMap<MacAddr, CachedHost>>,
}

impl HostCache {
    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn invalidate(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn get(&self, mac: MacAddr, generation: u64) -> Option<Option<HostRecord>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (g, at, found) = entries.get(&mac)?;
        (*g == generation && at.elapsed() < HOST_CACHE_TTL).then(|| found.clone())
    }

    fn put(&self, mac: MacAddr, generation: u64, found: Option<HostRecord>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= HOST_CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(mac, (generation, std::time::Instant::now(), found));
    }
}

fn open_point_reader(path: &Path) -> Result<rusqlite::Connection, rusqlite::Error> {
    let conn = open_rusqlite(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.set_prepared_statement_cache_capacity(16);
    Ok(conn)
}

impl Writer {
    fn start(path: &Path) -> Result<Writer, StoreError> {
        let conn = open_writer_connection(path)
            .map_err(|e| open_error(path, format!("opening the writer connection: {e}")))?;
        let (jobs, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run_writer(conn, rx))
            .map_err(|e| open_error(path, format!("cannot start the writer thread: {e}")))?;
        Ok(Writer { jobs })
    }

    async fn leases(&self, batch: Vec<(Lease, NewEvent)>) -> LeaseResults {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.jobs
            .send(WriteJob::Leases { batch, done })
            .map_err(|_| writer_stopped())?;
        wait.await.unwrap_or_else(|_| Err(writer_stopped()))
    }

    async fn hosts(&self, changes: Vec<HostChange>, actor: &str) -> Result<(), StoreError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.jobs
            .send(WriteJob::Hosts {
                changes,
                actor: actor.to_string(),
                done,
            })
            .map_err(|_| writer_stopped())?;
        wait.await.unwrap_or_else(|_| Err(writer_stopped()))
    }

    async fn events(&self, events: Vec<NewEvent>) -> Result<Vec<i64>, StoreError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.jobs
            .send(WriteJob::Events { events, done })
            .map_err(|_| writer_stopped())?;
        wait.await.unwrap_or_else(|_| Err(writer_stopped()))
    }

    async fn stop(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.jobs.send(WriteJob::Stop { done }).is_ok() {
            let _ = wait.await;
        }
    }
}

/// What one job of a transaction came to (sent only once the transaction is committed).
enum Outcome {
    Leases(LeaseResults),
    Hosts(Result<(), StoreError>),
    Events(Result<Vec<i64>, StoreError>),
}

/// The writer thread: waits for a job, takes everything queued behind it, commits it all
/// in one transaction and answers each job.
fn run_writer(conn: rusqlite::Connection, rx: std::sync::mpsc::Receiver<WriteJob>) {
    let mut jobs = Vec::with_capacity(MAX_JOBS_PER_COMMIT);
    let mut last_commit: Option<std::time::Instant> = None;
    while let Ok(first) = rx.recv() {
        let busy = last_commit.is_some_and(|t| t.elapsed() < BUSY);
        let deadline = std::time::Instant::now() + COMMIT_DELAY;
        let mut stop = None;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                WriteJob::Stop { done } => {
                    stop = Some(done);
                    break;
                }
                job => jobs.push(job),
            }
            if jobs.len() < MAX_JOBS_PER_COMMIT {
                next = match rx.try_recv() {
                    Ok(job) => Some(job),
                    Err(_) if busy => {
                        let left = deadline.saturating_duration_since(std::time::Instant::now());
                        rx.recv_timeout(left).ok()
                    }
                    Err(_) => None,
                };
            }
        }
        if !jobs.is_empty() {
            metrics::histogram!("bootgate_sqlite_commit_jobs").record(jobs.len() as f64);
            let outcomes = commit_jobs(&conn, &jobs);
            last_commit = Some(std::time::Instant::now());
            for (job, outcome) in jobs.drain(..).zip(outcomes) {
                match (job, outcome) {
                    (WriteJob::Leases { done, .. }, Outcome::Leases(r)) => {
                        let _ = done.send(r);
                    }
                    (WriteJob::Hosts { done, .. }, Outcome::Hosts(r)) => {
                        let _ = done.send(r);
                    }
                    (WriteJob::Events { done, .. }, Outcome::Events(r)) => {
                        let _ = done.send(r);
                    }
                    _ => {}
                }
            }
        }
        if let Some(done) = stop {
            // Jobs sent after the stop are answered "stopped" by dropping them.
            drop(rx);
            drop(conn);
            let _ = done.send(());
            return;
        }
    }
}

/// Runs `jobs` in one transaction, each inside its own savepoint (a failing job is rolled
/// back alone), and commits. If the commit fails, every job fails with its error.
fn commit_jobs(conn: &rusqlite::Connection, jobs: &[WriteJob]) -> Vec<Outcome> {
    let fail_all = |e: &rusqlite::Error| -> Vec<Outcome> {
        let f = SqliteFailure::of(e);
        jobs.iter()
            .map(|j| match j {
                WriteJob::Hosts { .. } => Outcome::Hosts(Err(f.clone().into_store())),
                WriteJob::Events { .. } => Outcome::Events(Err(f.clone().into_store())),
                _ => Outcome::Leases(Err(f.clone().into_store())),
            })
            .collect()
    };
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        return fail_all(&e);
    }
    let mut outcomes = Vec::with_capacity(jobs.len());
    for job in jobs {
        let outcome = match job {
            WriteJob::Leases { batch, .. } => {
                Outcome::Leases(in_savepoint(conn, |c| write_leases_sync(c, batch)))
            }
            WriteJob::Hosts { changes, actor, .. } => Outcome::Hosts(in_savepoint(conn, |c| {
                apply_host_changes_sync(c, changes, actor)
            })),
            WriteJob::Events { events, .. } => Outcome::Events(in_savepoint(conn, |c| {
                events.iter().map(|e| insert_event_sync(c, e)).collect()
            })),
            WriteJob::Stop { .. } => continue,
        };
        outcomes.push(outcome);
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        let _ = conn.execute_batch("ROLLBACK");
        return fail_all(&e);
    }
    outcomes
}

/// Runs `f` inside a savepoint: kept on success, rolled back (alone) on failure.
fn in_savepoint<T>(
    conn: &rusqlite::Connection,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("SAVEPOINT job")?;
    match f(conn) {
        Ok(v) => {
            conn.execute_batch("RELEASE job")?;
            Ok(v)
        }
        Err(e) => {
            conn.execute_batch("ROLLBACK TO job; RELEASE job")?;
            Err(e)
        }
    }
}

/// `commit_leases` on the writer thread: a conflict fails only its own item (checked
/// before anything of that item is written); any other error fails the batch.
fn write_leases_sync(
    conn: &rusqlite::Connection,
    batch: &[(Lease, NewEvent)],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut out = Vec::with_capacity(batch.len());
    let now = now();
    for (lease, event) in batch {
        match write_lease_sync(conn, lease, event, now) {
            Err(e @ StoreError::Conflict { .. }) => out.push(Err(e)),
            Err(e) => return Err(e),
            Ok(()) => out.push(Ok(())),
        }
    }
    Ok(out)
}

/// Writes one lease and its event inside the writer's transaction, refusing an address
/// another MAC still holds.
fn write_lease_sync(
    conn: &rusqlite::Connection,
    lease: &Lease,
    event: &NewEvent,
    now: Timestamp,
) -> Result<(), StoreError> {
    use rusqlite::OptionalExtension;
    let ip = lease.ip.to_string();
    let held = conn
        .prepare_cached("SELECT mac, state, ends FROM leases WHERE ip = ?1")?
        .query_row([&ip], |r| {
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
        ip,
        lease.mac.to_string(),
        lease.client_id,
        lease.state.as_str(),
        millis(lease.starts),
        millis(lease.ends),
        lease.host,
        lease.subnet,
        lease.relay.giaddr.map(|ip| ip.to_string()),
        lease.relay.circuit_id,
        lease.relay.remote_id,
    ])?;
    insert_event_sync(conn, event)?;
    Ok(())
}

/// [`insert_event`] on the writer thread.
fn insert_event_sync(conn: &rusqlite::Connection, event: &NewEvent) -> Result<i64, StoreError> {
    let time = event.time.unwrap_or_else(now);
    conn.prepare_cached(
        "INSERT INTO events (time, kind, ip, mac, host, actor, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(rusqlite::params![
        millis(time),
        event.kind.as_str(),
        event.ip.map(|ip| ip.to_string()),
        event.mac.map(|mac| mac.to_string()),
        event.host,
        event.actor,
        event.detail.to_string(),
    ])?;
    Ok(conn.last_insert_rowid())
}

/// `apply_host_changes` on the writer thread (all or nothing: the caller's savepoint).
fn apply_host_changes_sync(
    conn: &rusqlite::Connection,
    changes: &[HostChange],
    actor: &str,
) -> Result<(), StoreError> {
    for change in changes {
        match change {
            HostChange::Add(host) => add_host_sync(conn, host, actor)?,
            HostChange::Update { host, fields } => update_host_sync(conn, host, fields, actor)?,
            HostChange::Remove { name } => remove_host_sync(conn, name, actor)?,
        }
    }
    Ok(())
}

const HOST_BY_NAME_SQL: &str = concat!(host_select!(), " WHERE h.name = ?1");
const HOST_BY_MAC_SQL: &str = concat!(
    host_select!(),
    " WHERE h.name = (SELECT host FROM host_macs WHERE mac = ?1)"
);

fn fetch_host_sync(
    conn: &rusqlite::Connection,
    name: &str,
) -> Result<Option<HostRecord>, StoreError> {
    query_host_sync(conn, HOST_BY_NAME_SQL, name)
}

/// The host `sql` (one of the `HOST_BY_*_SQL`) selects with `key` as its one parameter.
fn query_host_sync(
    conn: &rusqlite::Connection,
    sql: &str,
    key: &str,
) -> Result<Option<HostRecord>, StoreError> {
    use rusqlite::OptionalExtension;
    type Raw = (
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        String,
        i64,
        i64,
        Option<String>,
    );
    let raw: Option<Raw> = conn
        .prepare_cached(sql)?
        .query_row([key], |r| {
            Ok((
                r.get("name")?,
                r.get("state")?,
                r.get("source")?,
                r.get("ip")?,
                r.get("rack")?,
                r.get("role")?,
                r.get("spec")?,
                r.get("created")?,
                r.get("updated")?,
                r.get("macs")?,
            ))
        })
        .optional()?;
    let Some((name, state, source, ip, rack, role, spec, created, updated, macs)) = raw else {
        return Ok(None);
    };
    fn parse<T: FromStr>(column: &'static str, text: String) -> Result<T, StoreError> {
        text.parse().map_err(|_| corrupt(column, text))
    }
    let ts = |column: &'static str, ms: i64| {
        Timestamp::from_millisecond(ms).map_err(|_| corrupt(column, ms.to_string()))
    };
    Ok(Some(HostRecord {
        macs: macs
            .as_deref()
            .unwrap_or("")
            .split(',')
            .filter(|m| !m.is_empty())
            .map(|m| m.parse().map_err(|_| corrupt("mac", m)))
            .collect::<Result<Vec<MacAddr>, _>>()?,
        name,
        state: parse("state", state)?,
        source: parse("source", source)?,
        ip: ip.map(|t| parse("ip", t)).transpose()?,
        rack,
        role: role.map(|t| parse("role", t)).transpose()?,
        spec: serde_json::from_str(&spec).map_err(|_| corrupt("spec", spec))?,
        created: ts("created", created)?,
        updated: ts("updated", updated)?,
    }))
}

fn check_macs_free_sync(
    conn: &rusqlite::Connection,
    host: &str,
    macs: &[MacAddr],
) -> Result<(), StoreError> {
    use rusqlite::OptionalExtension;
    let mut stmt = conn.prepare_cached("SELECT host FROM host_macs WHERE mac = ?1")?;
    for mac in macs {
        let owner: Option<String> = stmt.query_row([mac.to_string()], |r| r.get(0)).optional()?;
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

fn insert_macs_sync(
    conn: &rusqlite::Connection,
    host: &str,
    macs: &[MacAddr],
) -> Result<(), StoreError> {
    let mut stmt =
        conn.prepare_cached("INSERT INTO host_macs (mac, host, position) VALUES (?1, ?2, ?3)")?;
    for (position, mac) in (0_i64..).zip(macs) {
        stmt.execute(rusqlite::params![mac.to_string(), host, position])?;
    }
    Ok(())
}

fn add_host_sync(
    conn: &rusqlite::Connection,
    host: &HostRecord,
    actor: &str,
) -> Result<(), StoreError> {
    let macs = unique_macs(&host.macs);
    check_macs_free_sync(conn, &host.name, &macs)?;
    conn.prepare_cached(
        "INSERT INTO hosts (name, state, source, ip, rack, role, spec, created, updated) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(rusqlite::params![
        host.name,
        host.state.as_str(),
        host.source.as_str(),
        host.ip.map(|ip| ip.to_string()),
        host.rack,
        host.role.map(|r| r.as_str()),
        host.spec.to_string(),
        millis(host.created),
        millis(host.updated),
    ])?;
    insert_macs_sync(conn, &host.name, &macs)?;
    let event = host_event(EventKind::HostAdded, host, actor)
        .detail(json!({ "state": host.state, "source": host.source }));
    insert_event_sync(conn, &event)?;
    Ok(())
}

fn update_host_sync(
    conn: &rusqlite::Connection,
    host: &HostRecord,
    fields: &[String],
    actor: &str,
) -> Result<(), StoreError> {
    use rusqlite::OptionalExtension;
    let exists: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM hosts WHERE name = ?1")?
        .query_row([&host.name], |r| r.get(0))
        .optional()?;
    if exists.is_none() {
        return Err(StoreError::NoSuchHost(host.name.clone()));
    }
    let macs = unique_macs(&host.macs);
    check_macs_free_sync(conn, &host.name, &macs)?;
    // `state` and `created` are the store's, not the declaration's: left as stored.
    conn.prepare_cached(
        "UPDATE hosts SET source = ?1, ip = ?2, rack = ?3, role = ?4, spec = ?5, updated = ?6 \
         WHERE name = ?7",
    )?
    .execute(rusqlite::params![
        host.source.as_str(),
        host.ip.map(|ip| ip.to_string()),
        host.rack,
        host.role.map(|r| r.as_str()),
        host.spec.to_string(),
        millis(now()),
        host.name,
    ])?;
    conn.prepare_cached("DELETE FROM host_macs WHERE host = ?1")?
        .execute([&host.name])?;
    insert_macs_sync(conn, &host.name, &macs)?;
    let event = host_event(EventKind::HostChanged, host, actor).detail(json!({ "fields": fields }));
    insert_event_sync(conn, &event)?;
    Ok(())
}

fn remove_host_sync(
    conn: &rusqlite::Connection,
    name: &str,
    actor: &str,
) -> Result<(), StoreError> {
    let Some(host) = fetch_host_sync(conn, name)? else {
        return Err(StoreError::NoSuchHost(name.to_string()));
    };
    // host_macs rows go with it (ON DELETE CASCADE); events have no foreign key and stay.
    conn.prepare_cached("DELETE FROM hosts WHERE name = ?1")?
        .execute([name])?;
    let event =
        host_event(EventKind::HostRemoved, &host, actor).detail(json!({ "state": host.state }));
    insert_event_sync(conn, &event)?;
    Ok(())
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
        let ids = self.writer()?.events(vec![event.clone()]).await?;
        ids.first()
            .copied()
            .ok_or_else(|| StoreError::Batch("the writer stored no event".into()))
    }

    async fn append_many(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        // On the writer thread: the batch shares a transaction (and its fsync) with
        // whatever leases and host changes are queued with it.
        self.writer()?.events(events.to_vec()).await.map(|_| ())
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

// ---- boot tokens -------------------------------------------------------------------------

/// The stored row of a MAC's token: (hash, host, purpose, expires).
type TokenRow = (String, String, crate::store::BootPurpose, Timestamp);

fn token_row(row: &SqliteRow) -> Result<TokenRow, StoreError> {
    Ok((
        row.try_get("token_sha256")?,
        row.try_get("host")?,
        parsed(row, "purpose")?,
        timestamp(row, "expires")?,
    ))
}

#[async_trait]
impl crate::store::BootTokenStore for SqliteStore {
    async fn issue_boot_token(&self, token: &crate::store::BootToken) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM boot_tokens WHERE expires <= ?")
            .bind(millis(token.issued))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO boot_tokens (mac, host, token_sha256, purpose, issued, expires) \
             VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (mac) DO UPDATE SET host = excluded.host, \
             token_sha256 = excluded.token_sha256, purpose = excluded.purpose, \
             issued = excluded.issued, expires = excluded.expires",
        )
        .bind(token.mac.to_string())
        .bind(&token.host)
        .bind(crate::store::boot_token_hash(&token.token))
        .bind(token.purpose.as_str())
        .bind(millis(token.issued))
        .bind(millis(token.expires))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn check_boot_token(
        &self,
        mac: MacAddr,
        offered: &str,
        now: Timestamp,
        use_: crate::store::TokenUse,
    ) -> Result<crate::store::TokenCheck, StoreError> {
        const SELECT: &str =
            "SELECT token_sha256, host, purpose, expires FROM boot_tokens WHERE mac = ?";
        if use_ == crate::store::TokenUse::Keep {
            let row = sqlx::query(SELECT)
                .bind(mac.to_string())
                .fetch_optional(&self.reader)
                .await?;
            return Ok(crate::store::decide_token(
                row.as_ref().map(token_row).transpose()?,
                offered,
                now,
            ));
        }
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(SELECT)
            .bind(mac.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let check =
            crate::store::decide_token(row.as_ref().map(token_row).transpose()?, offered, now);
        if matches!(check, crate::store::TokenCheck::Accepted { .. }) {
            sqlx::query("DELETE FROM boot_tokens WHERE mac = ?")
                .bind(mac.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(check)
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
    fn writer_connection_is_wal_full_sync_with_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        drop(rusqlite::Connection::open(&path).unwrap());
        let conn = open_writer_connection(&path).unwrap();
        let get = |name: &str| -> String {
            conn.query_row(&format!("PRAGMA {name}"), [], |r| {
                r.get::<_, String>(0)
                    .or_else(|_| r.get::<_, i64>(0).map(|n| n.to_string()))
            })
            .unwrap()
        };
        assert_eq!(get("journal_mode"), "wal");
        assert_eq!(get("synchronous"), "2", "FULL");
        assert_eq!(get("foreign_keys"), "1");
        assert_eq!(get("busy_timeout"), "5000");
        assert_eq!(get("temp_store"), "2", "MEMORY");
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
