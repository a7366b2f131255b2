//! The boot side of the HTTP listener: per-host iPXE scripts (by MAC and by UUID), the
//! images under `/images/` (behind the path jail; HEAD, Range and ETag from tower-http's
//! ServeDir; see [`super::images`]), and the
//! phone-home endpoint a booted host reports to with its per-boot token.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::ApiError;
use crate::events::EventSink;
use crate::handoff::Handoff;
use crate::identity::Proof;
use crate::model::{BootPurpose, EventKind, NewEvent, Store, TokenCheck, TokenUse};
use crate::scripts::{ScriptService, ServeError, Via};
use crate::snapshot::{Snapshot, Whois};
use crate::types::{HostState, MacAddr};

/// What the boot side of the HTTP listener uses (built by `app.rs`).
pub struct BootContext {
    /// `boot-images/`, served under `/images/`.
    pub images_dir: PathBuf,
    /// `[http] image_cache` in bytes (0: no RAM cache).
    pub image_cache: u64,
    pub scripts: Arc<ScriptService>,
    /// Boot tokens and host moves of the phone-home; hosts by UUID.
    pub store: Arc<dyn Store>,
    pub inventory: Snapshot,
    pub events: EventSink,
    /// Attributes image fetches to the MAC holding the client's address.
    pub whois: Whois,
    /// The Ansible hand-off started when a host reports `installed` (`[handoff] enabled`).
    pub handoff: Option<Handoff>,
}

pub fn routes(app: Arc<BootContext>) -> Router {
    let images = super::images::service(&app.images_dir, app.image_cache);
    Router::new()
        .route("/ipxe/mac/{mac}", get(script_by_mac))
        .route("/ipxe/uuid/{uuid}", get(script_by_uuid))
        .route("/api/v1/hosts/{mac}/events", post(phone_home))
        .nest_service(
            "/images",
            tower::ServiceBuilder::new()
                .layer(axum::middleware::from_fn_with_state(
                    app.clone(),
                    record_file,
                ))
                .service(images),
        )
        .with_state(app)
}

/// Records a `boot-file-served` event for each whole-file (or first-range) GET the
/// `/images/` service ([`super::images`]: path jail, RAM cache, `ServeDir`) answered,
/// attributed to the MAC that holds the client's address.
async fn record_file(
    State(app): State<Arc<BootContext>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    let is_get = req.method() == Method::GET;
    let first_range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|r| r.starts_with("bytes=0-"));
    let resp = next.run(req).await;
    let ok = resp.status() == StatusCode::OK || resp.status() == StatusCode::PARTIAL_CONTENT;
    metrics::counter!("bootgate_http_files_total", "status" => resp.status().as_u16().to_string())
        .increment(1);
    if is_get && ok && first_range {
        let ip = match peer.ip() {
            std::net::IpAddr::V4(ip) => Some(ip),
            std::net::IpAddr::V6(_) => None,
        };
        let mut ev = NewEvent::new(EventKind::BootFileServed, "http").detail(
            serde_json::json!({"path": format!("/images{path}"), "status": resp.status().as_u16()}),
        );
        if let Some(ip) = ip {
            ev = ev.ip(ip);
            if let Some((mac, host)) = app.whois.who_has(ip) {
                ev = ev.mac(mac);
                if let Some(h) = host {
                    ev = ev.host(h);
                }
            }
        }
        app.events.record(ev).await;
    }
    resp
}

fn script(text: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response()
}

async fn script_by_mac(
    State(app): State<Arc<BootContext>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(mac): Path<String>,
) -> Result<Response, ApiError> {
    let mac: MacAddr = mac
        .parse()
        .map_err(|e: crate::types::MacParseError| ApiError::BadRequest(e.to_string()))?;
    serve_script(&app, mac, peer).await
}

async fn script_by_uuid(
    State(app): State<Arc<BootContext>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(uuid): Path<String>,
) -> Result<Response, ApiError> {
    let uuid = uuid.to_ascii_lowercase();
    // Firmware sends SMBIOS UUIDs with the first three fields in either byte order.
    let swapped = swap_uuid(&uuid);
    let hosts = app.store.list_hosts().await?;
    let found = hosts.iter().find(|h| {
        h.spec
            .get("uuid")
            .and_then(|u| u.as_str())
            .is_some_and(|u| {
                u.eq_ignore_ascii_case(&uuid) || Some(u.to_ascii_lowercase()) == swapped
            })
    });
    match found.and_then(|h| h.macs.first().copied()) {
        Some(mac) => serve_script(&app, mac, peer).await,
        None => Err(ApiError::NotFound(format!("no host with UUID {uuid}"))),
    }
}

/// `00112233-4455-6677-…` with the first three fields byte-swapped (SMBIOS vs RFC 4122).
fn swap_uuid(u: &str) -> Option<String> {
    let parts: Vec<&str> = u.split('-').collect();
    if parts.len() != 5 || parts[..3].iter().any(|p| p.len() % 2 != 0) {
        return None;
    }
    let rev = |s: &str| -> String {
        (0..s.len() / 2)
            .rev()
            .filter_map(|i| s.get(2 * i..2 * i + 2))
            .collect()
    };
    Some(format!(
        "{}-{}-{}-{}-{}",
        rev(parts[0]),
        rev(parts[1]),
        rev(parts[2]),
        parts[3],
        parts[4]
    ))
}

/// The client's IPv4 address (an IPv4-mapped IPv6 peer included); None for IPv6, which
/// holds no DHCPv4 lease.
fn peer_v4(peer: SocketAddr) -> Option<Ipv4Addr> {
    match peer.ip() {
        std::net::IpAddr::V4(ip) => Some(ip),
        std::net::IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    }
}

/// The script for `mac` (see [`ScriptService::serve`]), as an HTTP response: 403 when it
/// carries a token and the client does not hold the MAC's lease.
async fn serve_script(
    app: &BootContext,
    mac: MacAddr,
    peer: SocketAddr,
) -> Result<Response, ApiError> {
    let source = peer_v4(peer).unwrap_or(Ipv4Addr::UNSPECIFIED);
    match app.scripts.serve(mac, Via::Http, source).await {
        Ok(served) => Ok(script(served.text)),
        Err(e @ ServeError::Refused { .. }) => Err(ApiError::Forbidden(e.to_string())),
        Err(ServeError::Store(e)) => Err(e.into()),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

/// What a booted host reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhoneHomeEvent {
    /// The OS (installer) is up.
    Booted,
    /// Provisioning finished: the host goes `provisioned`.
    Installed,
    /// Provisioning failed: the host goes `failed`.
    Failed,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhoneHome {
    pub event: PhoneHomeEvent,
    pub ip: Option<Ipv4Addr>,
    pub token: Option<String>,
    #[serde(default)]
    pub ssh_host_keys: Vec<String>,
    /// Free text from the host (why it failed, installer version, …).
    pub message: Option<String>,
}

async fn phone_home(
    State(app): State<Arc<BootContext>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(mac): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let mac: MacAddr = mac
        .parse()
        .map_err(|e: crate::types::MacParseError| ApiError::BadRequest(e.to_string()))?;
    let report: PhoneHome = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("phone-home body: {e}")))?;
    let offered = report.token.clone().or_else(|| {
        headers
            .get("x-bootgate-token")
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    });
    let host = app.inventory.load().host_of(mac);
    // The first proof: the report comes from the address that holds the MAC's lease
    // (checked before the token, so a token cannot be tried from anywhere else).
    let source = peer_v4(peer).unwrap_or(Ipv4Addr::UNSPECIFIED);
    if let refused @ Proof::NotHolder { .. } = app.scripts.proof(mac, source).await? {
        return Ok(refuse(&app, mac, host, peer, &report, refused.reason()).await);
    }
    let check = check_token(&app, mac, host.as_deref(), offered.as_deref(), report.event).await?;
    let (host, purpose) = match (host, check) {
        (Some(host), Ok(purpose)) => (host, purpose),
        (host, Err(reason)) => return Ok(refuse(&app, mac, host, peer, &report, reason).await),
        (None, Ok(_)) => return Err(ApiError::Internal("host vanished".into())),
    };
    let to = accept(&app, mac, &host, peer, &report, purpose).await?;
    metrics::counter!("bootgate_phone_home_total", "result" => "ok").increment(1);
    tracing::info!(%mac, host, event = ?report.event, state = %to, "phone-home");
    Ok(axum::Json(serde_json::json!({"host": host, "state": to})).into_response())
}

/// Checks the offered token against the store: the purpose of the boot it belongs to, or
/// why the report is refused.
async fn check_token(
    app: &BootContext,
    mac: MacAddr,
    host: Option<&str>,
    offered: Option<&str>,
    event: PhoneHomeEvent,
) -> Result<Result<BootPurpose, &'static str>, ApiError> {
    // A `booted` report keeps the token (the same boot reports again); `installed` and
    // `failed` end the boot, so the token is used up and replays are refused.
    let use_ = match event {
        PhoneHomeEvent::Booted => TokenUse::Keep,
        PhoneHomeEvent::Installed | PhoneHomeEvent::Failed => TokenUse::Consume,
    };
    let (Some(host), Some(token)) = (host, offered) else {
        return Ok(Err(if host.is_none() {
            "not an inventory host"
        } else {
            "missing token"
        }));
    };
    let check = app
        .store
        .check_boot_token(mac, token, jiff::Timestamp::now(), use_)
        .await?;
    Ok(match check {
        TokenCheck::NoBoot => Err("no boot in progress for this MAC"),
        TokenCheck::Wrong => Err("wrong token"),
        TokenCheck::Expired { .. } => Err("token expired"),
        TokenCheck::Used { .. } => Err("token already used: the boot it belonged to is over"),
        TokenCheck::Accepted {
            host: issued_to, ..
        } if issued_to != host => Err("token was issued to another host"),
        TokenCheck::Accepted { purpose, .. } => Ok(purpose),
    })
}

/// Records a refused report (within the refusal budget of its source: through the sink and
/// flushed, in order after this boot's script/file events, and stored before the answer)
/// and answers 403.
async fn refuse(
    app: &BootContext,
    mac: MacAddr,
    host: Option<String>,
    peer: SocketAddr,
    report: &PhoneHome,
    reason: &'static str,
) -> Response {
    let mut ev = NewEvent::new(EventKind::PhoneHomeRefused, "http")
        .mac(mac)
        .detail(serde_json::json!({"reason": reason, "peer": peer.ip(), "event": report.event}));
    if let Some(h) = host {
        ev = ev.host(h);
    }
    let source = peer_v4(peer).unwrap_or(Ipv4Addr::UNSPECIFIED);
    app.scripts.refuse(ev, "phone-home", source).await;
    metrics::counter!("bootgate_phone_home_total", "result" => "refused").increment(1);
    (
        StatusCode::FORBIDDEN,
        axum::Json(serde_json::json!({"error": format!("phone-home refused: {reason}")})),
    )
        .into_response()
}

/// Records an accepted report, moves the host and, once it is `provisioned`, starts the
/// hand-off. Returns the state the host is in now.
async fn accept(
    app: &BootContext,
    mac: MacAddr,
    host: &str,
    peer: SocketAddr,
    report: &PhoneHome,
    purpose: BootPurpose,
) -> Result<HostState, ApiError> {
    let target = match report.event {
        PhoneHomeEvent::Booted => HostState::Provisioning,
        PhoneHomeEvent::Installed => HostState::Provisioned,
        PhoneHomeEvent::Failed => HostState::Failed,
    };
    // The address is the one proven to hold the lease; what the host says it has is kept
    // in the detail only.
    let ip = peer_v4(peer);
    let mut ev = NewEvent::new(EventKind::PhoneHome, "http")
        .mac(mac)
        .host(host)
        .detail(serde_json::json!({
            "event": report.event,
            "ssh_host_keys": report.ssh_host_keys,
            "message": report.message,
            "peer": peer.ip(),
            "reported_ip": report.ip,
            "purpose": purpose,
        }));
    if let Some(ip) = ip {
        ev = ev.ip(ip);
    }
    app.events.record(ev).await;
    app.events.flush().await;
    let current = app
        .store
        .get_host(host)
        .await?
        .map_or(HostState::Unknown, |h| h.state);
    // A rescue boot reports what it does, but the host stays in maintenance: only an
    // operator takes it out.
    let to = match purpose {
        BootPurpose::Install => target,
        BootPurpose::Rescue => current,
    };
    if current != to {
        app.store
            .set_host_state(
                host,
                None,
                to,
                "phone-home",
                serde_json::json!({"event": report.event}),
            )
            .await?;
    }
    if to == HostState::Provisioned
        && current != to
        && let Some(handoff) = &app.handoff
    {
        handoff.on_provisioned(host);
    }
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_byte_order_swap() {
        assert_eq!(
            swap_uuid("00112233-4455-6677-8899-aabbccddeeff").as_deref(),
            Some("33221100-5544-7766-8899-aabbccddeeff")
        );
        assert_eq!(swap_uuid("nonsense"), None);
    }
}
