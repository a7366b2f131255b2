//! The daemon's own config (`/etc/bootgate/bootgate.toml`): which interfaces to serve, where
//! the HTTP listener, state, store, inventory, boot images and secrets are. Parsed into wire
//! structs (`deny_unknown_fields`), then validated into [`Config`]. Relative paths are taken
//! relative to the config file's directory, so a config in git works from any checkout.
//! The settings each server reads are its own types (`dhcp::DhcpSettings`, …): the config sits
//! above the rooms it configures, and no room imports it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::diag::Invalid;
use crate::store::StoreUrl;

mod check;
mod site;
mod wire;

pub use check::check_inventory;
pub use site::load_inventory;
// Each room owns the settings it reads; the config composes them (and names them here, so
// `config::DhcpSettings` and the like read as before).
pub use crate::dhcp::{DhcpSettings, Interface};
pub use crate::handoff::HandoffSettings;
pub use crate::http::HttpSettings;
pub use crate::pxe::BootSettings;

pub const DEFAULT_PATH: &str = "/etc/bootgate/bootgate.toml";

/// The validated daemon config.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Config {
    /// The file this came from.
    pub path: PathBuf,
    pub interfaces: Vec<Interface>,
    /// Where the HTTP listener (iPXE, images, API, metrics) binds.
    pub http_listen: SocketAddr,
    pub http: HttpSettings,
    /// Daemon state (SQLite database, control socket, run logs).
    pub state_dir: PathBuf,
    pub store: StoreUrl,
    pub inventory_dir: PathBuf,
    pub boot_images_dir: PathBuf,
    /// Root-only file with BMC credentials and API tokens; optional until power control.
    /// For `secrets = "credential:NAME"` this is `$CREDENTIALS_DIRECTORY/NAME` when systemd
    /// set that variable, else None: use [`Config::secrets_path`] for the reason.
    pub secrets_file: Option<PathBuf>,
    /// `secrets` as written (a path made absolute, or a systemd credential name).
    pub secrets: Option<crate::secrets::SecretsSource>,
    /// Unix socket for local admin commands (`bootgate reload`), mode 0600.
    pub control_socket: PathBuf,
    pub dhcp: DhcpSettings,
    pub boot: BootSettings,
    pub handoff: HandoffSettings,
    /// BMC calls: per-call timeout, retries, concurrency per gateway (`[bmc]`).
    pub bmc: crate::bmc::BmcSettings,
    /// Pool and timing of a `postgres://` store (`[postgres]`); ignored for SQLite.
    pub postgres: PostgresSettings,
    /// `[ha]`: this gateway's id and its peer's, for RFC 3074 load balancing (None: answer
    /// every client).
    pub ha: Option<crate::ha::HaSettings>,
    /// `[events]`: how much of the event log is kept and how often it is pruned.
    pub events: crate::events::EventSettings,
    /// `[discovery]`: the cap and expiry of discovered hosts.
    pub discovery: crate::model::DiscoveryRetention,
    /// `[tftp]`: per-source session cap.
    pub tftp: TftpSettings,
}

/// `[tftp]` (the rest of the TFTP server's settings are fixed defaults, see
/// `crate::tftp::TftpConfig`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TftpSettings {
    /// Transfers one client address may have running at once (the global cap stays).
    pub max_sessions_per_source: usize,
}

impl Default for TftpSettings {
    fn default() -> Self {
        TftpSettings {
            max_sessions_per_source: crate::tftp::TftpConfig::default().max_sessions_per_source,
        }
    }
}

/// A shared PostgreSQL store's pool and timings (`[postgres]`): how long a DHCP request
/// can wait on a database that went away, and how often this gateway learns the other's
/// leases.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PostgresSettings {
    /// Connections this daemon opens at most (the server's limit is shared by both gateways).
    pub max_connections: u32,
    /// How long a store call waits for a connection (a server that is down fails calls,
    /// and the daemon degrades, after this long).
    pub acquire_timeout: Duration,
    /// Server-side statement and lock timeout.
    pub statement_timeout: Duration,
    /// Client-side bound on a whole store call (a server that stops answering).
    pub call_timeout: Duration,
    /// How often the address book reloads the leases the other gateway wrote.
    pub sync_interval: Duration,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        let o = crate::store::postgres::PgOptions::default();
        PostgresSettings {
            max_connections: o.max_connections,
            acquire_timeout: o.acquire_timeout,
            statement_timeout: o.statement_timeout,
            call_timeout: o.call_timeout,
            sync_interval: Duration::from_secs(5),
        }
    }
}

impl PostgresSettings {
    /// The pool options `store::open_with` takes.
    pub fn pg_options(&self) -> crate::store::postgres::PgOptions {
        crate::store::postgres::PgOptions {
            max_connections: self.max_connections,
            acquire_timeout: self.acquire_timeout,
            statement_timeout: self.statement_timeout,
            call_timeout: self.call_timeout,
            password: None,
        }
    }
}

/// Whether a `postgres://user:password@host/…` URL has a password (`user:` before the `@`).
fn inline_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

impl Config {
    /// Reads and validates a config file. Every problem is reported, each naming the file
    /// and field.
    pub fn load(path: &Path) -> Result<Config, Invalid> {
        wire::load(path)
    }

    /// The secrets file to read: None when the config names none; an error naming
    /// `CREDENTIALS_DIRECTORY` for `credential:NAME` outside systemd.
    pub fn secrets_path(&self) -> Result<Option<PathBuf>, crate::secrets::SecretsError> {
        self.secrets.as_ref().map(|s| s.path()).transpose()
    }

    /// The pool options of the store with its password from the secrets file (`[postgres]
    /// password`), for commands that open the store themselves. Secrets that cannot be read
    /// here (a `credential:` outside systemd, a file of another user) leave the password
    /// to the URL, `PGPASSWORD` or `~/.pgpass`, with a warning.
    pub fn store_options(&self) -> crate::store::postgres::PgOptions {
        let mut options = self.postgres.pg_options();
        if matches!(self.store, StoreUrl::Postgres(_)) && self.secrets.is_some() {
            match self.load_secrets() {
                Ok(s) => options.password = s.postgres_password().cloned(),
                Err(e) => {
                    tracing::warn!(error = %e, "secrets not read: the PostgreSQL password comes from the store URL, PGPASSWORD or ~/.pgpass")
                }
            }
        }
        options
    }

    /// A store URL that carries its password inline (`postgres://user:PASSWORD@…`): allowed,
    /// but bootgate.toml is no place for a secret (check-config warns).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let StoreUrl::Postgres(url) = &self.store
            && inline_password(url)
        {
            out.push(format!(
                "{}: store: the URL carries a password; move it to the secrets file as [postgres] password = \"…\" (it wins over the URL's)",
                self.path.display()
            ));
        }
        out
    }

    /// Loads the secrets file the config names (empty secrets when it names none).
    pub fn load_secrets(&self) -> Result<crate::secrets::Secrets, crate::secrets::SecretsError> {
        match &self.secrets {
            Some(s) => s.load(),
            None => Ok(crate::secrets::Secrets::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::inline_password;

    #[test]
    fn inline_passwords_are_spotted() {
        assert!(inline_password("postgres://bg:hunter2@db1/bootgate"));
        assert!(inline_password(
            "postgresql://bg:@db1:5432/bootgate?sslmode=verify-full"
        ));
        assert!(!inline_password(
            "postgres://bg@db1/bootgate?sslmode=verify-full"
        ));
        assert!(!inline_password("postgres://db1/bootgate"));
        assert!(!inline_password("postgres://bg@[::1]:5432/bootgate"));
    }
}
