//! bootgate.toml as written (serde wire structs, unknown keys refused) and its validation
//! into [`Config`]. Relative paths, including a relative `sqlite:` store path, are taken
//! relative to the config file's directory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::Deserialize;

use super::{
    BootSettings, Config, DhcpSettings, HandoffSettings, HttpSettings, Interface, PostgresSettings,
};
use crate::diag::{
    Invalid, MAX_IFNAME_LEN, Problem, deserialize_collecting, lease_time, syntax_problem,
};
use crate::secrets::SecretsSource;
use crate::store::StoreUrl;

/// The whole file except `[[interface]]`: those are taken out of the table first and
/// deserialized one by one as [`InterfaceWire`], so a problem names the interface.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigWire {
    state_dir: PathBuf,
    /// `sqlite:PATH` or `postgres://…`; default `sqlite:{state_dir}/bootgate.db`.
    store: Option<String>,
    /// Directory of the site's inventory `*.toml`.
    inventory: PathBuf,
    boot_images: PathBuf,
    /// A path, or `credential:NAME` for `$CREDENTIALS_DIRECTORY/NAME` (systemd LoadCredential=).
    secrets: Option<String>,
    /// Default `{state_dir}/control.sock`.
    control_socket: Option<PathBuf>,
    http: HttpWire,
    #[serde(default)]
    dhcp: DhcpWire,
    #[serde(default)]
    boot: BootWire,
    #[serde(default)]
    handoff: HandoffWire,
    #[serde(default)]
    bmc: BmcWire,
    #[serde(default)]
    postgres: PostgresWire,
    /// `[ha]`: this gateway and its peer on a shared store (see crate::ha).
    #[serde(default)]
    ha: crate::ha::HaWire,
    /// `[events]`: how much of the event log is kept.
    #[serde(default)]
    events: EventsWire,
    /// `[discovery]`: how many unknown MACs are kept as discovered hosts, and how long.
    #[serde(default)]
    discovery: DiscoveryWire,
    #[serde(default)]
    tftp: TftpWire,
}

/// `[events]`: retention of the event log (see crate::events::spawn_retention).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsWire {
    /// Events older than this are pruned.
    #[serde(default = "default_events_retain", deserialize_with = "lease_time")]
    retain: Duration,
    /// At most this many events are kept (the oldest go first).
    #[serde(default = "default_events_max_rows")]
    max_rows: u64,
    /// How often retention runs.
    #[serde(default = "default_prune_interval", deserialize_with = "lease_time")]
    prune_interval: Duration,
}

impl Default for EventsWire {
    fn default() -> Self {
        EventsWire {
            retain: default_events_retain(),
            max_rows: default_events_max_rows(),
            prune_interval: default_prune_interval(),
        }
    }
}

fn default_events_retain() -> Duration {
    crate::model::EventRetention::default().retain
}
fn default_events_max_rows() -> u64 {
    crate::model::EventRetention::default().max_rows
}
fn default_prune_interval() -> Duration {
    crate::events::EventSettings::default().prune_interval
}

/// The fewest events `[events] max_rows` may keep (a log that keeps less tells nothing).
const MIN_EVENT_ROWS: u64 = 100;

fn event_settings(w: &EventsWire, p: &mut Problems<'_>) -> crate::events::EventSettings {
    if w.max_rows < MIN_EVENT_ROWS {
        p.push(
            "events",
            "max_rows",
            format!("{}: at least {MIN_EVENT_ROWS}", w.max_rows),
        );
    }
    crate::events::EventSettings {
        retention: crate::model::EventRetention {
            retain: w.retain,
            max_rows: w.max_rows.max(MIN_EVENT_ROWS),
            ..Default::default()
        },
        prune_interval: w.prune_interval,
    }
}

/// `[discovery]`: the cap and expiry of discovered hosts (see crate::discovery).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscoveryWire {
    /// Discovered hosts kept at most; beyond, the oldest-seen expire first.
    #[serde(default = "default_max_hosts")]
    max_hosts: u64,
    /// A discovered host not seen for this long expires.
    #[serde(default = "default_discovery_retain", deserialize_with = "lease_time")]
    retain: Duration,
}

impl Default for DiscoveryWire {
    fn default() -> Self {
        DiscoveryWire {
            max_hosts: default_max_hosts(),
            retain: default_discovery_retain(),
        }
    }
}

fn default_max_hosts() -> u64 {
    crate::model::DiscoveryRetention::default().max_hosts
}
fn default_discovery_retain() -> Duration {
    crate::model::DiscoveryRetention::default().retain
}

fn discovery_settings(w: &DiscoveryWire, p: &mut Problems<'_>) -> crate::model::DiscoveryRetention {
    if w.max_hosts == 0 {
        p.push("discovery", "max_hosts", "0: at least 1");
    }
    crate::model::DiscoveryRetention {
        retain: w.retain,
        max_hosts: w.max_hosts.max(1),
    }
}

/// `[bmc]`: how BMCs are called (all optional).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BmcWire {
    /// Deadline of each BMC request (and each ipmitool run).
    #[serde(default = "default_bmc_timeout", deserialize_with = "run_timeout")]
    timeout: Duration,
    /// Extra attempts after a connection error or a 503 (never for a reset that may have landed).
    #[serde(default = "default_bmc_retries")]
    retries: u32,
    /// BMC operations in flight at once from this gateway.
    #[serde(default = "default_bmc_concurrency")]
    concurrency: usize,
    /// How long a Redfish task (202 + task monitor) may run.
    #[serde(default = "default_task_timeout", deserialize_with = "run_timeout")]
    task_timeout: Duration,
}

impl Default for BmcWire {
    fn default() -> Self {
        BmcWire {
            timeout: default_bmc_timeout(),
            retries: default_bmc_retries(),
            concurrency: default_bmc_concurrency(),
            task_timeout: default_task_timeout(),
        }
    }
}

fn default_bmc_timeout() -> Duration {
    crate::bmc::BmcSettings::default().timeout
}
fn default_bmc_retries() -> u32 {
    crate::bmc::BmcSettings::default().retries
}
fn default_bmc_concurrency() -> usize {
    crate::bmc::BmcSettings::default().concurrency
}
fn default_task_timeout() -> Duration {
    crate::bmc::BmcSettings::default().task_timeout
}

fn bmc_settings(w: &BmcWire, p: &mut Problems<'_>) -> crate::bmc::BmcSettings {
    if !(1..=1024).contains(&w.concurrency) {
        p.push(
            "bmc",
            "concurrency",
            format!("{}: must be 1 to 1024 BMC calls at once", w.concurrency),
        );
    }
    if w.retries > 10 {
        p.push("bmc", "retries", format!("{}: at most 10", w.retries));
    }
    crate::bmc::BmcSettings {
        timeout: w.timeout,
        retries: w.retries.min(10),
        concurrency: w.concurrency.clamp(1, 1024),
        task_timeout: w.task_timeout,
    }
}

/// `[handoff]`: the Ansible run after provisioning. Off unless `enabled = true`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandoffWire {
    #[serde(default)]
    enabled: bool,
    /// Directory holding `site.yml` (and `ansible.cfg`); default `playbooks` next to the
    /// config.
    #[serde(default = "default_playbooks")]
    playbooks: PathBuf,
    #[serde(default = "default_ansible_playbook")]
    ansible_playbook: PathBuf,
    #[serde(default = "default_handoff_concurrency")]
    concurrency: usize,
    #[serde(default = "default_handoff_timeout", deserialize_with = "run_timeout")]
    timeout: Duration,
    #[serde(default = "default_ssh_user")]
    ssh_user: String,
    ssh_key: Option<PathBuf>,
}

impl Default for HandoffWire {
    fn default() -> Self {
        HandoffWire {
            enabled: false,
            playbooks: default_playbooks(),
            ansible_playbook: default_ansible_playbook(),
            concurrency: default_handoff_concurrency(),
            timeout: default_handoff_timeout(),
            ssh_user: default_ssh_user(),
            ssh_key: None,
        }
    }
}

fn default_playbooks() -> PathBuf {
    PathBuf::from("playbooks")
}
fn default_ansible_playbook() -> PathBuf {
    PathBuf::from("ansible-playbook")
}
fn default_handoff_concurrency() -> usize {
    4
}
fn default_handoff_timeout() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_ssh_user() -> String {
    "root".to_string()
}

/// A run timeout: `"30m"`, `"2h"` or integer seconds, between 1 s and 24 h.
fn run_timeout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(i64),
        Text(String),
    }
    let bad = |why: String| {
        serde::de::Error::custom(format!(
            "{why}; expected a duration like \"30m\" or \"2h\" (1s to 24h), or integer seconds"
        ))
    };
    let d = match Raw::deserialize(d)? {
        Raw::Secs(s) => Duration::from_secs(u64::try_from(s).map_err(|_| bad(format!("{s}")))?),
        Raw::Text(t) => {
            let span: jiff::Span = t
                .parse()
                .map_err(|e: jiff::Error| bad(format!("{t:?}: {e}")))?;
            span.to_duration(jiff::SpanRelativeTo::days_are_24_hours())
                .ok()
                .and_then(|d| Duration::try_from(d).ok())
                .ok_or_else(|| bad(format!("{t:?}")))?
        }
    };
    if d < Duration::from_secs(1) || d > Duration::from_secs(24 * 3600) {
        return Err(bad(format!("{}s is out of range", d.as_secs())));
    }
    Ok(d)
}

/// `[postgres]`: pool and timings of a shared `postgres://` store, in milliseconds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostgresWire {
    max_connections: Option<u32>,
    acquire_timeout_ms: Option<u64>,
    statement_timeout_ms: Option<u64>,
    call_timeout_ms: Option<u64>,
    sync_interval_ms: Option<u64>,
}

/// `[boot]`: what PXE clients are told to fetch. File names are relative to boot_images.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BootWire {
    /// Base URL of our HTTP listener as clients reach it; default `http://{http.listen}`.
    http_base: Option<String>,
    bios: Option<String>,
    uefi_x64: Option<String>,
    uefi_arm64: Option<String>,
    uefi_http_x64: Option<String>,
    uefi_http_arm64: Option<String>,
}

/// `[dhcp]`: server-wide DHCP behaviour (per-subnet settings live in the inventory).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DhcpWire {
    /// How long an OFFERed address stays reserved for the client.
    #[serde(default = "default_offer_hold", deserialize_with = "lease_time")]
    offer_hold: Duration,
    /// How long a DECLINEd address is kept out of the pool.
    #[serde(default = "default_quarantine", deserialize_with = "lease_time")]
    decline_quarantine: Duration,
    /// Requests processed at once; more wait (and are dropped by clients' retries).
    #[serde(default = "default_in_flight")]
    max_in_flight: usize,
    /// `icmp` (ping a dynamic address before offering it) or `off`.
    #[serde(default = "default_probe")]
    conflict_probe: crate::dhcp::probe::ProbeMode,
    /// How long the probe waits for an echo reply, in milliseconds.
    #[serde(default = "default_probe_ms")]
    probe_timeout_ms: u64,
    /// Client MACs tracked for the per-MAC rate limit; the least recently heard go first.
    #[serde(default = "default_tracked_clients")]
    max_tracked_clients: usize,
    /// Per subnet and minute: ACKs for addresses the client was never offered.
    #[serde(default = "default_unoffered_acks")]
    unoffered_acks_per_minute: u32,
}

impl Default for DhcpWire {
    fn default() -> Self {
        DhcpWire {
            offer_hold: default_offer_hold(),
            decline_quarantine: default_quarantine(),
            max_in_flight: default_in_flight(),
            conflict_probe: default_probe(),
            probe_timeout_ms: default_probe_ms(),
            max_tracked_clients: default_tracked_clients(),
            unoffered_acks_per_minute: default_unoffered_acks(),
        }
    }
}

fn default_offer_hold() -> Duration {
    Duration::from_secs(30)
}
fn default_quarantine() -> Duration {
    Duration::from_secs(600)
}
fn default_in_flight() -> usize {
    256
}
fn default_probe() -> crate::dhcp::probe::ProbeMode {
    crate::dhcp::probe::ProbeMode::Icmp
}
fn default_probe_ms() -> u64 {
    200
}
fn default_tracked_clients() -> usize {
    65_536
}
fn default_unoffered_acks() -> u32 {
    32
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpWire {
    listen: SocketAddr,
    /// Root-only file of API bearer tokens.
    tokens: Option<PathBuf>,
    /// Read endpoints answer without a token.
    #[serde(default = "default_open_reads")]
    open_reads: bool,
    /// MiB of boot files (kernels, initrds, images) kept in RAM for whole-file GETs.
    #[serde(default = "default_image_cache_mb")]
    image_cache_mb: u64,
    /// Limits of every HTTP listener (crate::http::limits has what each holds).
    #[serde(default, deserialize_with = "opt_run_timeout")]
    header_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "opt_run_timeout")]
    idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "opt_run_timeout")]
    request_timeout: Option<Duration>,
    max_connections: Option<usize>,
    max_connections_per_source: Option<usize>,
    max_body_kb: Option<usize>,
    /// PEM certificate chain and key of the TLS API listener.
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    /// Where the API is served over TLS (required with tls_cert/tls_key).
    tls_listen: Option<SocketAddr>,
    /// With TLS on, the plain listener still serves the whole API.
    #[serde(default)]
    plain_api: bool,
}

/// `[tftp]`: the per-source transfer cap.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TftpWire {
    max_sessions_per_source: Option<usize>,
}

fn opt_run_timeout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    run_timeout(d).map(Some)
}

fn default_open_reads() -> bool {
    true
}

fn default_image_cache_mb() -> u64 {
    1024
}

/// `[[interface]]`: `address` is the gateway's own address with the subnet's prefix.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InterfaceWire {
    name: String,
    address: Ipv4Net,
}

struct Problems<'a> {
    file: &'a Path,
    list: Vec<Problem>,
}

impl Problems<'_> {
    fn push(&mut self, entry: &str, field: &str, reason: impl Into<String>) {
        self.list.push(Problem {
            file: self.file.to_path_buf(),
            entry: entry.to_string(),
            field: field.to_string(),
            reason: reason.into(),
        });
    }
}

/// Sections whose field errors are reported under the section's name (entry `http`, field
/// `listen`) rather than as entry `-`, field `http.listen`.
const SECTIONS: &[&str] = &[
    "http",
    "dhcp",
    "boot",
    "bmc",
    "handoff",
    "postgres",
    "events",
    "discovery",
    "tftp",
];

pub(super) fn load(path: &Path) -> Result<Config, Invalid> {
    let mut p = Problems {
        file: path,
        list: Vec::new(),
    };
    let mut table = read_table(path)?;
    let raw_interfaces = table.remove("interface");
    let top = top_level(table, &mut p);
    let interfaces = interfaces(raw_interfaces.as_ref(), &mut p);

    let base = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let resolve = |rel: &Path| -> PathBuf {
        // `components()` drops `.` segments: `inventory = "."` reads as the config's dir.
        base.join(rel).components().collect()
    };

    let Some(w) = top else {
        return Err(Invalid(p.list));
    };
    let state_dir = resolve(&w.state_dir);
    let store = store_url(w.store.as_deref(), &state_dir, &resolve, &mut p);
    let inventory_dir = resolve(&w.inventory);
    let boot_images_dir = resolve(&w.boot_images);
    check_dirs(
        [
            ("inventory", &inventory_dir),
            ("boot_images", &boot_images_dir),
        ],
        &mut p,
    );
    let secrets = secrets_source(w.secrets.as_deref(), &resolve, &mut p);
    let boot = boot_settings(&w.boot, w.http.listen, &mut p);
    let handoff = handoff_settings(&w.handoff, &resolve, &mut p);
    let bmc = bmc_settings(&w.bmc, &mut p);
    let postgres = postgres_settings(&w.postgres, &mut p);
    let events = event_settings(&w.events, &mut p);
    let discovery = discovery_settings(&w.discovery, &mut p);
    let http = http_settings(&w.http, &resolve, &mut p);
    let tftp = tftp_settings(&w.tftp, &mut p);
    let shared = matches!(store, Some(StoreUrl::Postgres(_)));
    let ha = crate::ha::ha_settings(&w.ha, shared, |field, reason| p.push("ha", field, reason));
    let (Some(store), true) = (store, p.list.is_empty()) else {
        return Err(Invalid(p.list));
    };
    Ok(Config {
        path: path.to_path_buf(),
        interfaces,
        http_listen: w.http.listen,
        http,
        control_socket: w
            .control_socket
            .as_deref()
            .map_or_else(|| state_dir.join("control.sock"), &resolve),
        secrets_file: secrets.as_ref().and_then(|s| s.path().ok()),
        secrets,
        state_dir,
        store,
        inventory_dir,
        boot_images_dir,
        dhcp: dhcp_settings(&w.dhcp),
        boot,
        handoff,
        bmc,
        postgres,
        ha,
        events,
        discovery,
        tftp,
    })
}

/// Reads and parses the file; failing either is the file's only problem.
fn read_table(path: &Path) -> Result<toml::Table, Invalid> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Invalid(vec![Problem {
            file: path.to_path_buf(),
            entry: "-".to_string(),
            field: "-".to_string(),
            reason: format!("cannot read: {e}"),
        }])
    })?;
    text.parse::<toml::Table>()
        .map_err(|e| Invalid(vec![syntax_problem(path, &text, &e)]))
}

/// Deserializes the whole file except `[[interface]]` (taken out of `table` before), each
/// field error labelled by its section.
fn top_level(table: toml::Table, p: &mut Problems<'_>) -> Option<ConfigWire> {
    let errors = match deserialize_collecting::<ConfigWire>(&toml::Value::Table(table)) {
        Ok(w) => return Some(w),
        Err(errors) => errors,
    };
    for e in errors {
        let in_section = SECTIONS.iter().find_map(|&section| {
            let field = e.field.strip_prefix(section)?.strip_prefix('.')?;
            Some((section, field))
        });
        match in_section {
            Some((section, field)) => p.push(section, field, e.reason),
            // `interface` was taken out before, so serde's list lacks it.
            None if e.reason.starts_with("unknown field, expected one of:") => {
                p.push("-", &e.field, format!("{}, interface", e.reason))
            }
            None => p.push("-", &e.field, e.reason),
        }
    }
    None
}

/// `store`: `sqlite:{state_dir}/bootgate.db` when absent; a relative SQLite path is taken
/// relative to the config's directory.
fn store_url(
    store: Option<&str>,
    state_dir: &Path,
    resolve: &dyn Fn(&Path) -> PathBuf,
    p: &mut Problems<'_>,
) -> Option<StoreUrl> {
    match store {
        None => Some(StoreUrl::Sqlite(state_dir.join("bootgate.db"))),
        Some(s) => match s.parse::<StoreUrl>() {
            Ok(StoreUrl::Sqlite(db)) => Some(StoreUrl::Sqlite(resolve(&db))),
            Ok(url) => Some(url),
            Err(e) => {
                p.push("-", "store", e.to_string());
                None
            }
        },
    }
}

/// The inventory and boot image directories must exist when the daemon starts.
fn check_dirs(dirs: [(&str, &PathBuf); 2], p: &mut Problems<'_>) {
    for (field, dir) in dirs {
        if !dir.is_dir() {
            let why = if dir.exists() {
                "is not a directory"
            } else {
                "does not exist"
            };
            p.push("-", field, format!("{} {why}", dir.display()));
        }
    }
}

/// `secrets`: a path (made absolute) or a systemd credential name.
fn secrets_source(
    secrets: Option<&str>,
    resolve: &dyn Fn(&Path) -> PathBuf,
    p: &mut Problems<'_>,
) -> Option<SecretsSource> {
    match secrets.map(SecretsSource::parse) {
        None => None,
        Some(Ok(SecretsSource::File(f))) => Some(SecretsSource::File(resolve(&f))),
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            p.push("-", "secrets", e.to_string());
            None
        }
    }
}

fn http_settings(
    w: &HttpWire,
    resolve: &dyn Fn(&Path) -> PathBuf,
    p: &mut Problems<'_>,
) -> HttpSettings {
    use crate::http::{Limits, TlsSettings};
    let d = Limits::default();
    let mut count = |field: &str, v: Option<usize>, min: usize, max: usize, default: usize| match v
    {
        None => default,
        Some(n) if (min..=max).contains(&n) => n,
        Some(n) => {
            p.push("http", field, format!("{n}: must be {min} to {max}"));
            default
        }
    };
    let limits = Limits {
        header_timeout: w.header_timeout.unwrap_or(d.header_timeout),
        idle_timeout: w.idle_timeout.unwrap_or(d.idle_timeout),
        request_timeout: w.request_timeout.unwrap_or(d.request_timeout),
        max_connections: count(
            "max_connections",
            w.max_connections,
            16,
            1 << 20,
            d.max_connections,
        ),
        max_connections_per_source: count(
            "max_connections_per_source",
            w.max_connections_per_source,
            1,
            1 << 20,
            d.max_connections_per_source,
        ),
        max_body: count("max_body_kb", w.max_body_kb, 1, 1 << 20, d.max_body / 1024) * 1024,
    };
    let tls = match (&w.tls_cert, &w.tls_key, w.tls_listen) {
        (None, None, None) => None,
        (Some(cert), Some(key), Some(listen)) => {
            let (cert, key) = (resolve(cert), resolve(key));
            if let Err(e) = crate::http::tls::server_config(&cert, &key) {
                p.push("http", e.field(), e.to_string());
            }
            if listen == w.listen {
                p.push(
                    "http",
                    "tls_listen",
                    format!("{listen}: must differ from listen (boot paths stay plain there)"),
                );
            }
            Some(TlsSettings {
                cert,
                key,
                listen,
                plain_api: w.plain_api,
            })
        }
        _ => {
            for (field, set) in [
                ("tls_cert", w.tls_cert.is_some()),
                ("tls_key", w.tls_key.is_some()),
                ("tls_listen", w.tls_listen.is_some()),
            ] {
                if !set {
                    p.push(
                        "http",
                        field,
                        "missing: TLS needs tls_cert, tls_key and tls_listen together",
                    );
                }
            }
            None
        }
    };
    HttpSettings {
        tokens_file: w.tokens.as_deref().map(resolve),
        open_reads: w.open_reads,
        image_cache: w.image_cache_mb.saturating_mul(1024 * 1024),
        limits,
        tls,
    }
}

fn tftp_settings(w: &TftpWire, p: &mut Problems<'_>) -> super::TftpSettings {
    let d = super::TftpSettings::default();
    match w.max_sessions_per_source {
        None => d,
        Some(n) if (1..=1024).contains(&n) => super::TftpSettings {
            max_sessions_per_source: n,
        },
        Some(n) => {
            p.push(
                "tftp",
                "max_sessions_per_source",
                format!("{n}: must be 1 to 1024"),
            );
            d
        }
    }
}

/// `[dhcp]`: nothing to refuse; values past what makes sense are clamped.
fn dhcp_settings(w: &DhcpWire) -> DhcpSettings {
    DhcpSettings {
        offer_hold: w.offer_hold,
        decline_quarantine: w.decline_quarantine,
        max_in_flight: w.max_in_flight.max(1),
        conflict_probe: w.conflict_probe,
        probe_timeout: Duration::from_millis(w.probe_timeout_ms.clamp(10, 5000)),
        // Below a few hundred, a busy segment's own clients would evict each other.
        max_tracked_clients: w.max_tracked_clients.max(256),
        unoffered_acks_per_minute: w.unoffered_acks_per_minute,
    }
}

/// Validates `[postgres]`: each value within a range where the daemon still behaves (a
/// zero timeout would fail every call; an hour-long one would hang DHCP for an hour).
fn postgres_settings(w: &PostgresWire, p: &mut Problems<'_>) -> PostgresSettings {
    let d = PostgresSettings::default();
    let mut ms = |field: &str, v: Option<u64>, min: u64, max: u64, default: Duration| match v {
        None => default,
        Some(v) if (min..=max).contains(&v) => Duration::from_millis(v),
        Some(v) => {
            p.push(
                "postgres",
                field,
                format!("{v} ms is out of range ({min} ..= {max} ms)"),
            );
            default
        }
    };
    let acquire_timeout = ms(
        "acquire_timeout_ms",
        w.acquire_timeout_ms,
        100,
        60_000,
        d.acquire_timeout,
    );
    let statement_timeout = ms(
        "statement_timeout_ms",
        w.statement_timeout_ms,
        100,
        600_000,
        d.statement_timeout,
    );
    let call_timeout = ms(
        "call_timeout_ms",
        w.call_timeout_ms,
        100,
        600_000,
        d.call_timeout,
    );
    let sync_interval = ms(
        "sync_interval_ms",
        w.sync_interval_ms,
        100,
        3_600_000,
        d.sync_interval,
    );
    let max_connections = match w.max_connections {
        None => d.max_connections,
        Some(n @ 2..=1000) => n,
        Some(n) => {
            p.push(
                "postgres",
                "max_connections",
                format!("{n} is out of range (2 ..= 1000: the lease writer and the readers need one each)"),
            );
            d.max_connections
        }
    };
    PostgresSettings {
        max_connections,
        acquire_timeout,
        statement_timeout,
        call_timeout,
        sync_interval,
    }
}

/// Deserializes each `[[interface]]`, labelled `interface "NAME"` (or `interface #N`),
/// and checks names are unique and fit IFNAMSIZ, and addresses are host addresses.
fn interfaces(raw: Option<&toml::Value>, p: &mut Problems<'_>) -> Vec<Interface> {
    let Some(raw) = raw else {
        return Vec::new();
    };
    let Some(array) = raw.as_array() else {
        p.push(
            "-",
            "interface",
            "expected an array of tables ([[interface]])",
        );
        return Vec::new();
    };
    let mut out = Vec::with_capacity(array.len());
    let mut seen: HashMap<String, String> = HashMap::new();
    for (i, value) in array.iter().enumerate() {
        let entry = match value.get("name").and_then(toml::Value::as_str) {
            Some(name) => format!("interface {name:?}"),
            None => format!("interface #{}", i + 1),
        };
        if !value.is_table() {
            p.push(&entry, "-", "expected a table ([[interface]])");
            continue;
        }
        let w = match deserialize_collecting::<InterfaceWire>(value) {
            Ok(w) => w,
            Err(errors) => {
                for e in errors {
                    p.push(&entry, &e.field, e.reason);
                }
                continue;
            }
        };
        if w.name.is_empty() || w.name.len() > MAX_IFNAME_LEN {
            p.push(
                &entry,
                "name",
                format!(
                    "interface name {:?} must be 1 to {MAX_IFNAME_LEN} bytes (Linux IFNAMSIZ)",
                    w.name
                ),
            );
        }
        let here = format!("[[interface]] #{}", i + 1);
        if let Some(first) = seen.get(&w.name) {
            p.push(
                &entry,
                "name",
                format!("duplicate interface name {:?}; also {first}", w.name),
            );
        } else {
            seen.insert(w.name.clone(), here);
        }
        let a = w.address;
        if a.prefix_len() < 31 && (a.addr() == a.network() || a.addr() == a.broadcast()) {
            p.push(
                &entry,
                "address",
                format!(
                    "{a}: give the gateway's own address on the subnet (e.g. {}/{}), not the network or broadcast address",
                    a.hosts().next().unwrap_or(a.addr()),
                    a.prefix_len()
                ),
            );
        }
        out.push(Interface {
            name: w.name,
            address: a,
        });
    }
    out
}

/// Validates `[boot]`: the HTTP base must be an http(s) URL clients can reach (not a
/// wildcard address), and file names must fit the BOOTP `file` field (RFC 2131 §2: 128 bytes).
fn boot_settings(w: &BootWire, listen: SocketAddr, p: &mut Problems<'_>) -> BootSettings {
    let defaults = crate::pxe::BootFiles::default();
    let mut file = |field: &str, v: &Option<String>, default: String| -> String {
        match v {
            Some(f) if f.is_empty() || f.len() > 127 => {
                p.push(
                    "boot",
                    field,
                    format!("{f:?}: must be 1..127 bytes (the BOOTP file field)"),
                );
                default
            }
            Some(f) => f.clone(),
            None => default,
        }
    };
    let files = crate::pxe::BootFiles {
        bios: file("bios", &w.bios, defaults.bios),
        uefi_x64: file("uefi_x64", &w.uefi_x64, defaults.uefi_x64),
        uefi_arm64: file("uefi_arm64", &w.uefi_arm64, defaults.uefi_arm64),
        uefi_http_x64: file("uefi_http_x64", &w.uefi_http_x64, defaults.uefi_http_x64),
        uefi_http_arm64: file(
            "uefi_http_arm64",
            &w.uefi_http_arm64,
            defaults.uefi_http_arm64,
        ),
    };
    let http_base = match &w.http_base {
        Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
            p.push(
                "boot",
                "http_base",
                format!("{u:?}: expected http://HOST:PORT"),
            );
            String::new()
        }
        Some(u) => u.trim_end_matches('/').to_string(),
        None if listen.ip().is_unspecified() => {
            p.push(
                "boot",
                "http_base",
                format!("required when http.listen is the wildcard {listen}: clients need an address they can reach"),
            );
            String::new()
        }
        None => format!("http://{listen}"),
    };
    BootSettings { http_base, files }
}

/// Validates `[handoff]`. Paths and the executable are checked only when the hand-off is
/// enabled (a gateway without Ansible installed may still run `bootgate serve`).
fn handoff_settings(
    w: &HandoffWire,
    resolve: &dyn Fn(&Path) -> PathBuf,
    p: &mut Problems<'_>,
) -> HandoffSettings {
    let playbooks_dir = resolve(&w.playbooks);
    let ansible_playbook = if w.ansible_playbook.components().count() > 1 {
        resolve(&w.ansible_playbook)
    } else {
        find_executable(&w.ansible_playbook).unwrap_or_else(|| w.ansible_playbook.clone())
    };
    let ssh_key = w.ssh_key.as_deref().map(resolve);
    if !(1..=64).contains(&w.concurrency) {
        p.push(
            "handoff",
            "concurrency",
            format!("{}: must be 1 to 64 runs at once", w.concurrency),
        );
    }
    let valid_user = !w.ssh_user.is_empty()
        && w.ssh_user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if !valid_user {
        p.push(
            "handoff",
            "ssh_user",
            format!("{:?} is not a user name", w.ssh_user),
        );
    }
    if w.enabled {
        if !playbooks_dir.join("site.yml").is_file() {
            p.push(
                "handoff",
                "playbooks",
                format!("{} has no site.yml", playbooks_dir.display()),
            );
        }
        if !ansible_playbook.is_file() {
            p.push(
                "handoff",
                "ansible_playbook",
                format!(
                    "{} not found (a bare name is looked up in $BOOTGATE_VENV/bin, then PATH)",
                    ansible_playbook.display()
                ),
            );
        }
        if let Some(k) = &ssh_key
            && !k.is_file()
        {
            p.push(
                "handoff",
                "ssh_key",
                format!("{} does not exist", k.display()),
            );
        }
    }
    HandoffSettings {
        enabled: w.enabled,
        playbooks_dir,
        ansible_playbook,
        concurrency: w.concurrency.clamp(1, 64),
        timeout: w.timeout,
        ssh_user: w.ssh_user.clone(),
        ssh_key,
    }
}

/// A bare program name looked up in `$BOOTGATE_VENV/bin` (where the Ansible venv is
/// installed), then in `PATH`.
fn find_executable(name: &Path) -> Option<PathBuf> {
    let venv = std::env::var_os("BOOTGATE_VENV").map(|v| PathBuf::from(v).join("bin"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    venv.into_iter()
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(name))
        .find(|c| c.is_file())
}

#[cfg(test)]
mod handoff_tests {
    use super::*;

    fn write(dir: &Path, handoff: &str) -> PathBuf {
        std::fs::create_dir_all(dir.join("inv")).unwrap();
        std::fs::create_dir_all(dir.join("images")).unwrap();
        let p = dir.join("bootgate.toml");
        std::fs::write(
            &p,
            format!(
                "state_dir = \"state\"\ninventory = \"inv\"\nboot_images = \"images\"\n[http]\nlisten = \"127.0.0.1:8080\"\n{handoff}"
            ),
        )
        .unwrap();
        p
    }

    #[test]
    fn handoff_defaults_and_problems() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = load(&write(dir.path(), "")).unwrap();
        assert!(!cfg.handoff.enabled);
        assert_eq!(cfg.handoff.concurrency, 4);
        assert_eq!(cfg.handoff.timeout, Duration::from_secs(1800));
        assert_eq!(cfg.handoff.ssh_user, "root");
        assert_eq!(cfg.handoff.playbooks_dir, dir.path().join("playbooks"));

        let p = write(
            dir.path(),
            "[handoff]\nenabled = true\nplaybooks = \"nowhere\"\nansible_playbook = \"/nonexistent/ansible-playbook\"\nconcurrency = 0\ntimeout = \"2d\"\nssh_user = \"\"\nssh_key = \"missing_key\"\n",
        );
        let Invalid(problems) = load(&p).unwrap_err();
        let fields: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.entry.as_str(), p.field.as_str()))
            .collect();
        assert_eq!(fields, [("handoff", "timeout")], "{problems:#?}");

        let p = write(
            dir.path(),
            "[handoff]\nenabled = true\nplaybooks = \"nowhere\"\nansible_playbook = \"/nonexistent/ansible-playbook\"\nconcurrency = 0\ntimeout = \"45m\"\nssh_user = \"\"\nssh_key = \"missing_key\"\n",
        );
        let Invalid(problems) = load(&p).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "concurrency",
                "ssh_user",
                "playbooks",
                "ansible_playbook",
                "ssh_key"
            ],
            "{problems:#?}"
        );
        assert!(
            problems[2].reason.contains("has no site.yml"),
            "{problems:#?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(extra: &str) -> Result<Config, Invalid> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("inv")).unwrap();
        std::fs::create_dir_all(dir.path().join("img")).unwrap();
        let path = dir.path().join("bootgate.toml");
        std::fs::write(
            &path,
            format!(
                "state_dir = \"state\"\nstore = \"postgres://bg@db1/bootgate\"\ninventory = \"inv\"\nboot_images = \"img\"\n[http]\nlisten = \"10.250.0.1:8080\"\n{extra}"
            ),
        )
        .unwrap();
        Config::load(&path)
    }

    #[test]
    fn bmc_section_sets_the_client_and_refuses_bad_values() {
        let c = config_with("[bmc]\ntimeout = \"5s\"\nconcurrency = 64\n").unwrap();
        assert_eq!(c.bmc.timeout, Duration::from_secs(5));
        assert_eq!(c.bmc.concurrency, 64);
        assert_eq!(c.bmc.retries, crate::bmc::BmcSettings::default().retries);
        assert_eq!(
            config_with("").unwrap().bmc,
            crate::bmc::BmcSettings::default()
        );
        let Invalid(problems) = config_with("[bmc]\nconcurrency = 0\nretries = 99\n").unwrap_err();
        let fields: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.entry.as_str(), p.field.as_str()))
            .collect();
        assert_eq!(
            fields,
            [("bmc", "concurrency"), ("bmc", "retries")],
            "{problems:?}"
        );
        let Invalid(problems) = config_with("[bmc]\npassword = \"x\"\n").unwrap_err();
        assert_eq!(
            (problems[0].entry.as_str(), problems[0].field.as_str()),
            ("bmc", "password")
        );
    }

    #[test]
    fn postgres_section_sets_the_pool_options() {
        let c = config_with(
            "[postgres]\nmax_connections = 4\nacquire_timeout_ms = 1500\nstatement_timeout_ms = 2000\ncall_timeout_ms = 3000\nsync_interval_ms = 250\n",
        )
        .unwrap();
        let o = c.postgres.pg_options();
        assert_eq!(o.max_connections, 4);
        assert_eq!(o.acquire_timeout, Duration::from_millis(1500));
        assert_eq!(o.statement_timeout, Duration::from_secs(2));
        assert_eq!(o.call_timeout, Duration::from_secs(3));
        assert_eq!(c.postgres.sync_interval, Duration::from_millis(250));
        // Absent: the defaults.
        assert_eq!(
            config_with("").unwrap().postgres,
            PostgresSettings::default()
        );
    }

    #[test]
    fn postgres_section_refuses_unknown_keys_and_bad_values() {
        let Invalid(problems) = config_with("[postgres]\npool = 3\n").unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].entry, "postgres");
        assert_eq!(problems[0].field, "pool");
        let Invalid(problems) =
            config_with("[postgres]\nacquire_timeout_ms = 0\nmax_connections = 1\n").unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["acquire_timeout_ms", "max_connections"],
            "{problems:?}"
        );
        assert!(problems[0].reason.contains("out of range"), "{problems:?}");
    }
}
