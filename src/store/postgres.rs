//! The shared PostgreSQL backend, for two gateways writing one store. Same traits, same
//! semantics and the same contract battery as SQLite; what differs is how exclusivity is
//! won: SQLite has one writer, here several pools (several daemons) write at once, so every
//! decision that must not race is made inside one statement or under a row/advisory lock.

use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};

use super::LastSeen;
use super::rows::{
    self, Columns, EVENT_INSERT_COLUMNS, EventRow, HostRow, LEASE_COLUMNS, LeaseRow, millis, now,
};
use super::writes::{self, WriteTx};
use super::{
    DiscoveryRetention, Event, EventHorizon, EventLog, EventQuery, EventRetention, ExpiredHost,
    HostChange, HostRecord, HostStore, Lease, LeaseFilter, LeaseState, LeaseStore, NewEvent,
    Pruned, Sighted, StoreError, StoreUrl,
};
use crate::types::{HostState, MacAddr};

/// The schema, embedded at build time from `migrations/postgres/`. sqlx takes an advisory
/// lock while migrating, so two daemons starting together do not both migrate.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Key of the transaction-scoped advisory lock that serialises host writes across daemons
/// (ASCII "bootgate"). Host writes are rare (inventory reloads, lifecycle moves); taking
/// one lock keeps `MacTaken` checks and compare-and-set exact without row-lock ordering.
const HOSTS_LOCK: i64 = 0x626f_6f74_6761_7465;

/// First key of the per-address advisory locks a group commit takes (ASCII "ipv4"); the
/// second key is the address as a 32-bit integer.
const LEASES_LOCK_CLASS: i32 = 0x6970_7634;

/// How often a transaction PostgreSQL aborted to break a deadlock (two batches locking the
/// same leases in different orders) is replayed before the error goes to the caller.
const DEADLOCK_RETRIES: u32 = 3;

/// Rows per INSERT statement in `append_many` (7 parameters a row; PostgreSQL allows 65535).
const EVENTS_PER_INSERT: usize = 1000;

/// Pool settings. The defaults suit one gateway daemon.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Upper bound on connections this daemon opens (PostgreSQL's `max_connections` is
    /// shared by both gateways and the operators' tools).
    pub max_connections: u32,
    /// How long a store call waits for a connection, including (re)connecting to a server
    /// that is down: the bound on how long a call can hang while PostgreSQL is unreachable.
    pub acquire_timeout: Duration,
    /// Server-side `statement_timeout` (and `lock_timeout`): a statement stuck behind a
    /// lock another daemon holds fails instead of tying up a connection for ever.
    pub statement_timeout: Duration,
    /// Client-side bound on a whole store call (all its statements and its commit): a
    /// server that stops answering on an open connection fails the call with
    /// `Unavailable` after this long instead of hanging it.
    pub call_timeout: Duration,
    /// The password (the secrets file's `[postgres] password`); it wins over one written
    /// in the URL, which check-config warns about. None: the URL's, else `PGPASSWORD` or
    /// `~/.pgpass` as libpq does.
    pub password: Option<crate::secrets::Secret>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(30),
            password: None,
        }
    }
}

/// The PostgreSQL store. Cheap to share behind an `Arc`; the pool reconnects by itself.
pub struct PostgresStore {
    /// Every read and write. Reads are single statements (one MVCC snapshot each); writes
    /// are transactions whose conflicts PostgreSQL resolves with row and advisory locks.
    pool: PgPool,
    /// The URL as displayed (password hidden), for error messages.
    url: String,
    /// Upper bound on one store call (see [`PgOptions::call_timeout`]).
    call_timeout: Duration,
    /// Set once the schema is migrated: at open, or (a store opened while the server was
    /// down) before the first call that reaches it.
    migrated: tokio::sync::OnceCell<()>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The URL as it may be shown: `postgres://***@host/db`.
fn shown(url: &str) -> String {
    StoreUrl::Postgres(url.to_string()).to_string()
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/db?sslmode=verify-full&sslrootcert=…`;
    /// TLS by rustls with the `sslmode` values of libpq: `disable`, `prefer` (the
    /// default), `require` (encrypted, unverified), `verify-ca`, `verify-full`), waiting up to
    /// `acquire_timeout` for the server, and migrates the schema to the current version.
    /// Errors are `Open`, naming the URL without its password.
    pub async fn open(url: &str, options: &PgOptions) -> Result<Self, StoreError> {
        Self::open_reachable(url, options)
            .await
            .map_err(|e| match e {
                StoreError::Unavailable { url, reason } => StoreError::Open { url, reason },
                e => e,
            })
    }

    /// As [`PostgresStore::open`], but a server that cannot be reached is `Unavailable`
    /// (the daemon then starts degraded on [`PostgresStore::open_lazy`]).
    pub async fn open_reachable(url: &str, options: &PgOptions) -> Result<Self, StoreError> {
        let (connect, pool_options) = Self::options(url, options)?;
        let pool = match pool_options.connect_with(connect).await {
            Ok(pool) => pool,
            Err(e) if is_unavailable(&e) => {
                return Err(StoreError::Unavailable {
                    url: shown(url),
                    reason: connect_reason(&e),
                });
            }
            Err(e) => {
                return Err(StoreError::Open {
                    url: shown(url),
                    reason: connect_reason(&e),
                });
            }
        };
        let store = PostgresStore {
            pool,
            url: shown(url),
            call_timeout: options.call_timeout,
            migrated: tokio::sync::OnceCell::new(),
        };
        store.migrate().await.map_err(|e| match e {
            e @ StoreError::Unavailable { .. } => e,
            e => StoreError::Open {
                url: shown(url),
                reason: format!("migrating the schema: {e}"),
            },
        })?;
        Ok(store)
    }

    /// A store on a server that is not reachable now: no connection is opened until the
    /// first call, and the schema is migrated before the first call that reaches the
    /// server. Every call fails `Unavailable` until then, so the daemon runs degraded and
    /// recovers by itself. Fails only on a malformed URL.
    pub fn open_lazy(url: &str, options: &PgOptions) -> Result<Self, StoreError> {
        let (connect, pool_options) = Self::options(url, options)?;
        Ok(PostgresStore {
            pool: pool_options.connect_lazy_with(connect),
            url: shown(url),
            call_timeout: options.call_timeout,
            migrated: tokio::sync::OnceCell::new(),
        })
    }

    fn options(
        url: &str,
        options: &PgOptions,
    ) -> Result<(PgConnectOptions, PgPoolOptions), StoreError> {
        let timeout_ms = options.statement_timeout.as_millis().to_string();
        let mut connect = PgConnectOptions::from_str(url).map_err(|e| StoreError::Open {
            url: shown(url),
            reason: format!("bad URL: {e}"),
        })?;
        if let Some(password) = &options.password {
            connect = connect.password(password.expose());
        }
        let connect = connect.application_name("bootgate").options([
            ("statement_timeout", timeout_ms.as_str()),
            ("lock_timeout", timeout_ms.as_str()),
            // The default, stated: a commit returns only once it is durable, which is
            // what makes an ACKed lease survive a crash of the daemon or the server.
            ("synchronous_commit", "on"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            // Idle connections are pinged before use: after a server restart the dead ones
            // are replaced instead of failing the first call.
            .test_before_acquire(true);
        Ok((connect, pool))
    }

    /// Migrates the schema once per store (sqlx takes an advisory lock, so two daemons do
    /// not both migrate). An unreachable server is `Unavailable`; a later call tries again.
    async fn migrate(&self) -> Result<(), StoreError> {
        self.migrated
            .get_or_try_init(|| async {
                MIGRATOR.run(&self.pool).await.map_err(|e| match e {
                    sqlx::migrate::MigrateError::Execute(e) if is_unavailable(&e) => {
                        StoreError::Unavailable {
                            url: self.url.clone(),
                            reason: e.to_string(),
                        }
                    }
                    e => StoreError::Migrate(e),
                })
            })
            .await
            .map(|_| ())
    }

    /// Closes the pool, waiting for checked-out connections to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Turns connection-level failures into [`StoreError::Unavailable`] naming the server,
    /// so callers can tell "PostgreSQL is down" from a refused or broken write.
    fn classify<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match result {
            Err(StoreError::Db(e)) if is_unavailable(&e) => Err(StoreError::Unavailable {
                url: self.url.clone(),
                reason: e.to_string(),
            }),
            other => other,
        }
    }

    /// Runs one store call under the call timeout and classifies its failure: the bound on
    /// how long a caller waits, even for a server that stops answering on an open
    /// connection (a partition, a hung host), where neither the acquire timeout nor the
    /// server's statement_timeout can help. A call cut off mid-commit may or may not have
    /// committed; the caller sees `Unavailable` and must not report success (no ACK).
    async fn run<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let call = async {
            if self.migrated.get().is_none() {
                self.migrate().await?;
            }
            call.await
        };
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(result) => self.classify(result),
            Err(_) => Err(StoreError::Unavailable {
                url: self.url.clone(),
                reason: format!("no answer within {:?}", self.call_timeout),
            }),
        }
    }

    /// Runs a whole transaction (each attempt under [`Self::run`]), replaying it when
    /// PostgreSQL aborted it to break a deadlock (nothing of it was committed, so a replay
    /// is safe).
    async fn with_retry<T, F, Fut>(&self, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut tries = 0;
        loop {
            match self.run(attempt()).await {
                Err(StoreError::Db(e)) if is_deadlock(&e) && tries < DEADLOCK_RETRIES => {
                    tries += 1;
                    // Let the winner of the deadlock finish before replaying.
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(tries))).await;
                    tracing::debug!(store = %self.url, tries, "transaction replayed after a deadlock");
                }
                other => return other,
            }
        }
    }
}

/// SQLSTATE of a database error, if it is one.
fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

/// 40P01 deadlock_detected, 40001 serialization_failure: the transaction was rolled back.
fn is_deadlock(e: &sqlx::Error) -> bool {
    matches!(sqlstate(e).as_deref(), Some("40P01" | "40001"))
}

/// The server could not be reached or went away mid-call.
/// Why connecting failed; a TLS failure says so and what to check. sqlx reports a
/// certificate the handshake refused as an I/O error wrapping the rustls error
/// (`invalid peer certificate: UnknownIssuer`), the rest as `Error::Tls`.
fn connect_reason(e: &sqlx::Error) -> String {
    let tls = match e {
        sqlx::Error::Tls(t) => Some(t.to_string()),
        sqlx::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(|r| r.to_string()),
        _ => None,
    };
    match tls {
        Some(why) => format!(
            "TLS with the server failed: {why} (check sslmode and sslrootcert in the store URL: sslrootcert must be the CA that signed the server's certificate, and with sslmode=verify-full the URL's host must be a name in it)"
        ),
        None => e.to_string(),
    }
}

fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        // class 08: connection exception; 57P01-03: admin/crash shutdown, cannot connect now
        sqlx::Error::Database(_) => sqlstate(e).is_some_and(|c| {
            c.starts_with("08") || matches!(c.as_str(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

// ---- value conversions -------------------------------------------------------------------

impl Columns for PgRow {
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
        Ok(self.try_get(column)?)
    }
}

/// The lease states that keep their address until `ends`, as the SQL array the conflict
/// check compares against (derived from [`LeaseState::holds_address`], not restated).
fn holding_states() -> Vec<String> {
    LeaseState::ALL
        .iter()
        .filter(|s| s.holds_address())
        .map(|s| s.as_str().to_string())
        .collect()
}

// ---- hosts -------------------------------------------------------------------------------

/// Selects hosts with their MACs (in declared order) in one statement, hence one snapshot.
macro_rules! host_select {
    () => {
        "SELECT h.name, h.state, h.source, h.ip, h.rack, h.role, h.spec::text AS spec, \
         h.created, h.updated, \
         ARRAY(SELECT m.mac FROM host_macs m WHERE m.host = h.name ORDER BY m.position) \
         AS macs \
         FROM hosts h"
    };
}

async fn fetch_host(conn: &mut PgConnection, name: &str) -> Result<Option<HostRecord>, StoreError> {
    sqlx::query(concat!(host_select!(), " WHERE h.name = $1"))
        .bind(name)
        .fetch_optional(conn)
        .await?
        .map(|row| rows::host(&row))
        .transpose()
}

/// Opens a host write: a transaction holding the hosts advisory lock, so host writes from
/// both gateways are strictly ordered (as SQLite's single writer orders them).
async fn begin_hosts(pool: &PgPool) -> Result<sqlx::Transaction<'static, Postgres>, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(HOSTS_LOCK)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// The host statements of [`WriteTx`] on an open transaction (under the hosts lock).
struct PgTx<'c>(&'c mut PgConnection);

impl WriteTx for PgTx<'_> {
    async fn host(&mut self, name: &str) -> Result<Option<HostRecord>, StoreError> {
        fetch_host(self.0, name).await
    }

    async fn host_exists(&mut self, name: &str) -> Result<bool, StoreError> {
        let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM hosts WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *self.0)
            .await?;
        Ok(found.is_some())
    }

    async fn mac_owner(&mut self, mac: MacAddr) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT host FROM host_macs WHERE mac = $1")
                .bind(mac.to_string())
                .fetch_optional(&mut *self.0)
                .await?,
        )
    }

    async fn insert_host(&mut self, h: &HostRow<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO hosts (name, state, source, ip, rack, role, spec, created, updated) \
             VALUES ($1, $2, $3, $4, $5, $6, $7::json, $8, $9)",
        )
        .bind(h.name)
        .bind(h.state)
        .bind(h.source)
        .bind(&h.ip)
        .bind(h.rack)
        .bind(h.role)
        .bind(&h.spec)
        .bind(h.created)
        .bind(h.updated)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn update_host(&mut self, h: &HostRow<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE hosts SET source = $1, ip = $2, rack = $3, role = $4, spec = $5::json, \
             updated = $6 WHERE name = $7",
        )
        .bind(h.source)
        .bind(&h.ip)
        .bind(h.rack)
        .bind(h.role)
        .bind(&h.spec)
        .bind(h.updated)
        .bind(h.name)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    async fn set_state(
        &mut self,
        name: &str,
        state: HostState,
        updated: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE hosts SET state = $1, updated = $2 WHERE name = $3")
            .bind(state.as_str())
            .bind(updated)
            .bind(name)
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }

    async fn delete_host(&mut self, name: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM hosts WHERE name = $1")
            .bind(name)
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }

    async fn insert_macs(&mut self, host: &str, macs: &[MacAddr]) -> Result<(), StoreError> {
        for (position, mac) in (0_i64..).zip(macs) {
            sqlx::query("INSERT INTO host_macs (mac, host, position) VALUES ($1, $2, $3)")
                .bind(mac.to_string())
                .bind(host)
                .bind(position)
                .execute(&mut *self.0)
                .await?;
        }
        Ok(())
    }

    async fn delete_macs(&mut self, host: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM host_macs WHERE host = $1")
            .bind(host)
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }

    async fn insert_event(&mut self, event: &NewEvent) -> Result<i64, StoreError> {
        insert_event(self.0, event).await
    }

    async fn discovered_count(&mut self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM hosts WHERE source = 'discovered'")
            .fetch_one(&mut *self.0)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn expiry_candidates(
        &mut self,
        seen_before: i64,
        over: u64,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT name FROM hosts WHERE source = 'discovered' AND (updated < $1 OR name IN \
             (SELECT name FROM hosts WHERE source = 'discovered' ORDER BY updated, name \
             LIMIT $2)) ORDER BY updated, name LIMIT $3",
        )
        .bind(seen_before)
        .bind(i64::try_from(over).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&mut *self.0)
        .await?)
    }

    async fn delete_discovered(&mut self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM hosts WHERE name = $1 AND source = 'discovered'")
            .bind(name)
            .execute(&mut *self.0)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

impl PostgresStore {
    async fn try_apply_host_changes(
        &self,
        changes: &[HostChange],
        actor: &str,
    ) -> Result<(), StoreError> {
        let mut tx = begin_hosts(&self.pool).await?;
        // Any error returns early and drops `tx`, which rolls the whole batch back.
        writes::apply_changes(&mut PgTx(&mut tx), changes, actor).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn try_set_host_state(
        &self,
        name: &str,
        from: Option<HostState>,
        to: HostState,
        actor: &str,
        detail: serde_json::Value,
    ) -> Result<HostRecord, StoreError> {
        let mut tx = begin_hosts(&self.pool).await?;
        let host = writes::set_state(&mut PgTx(&mut tx), name, from, to, actor, detail).await?;
        tx.commit().await?;
        Ok(host)
    }

    /// Sightings under the hosts lock, reading each host inside the transaction: both
    /// gateways record every unknown MAC they see, and the lock orders them, so the second
    /// finds the first's row and refreshes it instead of failing on the primary key.
    async fn try_record_discovered(
        &self,
        seen: &[HostRecord],
        actor: &str,
    ) -> Result<Vec<Sighted>, StoreError> {
        let mut tx = begin_hosts(&self.pool).await?;
        let mut out = Vec::with_capacity(seen.len());
        for s in seen {
            out.push(writes::record_sighting(&mut PgTx(&mut tx), s, actor).await?);
        }
        tx.commit().await?;
        Ok(out)
    }
}

impl PostgresStore {
    /// Under the hosts lock, like every host write: two gateways expiring at once are
    /// ordered, and the second finds the first's deletions done.
    async fn try_expire_discovered(
        &self,
        retention: &DiscoveryRetention,
        now: Timestamp,
        at_most: u32,
        actor: &str,
    ) -> Result<Vec<ExpiredHost>, StoreError> {
        let mut tx = begin_hosts(&self.pool).await?;
        let out =
            writes::expire_discovered(&mut PgTx(&mut tx), retention, now, at_most, actor).await?;
        tx.commit().await?;
        Ok(out)
    }
}

#[async_trait]
impl HostStore for PostgresStore {
    async fn expire_discovered(
        &self,
        retention: &DiscoveryRetention,
        now: Timestamp,
        at_most: u32,
        actor: &str,
    ) -> Result<Vec<ExpiredHost>, StoreError> {
        self.with_retry(|| self.try_expire_discovered(retention, now, at_most, actor))
            .await
    }

    async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let rows = sqlx::query(concat!(host_select!(), " ORDER BY h.name")).fetch_all(&self.pool);
        self.run(async { Ok(rows.await?) })
            .await?
            .iter()
            .map(rows::host)
            .collect()
    }

    async fn get_host(&self, name: &str) -> Result<Option<HostRecord>, StoreError> {
        self.run(async {
            let mut conn = self.pool.acquire().await?;
            fetch_host(&mut conn, name).await
        })
        .await
    }

    async fn host_by_mac(&self, mac: MacAddr) -> Result<Option<HostRecord>, StoreError> {
        let row = sqlx::query(concat!(
            host_select!(),
            " WHERE h.name = (SELECT host FROM host_macs WHERE mac = $1)"
        ))
        .bind(mac.to_string())
        .fetch_optional(&self.pool);
        self.run(async { Ok(row.await?) })
            .await?
            .map(|row| rows::host(&row))
            .transpose()
    }

    async fn apply_host_changes(
        &self,
        changes: &[HostChange],
        actor: &str,
    ) -> Result<(), StoreError> {
        self.with_retry(|| self.try_apply_host_changes(changes, actor))
            .await
    }

    async fn record_discovered(
        &self,
        seen: &[HostRecord],
        actor: &str,
    ) -> Result<Vec<Sighted>, StoreError> {
        self.with_retry(|| self.try_record_discovered(seen, actor))
            .await
    }

    async fn set_host_state(
        &self,
        name: &str,
        from: Option<HostState>,
        to: HostState,
        actor: &str,
        detail: serde_json::Value,
    ) -> Result<HostRecord, StoreError> {
        self.with_retry(|| self.try_set_host_state(name, from, to, actor, detail.clone()))
            .await
    }
}

// ---- leases ------------------------------------------------------------------------------

/// Writes one lease and its event on `conn` (inside the caller's transaction), refusing an
/// address another MAC still holds.
///
/// The check and the write are one statement: `ON CONFLICT (ip) DO UPDATE … WHERE` takes
/// the row lock of an existing lease, re-reads its latest committed version and updates it
/// only if it is the same MAC's or no longer holds the address. Two daemons racing for a
/// new address serialise on the primary key's unique index (the loser waits for the winner
/// to commit, then sees its row); racing for an existing row they serialise on its lock. So
/// of two commits through two pools at once, at most one can win — with no window between
/// a SELECT and a write, and no error that would poison a group commit's transaction.
/// When nothing was written the row is still locked by us, so reading the holder for the
/// `Conflict` error sees exactly the lease that refused us.
async fn write_lease(
    conn: &mut PgConnection,
    lease: &Lease,
    event: &NewEvent,
) -> Result<(), StoreError> {
    let l = LeaseRow::new(lease);
    let written = sqlx::query(
        "INSERT INTO leases (ip, mac, client_id, state, starts, ends, host, subnet, giaddr, \
             circuit_id, remote_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (ip) DO UPDATE SET mac = EXCLUDED.mac, client_id = EXCLUDED.client_id, \
             state = EXCLUDED.state, starts = EXCLUDED.starts, ends = EXCLUDED.ends, \
             host = EXCLUDED.host, subnet = EXCLUDED.subnet, giaddr = EXCLUDED.giaddr, \
             circuit_id = EXCLUDED.circuit_id, remote_id = EXCLUDED.remote_id \
         WHERE leases.mac = EXCLUDED.mac OR leases.state <> ALL($12) OR leases.ends <= $13",
    )
    .bind(&l.ip)
    .bind(&l.mac)
    .bind(l.client_id)
    .bind(l.state)
    .bind(l.starts)
    .bind(l.ends)
    .bind(l.host)
    .bind(l.subnet)
    .bind(&l.giaddr)
    .bind(l.circuit_id)
    .bind(l.remote_id)
    .bind(holding_states())
    .bind(millis(now()))
    .execute(&mut *conn)
    .await?;
    if written.rows_affected() == 0 {
        let row = sqlx::query("SELECT mac, ends FROM leases WHERE ip = $1")
            .bind(&l.ip)
            .fetch_one(&mut *conn)
            .await?;
        return Err(StoreError::Conflict {
            ip: lease.ip,
            holder: row.parsed("mac")?,
            until: row.timestamp("ends")?,
            requester: lease.mac,
        });
    }
    insert_event(conn, event).await?;
    Ok(())
}

impl PostgresStore {
    async fn try_commit_lease(&self, lease: &Lease, event: &NewEvent) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        write_lease(&mut tx, lease, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn try_commit_leases(
        &self,
        batch: &[(Lease, NewEvent)],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        // Items must lock their addresses in the caller's order (the first of two items for
        // one address wins), and two batches crossing orders would deadlock. So first take
        // one advisory lock per address, in address order: two batches sharing addresses
        // then queue instead of deadlocking. Single commits lock one row and need none.
        let mut keys: Vec<i32> = batch
            .iter()
            .map(|(l, _)| u32::from(l.ip).cast_signed())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        sqlx::query("SELECT pg_advisory_xact_lock($1, k) FROM unnest($2::int4[]) AS k")
            .bind(LEASES_LOCK_CLASS)
            .bind(keys)
            .execute(&mut *tx)
            .await?;
        let mut out = Vec::with_capacity(batch.len());
        for (lease, event) in batch {
            // A conflict raises no SQL error (the upsert just writes nothing), so the
            // transaction stays usable for the rest of the batch: no savepoints needed.
            match write_lease(&mut tx, lease, event).await {
                Err(e @ StoreError::Conflict { .. }) => out.push(Err(e)),
                Err(e) => return Err(e),
                Ok(()) => out.push(Ok(())),
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn try_expire_leases(&self, now: Timestamp) -> Result<Vec<Lease>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // One statement picks and marks: `FOR UPDATE` re-checks each row after waiting for
        // its lock, so a lease another daemon renewed meanwhile is not expired, and two
        // daemons sweeping at once expire (and log) each lease once. Locking in address
        // order keeps two sweeps from deadlocking each other.
        let rows = sqlx::query(
            "WITH due AS (SELECT ip, state AS was FROM leases \
                 WHERE state IN ('offered', 'active') AND ends <= $1 ORDER BY ip FOR UPDATE) \
             UPDATE leases l SET state = 'expired' FROM due WHERE l.ip = due.ip \
             RETURNING l.ip, l.mac, l.client_id, l.state, l.starts, l.ends, l.host, l.subnet, \
                 l.giaddr, l.circuit_id, l.remote_id, due.was",
        )
        .bind(millis(now))
        .fetch_all(&mut *tx)
        .await?;
        let mut expired = rows
            .iter()
            .map(|row| Ok((rows::lease(row)?, row.parsed::<LeaseState>("was")?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        expired.sort_by_key(|(l, _)| (l.ends, l.ip));
        for (lease, was) in &expired {
            insert_event(&mut tx, &writes::expired_event(lease, *was)).await?;
        }
        tx.commit().await?;
        Ok(expired.into_iter().map(|(l, _)| l).collect())
    }
}

#[async_trait]
impl LeaseStore for PostgresStore {
    async fn commit_lease(&self, lease: &Lease, event: &NewEvent) -> Result<(), StoreError> {
        // One row lock per transaction: it cannot deadlock, but the retry costs nothing.
        self.with_retry(|| self.try_commit_lease(lease, event))
            .await
    }

    /// One transaction, one WAL flush, for the whole batch (group commit). A conflict
    /// fails only its own item. Batches queue on per-address advisory locks taken in
    /// address order; should PostgreSQL still abort one to break a deadlock (against an
    /// expiry sweep), it is replayed whole.
    async fn commit_leases(
        &self,
        batch: &[(Lease, NewEvent)],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        self.with_retry(|| self.try_commit_leases(batch)).await
    }

    async fn get_lease(&self, ip: Ipv4Addr) -> Result<Option<Lease>, StoreError> {
        let mut q = QueryBuilder::<Postgres>::new(format!("SELECT {LEASE_COLUMNS} FROM leases"));
        q.push(" WHERE ip = ").push_bind(ip.to_string());
        let row = q.build().fetch_optional(&self.pool);
        self.run(async { Ok(row.await?) })
            .await?
            .map(|row| rows::lease(&row))
            .transpose()
    }

    async fn list_leases(&self, filter: &LeaseFilter) -> Result<Vec<Lease>, StoreError> {
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE 1 = 1"
        ));
        if let Some(subnet) = &filter.subnet {
            q.push(" AND subnet = ").push_bind(subnet.clone());
        }
        if let Some(mac) = filter.mac {
            q.push(" AND mac = ").push_bind(mac.to_string());
        }
        if let Some(state) = filter.state {
            q.push(" AND state = ").push_bind(state.as_str());
        }
        let rows = q.build().fetch_all(&self.pool);
        let mut leases = self
            .run(async { Ok(rows.await?) })
            .await?
            .iter()
            .map(rows::lease)
            .collect::<Result<Vec<_>, _>>()?;
        // Text order would put 10.0.0.10 before 10.0.0.2: sort by the address itself.
        leases.sort_by_key(|l| l.ip);
        Ok(leases)
    }

    async fn expire_leases(&self, now: Timestamp) -> Result<Vec<Lease>, StoreError> {
        self.with_retry(|| self.try_expire_leases(now)).await
    }

    async fn live_leases(&self, now: Timestamp) -> Result<Vec<Lease>, StoreError> {
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "SELECT {LEASE_COLUMNS} FROM leases \
             WHERE state IN ('offered', 'active', 'declined') AND ends > "
        ));
        q.push_bind(millis(now));
        let rows = q.build().fetch_all(&self.pool);
        let mut leases = self
            .run(async { Ok(rows.await?) })
            .await?
            .iter()
            .map(rows::lease)
            .collect::<Result<Vec<_>, _>>()?;
        leases.sort_by_key(|l| l.ip);
        Ok(leases)
    }

    async fn last_seen(&self, macs: &[MacAddr], hosts: &[String]) -> Result<LastSeen, StoreError> {
        let macs: Vec<String> = macs.iter().map(|m| m.to_string()).collect();
        let by_mac = sqlx::query(
            "SELECT mac, MAX(t) AS t FROM ( \
                 SELECT mac, MAX(time) AS t FROM events \
                 WHERE kind = 'lease-committed' AND mac = ANY($1) GROUP BY mac \
               UNION ALL \
                 SELECT mac, MAX(starts) AS t FROM leases WHERE mac = ANY($1) GROUP BY mac \
             ) AS seen GROUP BY mac ORDER BY mac",
        )
        .bind(&macs)
        .fetch_all(&self.pool);
        let by_host = sqlx::query(
            "SELECT host, MAX(time) AS t FROM events \
             WHERE kind = 'lease-committed' AND host = ANY($1) GROUP BY host ORDER BY host",
        )
        .bind(hosts)
        .fetch_all(&self.pool);
        let (by_mac, by_host) = self
            .run(async { Ok(tokio::try_join!(by_mac, by_host)?) })
            .await?;
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

// ---- heartbeats ----------------------------------------------------------------------------

/// Stamps our row and reads the age of the peer's, both by the server's clock (unix ms).
const BEAT: &str = "WITH t AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now), \
     beat AS (INSERT INTO gateways (id, seen) SELECT $1, now FROM t \
         ON CONFLICT (id) DO UPDATE SET seen = EXCLUDED.seen RETURNING seen) \
     SELECT (SELECT seen FROM beat) - seen FROM gateways WHERE id = $2";

#[async_trait]
impl crate::model::Heartbeats for PostgresStore {
    /// One statement: stamp our row, read the age of the peer's.
    async fn beat(&self, gateway: &str, peer: &str) -> Result<Option<Duration>, StoreError> {
        let age = sqlx::query_scalar::<_, i64>(BEAT)
            .bind(gateway)
            .bind(peer)
            .fetch_optional(&self.pool);
        let age = self.run(async { Ok(age.await?) }).await?;
        Ok(age.map(|ms| Duration::from_millis(ms.max(0).cast_unsigned())))
    }
}

// ---- events ------------------------------------------------------------------------------

/// Appends an event on `conn` (inside the caller's transaction, if any); returns its id.
async fn insert_event(conn: &mut PgConnection, event: &NewEvent) -> Result<i64, StoreError> {
    let ids = insert_events(conn, std::slice::from_ref(event)).await?;
    ids.first()
        .copied()
        .ok_or_else(|| StoreError::Batch("the event insert returned no id".into()))
}

/// The PostgreSQL backend's one event insert: multi-row INSERTs of up to
/// [`EVENTS_PER_INSERT`] events, in order (ids follow the VALUES order, so a batch keeps its
/// order in the log), each stamped now unless it brings its time. Returns the new ids.
async fn insert_events(
    conn: &mut PgConnection,
    events: &[NewEvent],
) -> Result<Vec<i64>, StoreError> {
    let stamp = now();
    let mut ids = Vec::with_capacity(events.len());
    for chunk in events.chunks(EVENTS_PER_INSERT) {
        let mut q =
            QueryBuilder::<Postgres>::new(format!("INSERT INTO events ({EVENT_INSERT_COLUMNS}) "));
        q.push_values(chunk, |mut row, e| {
            let e = EventRow::new(e, stamp);
            row.push_bind(e.time)
                .push_bind(e.kind)
                .push_bind(e.ip)
                .push_bind(e.mac)
                .push_bind(e.host.map(str::to_string))
                .push_bind(e.actor.to_string())
                .push_bind(e.detail)
                .push_unseparated("::json");
        });
        q.push(" RETURNING id");
        ids.extend(q.build_query_scalar::<i64>().fetch_all(&mut *conn).await?);
    }
    Ok(ids)
}

impl PostgresStore {
    async fn try_append(&self, event: &NewEvent) -> Result<i64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert_event(&mut conn, event).await
    }

    /// All the events in one transaction (all or none).
    async fn try_append_many(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn try_query(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        // With a limit: the newest N by id, re-sorted oldest first by the outer SELECT.
        let mut q = QueryBuilder::<Postgres>::new(
            "SELECT id, time, kind, ip, mac, host, actor, detail FROM (SELECT id, time, kind, \
             ip, mac, host, actor, detail::text AS detail FROM events WHERE 1 = 1",
        );
        rows::push_event_filters(&mut q, query);
        q.push(") AS newest ORDER BY id");
        q.build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::event)
            .collect()
    }
}

/// Reads the horizon row and the oldest event's time.
async fn read_horizon(conn: &mut PgConnection) -> Result<EventHorizon, StoreError> {
    let row = sqlx::query(
        "SELECT below_id, pruned_total, pruned_at, \
         (SELECT time FROM events ORDER BY id LIMIT 1) AS oldest \
         FROM event_horizon WHERE one = 1",
    )
    .fetch_one(&mut *conn)
    .await?;
    let ts = |ms: Option<i64>, column: &'static str| {
        ms.map(|ms| {
            Timestamp::from_millisecond(ms).map_err(|_| rows::corrupt(column, ms.to_string()))
        })
        .transpose()
    };
    Ok(EventHorizon {
        below_id: row.try_get("below_id")?,
        pruned_total: u64::try_from(row.try_get::<i64, _>("pruned_total")?).unwrap_or(0),
        pruned_at: ts(row.try_get("pruned_at")?, "pruned_at")?,
        oldest: ts(row.try_get("oldest")?, "time")?,
    })
}

impl PostgresStore {
    /// The cut below which `retention` lets events go (index lookups only).
    async fn try_prune_cut(
        &self,
        retention: &EventRetention,
        now: Timestamp,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT MIN(id) FROM events) AS min_id, \
             (SELECT MAX(id) FROM events) AS max_id, \
             (SELECT MAX(id) FROM events WHERE time < $1) AS old_max, \
             (SELECT below_id FROM event_horizon WHERE one = 1) AS below",
        )
        .bind(writes::cutoff_ms(retention.retain, now))
        .fetch_one(&self.pool)
        .await?;
        Ok(writes::prune_cut(
            retention,
            (row.try_get("min_id")?, row.try_get("max_id")?),
            row.try_get("old_max")?,
            row.try_get::<Option<i64>, _>("below")?.unwrap_or(0),
        ))
    }

    /// One short transaction: the horizon moves to `cut` (GREATEST: never back; its row
    /// lock orders two gateways pruning at once), up to `batch` rows below it go (SKIP
    /// LOCKED: rows another pruner holds are its to delete), and the count is kept.
    async fn try_prune_batch(&self, cut: i64, batch: u32) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE event_horizon SET below_id = GREATEST(below_id, $1) WHERE one = 1")
            .bind(cut)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query(
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE id < $1 \
             ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(cut)
        .bind(i64::from(batch))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n > 0 {
            sqlx::query(
                "UPDATE event_horizon SET pruned_total = pruned_total + $1, pruned_at = $2 \
                 WHERE one = 1",
            )
            .bind(i64::try_from(n).unwrap_or(i64::MAX))
            .bind(millis(now()))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(n)
    }

    async fn try_finish_prune(
        &self,
        deleted: u64,
        retention: &EventRetention,
    ) -> Result<EventHorizon, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let horizon = read_horizon(&mut conn).await?;
        if deleted > 0 {
            let event = writes::pruned_event(deleted, horizon.below_id, horizon.oldest, retention);
            insert_event(&mut conn, &event).await?;
        }
        Ok(horizon)
    }
}

#[async_trait]
impl EventLog for PostgresStore {
    async fn prune_events(
        &self,
        retention: &EventRetention,
        now: Timestamp,
    ) -> Result<Pruned, StoreError> {
        let cut = self.run(self.try_prune_cut(retention, now)).await?;
        let batch = retention.batch.max(1);
        let mut out = Pruned::default();
        loop {
            let n = self.with_retry(|| self.try_prune_batch(cut, batch)).await?;
            out.batches += 1;
            out.deleted += n;
            if n < u64::from(batch) {
                break;
            }
            // Other work gets the pool (and the server) between batches.
            tokio::task::yield_now().await;
        }
        out.horizon = self
            .run(self.try_finish_prune(out.deleted, retention))
            .await?;
        Ok(out)
    }

    async fn event_horizon(&self) -> Result<EventHorizon, StoreError> {
        self.run(async {
            let mut conn = self.pool.acquire().await?;
            read_horizon(&mut conn).await
        })
        .await
    }

    async fn append(&self, event: &NewEvent) -> Result<i64, StoreError> {
        self.run(self.try_append(event)).await
    }

    async fn append_many(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        self.run(self.try_append_many(events)).await
    }

    async fn query(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        self.run(self.try_query(query)).await
    }
}

// ---- boot tokens -------------------------------------------------------------------------

impl PostgresStore {
    async fn try_issue_boot_token(
        &self,
        token: &crate::store::BootToken,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM boot_tokens WHERE expires <= $1")
            .bind(millis(token.issued))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO boot_tokens (mac, host, token_sha256, purpose, issued, expires) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (mac) DO UPDATE SET host = excluded.host, \
             token_sha256 = excluded.token_sha256, purpose = excluded.purpose, \
             issued = excluded.issued, expires = excluded.expires, consumed = NULL \
             WHERE boot_tokens.token_sha256 <> excluded.token_sha256",
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

    /// Consuming locks the row (`FOR UPDATE`) so two gateways checking the same token at
    /// once cannot both accept it.
    async fn try_check_boot_token(
        &self,
        mac: MacAddr,
        offered: &str,
        now: Timestamp,
        use_: crate::store::TokenUse,
    ) -> Result<crate::store::TokenCheck, StoreError> {
        if use_ == crate::store::TokenUse::Keep {
            let row = sqlx::query(concat!(
                "SELECT ",
                rows::token_columns!(),
                " FROM boot_tokens WHERE mac = $1"
            ))
            .bind(mac.to_string())
            .fetch_optional(&self.pool)
            .await?;
            return Ok(crate::store::decide_token(
                row.as_ref().map(rows::boot_token).transpose()?,
                offered,
                now,
            ));
        }
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            rows::token_columns!(),
            " FROM boot_tokens WHERE mac = $1 FOR UPDATE"
        ))
        .bind(mac.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let check = crate::store::decide_token(
            row.as_ref().map(rows::boot_token).transpose()?,
            offered,
            now,
        );
        if matches!(check, crate::store::TokenCheck::Accepted { .. }) {
            sqlx::query("UPDATE boot_tokens SET consumed = $2 WHERE mac = $1")
                .bind(mac.to_string())
                .bind(millis(now))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(check)
    }
}

#[async_trait]
impl crate::store::BootTokenStore for PostgresStore {
    async fn issue_boot_token(&self, token: &crate::store::BootToken) -> Result<(), StoreError> {
        self.run(self.try_issue_boot_token(token)).await
    }

    async fn check_boot_token(
        &self,
        mac: MacAddr,
        offered: &str,
        now: Timestamp,
        use_: crate::store::TokenUse,
    ) -> Result<crate::store::TokenCheck, StoreError> {
        self.run(self.try_check_boot_token(mac, offered, now, use_))
            .await
    }

    async fn site_key(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.run(async {
            sqlx::query(
                "INSERT INTO site_keys (name, key) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(candidate)
            .execute(&self.pool)
            .await?;
            let key: Vec<u8> = sqlx::query_scalar("SELECT key FROM site_keys WHERE name = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await?;
            Ok(key)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holding_states_follow_holds_address() {
        assert_eq!(holding_states(), vec!["offered", "active", "declined"]);
    }

    #[test]
    fn connection_failures_are_unavailable_others_are_not() {
        assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(is_unavailable(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        ))));
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
        assert!(!is_deadlock(&sqlx::Error::RowNotFound));
    }

    #[test]
    fn open_errors_hide_the_password() {
        assert_eq!(
            shown("postgres://bg:hunter2@db1:5432/bootgate"),
            "postgres://***@db1:5432/bootgate"
        );
    }
}
