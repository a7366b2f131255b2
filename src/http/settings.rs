//! What the HTTP listener is configured with beyond its address (`[http]` of the daemon
//! config): the config fills this in, the listener reads it.

use std::path::PathBuf;

/// API access (`[http]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HttpSettings {
    /// Root-only file of API bearer tokens (`crate::http::auth`); none → no mutating API.
    pub tokens_file: Option<PathBuf>,
    /// Read endpoints answer without a token (they are on the provisioning network only).
    pub open_reads: bool,
    /// Bytes of boot files kept in RAM for whole-file GETs (`image_cache_mb`; 0: off).
    pub image_cache: u64,
}
