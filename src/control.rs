//! The local control socket (`{state_dir}/control.sock`, mode 0600, root only): admin
//! commands that must not be reachable from the network before API tokens exist. One JSON
//! request line in, one JSON response line out.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::ops::{Operations, ReloadOutcome};

/// A request can't take longer than this (a reload of a large inventory included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bounded request line: the protocol only has short commands.
const MAX_LINE: usize = 4096;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    Reload,
    ReleaseLease { ip: std::net::Ipv4Addr },
}

/// The answer to `release-lease`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReleaseOutcome {
    pub ok: bool,
    pub lease: Option<crate::views::LeaseView>,
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "cannot reach the bootgate daemon at {path}: {source} (is `bootgate serve` running with this config?)"
    )]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("control socket {path}: bad response {line:?}: {source}")]
    BadResponse {
        path: String,
        line: String,
        source: serde_json::Error,
    },
    #[error("control socket {path}: no answer within {REQUEST_TIMEOUT:?}")]
    Timeout { path: String },
    #[error("{0}")]
    Refused(String),
}

/// Binds the socket, replacing a stale one left by a crashed daemon, root-only.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn run(app: Arc<dyn Operations>, listener: UnixListener, cancel: CancellationToken) {
    loop {
        let conn = tokio::select! {
            _ = cancel.cancelled() => return,
            c = listener.accept() => c,
        };
        match conn {
            Ok((stream, _)) => {
                let app = app.clone();
                tokio::spawn(async move {
                    if let Err(e) = tokio::time::timeout(REQUEST_TIMEOUT, handle(app, stream)).await
                    {
                        tracing::warn!(error = %e, "control request timed out");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(app: Arc<dyn Operations>, stream: UnixStream) {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut rd = BufReader::new(rd).take(MAX_LINE as u64);
    if rd.read_line(&mut line).await.is_err() {
        return;
    }
    let reply = match serde_json::from_str::<Request>(line.trim()) {
        Ok(Request::Reload) => serde_json::to_value(app.reload("cli:reload").await),
        Ok(Request::ReleaseLease { ip }) => {
            let out = match app.release_lease(ip, "cli:leases-release").await {
                Ok(l) => ReleaseOutcome {
                    ok: true,
                    lease: Some((&l).into()),
                    error: None,
                },
                Err(e) => ReleaseOutcome {
                    ok: false,
                    lease: None,
                    error: Some(e.to_string()),
                },
            };
            serde_json::to_value(out)
        }
        Err(e) => Ok(serde_json::json!({"ok": false, "problems": [format!("bad request: {e}")]})),
    };
    let mut out = reply.map(|v| v.to_string()).unwrap_or_default();
    out.push('\n');
    let _ = wr.write_all(out.as_bytes()).await;
}

/// Client side: sends one request to the daemon listening on `path` and reads its answer.
async fn call<T: serde::de::DeserializeOwned>(
    path: &Path,
    request: &Request,
) -> Result<T, ControlError> {
    let p = path.display().to_string();
    let work = async {
        let mut stream =
            UnixStream::connect(path)
                .await
                .map_err(|source| ControlError::Connect {
                    path: p.clone(),
                    source,
                })?;
        let io = |source| ControlError::Io {
            path: p.clone(),
            source,
        };
        let mut req = serde_json::to_string(request).unwrap_or_default();
        req.push('\n');
        stream.write_all(req.as_bytes()).await.map_err(io)?;
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .await
            .map_err(io)?;
        serde_json::from_str(line.trim()).map_err(|source| ControlError::BadResponse {
            path: p.clone(),
            line,
            source,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| ControlError::Timeout { path: p.clone() })?
}

/// Asks the daemon to reload its inventory.
pub async fn request_reload(path: &Path) -> Result<ReloadOutcome, ControlError> {
    call(path, &Request::Reload).await
}

/// Asks the daemon to release the lease on `ip`.
pub async fn request_release(
    path: &Path,
    ip: std::net::Ipv4Addr,
) -> Result<crate::views::LeaseView, ControlError> {
    let out: ReleaseOutcome = call(path, &Request::ReleaseLease { ip }).await?;
    match (out.ok, out.lease, out.error) {
        (true, Some(l), _) => Ok(l),
        (_, _, e) => Err(ControlError::Refused(
            e.unwrap_or_else(|| "release refused".into()),
        )),
    }
}
