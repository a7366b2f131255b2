//! The boot side of the HTTP listener: per-host iPXE scripts (by MAC and by UUID), the
//! images under `/images/` (HEAD, Range and ETag from tower-http's ServeDir), and the
//! phone-home endpoint a booted host reports to with its per-boot token.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::ApiError;
use crate::app::App;
use crate::boot::{self, Plan};
use crate::store::{EventKind, NewEvent, StoreError};
use crate::types::{HostState, MacAddr};

pub fn routes(app: Arc<App>) -> Router<Arc<App>> {
    // 256 KiB reads: fewer syscalls and wakeups per image than the 64 KiB default (the
    // HTTP bench measured 0.49× → 0.73× nginx on a 256 MiB image).
    let images = tower_http::services::ServeDir::new(&app.config.boot_images_dir)
        .append_index_html_on_directories(false)
        .with_buf_chunk_size(256 * 1024);
    Router::new()
        .route("/ipxe/mac/{mac}", get(script_by_mac))
        .route("/ipxe/uuid/{uuid}", get(script_by_uuid))
        .route("/api/v1/hosts/{mac}/events", post(phone_home))
        .nest_service(
            "/images",
            tower::ServiceBuilder::new()
                .layer(axum::middleware::from_fn_with_state(app, record_file))
                .service(images),
        )
}

/// Records a `boot-file-served` event for each whole-file (or first-range) GET, attributed
/// to the MAC that holds the client's address.
async fn record_file(
    State(app): State<Arc<App>>,
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
            if let Some((mac, host)) = app.who_has(ip) {
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
    State(app): State<Arc<App>>,
    Path(mac): Path<String>,
) -> Result<Response, ApiError> {
    let mac: MacAddr = mac
        .parse()
        .map_err(|e: crate::types::MacParseError| ApiError::BadRequest(e.to_string()))?;
    serve_script(&app, mac).await
}

async fn script_by_uuid(
    State(app): State<Arc<App>>,
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
        Some(mac) => serve_script(&app, mac).await,
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

/// Chooses, renders and records the script for `mac`; an install moves the host to
/// `provisioning` and mints the per-boot token its phone-home must carry.
async fn serve_script(app: &App, mac: MacAddr) -> Result<Response, ApiError> {
    let loaded = app.inventory();
    let inv = &loaded.inventory;
    let host = inv.host_by_boot_mac(&loaded.macs, mac);
    let record = app.store.host_by_mac(mac).await?;
    let state = record.as_ref().map_or(HostState::Unknown, |r| r.state);
    let profile = host.and_then(|h| inv.profile(h));
    let plan = boot::plan(state, profile, &loaded.boot);
    let token = match (&plan, host) {
        (Plan::Install { .. }, Some(h)) => {
            let token = new_token();
            app.boot_tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(mac, token.clone());
            if state != HostState::Provisioning {
                match app
                    .store
                    .set_host_state(
                        &h.name,
                        Some(state),
                        HostState::Provisioning,
                        "http",
                        serde_json::json!({"reason": "install script served"}),
                    )
                    .await
                {
                    Ok(_) | Err(StoreError::StateMismatch { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Some(token)
        }
        _ => None,
    };
    let text = boot::render(
        &loaded.boot,
        &plan,
        &app.config.boot.http_base,
        mac,
        host,
        inv,
        token.as_deref(),
    )
    .map_err(|e| ApiError::Internal(format!("rendering the {} script: {e}", plan.template())))?;
    let mut ev = NewEvent::new(EventKind::BootScriptServed, "http")
        .mac(mac)
        .detail(serde_json::json!({
            "template": plan.template(),
            "state": state,
            "reason": match &plan { Plan::Broken { reason } => Some(reason.clone()), _ => None },
        }));
    if let Some(h) = host {
        ev = ev.host(h.name.clone());
    }
    app.events.record(ev).await;
    metrics::counter!("bootgate_ipxe_scripts_total", "template" => plan.template()).increment(1);
    Ok(script(text))
}

fn new_token() -> String {
    let mut b = [0u8; 16];
    // The OS RNG only fails on broken systems; a zero token would then still be unique per
    // boot only by luck, so refuse to hand one out (every phone-home will be refused).
    if getrandom::fill(&mut b).is_err() {
        tracing::error!("no OS randomness: boot tokens unavailable");
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
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
    State(app): State<Arc<App>>,
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
    let loaded = app.inventory();
    let host = loaded
        .inventory
        .host_by_boot_mac(&loaded.macs, mac)
        .map(|h| h.name.clone());
    let expected = app
        .boot_tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&mac)
        .cloned();
    let refusal = match (&expected, &offered, &host) {
        (_, _, None) => Some("not an inventory host"),
        (None, _, _) => Some("no boot in progress for this MAC"),
        (_, None, _) => Some("missing token"),
        (Some(want), Some(got), _) if !constant_time_eq(want.as_bytes(), got.as_bytes()) => {
            Some("wrong token")
        }
        _ => None,
    };
    if let Some(reason) = refusal {
        let mut ev = NewEvent::new(EventKind::PhoneHomeRefused, "http")
            .mac(mac)
            .detail(
                serde_json::json!({"reason": reason, "peer": peer.ip(), "event": report.event}),
            );
        if let Some(h) = &host {
            ev = ev.host(h.clone());
        }
        // Through the sink and flushed: in order after this boot's script/file events, and
        // stored before the answer.
        app.events.record(ev).await;
        app.events.flush().await;
        tracing::warn!(%mac, %peer, reason, "phone-home refused");
        metrics::counter!("bootgate_phone_home_total", "result" => "refused").increment(1);
        return Ok((
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({"error": format!("phone-home refused: {reason}")})),
        )
            .into_response());
    }
    let Some(host) = host else {
        return Err(ApiError::Internal("host vanished".into()));
    };
    let to = match report.event {
        PhoneHomeEvent::Booted => HostState::Provisioning,
        PhoneHomeEvent::Installed => HostState::Provisioned,
        PhoneHomeEvent::Failed => HostState::Failed,
    };
    if report.event != PhoneHomeEvent::Booted {
        // The token is for one boot: once it ends, replays are refused.
        app.boot_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&mac);
    }
    let ip = report.ip.or(match peer.ip() {
        std::net::IpAddr::V4(ip) => Some(ip),
        std::net::IpAddr::V6(_) => None,
    });
    let mut ev = NewEvent::new(EventKind::PhoneHome, "http")
        .mac(mac)
        .host(host.clone())
        .detail(serde_json::json!({
            "event": report.event,
            "ssh_host_keys": report.ssh_host_keys,
            "message": report.message,
            "peer": peer.ip(),
        }));
    if let Some(ip) = ip {
        ev = ev.ip(ip);
    }
    app.events.record(ev).await;
    app.events.flush().await;
    let current = app
        .store
        .get_host(&host)
        .await?
        .map_or(HostState::Unknown, |h| h.state);
    if current != to {
        app.store
            .set_host_state(
                &host,
                None,
                to,
                "phone-home",
                serde_json::json!({"event": report.event}),
            )
            .await?;
    }
    if to == HostState::Provisioned && current != to {
        crate::handoff::on_provisioned(&app, &host);
    }
    metrics::counter!("bootgate_phone_home_total", "result" => "ok").increment(1);
    tracing::info!(%mac, host, event = ?report.event, state = %to, "phone-home");
    Ok(axum::Json(serde_json::json!({"host": host, "state": to})).into_response())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

    #[test]
    fn tokens_compare_in_constant_time_shape() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
