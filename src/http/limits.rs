//! The HTTP listeners' accept loop and the limits it holds (`[http]` of the config).
//!
//! Every machine on the provisioning network can reach these listeners, and any of them
//! can be compromised or broken; one of them must not be able to exhaust the daemon:
//!
//! - **Header timeout** (`header_timeout`): hyper's own header timer (it only runs with a
//!   timer, which `axum::serve` never set). It runs from the moment the connection waits for
//!   a request head (the first, and each keep-alive one after a response) until the head is
//!   complete, so a slowloris that trickles header bytes is cut, and a keep-alive wait never
//!   outlasts it either (counted as `idle_timeout` when nothing arrived since the last
//!   response: that connection was quiet, not slow).
//! - **Idle timeout** (`idle_timeout`): a connection that moves no byte, in or out, for this
//!   long while no handler is working for it is closed. That is the keep-alive idle rule
//!   *and* the rule for response bodies: a download of a several-hundred-MiB image to slow
//!   firmware is never cut while bytes keep moving, however long it takes; one whose client
//!   stopped reading is closed after `idle_timeout` without progress. There is deliberately
//!   no total deadline on a streaming body.
//! - **Request timeout** (`request_timeout`): from a complete request head to the response
//!   head, which includes reading the request body (a slow POST is cut) and the handler.
//!   Answered `408` with `Connection: close`. The endpoints that wait on a BMC (power,
//!   reset) are exempt: `[bmc]` timeouts and their own `timeout` parameter bound them.
//! - **Connections** (`max_connections`): at the cap the loop *stops accepting* until a
//!   connection closes; new clients wait in the kernel's listen queue (and SYN-retry past
//!   it) instead of getting a reset, which firmware handles worse than a delay. The idle
//!   and header timeouts are what free slots, so the default cap (4096) leaves room for a
//!   burst of 2,000 idle connections and still serves `/healthz`.
//! - **Connections per source** (`max_connections_per_source`): the excess from one
//!   address is accepted and closed at once (a listen queue cannot be paused for one
//!   source), so one host cannot take the slots the others need.
//! - **Body size** (`max_body_kb`): a declared `Content-Length` over it is answered `413`
//!   before the body is read; a chunked body is cut at the bound by the extractors
//!   (`DefaultBodyLimit`), also `413`.
//!
//! Each limit hit increments `bootgate_http_limit_hits_total{limit=…}`;
//! `bootgate_http_connections` is the number of connections open.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// The limits of every HTTP listener (`[http]`); see the module doc for what each holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    /// Bytes.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_connections_per_source: 64,
            // Phone-home and API bodies are a few KiB (a host's SSH keys).
            max_body: 64 * 1024,
        }
    }
}

fn hit(limit: &'static str) {
    metrics::counter!("bootgate_http_limit_hits_total", "limit" => limit).increment(1);
}

/// Which paths a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything (no TLS listener configured, or `plain_api = true`).
    All,
    /// The plain listener next to a TLS one: boot paths, `/healthz`, `/metrics` and the
    /// phone-home; the rest of `/api/` is refused (a bearer token never crosses the wire
    /// in clear).
    BootOnly,
}

impl Role {
    fn refuses(self, method: &Method, path: &str) -> bool {
        self == Role::BootOnly
            && path.starts_with("/api/")
            && !(method == Method::POST && is_phone_home(path))
    }
}

/// `/api/v1/hosts/{mac}/events`: the RAM OS posts it over plain HTTP like firmware fetches.
fn is_phone_home(path: &str) -> bool {
    path.strip_prefix("/api/v1/hosts/")
        .and_then(|rest| rest.strip_suffix("/events"))
        .is_some_and(|mac| !mac.is_empty() && !mac.contains('/'))
}

fn api_on_plain() -> Response {
    hit("plain_api");
    (
        StatusCode::FORBIDDEN,
        axum::Json(serde_json::json!({
            "error": "the API is served over TLS (the [http] tls_listen address); this listener serves boot paths only"
        })),
    )
        .into_response()
}

/// Middleware: the request timeout (module doc), except for the BMC-bound endpoints.
pub(super) async fn request_deadline(
    State(limit): State<Duration>,
    req: Request,
    next: Next,
) -> Response {
    if waits_on_bmc(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let path = req.uri().path().to_owned();
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            hit("request_timeout");
            tracing::info!(%path, ?limit, "HTTP request timed out");
            (
                StatusCode::REQUEST_TIMEOUT,
                [(header::CONNECTION, "close")],
                axum::Json(serde_json::json!({
                    "error": format!("no response within request_timeout ({}s)", limit.as_secs_f32())
                })),
            )
                .into_response()
        }
    }
}

/// `POST /api/v1/hosts/{name}/reset` and `/power/{action}` wait on a BMC (and a reset on
/// the node coming back): bounded by `[bmc]` and the request's own `timeout`.
fn waits_on_bmc(method: &Method, path: &str) -> bool {
    method == Method::POST
        && path
            .strip_prefix("/api/v1/hosts/")
            .is_some_and(|rest| rest.ends_with("/reset") || rest.contains("/power/"))
}

/// Middleware: a declared body over `max` is refused before it is read; a 413 from the
/// extractors (a chunked body past `DefaultBodyLimit`) is counted too.
pub(super) async fn body_limit(State(max): State<usize>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        hit("body_size");
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            [(header::CONNECTION, "close")],
            axum::Json(serde_json::json!({
                "error": format!("request body over max_body_kb ({} KiB)", max / 1024)
            })),
        )
            .into_response();
    }
    let resp = next.run(req).await;
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
        hit("body_size");
    }
    resp
}

/// Open connections per source address; an entry lives while its count is non-zero, so
/// the map is bounded by `max_connections`.
#[derive(Clone)]
struct Sources {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One admitted connection's place in [`Sources`] (and in the open-connections gauge).
struct Seat {
    ip: IpAddr,
    sources: Sources,
}

impl Sources {
    fn new(max: usize) -> Sources {
        Sources {
            max,
            open: Arc::default(),
        }
    }

    fn admit(&self, ip: IpAddr) -> Option<Seat> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        metrics::gauge!("bootgate_http_connections").increment(1.0);
        Some(Seat {
            ip,
            sources: self.clone(),
        })
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        metrics::gauge!("bootgate_http_connections").decrement(1.0);
        let mut open = self.sources.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// When a connection last moved a byte, and whether a handler is working for it.
struct Activity {
    born: Instant,
    /// Milliseconds after `born` of the last byte read or written (or handler end).
    last_ms: AtomicU64,
    /// Requests whose handler has not produced its response head yet.
    handling: AtomicUsize,
    /// A byte arrived since the last response head (or since accept): when hyper's header
    /// timer fires, a partial head is a slowloris, none is a quiet keep-alive.
    read_since_response: AtomicBool,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            born: Instant::now(),
            last_ms: AtomicU64::new(0),
            handling: AtomicUsize::new(0),
            read_since_response: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        self.born
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }

    fn handling(&self) -> usize {
        self.handling.load(Ordering::Relaxed)
    }
}

/// Held while a handler runs; its end counts as activity (the idle clock starts there).
struct Handling(Arc<Activity>);

impl Handling {
    fn new(a: Arc<Activity>) -> Handling {
        a.handling.fetch_add(1, Ordering::Relaxed);
        Handling(a)
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.handling.fetch_sub(1, Ordering::Relaxed);
        self.0.read_since_response.store(false, Ordering::Relaxed);
        self.0.touch();
    }
}

/// The TCP stream with every byte that moves recorded in its [`Activity`] (below TLS, so
/// handshakes and records count).
struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
            self.activity
                .read_since_response
                .store(true, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// One listener: plain, or TLS when `tls` is given.
pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub role: Role,
}

/// Accepts until `cancel`, then asks every connection to finish (idle ones close at once,
/// a response in flight completes) and waits for them.
pub(super) async fn serve(
    listener: Listener,
    app: Router,
    limits: Limits,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let sources = Sources::new(limits.max_connections_per_source.max(1));
    let tracker = TaskTracker::new();
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                hit("max_connections");
                tracing::warn!(
                    max = limits.max_connections,
                    "HTTP connection cap reached: not accepting until one closes"
                );
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = cancel.cancelled() => break,
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            r = listener.tcp.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // EMFILE and friends: not fatal, but never a busy loop.
                    tracing::debug!(error = %e, "HTTP accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => break,
        };
        let Some(seat) = sources.admit(peer.ip()) else {
            hit("max_connections_per_source");
            tracing::debug!(%peer, "too many HTTP connections from this source: closed");
            continue;
        };
        // Without TCP_NODELAY a response whose body follows its headers in a second write
        // waits for the client's delayed ACK (~40 ms per small file: bench/http.sh found it).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        let activity = Arc::new(Activity::new());
        let io = Watched {
            io: tcp,
            activity: activity.clone(),
        };
        let (app, tls, role, cancel) = (
            app.clone(),
            listener.tls.clone(),
            listener.role,
            cancel.clone(),
        );
        tracker.spawn(async move {
            let _held = (permit, seat);
            match tls {
                None => connection(io, activity, peer, app, role, limits, cancel).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(io)).await {
                        Ok(Ok(tls)) => {
                            connection(tls, activity, peer, app, role, limits, cancel).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => {
                            hit("header_timeout");
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// Serves one connection under the header, idle and request rules.
async fn connection<I>(
    io: I,
    activity: Arc<Activity>,
    peer: SocketAddr,
    app: Router,
    role: Role,
    limits: Limits,
    cancel: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let seen = activity.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let working = Handling::new(seen.clone());
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move {
            let resp = if role.refuses(req.method(), req.uri().path()) {
                api_on_plain()
            } else {
                match app.oneshot(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                }
            };
            drop(working);
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        // While a handler works the request timeout governs; after, bytes must keep moving.
        let wait = if activity.handling() > 0 {
            limits.idle_timeout
        } else {
            limits.idle_timeout.saturating_sub(activity.quiet_for())
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    if e.is_timeout() {
                        // hyper's header timer also ends a quiet keep-alive wait: that is
                        // the idle rule at work, not a slow head.
                        hit(if activity.read_since_response.load(Ordering::Relaxed) {
                            "header_timeout"
                        } else {
                            "idle_timeout"
                        });
                    }
                    tracing::debug!(%peer, error = %e, "HTTP connection ended");
                }
                return;
            }
            _ = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {
                if activity.handling() == 0 && activity.quiet_for() >= limits.idle_timeout {
                    hit("idle_timeout");
                    tracing::debug!(%peer, "HTTP connection idle: closed");
                    return;
                }
            }
            _ = cancel.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_listener_next_to_tls_keeps_boot_paths_and_the_phone_home() {
        let r = Role::BootOnly;
        assert!(r.refuses(&Method::GET, "/api/v1/hosts"));
        assert!(r.refuses(&Method::POST, "/api/v1/reload"));
        assert!(r.refuses(&Method::GET, "/api/v1/hosts/52:54:00:00:00:01/events"));
        assert!(r.refuses(&Method::POST, "/api/v1/hosts/a/b/events"));
        assert!(!r.refuses(&Method::POST, "/api/v1/hosts/52:54:00:00:00:01/events"));
        for p in [
            "/ipxe/mac/52:54:00:00:00:01",
            "/images/x",
            "/healthz",
            "/metrics",
        ] {
            assert!(!r.refuses(&Method::GET, p), "{p}");
        }
        assert!(!Role::All.refuses(&Method::GET, "/api/v1/hosts"));
    }

    #[test]
    fn bmc_bound_endpoints_are_outside_the_request_timeout() {
        assert!(waits_on_bmc(&Method::POST, "/api/v1/hosts/n1/reset"));
        assert!(waits_on_bmc(&Method::POST, "/api/v1/hosts/n1/power/cycle"));
        assert!(!waits_on_bmc(&Method::GET, "/api/v1/hosts/n1"));
        assert!(!waits_on_bmc(&Method::POST, "/api/v1/hosts/n1/events"));
    }

    #[test]
    fn a_source_gets_its_share_and_its_seats_back() {
        let s = Sources::new(2);
        let a: IpAddr = "10.250.0.2".parse().unwrap();
        let b: IpAddr = "10.250.0.3".parse().unwrap();
        let (s1, s2) = (s.admit(a).unwrap(), s.admit(a).unwrap());
        assert!(s.admit(a).is_none());
        // The same address as IPv4-mapped IPv6 is the same source.
        assert!(s.admit("::ffff:10.250.0.2".parse().unwrap()).is_none());
        let other = s.admit(b).unwrap();
        drop(s1);
        let s3 = s.admit(a).unwrap();
        drop((s2, s3, other));
        assert!(s.open.lock().unwrap().is_empty());
    }
}
