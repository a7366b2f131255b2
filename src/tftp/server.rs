//! The port-69 loop: decode each request, refuse what a read-only server must (WRQ,
//! malformed, over the session limit), and start a session task with its own socket for
//! every RRQ. Shutdown stops accepting, tells running sessions, and waits for them.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::options::{self, Limits, Negotiated};
use super::packet::{self, ErrorCode, Packet, Request};
use super::session::{BusyPoll, Rto, Source, Transfer};
use super::{Generated, TftpConfig, TftpError, TransferRecord, TransferResult};
use crate::jail;

/// Largest request datagram read on port 69 (RRQs with options fit easily).
const MAX_REQUEST: usize = 2048;

/// A bound, not yet running, TFTP server.
pub struct TftpServer {
    /// The port-69 socket (std until `run`, so `bind` works outside a runtime).
    socket: std::net::UdpSocket,
    shared: Arc<Shared>,
}

/// What every session needs.
struct Shared {
    iface: String,
    local: Ipv4Addr,
    /// Canonical root: the jail compares resolved paths against it.
    root: PathBuf,
    cfg: TftpConfig,
    generated: Option<Arc<dyn Generated>>,
    sessions: Arc<Semaphore>,
    /// Running transfers per client address (entries at zero are removed, so the map is
    /// bounded by `max_sessions`).
    per_source: Arc<Mutex<HashMap<Ipv4Addr, usize>>>,
}

/// One running transfer's place in [`Shared::per_source`], given back on drop.
struct SourceSeat {
    ip: Ipv4Addr,
    per_source: Arc<Mutex<HashMap<Ipv4Addr, usize>>>,
}

impl Shared {
    /// A seat for `ip`, or None when it already runs `max_sessions_per_source` transfers.
    fn seat(&self, ip: Ipv4Addr) -> Option<SourceSeat> {
        let mut open = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= self.cfg.max_sessions_per_source {
            return None;
        }
        *n += 1;
        Some(SourceSeat {
            ip,
            per_source: self.per_source.clone(),
        })
    }
}

impl Drop for SourceSeat {
    fn drop(&mut self) {
        let mut open = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

fn check(cfg: &TftpConfig) -> Result<(), TftpError> {
    let bad = |field, reason: &str| {
        Err(TftpError::Config {
            field,
            reason: reason.to_string(),
        })
    };
    if !(options::MIN_BLKSIZE..=options::MAX_BLKSIZE).contains(&cfg.max_blksize) {
        return bad("max_blksize", "must be 8..=65464 (RFC 2348)");
    }
    if !(1..=options::MAX_WINDOWSIZE).contains(&cfg.max_windowsize) {
        return bad("max_windowsize", "must be 1..=64");
    }
    if cfg.max_sessions == 0 {
        return bad("max_sessions", "must be at least 1");
    }
    if cfg.max_sessions_per_source == 0 {
        return bad("max_sessions_per_source", "must be at least 1");
    }
    if cfg.min_timeout.is_zero() || cfg.min_timeout > cfg.default_timeout {
        return bad(
            "min_timeout",
            "must be positive and at most default_timeout",
        );
    }
    if cfg.default_timeout > Duration::from_secs(255) {
        return bad(
            "default_timeout",
            "must be at most 255 s (the RFC 2349 range)",
        );
    }
    Ok(())
}

/// A UDP socket bound to `local:port` on `iface` only (SO_BINDTODEVICE), so replies leave
/// from the interface address the client talked to.
fn udp_socket(
    iface: &str,
    local: Ipv4Addr,
    port: u16,
    reuse: bool,
) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if reuse {
        s.set_reuse_address(true)?;
    }
    s.bind_device(Some(iface.as_bytes()))?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from(SocketAddrV4::new(local, port)).into())?;
    Ok(s)
}

impl TftpServer {
    /// Opens the server socket on `iface` at `local:port` and checks the root directory.
    pub fn bind(
        iface: &str,
        local: Ipv4Addr,
        port: u16,
        cfg: TftpConfig,
        generated: Option<Arc<dyn Generated>>,
    ) -> Result<TftpServer, TftpError> {
        check(&cfg)?;
        let root = std::fs::canonicalize(&cfg.root).map_err(|source| TftpError::Root {
            path: cfg.root.clone(),
            source,
        })?;
        if !root.is_dir() {
            return Err(TftpError::Root {
                path: cfg.root.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        let socket = udp_socket(iface, local, port, true).map_err(|source| TftpError::Bind {
            iface: iface.to_string(),
            addr: local,
            port,
            source,
        })?;
        Ok(TftpServer {
            socket: socket.into(),
            shared: Arc::new(Shared {
                iface: iface.to_string(),
                local,
                root,
                sessions: Arc::new(Semaphore::new(cfg.max_sessions)),
                per_source: Arc::default(),
                cfg,
                generated,
            }),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Serves until `cancel`; then waits for running transfers to stop (they are told too).
    pub async fn run(self, cancel: CancellationToken) {
        let socket = match UdpSocket::from_std(self.socket) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "TFTP socket unusable");
                return;
            }
        };
        let tracker = TaskTracker::new();
        let mut buf = vec![0u8; MAX_REQUEST];
        tracing::info!(iface = %self.shared.iface, addr = %self.shared.local, "TFTP listening");
        loop {
            let (n, from) = tokio::select! {
                _ = cancel.cancelled() => break,
                r = socket.recv_from(&mut buf) => match r {
                    Ok(v) => v,
                    Err(e) => {
                        // Never fatal (ICMP errors from earlier replies surface here), but
                        // a persistent error must not become a busy loop.
                        tracing::debug!(error = %e, "TFTP recv");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let SocketAddr::V4(peer) = from else { continue };
            self.shared
                .dispatch(&socket, &buf[..n], peer, &tracker, &cancel)
                .await;
        }
        tracker.close();
        tracker.wait().await;
    }
}

fn count_error(reason: &'static str) {
    metrics::counter!("bootgate_tftp_errors_total", "reason" => reason).increment(1);
}

impl Shared {
    async fn dispatch(
        self: &Arc<Self>,
        socket: &UdpSocket,
        datagram: &[u8],
        peer: SocketAddrV4,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) {
        let req = match packet::parse(datagram) {
            Ok(Packet::Rrq(req)) => req,
            Ok(Packet::Wrq(req)) => {
                // RFC 1350 §4 ERROR 2: this server never writes.
                count_error("write_refused");
                reply_error(socket, peer, ErrorCode::AccessViolation, "access violation").await;
                self.finish(
                    &req.filename,
                    peer,
                    TransferResult::WriteRefused,
                    Instant::now(),
                );
                return;
            }
            Ok(Packet::Error { .. }) => return, // never answer an ERROR (no error loops)
            Ok(_) => {
                count_error("unexpected_packet");
                reply_error(
                    socket,
                    peer,
                    ErrorCode::IllegalOperation,
                    "illegal TFTP operation",
                )
                .await;
                return;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "bad TFTP request");
                count_error(e.label());
                reply_error(
                    socket,
                    peer,
                    ErrorCode::IllegalOperation,
                    "illegal TFTP operation",
                )
                .await;
                return;
            }
        };
        // RFC 1350 §5 has no code for "too busy": 0, "Not defined, see error message".
        // (3, "Disk full or allocation exceeded", is about storing a written file.)
        let Some(seat) = self.seat(*peer.ip()) else {
            count_error("per_source_busy");
            tracing::info!(%peer, max = self.cfg.max_sessions_per_source, "TFTP: too many transfers from one address");
            reply_error(
                socket,
                peer,
                ErrorCode::NotDefined,
                "too many transfers from your address",
            )
            .await;
            self.finish(&req.filename, peer, TransferResult::Busy, Instant::now());
            return;
        };
        let Ok(permit) = self.sessions.clone().try_acquire_owned() else {
            count_error("busy");
            reply_error(socket, peer, ErrorCode::NotDefined, "server busy").await;
            self.finish(&req.filename, peer, TransferResult::Busy, Instant::now());
            return;
        };
        let span = tracing::info_span!(
            "tftp",
            peer = %peer,
            file = %req.filename,
            iface = %self.iface
        );
        let this = self.clone();
        let cancel = cancel.clone();
        tracker.spawn(
            this.serve(req, peer, (permit, seat), cancel)
                .instrument(span),
        );
    }

    /// One RRQ, from opening the file to the last ACK.
    async fn serve(
        self: Arc<Self>,
        req: Request,
        peer: SocketAddrV4,
        _held: (OwnedSemaphorePermit, SourceSeat),
        cancel: CancellationToken,
    ) {
        let started = Instant::now();
        let sock = match self.session_socket(peer) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open a TFTP session socket");
                count_error("socket");
                self.finish(&req.filename, peer, TransferResult::Io, started);
                return;
            }
        };
        let (source, size) = match self.open(&req.filename, peer).await {
            Ok(v) => v,
            Err(e) => {
                tracing::info!(error = %e, "TFTP request refused");
                count_error(e.label());
                let (code, msg) = e.wire();
                let _ = sock.send(&packet::encode_error(code, msg)).await;
                self.finish(&req.filename, peer, e.result(), started);
                return;
            }
        };
        let neg: Negotiated = options::negotiate(
            &req.options,
            Limits {
                max_blksize: self.cfg.max_blksize,
                max_windowsize: self.cfg.max_windowsize,
            },
            Some(size),
        );
        tracing::debug!(
            mode = %req.mode,
            size,
            blksize = neg.blksize,
            windowsize = neg.windowsize,
            oack = ?neg.oack,
            "TFTP transfer starts"
        );
        let (blksize, windowsize) = (neg.blksize, neg.windowsize);
        let out = self.transfer(sock, source, neg, cancel).run().await;
        match out.result {
            TransferResult::Ok => {}
            TransferResult::Aborted => count_error("client_error"),
            r => count_error(r.as_str()),
        }
        let elapsed = started.elapsed();
        tracing::info!(
            result = out.result.as_str(),
            bytes = out.bytes,
            ms = elapsed.as_millis() as u64,
            detail = out.detail.as_deref().unwrap_or(""),
            "TFTP transfer ended"
        );
        self.record(TransferRecord {
            file: req.filename,
            peer,
            bytes: out.bytes,
            result: out.result,
            elapsed,
            blksize,
            windowsize,
        });
    }

    /// The session's own socket (our TID), on the server's interface and address,
    /// connected to the client.
    fn session_socket(&self, peer: SocketAddrV4) -> std::io::Result<UdpSocket> {
        let s = udp_socket(&self.iface, self.local, 0, false)?;
        s.connect(&SocketAddr::V4(peer).into())?;
        UdpSocket::from_std(s.into())
    }

    /// The transfer of `source` over `sock` with the negotiated options.
    fn transfer(
        &self,
        sock: UdpSocket,
        source: Source,
        neg: Negotiated,
        cancel: CancellationToken,
    ) -> Transfer {
        let gso = super::session::enable_gso(&sock, neg.blksize);
        Transfer {
            gso: std::sync::atomic::AtomicBool::new(gso),
            busy_poll: BusyPoll {
                sessions: self.sessions.clone(),
                max_sessions: self.cfg.max_sessions,
            },
            sock,
            source,
            rto: Rto::new(
                neg.timeout,
                self.cfg.min_timeout,
                self.cfg.default_timeout,
                self.cfg.retries,
            ),
            neg,
            cancel,
        }
    }

    /// The generated-file hook first, then the jailed filesystem.
    async fn open(&self, requested: &str, peer: SocketAddrV4) -> Result<(Source, u64), TftpError> {
        let rel = jail::normalize(requested)?;
        if let Some(g) = &self.generated
            && let Some(data) = g.get(&rel, peer).await
        {
            let len = data.len() as u64;
            return Ok((Source::Memory(data), len));
        }
        let (file, len) = jail::open(&self.root, &rel).await?;
        Ok((Source::File { file, pos: 0 }, len))
    }

    fn finish(&self, file: &str, peer: SocketAddrV4, result: TransferResult, started: Instant) {
        self.record(TransferRecord {
            file: file.to_string(),
            peer,
            bytes: 0,
            result,
            elapsed: started.elapsed(),
            blksize: options::DEFAULT_BLKSIZE,
            windowsize: 1,
        });
    }

    fn record(&self, rec: TransferRecord) {
        metrics::counter!("bootgate_tftp_sessions_total", "result" => rec.result.as_str())
            .increment(1);
        if let Some(cb) = &self.cfg.on_done {
            cb(rec);
        }
    }
}

/// An ERROR for a request that gets no session; sent from port 69 (clients take the first
/// reply's port as our TID, and there is nothing to continue on it).
async fn reply_error(socket: &UdpSocket, peer: SocketAddrV4, code: ErrorCode, msg: &str) {
    if let Err(e) = socket.send_to(&packet::encode_error(code, msg), peer).await {
        tracing::debug!(%peer, error = %e, "TFTP error reply not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_before_binding() {
        assert!(check(&TftpConfig::default()).is_ok());
        let bad: [fn(&mut TftpConfig); 7] = [
            |c| c.max_blksize = 7,
            |c| c.max_blksize = 65465,
            |c| c.max_windowsize = 0,
            |c| c.max_sessions = 0,
            |c| c.max_sessions_per_source = 0,
            |c| c.min_timeout = Duration::from_secs(2),
            |c| c.default_timeout = Duration::from_secs(256),
        ];
        for (i, tweak) in bad.iter().enumerate() {
            let mut cfg = TftpConfig::default();
            tweak(&mut cfg);
            assert!(
                matches!(check(&cfg), Err(TftpError::Config { .. })),
                "case {i}"
            );
        }
    }

    #[test]
    fn a_missing_root_is_refused() {
        let cfg = TftpConfig {
            root: PathBuf::from("/nonexistent/bootgate-tftp-root"),
            ..TftpConfig::default()
        };
        let r = TftpServer::bind("lo", Ipv4Addr::LOCALHOST, 0, cfg, None);
        assert!(matches!(r, Err(TftpError::Root { .. })));
    }
}
