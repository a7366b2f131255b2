//! A read-only TFTP server for network boot: RFC 1350 transfers with RFC 2347 option
//! negotiation (2348 blksize, 2349 tsize/timeout, 7440 windowsize), one ephemeral socket
//! per session, files from a root directory behind a path jail or from a generated-file hook.
//!
//! Why our own and not `async-tftp` (0.4): it ignores a client's ERROR packet and keeps
//! retransmitting (PXE ROMs send ERROR right after the tsize OACK to abort, then re-request,
//! on every boot), it runs its own smol executor inside our tokio runtime, and it serialises
//! file opens behind one mutex. A tokio-native server is a few hundred lines: [`packet`]
//! (codec), [`options`] (pure negotiation), `session` (one transfer) and `server` (the
//! port-69 loop); names go through the path jail shared with HTTP ([`crate::jail`]).
//!
//! Retransmission (RFC 1123 §4.2.3.2 asks for an adaptive timeout): when the client
//! negotiates `timeout` we retransmit after exactly that long; otherwise the interval adapts
//! to the measured round trip (RFC 6298 smoothing, clamped between
//! [`TftpConfig::min_timeout`] and [`TftpConfig::default_timeout`]; the first packet waits
//! the full default). Either way each consecutive retransmission doubles the wait. The
//! session gives up on a client that has been silent as long as a fixed-interval server
//! would wait through [`TftpConfig::retries`] doubling retransmissions (base × (2^(retries+1)
//! − 1): 63 s with the defaults, or with the client's timeout as base): the adaptive interval
//! retransmits sooner, never gives up sooner, because some clients stay quiet until their
//! own timer fires. Only a timeout retransmits: a duplicate ACK never does (RFC 1123
//! §4.2.3.1, the Sorcerer's Apprentice bug).

pub mod options;
pub mod packet;
mod server;
mod session;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use server::TftpServer;

/// The well-known TFTP port (RFC 1350 §4).
pub const TFTP_PORT: u16 = 69;

/// Files made on demand (per-host iPXE scripts, configs), consulted before the filesystem.
///
/// `path` is the jailed, cleaned name (no leading `/`, no `.`/empty components, never
/// `..`). Called in the request's own session task (never on the port-69 loop), so it may
/// await the store; it must not block the thread.
#[async_trait::async_trait]
pub trait Generated: Send + Sync {
    async fn get(&self, path: &str, client: SocketAddrV4) -> Option<Vec<u8>>;
}

/// Called once per request with its outcome (so the daemon can write an event).
pub type OnDone = Arc<dyn Fn(TransferRecord) + Send + Sync>;

/// Server settings. `Default` is what a PXE network wants; see each field for why.
#[derive(Clone)]
pub struct TftpConfig {
    /// Directory files are served from; canonicalized at bind, nothing outside is served.
    pub root: PathBuf,
    /// Largest RFC 2348 blksize granted. 1468 = 1500-byte MTU − 20 (IP) − 8 (UDP) − 4
    /// (TFTP): larger blocks need IP fragmentation, which many networks and PXE ROMs break.
    pub max_blksize: u16,
    /// Largest RFC 7440 windowsize granted (1..=64); bounds the blocks buffered per session.
    pub max_windowsize: u16,
    /// Concurrent transfers; a request beyond this gets ERROR 0 "server busy".
    pub max_sessions: usize,
    /// Concurrent transfers from one client address: one host that never ACKs cannot take
    /// the sessions firmware needs (beyond it: ERROR 0 "too many transfers from your
    /// address").
    pub max_sessions_per_source: usize,
    /// Doubling retransmissions a silent client gets at the base interval (its timeout, or
    /// `default_timeout`) before the session gives up; see the module doc for the adaptive
    /// case.
    pub retries: u32,
    /// Retransmit interval when the client negotiates none, before any round trip has been
    /// measured, and the ceiling of the adaptive interval (RFC 1350 leaves it to us).
    pub default_timeout: Duration,
    /// Floor of the adaptive retransmit interval: on a LAN the measured RTT is sub-ms, and
    /// retransmitting faster than this would mostly duplicate packets a busy client is
    /// still processing.
    pub min_timeout: Duration,
    /// Called when each request ends (served, refused or aborted).
    pub on_done: Option<OnDone>,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            root: PathBuf::from("/srv/tftp"),
            max_blksize: 1468,
            max_windowsize: 64,
            max_sessions: 1024,
            // A PXE ROM runs one transfer at a time; a few RRQ retransmits each start one.
            max_sessions_per_source: 8,
            retries: 5,
            default_timeout: Duration::from_secs(1),
            min_timeout: Duration::from_millis(200),
            on_done: None,
        }
    }
}

impl std::fmt::Debug for TftpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TftpConfig")
            .field("root", &self.root)
            .field("max_blksize", &self.max_blksize)
            .field("max_windowsize", &self.max_windowsize)
            .field("max_sessions_per_source", &self.max_sessions_per_source)
            .field("max_sessions", &self.max_sessions)
            .field("retries", &self.retries)
            .field("default_timeout", &self.default_timeout)
            .field("min_timeout", &self.min_timeout)
            .field("on_done", &self.on_done.is_some())
            .finish()
    }
}

/// How a request ended; also the `result` label of `bootgate_tftp_sessions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferResult {
    /// Every block acknowledged.
    Ok,
    /// The client sent ERROR (PXE ROMs do after the tsize OACK) or another TID's ERROR 5.
    Aborted,
    /// No acknowledgment after the last retransmission.
    Timeout,
    /// The client's port went away (ICMP port unreachable).
    PeerGone,
    NotFound,
    AccessViolation,
    /// WRQ: this server is read-only.
    WriteRefused,
    /// Malformed request or unsupported mode.
    BadRequest,
    /// Over `max_sessions`.
    Busy,
    /// A local I/O error (reading the file, the socket).
    Io,
    /// The server was stopped mid-transfer.
    Shutdown,
}

impl TransferResult {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferResult::Ok => "ok",
            TransferResult::Aborted => "aborted",
            TransferResult::Timeout => "timeout",
            TransferResult::PeerGone => "peer_gone",
            TransferResult::NotFound => "not_found",
            TransferResult::AccessViolation => "access_violation",
            TransferResult::WriteRefused => "write_refused",
            TransferResult::BadRequest => "bad_request",
            TransferResult::Busy => "busy",
            TransferResult::Io => "io",
            TransferResult::Shutdown => "shutdown",
        }
    }
}

/// One finished request, for the daemon's event log.
#[derive(Debug, Clone)]
pub struct TransferRecord {
    /// The name as the client sent it.
    pub file: String,
    pub peer: SocketAddrV4,
    /// File bytes the client acknowledged.
    pub bytes: u64,
    pub result: TransferResult,
    pub elapsed: Duration,
    /// Negotiated parameters (512/1 when the request never got that far).
    pub blksize: u16,
    pub windowsize: u16,
}

/// Errors at the module boundary (bind) and the reasons a request is refused.
#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("cannot open TFTP socket on interface {iface} at {addr}:{port}: {source}")]
    Bind {
        iface: String,
        addr: Ipv4Addr,
        port: u16,
        source: std::io::Error,
    },
    #[error("TFTP root {path}: {source}")]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid TFTP setting {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("malformed TFTP packet: {0}")]
    Malformed(#[from] packet::PacketError),
    #[error("file not found: {path:?}")]
    NotFound { path: String },
    #[error("access violation: {path:?}: {reason}")]
    AccessViolation { path: String, reason: &'static str },
    #[error("reading {path:?}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A jail refusal is the TFTP refusal of the same name: not found (error 1) or access
/// violation (error 2).
impl From<crate::jail::JailError> for TftpError {
    fn from(e: crate::jail::JailError) -> TftpError {
        use crate::jail::JailError as J;
        match e {
            J::NotFound { path } => TftpError::NotFound { path },
            J::Refused { path, reason } => TftpError::AccessViolation { path, reason },
            J::Io { path, source } => TftpError::Io { path, source },
        }
    }
}

impl TftpError {
    /// The ERROR packet a client gets for this refusal (RFC 1350 appendix).
    pub fn wire(&self) -> (packet::ErrorCode, &'static str) {
        use packet::ErrorCode as C;
        match self {
            TftpError::NotFound { .. } => (C::FileNotFound, "file not found"),
            TftpError::AccessViolation { .. } => (C::AccessViolation, "access violation"),
            TftpError::Malformed(_) => (C::IllegalOperation, "illegal TFTP operation"),
            TftpError::Io { .. }
            | TftpError::Bind { .. }
            | TftpError::Root { .. }
            | TftpError::Config { .. } => (C::NotDefined, "server error"),
        }
    }

    /// How a request refused with this error ends.
    pub fn result(&self) -> TransferResult {
        match self {
            TftpError::NotFound { .. } => TransferResult::NotFound,
            TftpError::AccessViolation { .. } => TransferResult::AccessViolation,
            TftpError::Malformed(_) => TransferResult::BadRequest,
            TftpError::Io { .. }
            | TftpError::Bind { .. }
            | TftpError::Root { .. }
            | TftpError::Config { .. } => TransferResult::Io,
        }
    }

    /// A bounded label for `bootgate_tftp_errors_total{reason}`.
    pub fn label(&self) -> &'static str {
        match self {
            TftpError::Malformed(e) => e.label(),
            TftpError::NotFound { .. } => "not_found",
            TftpError::AccessViolation { .. } => "access_violation",
            TftpError::Io { .. } => "io",
            TftpError::Bind { .. } => "bind",
            TftpError::Root { .. } => "root",
            TftpError::Config { .. } => "config",
        }
    }
}
