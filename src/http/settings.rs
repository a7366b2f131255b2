//! What the HTTP listener is configured with beyond its address (`[http]` of the daemon
//! config): the config fills this in, the listener reads it.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::limits::Limits;

/// API access (`[http]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HttpSettings {
    /// Root-only file of API bearer tokens (`crate::http::auth`); none → no mutating API.
    pub tokens_file: Option<PathBuf>,
    /// Read endpoints answer without a token (they are on the provisioning network only).
    pub open_reads: bool,
    /// Bytes of boot files kept in RAM for whole-file GETs (`image_cache_mb`; 0: off).
    pub image_cache: u64,
    /// Timeouts, connection caps and the body bound of every HTTP listener.
    pub limits: Limits,
    /// The API over TLS on a second listener (`tls_cert`, `tls_key`, `tls_listen`).
    pub tls: Option<TlsSettings>,
}

/// `[http] tls_*`: the API is served over TLS on `listen`; the plain listener keeps the
/// boot paths (firmware speaks plain HTTP) and, unless `plain_api`, refuses `/api/`
/// except the phone-home.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TlsSettings {
    /// PEM certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key: PathBuf,
    pub listen: SocketAddr,
    /// Escape hatch: the plain listener still serves the whole API (`plain_api = true`).
    pub plain_api: bool,
}
