//! The daemon's own config (`/etc/bootgate/bootgate.toml`): which interfaces to serve, where
//! the HTTP listener, state, store, inventory, boot images and secrets are. Parsed into wire
//! structs (`deny_unknown_fields`), then validated into [`Config`]. Relative paths are taken
//! relative to the config file's directory, so a config in git works from any checkout.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;

use crate::inventory::Invalid;
use crate::store::StoreUrl;

mod site;
mod wire;

pub use site::load_inventory;

pub const DEFAULT_PATH: &str = "/etc/bootgate/bootgate.toml";

/// A gateway interface bootgate serves (DHCP/TFTP/HTTP answer only on these).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Interface {
    pub name: String,
    /// The gateway's own address and prefix on that interface (server identifier, next-server).
    pub address: Ipv4Net,
}

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
}

/// The Ansible hand-off (`[handoff]`): how `ansible-playbook` is run against a host once it
/// phones home `installed`, and by `bootgate handoff HOST`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HandoffSettings {
    /// Run the hand-off automatically when a host phones home `installed`.
    pub enabled: bool,
    /// The playbooks directory: `site.yml` and (optionally) `ansible.cfg`.
    pub playbooks_dir: PathBuf,
    /// The `ansible-playbook` executable: a path, or resolved from `$BOOTGATE_VENV/bin`
    /// then `PATH` when the config gives a bare name.
    pub ansible_playbook: PathBuf,
    /// Runs at once; more hosts wait for a slot (a rack powering on together must not
    /// fork hundreds of SSH sessions from the gateway).
    pub concurrency: usize,
    /// A run still going after this is killed and the host marked `failed`.
    pub timeout: Duration,
    /// The account Ansible logs in as.
    pub ssh_user: String,
    /// Private key Ansible logs in with (none: ssh's defaults / agent).
    pub ssh_key: Option<PathBuf>,
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
        }
    }
}

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

/// What PXE clients are told to fetch (`[boot]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BootSettings {
    /// Base URL of the HTTP listener as clients reach it (`http://10.250.0.1:8080`).
    pub http_base: String,
    #[serde(skip)]
    pub files: crate::pxe::BootFiles,
}

/// Server-wide DHCP settings (`[dhcp]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DhcpSettings {
    /// How long an OFFERed address stays reserved for the client (RFC 2131 §4.3.1 lets
    /// the server reserve it; 30 s covers slow PXE ROMs).
    pub offer_hold: Duration,
    /// How long a DECLINEd address stays out of the pool (RFC 2131 §4.3.3).
    pub decline_quarantine: Duration,
    /// Requests processed concurrently.
    pub max_in_flight: usize,
    /// Ping a dynamic address before offering it (RFC 2131 §4.4.1 "SHOULD probe").
    pub conflict_probe: crate::dhcp::probe::ProbeMode,
    pub probe_timeout: Duration,
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

    /// Loads the secrets file the config names (empty secrets when it names none).
    pub fn load_secrets(&self) -> Result<crate::secrets::Secrets, crate::secrets::SecretsError> {
        match &self.secrets {
            Some(s) => s.load(),
            None => Ok(crate::secrets::Secrets::default()),
        }
    }
}
