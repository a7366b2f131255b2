//! What PXE clients are told to fetch (`[boot]` of the daemon config): the config fills this
//! in, the DHCP and HTTP boot paths read it.

use super::BootFiles;

/// What PXE clients are told to fetch (`[boot]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BootSettings {
    /// Base URL of the HTTP listener as clients reach it (`http://10.250.0.1:8080`).
    pub http_base: String,
    #[serde(skip)]
    pub files: BootFiles,
}
