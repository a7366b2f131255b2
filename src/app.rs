//! The running daemon: opens the store once, loads the inventory, starts every listener
//! under one cancellation token, and reloads the inventory on SIGHUP or `bootgate reload`.
//! A bad inventory edit never takes the daemon down: the last good one stays in force.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use jiff::Timestamp;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::inventory::sync::{SyncReport, reconcile};
use crate::inventory::{Invalid, Inventory, Problem};
use crate::model::{Heartbeats, Lease, LeaseState, StoreHealth};
use crate::ops::{Operations, ReleaseError, ReloadFailure, ReloadOutcome};
use crate::snapshot::{Loaded, Snapshot, Whois};
use crate::store::{self, EventKind, NewEvent, Store};

pub use crate::config::load_inventory;

/// How long shutdown waits for listeners to finish in-flight work (systemd's stop budget is
/// ours to keep small: SIGTERM must end the process within 2 s).
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// The running daemon's parts, owned here and handed to each server as the small context
/// it uses (see the `*_context` builders); nothing below `app.rs` sees this struct.
pub struct App {
    pub config: Config,
    pub store: Arc<dyn Store>,
    inventory: Snapshot,
    last_failure: ArcSwap<Option<ReloadFailure>>,
    /// Serialises reloads so two SIGHUPs can't interleave their store transactions.
    reload_lock: tokio::sync::Mutex<()>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub started_at: Timestamp,
    /// Address book + lease commits, shared by DHCP and admin commands.
    pub ipam: Arc<crate::ipam::Ipam>,
    /// Whether the store answers (degraded mode when not).
    health: Arc<StoreHealth>,
    /// Group-written events for the busy HTTP/TFTP boot paths.
    pub events: crate::events::EventSink,
    /// Boot scripts for HTTP and TFTP (with their cache of token-less scripts).
    pub scripts: Arc<crate::scripts::ScriptService>,
    /// The Ansible hand-off runner when `[handoff] enabled` (shared: its semaphore bounds
    /// concurrent runs daemon-wide).
    pub handoff: Option<Arc<crate::handoff::Runner>>,
    /// API bearer tokens (re-read on reload; a bad file refuses the reload, the set stays).
    pub tokens: Arc<ArcSwap<crate::http::auth::Tokens>>,
    /// BMC credentials (re-read on reload; a bad file refuses the reload, the set stays).
    pub secrets: Arc<ArcSwap<crate::secrets::Secrets>>,
    /// BMC power control (Redfish, IPMI), bounded per gateway.
    pub power: Arc<dyn crate::bmc::PowerControl>,
    /// The peer gateway as the heartbeat sees it: our RFC 3074 share of the clients.
    pub peers: Arc<crate::ha::PeerWatch>,
    /// The shared store's heartbeat rows (PostgreSQL only).
    heartbeats: Option<Arc<dyn Heartbeats>>,
}

/// The API tokens the config names (none configured → an empty set: no mutating API).
pub fn load_tokens(
    config: &Config,
) -> Result<crate::http::auth::Tokens, crate::http::auth::TokensError> {
    match &config.http.tokens_file {
        Some(path) => crate::http::auth::Tokens::load(path),
        None => Ok(Default::default()),
    }
}

/// What a reload reads, all of it checked before anything is swapped: the API tokens,
/// the secrets (BMC logins), the inventory and the boot assets. Every problem of each is
/// returned at once.
fn load_for_reload(
    config: &Config,
) -> Result<
    (
        crate::http::auth::Tokens,
        crate::secrets::Secrets,
        Inventory,
        crate::boot::BootAssets,
    ),
    Vec<Problem>,
> {
    let tokens = load_tokens(config).map_err(|e| Problem {
        file: config.http.tokens_file.clone().unwrap_or_default(),
        entry: "-".into(),
        field: "tokens".into(),
        reason: e.to_string(),
    });
    // The error names the file (or the credential) itself.
    let secrets = config.load_secrets().map_err(|e| Problem {
        file: config
            .secrets_file
            .clone()
            .unwrap_or_else(|| config.path.clone()),
        entry: "-".into(),
        field: "secrets".into(),
        reason: e.to_string(),
    });
    match (tokens, secrets, load_inventory(config)) {
        (Ok(tokens), Ok(secrets), Ok((inventory, boot))) => Ok((tokens, secrets, inventory, boot)),
        (tokens, secrets, site) => {
            let mut all: Vec<Problem> = tokens.err().into_iter().collect();
            all.extend(secrets.err());
            all.extend(site.err().map(|Invalid(p)| p).unwrap_or_default());
            Err(all)
        }
    }
}

impl App {
    /// Opens the store, loads and reconciles the inventory. Fails (the daemon does not start)
    /// when the inventory is invalid at start: there is no last good one to fall back to.
    pub async fn start(config: Config) -> anyhow::Result<Arc<App>> {
        let (inventory, boot) = load_inventory(&config)
            .with_context(|| format!("inventory {}", config.inventory_dir.display()))?;
        let health = Arc::new(StoreHealth::new());
        // Before the store: the secrets hold its password.
        let secrets = config.load_secrets().context("secrets")?;
        let (store, heartbeats) = open_store(&config, &secrets, &health).await?;
        let events = crate::events::EventSink::spawn_with(store.clone(), health.clone());
        record_start(&store, &events, &health, &inventory).await?;
        let tokens = load_tokens(&config).context("API tokens")?;
        let ipam = crate::ipam::Ipam::start(
            store.clone(),
            crate::ipam::IpamOptions {
                shared: matches!(config.store, store::StoreUrl::Postgres(_)),
                sync_interval: config.postgres.sync_interval,
                health: health.clone(),
            },
        )
        .await
        .context("loading leases")?;
        if config.handoff.enabled && health.is_up() {
            fail_interrupted_handoffs(store.as_ref()).await?;
        }
        let handoff = config.handoff.enabled.then(|| {
            Arc::new(crate::handoff::Runner::new(
                config.handoff.clone(),
                config.state_dir.clone(),
                store.clone(),
            ))
        });
        let power = Arc::new(crate::bmc::Bmcs::new(config.bmc.clone()));
        let peers = Arc::new(crate::ha::PeerWatch::new(config.ha.clone()));
        let degraded_at_start = !health.is_up();
        let inventory = Snapshot::new(Loaded::new(inventory, boot, 1));
        let scripts = Arc::new(crate::scripts::ScriptService::new(
            inventory.clone(),
            store.clone(),
            Whois {
                ipam: ipam.clone(),
                inventory: inventory.clone(),
            },
            events.clone(),
            config.boot.http_base.clone(),
        ));
        let app = App {
            handoff,
            events,
            scripts,
            peers,
            heartbeats,
            ipam,
            health,
            config,
            store,
            inventory,
            last_failure: ArcSwap::from_pointee(None),
            reload_lock: tokio::sync::Mutex::new(()),
            tokens: Arc::new(ArcSwap::from_pointee(tokens)),
            secrets: Arc::new(ArcSwap::from_pointee(secrets)),
            power,
            metrics: crate::http::metrics_handle(),
            started_at: Timestamp::now(),
        };
        app.update_inventory_metrics();
        let app = Arc::new(app);
        if degraded_at_start {
            tokio::spawn(recover(Arc::downgrade(&app)));
        }
        Ok(app)
    }

    /// The inventory in force (a cheap snapshot; never blocks a reload).
    pub fn inventory(&self) -> Arc<Loaded> {
        self.inventory.load()
    }

    pub fn last_failure(&self) -> Option<ReloadFailure> {
        self.last_failure.load().as_ref().clone()
    }

    /// Re-reads the API tokens, the secrets and the inventory. On success the inventory is
    /// reconciled into the store and all three are swapped in; if any fails to load, none
    /// is: the last good ones stay, the problems are logged, kept for /healthz, recorded as an
    /// `inventory-rejected` event and returned (`bootgate reload` exits non-zero).
    pub async fn reload(&self, actor: &str) -> ReloadOutcome {
        let _guard = self.reload_lock.lock().await;
        let current = self.inventory();
        let refused = |problems: Vec<String>| ReloadOutcome {
            ok: false,
            generation: current.generation,
            hosts: current.inventory.hosts.len(),
            added: vec![],
            changed: vec![],
            removed: vec![],
            problems,
        };
        let (tokens, secrets, inventory, boot) = match load_for_reload(&self.config) {
            Ok(x) => x,
            Err(problems) => {
                let lines = self
                    .refuse_reload(actor, current.generation, problems)
                    .await;
                return refused(lines);
            }
        };
        let report = match reconcile(self.store.as_ref(), &inventory, actor).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "inventory reload: store refused the changes");
                metrics::counter!("bootgate_inventory_reloads_total", "result" => "store-error")
                    .increment(1);
                return refused(vec![format!("store: {e}")]);
            }
        };
        self.tokens.store(Arc::new(tokens));
        self.secrets.store(Arc::new(secrets));
        let generation = current.generation + 1;
        let hosts = inventory.hosts.len();
        if let Err(e) = log_loaded(&self.store, actor, generation, hosts, &report).await {
            tracing::error!(error = %e, "could not record inventory-loaded event");
        }
        self.inventory
            .replace(Loaded::new(inventory, boot, generation));
        self.last_failure.store(Arc::new(None));
        metrics::counter!("bootgate_inventory_reloads_total", "result" => "ok").increment(1);
        self.update_inventory_metrics();
        ReloadOutcome {
            ok: true,
            generation,
            hosts,
            added: report.added,
            changed: report.changed,
            removed: report.removed,
            problems: vec![],
        }
    }

    /// Records a refused reload (log, event, /healthz) and returns its problem lines.
    async fn refuse_reload(&self, actor: &str, kept: u64, problems: Vec<Problem>) -> Vec<String> {
        for p in &problems {
            tracing::error!(problem = %p, "reload refused; keeping generation {kept}, the API tokens and the secrets in force");
        }
        let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let ev = NewEvent::new(EventKind::InventoryRejected, actor)
            .detail(serde_json::json!({"problems": lines, "kept_generation": kept}));
        if let Err(e) = self.store.append(&ev).await {
            tracing::error!(error = %e, "could not record inventory-rejected event");
        }
        self.last_failure.store(Arc::new(Some(ReloadFailure {
            at: Timestamp::now(),
            problems,
        })));
        metrics::counter!("bootgate_inventory_reloads_total", "result" => "rejected").increment(1);
        lines
    }

    /// Releases the lease on `ip` at an operator's request (`bootgate leases release`).
    pub async fn release_lease(
        &self,
        ip: std::net::Ipv4Addr,
        actor: &str,
    ) -> Result<Lease, ReleaseError> {
        let lease = self
            .store
            .get_lease(ip)
            .await?
            .ok_or(ReleaseError::NoLease(ip))?;
        let now = Timestamp::now();
        if lease.state != LeaseState::Active || lease.ends <= now {
            return Err(ReleaseError::NotActive {
                ip,
                mac: lease.mac,
                state: lease.state,
            });
        }
        let client = crate::ipam::client_of(&lease);
        let previous = {
            let mut book = self.ipam.book();
            crate::ipam::Ipam::begin_commit(&mut book, ip, client.clone(), lease.mac)
        };
        let released = Lease {
            state: LeaseState::Released,
            ends: now,
            ..lease
        };
        let mut ev = NewEvent::new(EventKind::LeaseReleased, actor)
            .ip(ip)
            .mac(released.mac)
            .detail(serde_json::json!({"by": "operator", "subnet": released.subnet}));
        if let Some(h) = &released.host {
            ev = ev.host(h.clone());
        }
        self.ipam.commit(&released, client, previous, &ev).await?;
        Ok(released)
    }

    /// Who holds an address (for attributing TFTP and HTTP fetches).
    fn whois(&self) -> Whois {
        Whois {
            ipam: self.ipam.clone(),
            inventory: self.inventory.clone(),
        }
    }

    /// What the DHCP server uses.
    fn dhcp_context(&self) -> crate::dhcp::server::DhcpContext {
        crate::dhcp::server::DhcpContext {
            interfaces: self.config.interfaces.clone(),
            settings: self.config.dhcp.clone(),
            boot: self.config.boot.clone(),
            inventory: self.inventory.clone(),
            ipam: self.ipam.clone(),
            events: self.events.clone(),
            discovery: crate::discovery::DiscoverySink::spawn_with(
                self.store.clone(),
                self.config.discovery.clone(),
            ),
            share: self.peers.clone(),
        }
    }

    /// What the REST API, /healthz and /metrics use.
    fn api_context(self: &Arc<Self>) -> crate::http::ApiContext {
        crate::http::ApiContext {
            store: self.store.clone(),
            inventory: self.inventory.clone(),
            events: self.events.clone(),
            health: self.health.clone(),
            power: self.power.clone(),
            secrets: self.secrets.clone(),
            access: crate::http::auth::Access {
                tokens: self.tokens.clone(),
                open_reads: self.config.http.open_reads,
            },
            ops: self.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// What the boot side of the HTTP listener uses.
    fn boot_context(&self) -> crate::http::boot::BootContext {
        crate::http::boot::BootContext {
            images_dir: self.config.boot_images_dir.clone(),
            image_cache: self.config.http.image_cache,
            scripts: self.scripts.clone(),
            store: self.store.clone(),
            inventory: self.inventory.clone(),
            events: self.events.clone(),
            whois: self.whois(),
            handoff: self.handoff.clone().map(|runner| crate::handoff::Handoff {
                runner,
                inventory: self.inventory.clone(),
            }),
        }
    }

    fn update_inventory_metrics(&self) {
        let loaded = self.inventory();
        metrics::gauge!("bootgate_inventory_generation").set(loaded.generation as f64);
        metrics::gauge!("bootgate_inventory_hosts").set(loaded.inventory.hosts.len() as f64);
        metrics::gauge!("bootgate_inventory_subnets").set(loaded.inventory.subnets.len() as f64);
    }
}

#[async_trait]
impl Operations for App {
    async fn reload(&self, actor: &str) -> ReloadOutcome {
        App::reload(self, actor).await
    }
    async fn release_lease(
        &self,
        ip: std::net::Ipv4Addr,
        actor: &str,
    ) -> Result<Lease, ReleaseError> {
        App::release_lease(self, ip, actor).await
    }
    fn last_failure(&self) -> Option<ReloadFailure> {
        App::last_failure(self)
    }
    fn deferred_lease_writes(&self) -> usize {
        self.ipam.deferred_len()
    }
    fn started_at(&self) -> Timestamp {
        self.started_at
    }
    fn book(&self) -> Vec<crate::ops::BookClaim> {
        use crate::ipam::ClaimKind;
        let book = self.ipam.book();
        let mut claims: Vec<crate::ops::BookClaim> = book
            .live_claims()
            .map(|(ip, c)| crate::ops::BookClaim {
                ip: *ip,
                mac: c.mac,
                kind: match c.kind {
                    ClaimKind::Offer => "offer",
                    ClaimKind::Lease => "lease",
                    ClaimKind::Committing => "committing",
                    ClaimKind::Quarantine => "quarantine",
                }
                .to_string(),
                until: c.until,
            })
            .collect();
        drop(book);
        claims.sort_by_key(|c| c.ip);
        claims
    }
}

/// Records the start, and reconciles the inventory into the store when it answers; a
/// daemon started without its store queues the event, and `recover` reconciles later.
async fn record_start(
    store: &Arc<dyn Store>,
    events: &crate::events::EventSink,
    health: &StoreHealth,
    inventory: &Inventory,
) -> anyhow::Result<()> {
    let hosts = inventory.hosts.len();
    let started = NewEvent::new(EventKind::DaemonStarted, "daemon")
        .detail(serde_json::json!({"version": env!("CARGO_PKG_VERSION"), "hosts": hosts}));
    if health.is_up() {
        let report = reconcile_at_start(store.as_ref(), inventory).await?;
        store.append(&started).await?;
        log_loaded(store, "inventory", 1, hosts, &report).await?;
    } else {
        events.record(started).await;
    }
    Ok(())
}

/// Opens the configured store (a PostgreSQL one with the password of `secrets`' `[postgres]`,
/// read once: a changed password takes effect at the next start). A PostgreSQL server that
/// cannot be reached does not stop the start: the store is opened lazily, `health` marked
/// down, and the daemon serves degraded until the server answers (see [`recover`]).
async fn open_store(
    config: &Config,
    secrets: &crate::secrets::Secrets,
    health: &StoreHealth,
) -> anyhow::Result<(Arc<dyn Store>, Option<Arc<dyn Heartbeats>>)> {
    use crate::store::postgres::PostgresStore;
    let options = crate::store::postgres::PgOptions {
        password: secrets.postgres_password().cloned(),
        ..config.postgres.pg_options()
    };
    let store::StoreUrl::Postgres(raw) = &config.store else {
        let store = store::open_with(&config.store, &options)
            .await
            .with_context(|| format!("opening store {}", config.store))?;
        return Ok((store, None));
    };
    let pg = match PostgresStore::open_reachable(raw, &options).await {
        Ok(pg) => pg,
        Err(store::StoreError::Unavailable { url, reason }) => {
            tracing::warn!(store = %url, %reason, "store unreachable at start: starting degraded");
            health.mark_down(&format!("{url}: {reason}"));
            PostgresStore::open_lazy(raw, &options)
                .with_context(|| format!("opening store {}", config.store))?
        }
        Err(e) => return Err(e).with_context(|| format!("opening store {}", config.store)),
    };
    let pg = Arc::new(pg);
    Ok((pg.clone(), Some(pg)))
}

/// Reconciles the inventory into the store at start. Two gateways starting together on
/// one shared store race to add the same hosts; the loser's transaction fails as a whole.
/// Its plan is then stale: plan again.
async fn reconcile_at_start(
    store: &dyn Store,
    inventory: &Inventory,
) -> anyhow::Result<SyncReport> {
    let mut attempt = 0;
    loop {
        match reconcile(store, inventory, "inventory").await {
            Ok(r) => return Ok(r),
            Err(e) if attempt < 3 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "reconciling the inventory failed; planning again");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(e).context("reconciling the inventory into the store"),
        }
    }
}

async fn fail_interrupted_handoffs(store: &dyn Store) -> anyhow::Result<()> {
    let interrupted = crate::handoff::fail_interrupted(store)
        .await
        .context("failing hand-offs the last daemon left running")?;
    for host in interrupted {
        tracing::warn!(
            host,
            "hand-off interrupted by the last shutdown: host failed"
        );
    }
    Ok(())
}

/// First and longest pause between attempts of [`recover`].
const RECOVER_FIRST: Duration = Duration::from_millis(500);
const RECOVER_MAX: Duration = Duration::from_secs(10);

/// For a daemon that started without its store: once the store answers, does what the
/// start skipped (reconcile the inventory in force, fail interrupted hand-offs), retrying
/// with backoff. Lease writes, events and sightings queued meanwhile flush by themselves.
async fn recover(app: std::sync::Weak<App>) {
    let mut pause = RECOVER_FIRST;
    loop {
        tokio::time::sleep(pause).await;
        let Some(app) = app.upgrade() else { return };
        let done = {
            let _guard = app.reload_lock.lock().await;
            let loaded = app.inventory();
            match reconcile(app.store.as_ref(), &loaded.inventory, "inventory").await {
                Ok(report) => {
                    let hosts = loaded.inventory.hosts.len();
                    if let Err(e) =
                        log_loaded(&app.store, "inventory", loaded.generation, hosts, &report).await
                    {
                        tracing::warn!(error = %e, "could not record inventory-loaded event");
                    }
                    if app.config.handoff.enabled
                        && let Err(e) = fail_interrupted_handoffs(app.store.as_ref()).await
                    {
                        tracing::warn!(error = %e, "hand-off clean-up after the store returned failed");
                    }
                    tracing::info!(hosts, "store reachable: inventory reconciled");
                    true
                }
                Err(e) => {
                    tracing::debug!(error = %e, "store still unreachable: inventory not reconciled yet");
                    false
                }
            }
        };
        if done {
            return;
        }
        pause = (pause * 2).min(RECOVER_MAX);
    }
}

async fn log_loaded(
    store: &Arc<dyn Store>,
    actor: &str,
    generation: u64,
    hosts: usize,
    report: &SyncReport,
) -> Result<i64, store::StoreError> {
    tracing::info!(
        generation,
        hosts,
        added = report.added.len(),
        changed = report.changed.len(),
        removed = report.removed.len(),
        "inventory loaded"
    );
    store
        .append(
            &NewEvent::new(EventKind::InventoryLoaded, actor).detail(serde_json::json!({
                "generation": generation,
                "hosts": hosts,
                "added": report.added,
                "changed": report.changed,
                "removed": report.removed,
            })),
        )
        .await
}

/// Runs the daemon until SIGTERM/SIGINT: every listener starts together and stops together.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let app = App::start(config).await?;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    start_listeners(&app, &tracker, &cancel).await?;
    tracker.close();
    until_stopped(&app).await?;
    notify(&[sd_notify::NotifyState::Stopping]);
    cancel.cancel();
    shut_down(&app, &tracker).await;
    Ok(())
}

/// Binds and spawns every listener, each with its own context: HTTP (API + boot), the
/// control socket, TFTP and DHCP on the served interfaces, the HA heartbeat.
async fn start_listeners(
    app: &Arc<App>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    tracker.spawn(crate::http::run(
        Arc::new(app.api_context()),
        Arc::new(app.boot_context()),
        http_listeners(&app.config).await?,
        app.config.http.limits,
        cancel.clone(),
    ));
    let control = crate::control::bind(&app.config.control_socket).with_context(|| {
        format!(
            "binding control socket {}",
            app.config.control_socket.display()
        )
    })?;
    tracker.spawn(crate::control::run(app.clone(), control, cancel.clone()));
    tracker.spawn(crate::events::retention_loop(
        app.store.clone(),
        app.config.events.clone(),
        cancel.clone(),
    ));
    if !app.config.interfaces.is_empty() {
        start_tftp(app, tracker, cancel)?;
        crate::dhcp::server::DhcpServer::new(app.dhcp_context())
            .start(tracker, cancel)
            .context("starting DHCP")?;
    }
    if let Some(hb) = &app.heartbeats
        && app.peers.settings().is_some()
    {
        tracker.spawn(crate::ha::heartbeat_loop(
            hb.clone(),
            app.peers.clone(),
            cancel.clone(),
        ));
    }
    Ok(())
}

/// The plain HTTP listener and, with `[http] tls_*`, the TLS one that takes the API over.
async fn http_listeners(config: &Config) -> anyhow::Result<Vec<crate::http::Listener>> {
    use crate::http::{Listener, Role};
    let bind = |addr: std::net::SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding HTTP listener on {addr}"))
    };
    let plain = bind(config.http_listen).await?;
    let Some(tls) = &config.http.tls else {
        return Ok(vec![Listener {
            tcp: plain,
            tls: None,
            role: Role::All,
        }]);
    };
    // Checked when the config was read; a file changed since fails the start here.
    let server = crate::http::tls::server_config(&tls.cert, &tls.key)
        .with_context(|| format!("{}: [http] tls_cert, tls_key", config.path.display()))?;
    Ok(vec![
        Listener {
            tcp: plain,
            tls: None,
            role: if tls.plain_api {
                Role::All
            } else {
                Role::BootOnly
            },
        },
        Listener {
            tcp: bind(tls.listen).await?,
            tls: Some(tokio_rustls::TlsAcceptor::from(server)),
            role: Role::All,
        },
    ])
}

/// Tells systemd we are ready, reloads on SIGHUP, returns on SIGTERM or SIGINT.
async fn until_stopped(app: &App) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tracing::info!(
        http = %app.config.http_listen,
        control = %app.config.control_socket.display(),
        store = %app.config.store,
        "bootgate ready"
    );
    notify(&[sd_notify::NotifyState::Ready]);
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return Ok(()); }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return Ok(()); }
            _ = hup.recv() => {
                let out = app.reload("signal:SIGHUP").await;
                tracing::info!(ok = out.ok, generation = out.generation, "SIGHUP reload done");
            }
        }
    }
}

/// After the cancel: ends running plays, flushes events around the listeners' grace
/// period, records the stop, removes the control socket.
async fn shut_down(app: &App, tracker: &TaskTracker) {
    if let Some(handoff) = &app.handoff {
        // Kills running plays and records their hosts as failed.
        handoff.shutdown().await;
    }
    // Returns at once while the store is down (degraded): queued events are then lost.
    app.events.flush().await;
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("listeners did not stop within {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    // Events of requests that finished during the grace period.
    app.events.flush().await;
    let _ = app
        .store
        .append(&NewEvent::new(EventKind::DaemonStopped, "daemon"))
        .await;
    let _ = std::fs::remove_file(&app.config.control_socket);
}

/// Starts a TFTP server on every served interface's address, serving `boot_images`, and a
/// task that turns finished transfers into `tftp-transfer` events.
fn start_tftp(
    app: &Arc<App>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    use crate::tftp::{TftpConfig, TftpServer, TransferRecord};
    // Bounded: under a flood of transfers, events are dropped (and counted) rather than
    // queued without limit; the transfers themselves are unaffected.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<TransferRecord>(1024);
    let on_done: crate::tftp::OnDone = Arc::new(move |r: TransferRecord| {
        if tx.try_send(r).is_err() {
            metrics::counter!("bootgate_events_dropped_total", "kind" => "tftp-transfer")
                .increment(1);
        }
    });
    for iface in &app.config.interfaces {
        let cfg = TftpConfig {
            root: app.config.boot_images_dir.clone(),
            on_done: Some(on_done.clone()),
            max_sessions_per_source: app.config.tftp.max_sessions_per_source,
            ..TftpConfig::default()
        };
        let server = TftpServer::bind(
            &iface.name,
            iface.address.addr(),
            crate::tftp::TFTP_PORT,
            cfg,
            Some(Arc::new(crate::scripts::TftpScripts(app.scripts.clone()))),
        )
        .with_context(|| format!("starting TFTP on {}", iface.name))?;
        tracker.spawn(server.run(cancel.clone()));
    }
    let whois = app.whois();
    let events = app.events.clone();
    tracker.spawn(async move {
        while let Some(r) = rx.recv().await {
            let ip = *r.peer.ip();
            let mut ev = NewEvent::new(EventKind::TftpTransfer, "tftp")
                .ip(ip)
                .detail(serde_json::json!({
                    "file": r.file,
                    "result": r.result.as_str(),
                    "bytes": r.bytes,
                    "elapsed_ms": r.elapsed.as_millis() as u64,
                    "blksize": r.blksize,
                    "windowsize": r.windowsize,
                }));
            if let Some((mac, host)) = whois.who_has(ip) {
                ev = ev.mac(mac);
                if let Some(h) = host {
                    ev = ev.host(h);
                }
            }
            events.record(ev).await;
        }
    });
    Ok(())
}

/// Tells systemd (Type=notify) where we are; a no-op when not run by systemd.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}
