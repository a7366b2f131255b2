//! The HTTP listener: health, Prometheus metrics and the read-only REST API over hosts,
//! leases and events. (Boot scripts, images and phone-home join it in the boot-chain work.)
//! Handlers read the store and the inventory snapshot; they never hold a lock across I/O.

use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::bmc::PowerControl;
use crate::events::EventSink;
use crate::model::{
    EventKind, EventQuery, LeaseFilter, LeaseState, Store, StoreError, StoreHealth,
};
use crate::ops::{Operations, ReleaseError};
use crate::secrets::Secrets;
use crate::snapshot::Snapshot;
use crate::types::{HostState, MacAddr};
use crate::views::{EventView, HostDetail, HostView, LeaseView};

pub mod auth;
pub mod boot;
pub mod image_cache;
mod images;
pub mod limits;
pub mod query;
mod settings;
pub mod tls;
pub use limits::{Limits, Listener, Role};
pub use settings::{HttpSettings, TlsSettings};

/// Errors a handler answers with; each maps to one status and a JSON `{"error": …}` body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but the state refuses it (e.g. releasing a lease that is not active).
    #[error("{0}")]
    Conflict(String),
    #[error("store unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "API request failed");
        }
        (
            status,
            axum::Json(serde_json::json!({"error": self.to_string()})),
        )
            .into_response()
    }
}

/// Builds (once per process) the Prometheus recorder and returns its render handle.
pub fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Only fails when another recorder is installed (tests): metrics then go there.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// What the REST API, /healthz and /metrics use of the daemon (built by `app.rs`).
pub struct ApiContext {
    /// The store's seams (reads; host moves and events through the power/reset paths).
    pub store: Arc<dyn Store>,
    pub inventory: Snapshot,
    /// Flushed before event reads, so group-written boot events are visible.
    pub events: EventSink,
    pub health: Arc<StoreHealth>,
    pub power: Arc<dyn PowerControl>,
    /// BMC credentials (swapped on reload).
    pub secrets: Arc<arc_swap::ArcSwap<Secrets>>,
    pub access: auth::Access,
    /// Reload, lease release and the daemon's own state.
    pub ops: Arc<dyn Operations>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

pub fn router(app: Arc<ApiContext>, boot: Arc<boot::BootContext>) -> Router {
    // Reads: open on the provisioning network unless `[http] open_reads = false`.
    let reads = Router::new()
        .route("/api/v1/hosts", get(list_hosts))
        .route("/api/v1/hosts/{name}", get(show_host))
        .route("/api/v1/leases", get(list_leases))
        .route("/api/v1/book", get(show_book))
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/audit", get(audit_report))
        .route("/api/v1/audit/ip/{ip}", get(audit_ip))
        .route("/api/v1/audit/mac/{mac}", get(audit_mac))
        .route("/api/v1/audit/host/{name}", get(audit_host))
        .route_layer(axum::middleware::from_fn_with_state(
            app.access.clone(),
            auth::require_read,
        ));
    // Every mutating endpoint: an admin token, always.
    let admin = Router::new()
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/leases/{ip}/release", post(release_lease))
        .route("/api/v1/hosts/{name}/power/{action}", post(power))
        .route("/api/v1/hosts/{name}/reset", post(reset))
        .route_layer(axum::middleware::from_fn_with_state(
            app.access.clone(),
            auth::require_admin,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .merge(reads)
        .merge(admin)
        .with_state(app)
        .merge(boot::routes(boot))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
}

/// Serves on every listener (the plain one, and the TLS one when configured) until
/// `cancel` fires; in-flight requests get the shutdown grace to finish. The limits of
/// [`limits`] hold on each listener separately.
pub async fn run(
    api: Arc<ApiContext>,
    boot: Arc<boot::BootContext>,
    listeners: Vec<Listener>,
    limits: Limits,
    cancel: CancellationToken,
) {
    let app = router(api, boot)
        .layer(axum::middleware::from_fn_with_state(
            limits.request_timeout,
            limits::request_deadline,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(limits.max_body))
        .layer(axum::middleware::from_fn_with_state(
            limits.max_body,
            limits::body_limit,
        ));
    let mut serving = tokio::task::JoinSet::new();
    for listener in listeners {
        serving.spawn(limits::serve(listener, app.clone(), limits, cancel.clone()));
    }
    while let Some(r) = serving.join_next().await {
        if let Err(e) = r {
            tracing::error!(error = %e, "HTTP listener failed");
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Health {
    /// `ok`, or `degraded` when the store does not answer or the last reload was refused.
    pub status: String,
    pub version: String,
    pub started_at: Timestamp,
    pub store: String,
    /// Set while the store is unreachable: since when and why (degraded mode: known hosts
    /// and renewals are served, dynamic allocation is paused, events and lease writes queue).
    #[serde(default)]
    pub degraded: Option<crate::model::Degraded>,
    pub inventory: InventoryHealth,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct InventoryHealth {
    pub site: String,
    pub generation: u64,
    pub loaded_at: Timestamp,
    pub hosts: usize,
    pub subnets: usize,
    /// Problems of the last refused reload (the previous inventory stays in force).
    pub last_reload_error: Option<Vec<String>>,
}

async fn healthz(State(app): State<Arc<ApiContext>>) -> Response {
    let loaded = app.inventory.load();
    let degraded = app.health.degraded();
    // Degraded: answer at once instead of waiting out the pool's timeout on a dead store.
    let store_ok = match &degraded {
        Some(d) => Err(d.reason.clone()),
        None => app
            .store
            .query(&EventQuery {
                limit: Some(1),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string()),
    };
    let failure = app.ops.last_failure();
    let health = Health {
        status: if store_ok.is_ok() && failure.is_none() {
            "ok"
        } else {
            "degraded"
        }
        .into(),
        version: env!("CARGO_PKG_VERSION").into(),
        started_at: app.ops.started_at(),
        store: match &store_ok {
            Ok(_) => "ok".into(),
            Err(e) => format!("error: {e}"),
        },
        degraded,
        inventory: InventoryHealth {
            site: loaded.inventory.site.name.clone(),
            generation: loaded.generation,
            loaded_at: loaded.loaded_at,
            hosts: loaded.inventory.hosts.len(),
            subnets: loaded.inventory.subnets.len(),
            last_reload_error: failure.map(|f| f.problems.iter().map(|p| p.to_string()).collect()),
        },
    };
    // A refused reload is worth a look but the daemon still serves: only the store decides 503.
    let code = if store_ok.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(health)).into_response()
}

async fn metrics_text(State(app): State<Arc<ApiContext>>) -> Response {
    let health = &app.health;
    health.degraded_seconds();
    metrics::gauge!("bootgate_deferred_lease_writes").set(app.ops.deferred_lease_writes() as f64);
    // Host and lease gauges are computed at scrape time from the store, so they can't drift
    // (and are left as they were while the store is unreachable).
    if health.is_up()
        && let Ok(hosts) = app.store.list_hosts().await
    {
        for s in HostState::ALL {
            let n = hosts.iter().filter(|h| h.state == *s).count();
            metrics::gauge!("bootgate_hosts", "state" => s.as_str()).set(n as f64);
        }
    }
    if health.is_up()
        && let Ok(leases) = app.store.list_leases(&LeaseFilter::default()).await
    {
        for s in LeaseState::ALL {
            let n = leases.iter().filter(|l| l.state == *s).count();
            metrics::gauge!("bootgate_leases", "state" => s.as_str()).set(n as f64);
        }
    }
    metrics::gauge!("bootgate_up").set(1.0);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

/// A page of a list endpoint: the JSON array as before, and, when the page is full, a
/// `Link: <…after=CURSOR…>; rel="next"` header to the rest (RFC 8288).
fn page<T: Serialize>(
    items: Vec<T>,
    limit: u32,
    cursor: impl FnOnce(&T) -> String,
    path: &str,
    raw: Option<&str>,
) -> Response {
    let next = (items.len() == limit as usize && limit > 0)
        .then(|| items.last().map(cursor))
        .flatten();
    match next {
        Some(after) => (
            [(header::LINK, query::next_link(path, raw, &after, limit))],
            axum::Json(items),
        )
            .into_response(),
        None => axum::Json(items).into_response(),
    }
}

#[derive(Deserialize, Default)]
struct HostParams {
    limit: Option<String>,
    /// The last name of the previous page.
    after: Option<String>,
}

/// Hosts by name, `limit` at a time (keyset on the name).
async fn list_hosts(
    State(app): State<Arc<ApiContext>>,
    Query(p): Query<HostParams>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let limit = query::parse_limit(p.limit.as_deref())?;
    let hosts = app.store.list_hosts().await?;
    let views: Vec<HostView> = hosts
        .iter()
        .filter(|h| p.after.as_deref().is_none_or(|a| h.name.as_str() > a))
        .take(limit as usize)
        .map(HostView::from)
        .collect();
    Ok(page(
        views,
        limit,
        |h| h.name.clone(),
        "/api/v1/hosts",
        raw.as_deref(),
    ))
}

async fn show_host(
    State(app): State<Arc<ApiContext>>,
    Path(name): Path<String>,
) -> Result<axum::Json<HostDetail>, ApiError> {
    let host = app
        .store
        .get_host(&name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no host named {name:?}")))?;
    app.events.flush().await;
    let events = app
        .store
        .query(&EventQuery {
            host: Some(name),
            limit: Some(20),
            ..Default::default()
        })
        .await?;
    Ok(axum::Json(HostDetail::new(&host, &events)))
}

/// Query parameters are parsed by hand so a bad one gets a 400 that names it.
#[derive(Deserialize, Default)]
struct LeaseParams {
    subnet: Option<String>,
    mac: Option<String>,
    state: Option<String>,
    ip: Option<String>,
    limit: Option<String>,
    /// The last address of the previous page.
    after: Option<String>,
}

/// This gateway's in-memory address book (live claims by address): what it answers DHCP
/// from right now, also while the store is unreachable. Bounded by the pools.
async fn show_book(State(app): State<Arc<ApiContext>>) -> Response {
    axum::Json(app.ops.book()).into_response()
}

/// Leases by address, `limit` at a time (keyset on the IP, compared as an address).
async fn list_leases(
    State(app): State<Arc<ApiContext>>,
    Query(p): Query<LeaseParams>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let select = query::LeaseSelect {
        subnet: query::parse_opt::<query::SubnetSel>("subnet", p.subnet.as_deref())?,
        mac: query::parse_opt::<MacAddr>("mac", p.mac.as_deref())?,
        state: query::parse_opt::<LeaseState>("state", p.state.as_deref())?,
        ip: query::parse_opt::<Ipv4Addr>("ip", p.ip.as_deref())?,
    };
    let limit = query::parse_limit(p.limit.as_deref())?;
    let after = query::parse_opt::<Ipv4Addr>("after", p.after.as_deref())?;
    // The store sorts by address (text order would put .10 before .2); the table is
    // bounded by the pools, so the page is cut here.
    let leases = app.store.list_leases(&select.store_filter()).await?;
    let views: Vec<LeaseView> = leases
        .iter()
        .filter(|l| select.matches(l) && after.is_none_or(|a| l.ip > a))
        .take(limit as usize)
        .map(LeaseView::from)
        .collect();
    Ok(page(
        views,
        limit,
        |l| l.ip.to_string(),
        "/api/v1/leases",
        raw.as_deref(),
    ))
}

#[derive(Deserialize, Default)]
struct AuditParams {
    subnet: Option<String>,
    stale_days: Option<String>,
}

/// The same report as `bootgate audit -o json` (no scan, no BMC check: those probe the
/// network from the CLI).
async fn audit_report(
    State(app): State<Arc<ApiContext>>,
    Query(p): Query<AuditParams>,
) -> Result<axum::Json<crate::audit::Report>, ApiError> {
    use crate::audit::{Options, Scope, source};
    let scope = match query::parse_opt::<query::SubnetSel>("subnet", p.subnet.as_deref())? {
        None => Scope::All,
        Some(query::SubnetSel::Name(n)) => Scope::Name(n),
        Some(query::SubnetSel::Cidr(c)) => Scope::Cidr(c),
    };
    let days = query::parse_opt::<u64>("stale_days", p.stale_days.as_deref())?.unwrap_or(30);
    let opts = Options {
        scope,
        stale_after: std::time::Duration::from_secs(days.saturating_mul(86_400)),
    };
    let loaded = app.inventory.load();
    match source::report(&*app.store, &loaded.inventory, &opts, Timestamp::now()).await {
        Ok(r) => Ok(axum::Json(r)),
        Err(source::SourceError::Store(e)) => Err(ApiError::Store(e)),
        Err(source::SourceError::Audit(e)) => Err(ApiError::NotFound(e.to_string())),
    }
}

async fn audit_history(
    app: &ApiContext,
    subject: crate::audit::Subject,
) -> Result<axum::Json<crate::audit::History>, ApiError> {
    let loaded = app.inventory.load();
    Ok(axum::Json(
        crate::audit::source::history_of(&*app.store, &loaded.inventory, &subject).await?,
    ))
}

async fn audit_ip(
    State(app): State<Arc<ApiContext>>,
    Path(ip): Path<String>,
) -> Result<axum::Json<crate::audit::History>, ApiError> {
    let ip = query::parse_opt::<Ipv4Addr>("ip", Some(&ip))?
        .ok_or_else(|| ApiError::BadRequest("empty address".into()))?;
    audit_history(&app, crate::audit::Subject::Ip(ip)).await
}

async fn audit_mac(
    State(app): State<Arc<ApiContext>>,
    Path(mac): Path<String>,
) -> Result<axum::Json<crate::audit::History>, ApiError> {
    let mac = query::parse_opt::<MacAddr>("mac", Some(&mac))?
        .ok_or_else(|| ApiError::BadRequest("empty MAC".into()))?;
    audit_history(&app, crate::audit::Subject::Mac(mac)).await
}

async fn audit_host(
    State(app): State<Arc<ApiContext>>,
    Path(name): Path<String>,
) -> Result<axum::Json<crate::audit::History>, ApiError> {
    audit_history(&app, crate::audit::Subject::Host(name)).await
}

#[derive(Deserialize, Default)]
struct EventParams {
    ip: Option<String>,
    mac: Option<String>,
    host: Option<String>,
    kind: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
    /// The last id of the previous page: read forward from it.
    after: Option<String>,
}

/// Events oldest first: without `after` the newest `limit` (default 500, never the whole
/// log); with `after=ID` the `limit` following that id. To read everything, start at
/// `after=0` and follow `Link: rel="next"` until it is absent.
async fn list_events(
    State(app): State<Arc<ApiContext>>,
    Query(p): Query<EventParams>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let limit = query::parse_limit(p.limit.as_deref())?;
    let now = Timestamp::now();
    let q = EventQuery {
        ip: query::parse_opt::<Ipv4Addr>("ip", p.ip.as_deref())?,
        mac: query::parse_opt::<MacAddr>("mac", p.mac.as_deref())?,
        host: p.host,
        kind: query::parse_opt::<EventKind>("kind", p.kind.as_deref())?,
        since: p
            .since
            .as_deref()
            .map(|s| query::parse_time("since", s, now))
            .transpose()?,
        until: p
            .until
            .as_deref()
            .map(|s| query::parse_time("until", s, now))
            .transpose()?,
        limit: Some(limit),
        after: query::parse_opt::<i64>("after", p.after.as_deref())?,
    };
    // Boot-path events are group-written: make everything recorded so far visible.
    app.events.flush().await;
    let events = app.store.query(&q).await?;
    let views: Vec<EventView> = events.iter().map(EventView::from).collect();
    Ok(page(
        views,
        limit,
        |e| e.id.to_string(),
        "/api/v1/events",
        raw.as_deref(),
    ))
}

async fn reload(
    State(app): State<Arc<ApiContext>>,
    caller: Option<Extension<auth::Caller>>,
) -> Response {
    let actor = auth::Caller::actor(caller.as_deref());
    let out = app.ops.reload(&actor).await;
    let code = if out.ok {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (code, axum::Json(out)).into_response()
}

async fn release_lease(
    State(app): State<Arc<ApiContext>>,
    caller: Option<Extension<auth::Caller>>,
    Path(ip): Path<String>,
) -> Result<axum::Json<LeaseView>, ApiError> {
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("{ip:?} is not an IPv4 address: {e}")))?;
    let actor = auth::Caller::actor(caller.as_deref());
    let lease = app
        .ops
        .release_lease(ip, &actor)
        .await
        .map_err(release_refused)?;
    Ok(axum::Json(LeaseView::from(&lease)))
}

/// A refused release as the cause says: no such lease 404, not active 409, store 503.
fn release_refused(e: ReleaseError) -> ApiError {
    match e {
        ReleaseError::NoLease(_) => ApiError::NotFound(e.to_string()),
        ReleaseError::NotActive { .. } => ApiError::Conflict(e.to_string()),
        ReleaseError::Store(e) => ApiError::Store(e),
    }
}

async fn power(
    State(app): State<Arc<ApiContext>>,
    caller: Option<Extension<auth::Caller>>,
    Path((name, action)): Path<(String, String)>,
) -> Result<axum::Json<crate::power::ActionResult>, ApiError> {
    let action: crate::power::PowerAction = action.parse().map_err(|_| {
        ApiError::NotFound(format!(
            "no power action {action:?}: expected status, on, off, cycle or pxe-once"
        ))
    })?;
    let loaded = app.inventory.load();
    let host = loaded
        .inventory
        .host(&name)
        .ok_or_else(|| ApiError::NotFound(format!("no host named {name:?} in the inventory")))?;
    let secrets = app.secrets.load_full();
    let fleet = crate::power::Fleet {
        pc: app.power.clone(),
        store: app.store.clone(),
        inventory: &loaded.inventory,
        secrets: &secrets,
    };
    let mut results = crate::power::run_many(
        &fleet,
        &[host],
        action,
        1,
        &auth::Caller::actor(caller.as_deref()),
        |_| {},
    )
    .await;
    results
        .pop()
        .map(axum::Json)
        .ok_or_else(|| ApiError::Internal("no result".into()))
}

#[derive(Deserialize, Default)]
struct ResetParams {
    reprovision: Option<bool>,
    timeout: Option<String>,
    step_wait: Option<String>,
    /// Comma-separated steps, e.g. `ForceRestart,ForceOff+On`.
    escalation: Option<String>,
}

/// Synchronous: answers when the node came back or the deadline passed (the report says
/// which); clients should allow `timeout` plus a margin.
async fn reset(
    State(app): State<Arc<ApiContext>>,
    caller: Option<Extension<auth::Caller>>,
    Path(name): Path<String>,
    Query(p): Query<ResetParams>,
) -> Result<axum::Json<crate::power::ResetReport>, ApiError> {
    let mut opts = crate::power::ResetOptions {
        reprovision: p.reprovision.unwrap_or(false),
        ..Default::default()
    };
    let dur = |name: &str, v: &str| {
        crate::types::parse_duration(v)
            .map_err(|e| ApiError::BadRequest(format!("parameter {name}: {e}")))
    };
    if let Some(t) = &p.timeout {
        opts.timeout = dur("timeout", t)?;
    }
    if let Some(t) = &p.step_wait {
        opts.step_wait = dur("step_wait", t)?;
    }
    if let Some(e) = &p.escalation {
        opts.escalation = e
            .split(',')
            .map(|s| s.trim().parse::<crate::power::Step>())
            .collect::<Result<_, _>>()
            .map_err(|e| ApiError::BadRequest(format!("parameter escalation: {e}")))?;
    }
    let loaded = app.inventory.load();
    let secrets = app.secrets.load_full();
    let fleet = crate::power::Fleet {
        pc: app.power.clone(),
        store: app.store.clone(),
        inventory: &loaded.inventory,
        secrets: &secrets,
    };
    let report = crate::power::reset(
        &fleet,
        &name,
        &opts,
        &auth::Caller::actor(caller.as_deref()),
    )
    .await
    .map_err(|e| match e {
        crate::power::PowerError::UnknownHost(_) => ApiError::NotFound(e.to_string()),
        crate::power::PowerError::Bmc(_) => ApiError::Conflict(e.to_string()),
        other => ApiError::Internal(other.to_string()),
    })?;
    Ok(axum::Json(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_release_answers_by_its_cause() {
        let ip: Ipv4Addr = "10.250.0.99".parse().unwrap();
        let status = |e| release_refused(e).into_response().status();
        assert_eq!(status(ReleaseError::NoLease(ip)), StatusCode::NOT_FOUND);
        let not_active = ReleaseError::NotActive {
            ip,
            mac: "52:54:00:00:00:01".parse().unwrap(),
            state: LeaseState::Expired,
        };
        assert!(not_active.to_string().contains("10.250.0.99"));
        assert_eq!(status(not_active), StatusCode::CONFLICT);
        let down = ReleaseError::Store(StoreError::Unavailable {
            url: "postgres://db/bootgate".into(),
            reason: "connection refused".into(),
        });
        assert_eq!(status(down), StatusCode::SERVICE_UNAVAILABLE);
    }
}
