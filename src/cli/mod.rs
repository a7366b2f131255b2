//! The command line (clap derive). Every read command can ask a running daemon over HTTP
//! (`--api URL`) or read the store named by the config directly; both print the same JSON
//! (`--output json`, stable field names) or a table.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use jiff::Timestamp;

use crate::config::{self, Config};
use crate::http::query;
use crate::inventory::Invalid;
use crate::store::{self, EventKind, EventQuery, LeaseState, Store, StoreUrl};
use crate::types::MacAddr;
use crate::views::{self, EventView, HostDetail, HostView, LeaseView};

mod audit_cmd;

#[derive(Parser, Debug)]
#[command(
    name = "bootgate",
    version,
    about = "Network boot, IP address management and power control for a GPU datacenter",
    long_about = None
)]
pub struct Cli {
    /// Daemon config file.
    #[arg(long, global = true, default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Ask a running daemon at this URL (e.g. http://10.250.0.1:8080) instead of reading
    /// the store directly.
    #[arg(long, global = true)]
    pub api: Option<String>,
    /// PEM CA certificate that signed the daemon's TLS certificate (for `--api https://…`);
    /// only this CA is trusted then.
    #[arg(long, global = true, env = "BOOTGATE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// File holding the API bearer token for `--api` (else `$BOOTGATE_TOKEN`). Mutating
    /// requests need an admin token; see `bootgate token new`.
    #[arg(long, global = true, env = "BOOTGATE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Log format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info`, `bootgate=debug`.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    /// `bootgate audit` only (one RFC 4180 table; see `bootgate audit --help`).
    Csv,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon (DHCP, TFTP, HTTP, API) until SIGTERM.
    Serve,
    /// Validate the config and the inventory it names; exit 1 listing every problem as
    /// `file: entry: field: reason`.
    CheckConfig,
    /// Ask the running daemon to reload its inventory (like SIGHUP, but reports the result).
    Reload,
    /// Hosts: the inventory plus discovered machines, with their live state.
    Hosts {
        #[command(subcommand)]
        command: HostsCommand,
    },
    /// DHCP leases.
    Leases {
        #[command(subcommand)]
        command: LeasesCommand,
    },
    /// The event log: every change to hosts, leases and the inventory.
    Events(EventArgs),
    /// IP address audit: per-subnet usage and findings (exit 1 on a warning or worse), or
    /// the history of one address, MAC or host.
    Audit(audit_cmd::AuditArgs),
    /// BMC power: status, on, off, cycle or pxe-once for one or many hosts.
    Power(PowerArgs),
    /// Reset a hung node and wait for proof it came back (DHCP, then phone-home or SSH);
    /// exit 0 only if it did. Escalates GracefulRestart → ForceRestart → ForceOff+On.
    Reset(ResetArgs),
    /// Ansible inventory for the hand-off playbooks.
    Playbook {
        #[command(subcommand)]
        command: PlaybookCommand,
    },
    /// Run the hand-off playbooks (site.yml) against one host now, from this process.
    Handoff {
        host: String,
        /// Check mode: report what would change; the host's state is left alone.
        #[arg(long)]
        check: bool,
    },
    /// Onboarding racks: `plan` a rack from its manifest (TOML or a vendor's CSV sheet),
    /// then `onboard` it: power on in waves with PXE-once, follow each host to provisioned /
    /// ready, and report (exit 0 only if every host got there).
    Rack {
        #[command(subcommand)]
        command: RackCommand,
    },
    /// API bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(clap::Args, Debug)]
pub struct PowerArgs {
    /// status, on, off, cycle or pxe-once.
    pub action: crate::power::PowerAction,
    /// Inventory host names.
    pub hosts: Vec<String>,
    /// Every host in this rack (with no HOST given).
    #[arg(long)]
    pub rack: Option<String>,
    /// Every host of this role (with no HOST given; combines with --rack).
    #[arg(long)]
    pub role: Option<crate::types::Role>,
    /// BMCs contacted at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
}

#[derive(clap::Args, Debug)]
pub struct ResetArgs {
    pub host: String,
    /// PXE-boot once and install the host's profile again (state → registered).
    #[arg(long)]
    pub reprovision: bool,
    /// Give up after this long (e.g. 15m).
    #[arg(long, default_value = "15m", value_parser = crate::types::parse_duration)]
    pub timeout: std::time::Duration,
    /// How long each escalation step may take to show a DHCP request.
    #[arg(long, default_value = "2m", value_parser = crate::types::parse_duration)]
    pub step_wait: std::time::Duration,
    /// The escalation, in order (steps the BMC does not advertise are skipped).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "GracefulRestart,ForceRestart,ForceOff+On"
    )]
    pub escalation: Vec<crate::power::Step>,
}

#[derive(clap::Args, Debug)]
pub struct OnboardArgs {
    pub rack: String,
    /// Hosts powered on together.
    #[arg(long, default_value_t = 4)]
    pub wave: usize,
    /// One attempt of one host, from the BMC check to its target state.
    #[arg(long, default_value = "20m", value_parser = crate::types::parse_duration)]
    pub timeout: std::time::Duration,
    /// Stop at `provisioned` (no Ansible hand-off).
    #[arg(long)]
    pub no_handoff: bool,
}

#[derive(Subcommand, Debug)]
pub enum PlaybookCommand {
    /// Render the Ansible inventory (hosts.yml, group_vars/all.yml) from the inventory and
    /// the store's host states; prints hosts.yml without --out.
    Render {
        /// Write the inventory directory here (replaced as a whole).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a new random token: prints it once (give it to its user) and the entry to
    /// append to the tokens file (`[http] tokens`), which stores only its SHA-256.
    New {
        /// Who holds it; events record actions as `api:NAME`.
        name: String,
        /// `read` (GET endpoints) or `admin` (everything).
        #[arg(long, default_value = "read")]
        scope: crate::http::auth::Scope,
    },
}

#[derive(Subcommand, Debug)]
pub enum HostsCommand {
    /// List all hosts.
    List,
    /// One host: declaration, state and recent events.
    Show { name: String },
    /// Machines not in the inventory that DHCPed here, matched to a rack position through
    /// their option-82 switch port.
    Discovered {
        /// Also match against this manifest's switch (a rack not written yet).
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Turn a discovered MAC into an inventory host: adds it to NAME when NAME is declared
    /// without a MAC, else appends a host to hosts-adopted.toml.
    Adopt(AdoptArgs),
}

#[derive(clap::Args, Debug)]
pub struct AdoptArgs {
    pub mac: MacAddr,
    /// The host's name.
    #[arg(long = "as", value_name = "NAME")]
    pub name: String,
    #[arg(long)]
    pub rack: Option<String>,
    #[arg(long)]
    pub position: Option<u32>,
    #[arg(long)]
    pub profile: Option<String>,
    #[arg(long)]
    pub role: Option<crate::types::Role>,
}

#[derive(Subcommand, Debug)]
pub enum RackCommand {
    /// Print what a manifest would add to the inventory and every conflict (exit 1);
    /// changes nothing unless --write.
    Plan(RackPlanArgs),
    /// Power on the rack's inventory hosts (`rack = "RACK"`) in position order, in waves,
    /// with PXE-once; follow each through DHCP, boot script, phone-home and hand-off; retry a
    /// failed host once. Ctrl-C stops and records where each host stood; run it again to
    /// resume (hosts already at their target are skipped).
    Onboard(OnboardArgs),
}

#[derive(clap::Args, Debug)]
pub struct RackPlanArgs {
    /// A TOML manifest, or a vendor's CSV delivery sheet (then --rack is needed).
    pub manifest: PathBuf,
    /// Add the rack to the inventory as <inventory>/rack-<name>.toml (never overwritten).
    #[arg(long)]
    pub write: bool,
    /// CSV: the rack's name.
    #[arg(long)]
    pub rack: Option<String>,
    /// CSV: the hosts' boot profile.
    #[arg(long)]
    pub profile: Option<String>,
    /// CSV: the hosts' role (default gpu).
    #[arg(long)]
    pub role: Option<crate::types::Role>,
    /// CSV: the rack's location.
    #[arg(long)]
    pub location: Option<String>,
    /// CSV: host names, from {rack} {position} {position:02} {serial}.
    #[arg(long)]
    pub name_pattern: Option<String>,
    /// CSV: first address per subnet, SUBNET=IP (repeatable).
    #[arg(long = "first", value_name = "SUBNET=IP", value_parser = parse_first)]
    pub first: Vec<(String, Ipv4Addr)>,
    /// CSV: BMC vendor (dell, hpe, lenovo, supermicro, nvidia, ami, generic).
    #[arg(long)]
    pub bmc_vendor: Option<crate::inventory::BmcVendor>,
    /// CSV: name of the BMC credential in the secrets file.
    #[arg(long)]
    pub bmc_credential: Option<String>,
    /// CSV: Redfish URL scheme (https, http).
    #[arg(long)]
    pub bmc_scheme: Option<crate::inventory::BmcScheme>,
    /// CSV: BMC port.
    #[arg(long)]
    pub bmc_port: Option<u16>,
}

fn parse_first(s: &str) -> Result<(String, Ipv4Addr), String> {
    let (subnet, ip) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected SUBNET=IP, e.g. provisioning=10.20.0.41"))?;
    let ip = ip.parse().map_err(|e| format!("{s:?}: {e}"))?;
    Ok((subnet.to_string(), ip))
}

#[derive(Subcommand, Debug)]
pub enum LeasesCommand {
    /// List leases.
    List {
        /// Only this subnet: inventory name or CIDR (10.250.0.0/24).
        #[arg(long)]
        subnet: Option<query::SubnetSel>,
        #[arg(long)]
        mac: Option<MacAddr>,
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        /// offered, active, released, expired or declined.
        #[arg(long)]
        state: Option<LeaseState>,
    },
    /// Release a lease now (the address returns to the pool; the client is not told).
    Release { ip: Ipv4Addr },
}

#[derive(clap::Args, Debug)]
pub struct EventArgs {
    #[arg(long)]
    pub ip: Option<Ipv4Addr>,
    #[arg(long)]
    pub mac: Option<MacAddr>,
    #[arg(long)]
    pub host: Option<String>,
    /// Event kind, e.g. host-added, lease-committed.
    #[arg(long)]
    pub kind: Option<EventKind>,
    /// RFC 3339 time or an age like 90m, 2h, 7d.
    #[arg(long)]
    pub since: Option<String>,
    /// RFC 3339 time or an age like 90m, 2h, 7d.
    #[arg(long)]
    pub until: Option<String>,
    /// Only the newest N events.
    #[arg(long)]
    pub limit: Option<u32>,
}

/// Entry point used by `main.rs`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli);
    // reqwest is built without a default TLS provider (no aws-lc): ring, once per process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::CheckConfig = cli.command {
        return Ok(check_config(&cli.config, cli.output));
    }
    if cli.output == Output::Csv && !matches!(cli.command, Command::Audit(_)) {
        anyhow::bail!("--output csv is only supported by `bootgate audit`; use table or json");
    }
    let rt = if matches!(cli.command, Command::Serve) {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        match &cli.command {
            Command::Serve => {
                let config = load_config(&cli.config)?;
                crate::app::serve(config).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Reload => reload(&cli).await,
            Command::CheckConfig => unreachable!("handled above"),
            Command::Hosts { command } => hosts(&cli, command).await,
            Command::Leases { command } => leases(&cli, command).await,
            Command::Events(args) => events(&cli, args).await,
            Command::Audit(args) => audit_cmd::run(&cli, args).await,
            Command::Playbook {
                command: PlaybookCommand::Render { out },
            } => playbook_render(&cli, out.as_deref()).await,
            Command::Handoff { host, check } => handoff(&cli, host, *check).await,
            Command::Token { command } => token(&cli, command),
            Command::Rack {
                command: RackCommand::Plan(args),
            } => rack_plan(&cli, args).await,
            Command::Power(args) => power(&cli, args).await,
            Command::Reset(args) => reset(&cli, args).await,
            Command::Rack {
                command: RackCommand::Onboard(args),
            } => rack_onboard(&cli, args).await,
        }
    })
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|Invalid(problems)| {
        let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        anyhow::anyhow!("invalid config:\n{}", lines.join("\n"))
    })
}

fn check_config(path: &Path, output: Output) -> ExitCode {
    let result = Config::load(path).and_then(|cfg| {
        let (inv, boot) = crate::app::load_inventory(&cfg)?;
        Ok((cfg, inv, boot))
    });
    match (result, output) {
        (Ok((cfg, inv, boot)), Output::Json) => {
            let warnings: Vec<String> = cfg.warnings().into_iter().chain(boot.warnings).collect();
            let v = serde_json::json!({
                "valid": true,
                "config": cfg.path,
                "inventory": cfg.inventory_dir,
                "site": inv.site.name,
                "files": inv.files,
                "subnets": inv.subnets.len(),
                "racks": inv.racks.len(),
                "profiles": inv.profiles.len(),
                "hosts": inv.hosts.len(),
                "images": boot.images.len(),
                "warnings": warnings,
                "problems": [],
            });
            println!("{v:#}");
            ExitCode::SUCCESS
        }
        (Ok((cfg, inv, boot)), Output::Table | Output::Csv) => {
            for w in cfg.warnings().iter().chain(&boot.warnings) {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: ok (site {}: {} files, {} subnets, {} racks, {} profiles, {} hosts)",
                cfg.path.display(),
                inv.site.name,
                inv.files.len(),
                inv.subnets.len(),
                inv.racks.len(),
                inv.profiles.len(),
                inv.hosts.len()
            );
            ExitCode::SUCCESS
        }
        (Err(Invalid(problems)), Output::Json) => {
            println!(
                "{:#}",
                serde_json::json!({"valid": false, "problems": problems})
            );
            ExitCode::from(1)
        }
        (Err(Invalid(problems)), Output::Table | Output::Csv) => {
            for p in &problems {
                println!("{p}");
            }
            eprintln!("{} problem(s) found", problems.len());
            ExitCode::from(1)
        }
    }
}

async fn reload(cli: &Cli) -> anyhow::Result<ExitCode> {
    let out: crate::ops::ReloadOutcome = match &cli.api {
        Some(url) => api_client(cli, url)?.post("/api/v1/reload").await?,
        None => {
            let config = load_config(&cli.config)?;
            crate::control::request_reload(&config.control_socket).await?
        }
    };
    match cli.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&out)?),
        Output::Table if out.ok => println!(
            "reloaded: generation {}, {} hosts (added {}, changed {}, removed {})",
            out.generation,
            out.hosts,
            out.added.len(),
            out.changed.len(),
            out.removed.len()
        ),
        Output::Table | Output::Csv => {
            for p in &out.problems {
                println!("{p}");
            }
            eprintln!(
                "reload refused: {} problem(s); generation {} ({} hosts) stays in force",
                out.problems.len(),
                out.generation,
                out.hosts
            );
        }
    }
    Ok(if out.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Where a read command gets its data.
enum Source {
    Api(ApiClient),
    Store(std::sync::Arc<dyn Store>),
}

async fn source(cli: &Cli) -> anyhow::Result<Source> {
    if let Some(url) = &cli.api {
        return Ok(Source::Api(api_client(cli, url)?));
    }
    let config = load_config(&cli.config)?;
    let store: std::sync::Arc<dyn Store> = match &config.store {
        StoreUrl::Sqlite(path) => {
            std::sync::Arc::new(store::sqlite::SqliteStore::open_read_only(path).await?)
        }
        other => store::open_with(other, &config.store_options()).await?,
    };
    Ok(Source::Store(store))
}

fn print<T: serde::Serialize>(output: Output, value: &T, table: impl FnOnce() -> String) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Output::Table | Output::Csv => println!("{}", table()),
    }
}

async fn hosts(cli: &Cli, cmd: &HostsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        HostsCommand::Discovered { manifest } => return hosts_discovered(cli, manifest).await,
        HostsCommand::Adopt(args) => return hosts_adopt(cli, args).await,
        _ => {}
    }
    let src = source(cli).await?;
    match cmd {
        HostsCommand::List => {
            let hosts: Vec<HostView> = match &src {
                Source::Api(c) => c.get_all("/api/v1/hosts", &[]).await?,
                Source::Store(s) => s.list_hosts().await?.iter().map(HostView::from).collect(),
            };
            print(cli.output, &hosts, || views::hosts_table(&hosts));
        }
        HostsCommand::Show { name } => {
            let detail: HostDetail = match &src {
                Source::Api(c) => c.get(&format!("/api/v1/hosts/{name}"), &[]).await?,
                Source::Store(s) => {
                    let Some(h) = s.get_host(name).await? else {
                        bail!("no host named {name:?}");
                    };
                    let events = s
                        .query(&EventQuery {
                            host: Some(name.clone()),
                            limit: Some(20),
                            ..Default::default()
                        })
                        .await?;
                    HostDetail::new(&h, &events)
                }
            };
            print(cli.output, &detail, || views::host_detail_text(&detail));
        }
        HostsCommand::Discovered { .. } | HostsCommand::Adopt(_) => unreachable!("above"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn leases(cli: &Cli, cmd: &LeasesCommand) -> anyhow::Result<ExitCode> {
    let (subnet, mac, ip, state) = match cmd {
        LeasesCommand::List {
            subnet,
            mac,
            ip,
            state,
        } => (subnet, mac, ip, state),
        LeasesCommand::Release { ip } => return release_lease(cli, *ip).await,
    };
    let leases: Vec<LeaseView> = match source(cli).await? {
        Source::Api(c) => {
            let mut q = Vec::new();
            push(&mut q, "subnet", subnet);
            push(&mut q, "mac", mac);
            push(&mut q, "ip", ip);
            push(&mut q, "state", state);
            c.get_all("/api/v1/leases", &q).await?
        }
        Source::Store(s) => {
            let select = query::LeaseSelect {
                subnet: subnet.clone(),
                mac: *mac,
                state: *state,
                ip: *ip,
            };
            s.list_leases(&select.store_filter())
                .await?
                .iter()
                .filter(|l| select.matches(l))
                .map(LeaseView::from)
                .collect()
        }
    };
    print(cli.output, &leases, || views::leases_table(&leases));
    Ok(ExitCode::SUCCESS)
}

async fn release_lease(cli: &Cli, ip: Ipv4Addr) -> anyhow::Result<ExitCode> {
    let lease: LeaseView = match &cli.api {
        Some(url) => {
            api_client(cli, url)?
                .post(&format!("/api/v1/leases/{ip}/release"))
                .await?
        }
        None => {
            let config = load_config(&cli.config)?;
            crate::control::request_release(&config.control_socket, ip).await?
        }
    };
    match cli.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&lease)?),
        Output::Table | Output::Csv => {
            println!("released {} (was held by {})", lease.ip, lease.mac)
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn push<T: ToString>(q: &mut Vec<(&'static str, String)>, k: &'static str, v: &Option<T>) {
    if let Some(v) = v {
        q.push((k, v.to_string()));
    }
}

async fn events(cli: &Cli, a: &EventArgs) -> anyhow::Result<ExitCode> {
    let now = Timestamp::now();
    // Validate times here so a typo fails the same way with or without --api.
    let since = a
        .since
        .as_deref()
        .map(|s| query::parse_time("--since", s, now))
        .transpose()?;
    let until = a
        .until
        .as_deref()
        .map(|s| query::parse_time("--until", s, now))
        .transpose()?;
    let events: Vec<EventView> = match source(cli).await? {
        Source::Api(c) => {
            let mut q = Vec::new();
            push(&mut q, "ip", &a.ip);
            push(&mut q, "mac", &a.mac);
            push(&mut q, "host", &a.host);
            push(&mut q, "kind", &a.kind);
            push(&mut q, "since", &since);
            push(&mut q, "until", &until);
            match a.limit {
                // The newest N, as from the store.
                Some(_) => {
                    push(&mut q, "limit", &a.limit);
                    c.get("/api/v1/events", &q).await?
                }
                // The whole log, page by page from its start.
                None => {
                    q.push(("after", "0".to_string()));
                    q.push(("limit", query::MAX_LIMIT.to_string()));
                    c.get_all("/api/v1/events", &q).await?
                }
            }
        }
        Source::Store(s) => {
            let q = EventQuery {
                ip: a.ip,
                mac: a.mac,
                host: a.host.clone(),
                kind: a.kind,
                since,
                until,
                limit: a.limit,
                after: None,
            };
            s.query(&q).await?.iter().map(EventView::from).collect()
        }
    };
    print(cli.output, &events, || views::events_table(&events));
    Ok(ExitCode::SUCCESS)
}

/// Inventory, secrets, store and BMC client for power commands run from this process.
struct Local {
    inventory: crate::inventory::Inventory,
    secrets: crate::secrets::Secrets,
    store: std::sync::Arc<dyn Store>,
    power: std::sync::Arc<dyn crate::bmc::PowerControl>,
    /// `[bmc] concurrency`: the BMC layer never runs more calls than this at once.
    bmc_concurrency: usize,
}

impl Local {
    fn fleet(&self) -> crate::power::Fleet<'_> {
        crate::power::Fleet {
            pc: self.power.clone(),
            store: self.store.clone(),
            inventory: &self.inventory,
            secrets: &self.secrets,
        }
    }
}

async fn local(cli: &Cli) -> anyhow::Result<Local> {
    let config = load_config(&cli.config)?;
    let (inventory, _) = crate::app::load_inventory(&config).map_err(|Invalid(problems)| {
        let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        anyhow::anyhow!(
            "inventory {}:\n{}",
            config.inventory_dir.display(),
            lines.join("\n")
        )
    })?;
    let secrets = config.load_secrets().context("BMC secrets")?;
    let store = store::open_with(&config.store, &config.store_options())
        .await
        .with_context(|| format!("opening store {}", config.store))?;
    Ok(Local {
        inventory,
        secrets,
        store,
        power: std::sync::Arc::new(crate::bmc::Bmcs::new(config.bmc.clone())),
        bmc_concurrency: config.bmc.concurrency,
    })
}

async fn power(cli: &Cli, a: &PowerArgs) -> anyhow::Result<ExitCode> {
    let l = local(cli).await?;
    let sel = crate::power::Selection {
        hosts: a.hosts.clone(),
        rack: a.rack.clone(),
        role: a.role,
    };
    let hosts = crate::power::select(&l.inventory, &sel)?;
    if a.concurrency > l.bmc_concurrency {
        eprintln!(
            "note: --concurrency {} is above `[bmc] concurrency = {}` in {}: at most {} BMC calls run at once",
            a.concurrency,
            l.bmc_concurrency,
            cli.config.display(),
            l.bmc_concurrency
        );
    }
    let bar = progress_bar(cli, hosts.len() as u64, &format!("power {}", a.action));
    let results = crate::power::run_many(
        &l.fleet(),
        &hosts,
        a.action,
        a.concurrency,
        "cli:power",
        |r| {
            bar.inc(1);
            if !r.ok {
                bar.println(format!(
                    "{}: {}",
                    r.host,
                    r.error.as_deref().unwrap_or("failed")
                ));
            }
        },
    )
    .await;
    bar.finish_and_clear();
    print(cli.output, &results, || views::power_table(&results));
    Ok(if results.iter().all(|r| r.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A progress bar on stderr when it is a terminal and the output is a table; hidden
/// otherwise (JSON consumers and logs get no control characters).
fn progress_bar(cli: &Cli, len: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if cli.output != Output::Table || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

async fn reset(cli: &Cli, a: &ResetArgs) -> anyhow::Result<ExitCode> {
    let report: crate::power::ResetReport = match &cli.api {
        Some(url) => {
            let mut c = api_client(cli, url)?;
            c.timeout = a.timeout + std::time::Duration::from_secs(30);
            let steps: Vec<String> = a.escalation.iter().map(|s| s.to_string()).collect();
            let path = format!(
                "/api/v1/hosts/{}/reset?reprovision={}&timeout={}s&step_wait={}s&escalation={}",
                a.host,
                a.reprovision,
                a.timeout.as_secs(),
                a.step_wait.as_secs(),
                steps.join(",").replace('+', "%2B")
            );
            c.post(&path).await?
        }
        None => {
            let l = local(cli).await?;
            let opts = crate::power::ResetOptions {
                reprovision: a.reprovision,
                timeout: a.timeout,
                step_wait: a.step_wait,
                escalation: a.escalation.clone(),
                ..Default::default()
            };
            crate::power::reset(&l.fleet(), &a.host, &opts, "cli:reset").await?
        }
    };
    print(cli.output, &report, || views::reset_table(&report));
    Ok(if report.came_back {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn rack_onboard(cli: &Cli, a: &OnboardArgs) -> anyhow::Result<ExitCode> {
    use crate::rack::onboard::{self, Handoff};
    use std::io::IsTerminal;
    let config = load_config(&cli.config)?;
    let l = local(cli).await?;
    let handoff = if a.no_handoff {
        Handoff::Skip("--no-handoff".into())
    } else if !config.handoff.enabled {
        Handoff::Skip("[handoff] is not enabled in the config".into())
    } else {
        Handoff::Follow
    };
    let opts = onboard::Options {
        wave: a.wave,
        timeout: a.timeout,
        handoff,
        ..Default::default()
    };
    let progress: std::sync::Arc<dyn onboard::Progress> =
        if cli.output == Output::Table && std::io::stderr().is_terminal() {
            let mut hosts: Vec<&crate::inventory::Host> = l
                .inventory
                .hosts
                .iter()
                .filter(|h| h.rack.as_deref() == Some(a.rack.as_str()))
                .collect();
            hosts.sort_by_key(|h| (h.position.unwrap_or(u32::MAX), h.name.clone()));
            let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
            std::sync::Arc::new(onboard::Bars::new(&names))
        } else {
            std::sync::Arc::new(onboard::Lines)
        };
    // Ctrl-C / SIGTERM: every host stops where it is; the partial report is still printed.
    let cancel = tokio_util::sync::CancellationToken::new();
    let on_signal = cancel.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("interrupted: stopping every host where it is");
        on_signal.cancel();
    });
    let report = onboard::onboard(&l.fleet(), &a.rack, &opts, cancel, progress).await?;
    print(cli.output, &report, || onboard::render_table(&report));
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else if report.interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::from(1)
    })
}

fn token(cli: &Cli, cmd: &TokenCommand) -> anyhow::Result<ExitCode> {
    let TokenCommand::New { name, scope } = cmd;
    let (token, entry) =
        crate::http::auth::new_token(name, *scope).context("no randomness for a token")?;
    match cli.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"name": name, "scope": scope, "token": token, "entry": entry})
        ),
        Output::Table | Output::Csv => {
            println!("token for {name} ({scope}), shown once:\n\n  {token}\n");
            println!("append to the tokens file ([http] tokens), then `bootgate reload`:\n");
            print!("{entry}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The API client for `--api URL`, with the bearer token from `--token-file` or
/// `$BOOTGATE_TOKEN` when one is given.
pub(crate) fn api_client(cli: &Cli, url: &str) -> anyhow::Result<ApiClient> {
    let token = match &cli.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("--token-file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("BOOTGATE_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
    };
    let ca =
        match &cli.ca_cert {
            Some(path) => {
                let pem =
                    std::fs::read(path).with_context(|| format!("--ca-cert {}", path.display()))?;
                Some(reqwest::Certificate::from_pem(&pem).with_context(|| {
                    format!("--ca-cert {}: not a PEM certificate", path.display())
                })?)
            }
            None => None,
        };
    ApiClient::new(url, token, ca)
}

/// A small client for the daemon's API.
pub(crate) struct ApiClient {
    base: reqwest::Url,
    http: reqwest::Client,
    token: Option<String>,
    /// Per request (a reset waits for the node).
    timeout: std::time::Duration,
}

impl ApiClient {
    fn new(
        url: &str,
        token: Option<String>,
        ca: Option<reqwest::Certificate>,
    ) -> anyhow::Result<Self> {
        let base = reqwest::Url::parse(url).with_context(|| {
            format!("--api {url:?}: expected a URL like http://10.250.0.1:8080")
        })?;
        let mut http = reqwest::Client::builder();
        if let Some(ca) = ca {
            // The daemon's own CA, not the system's: an https:// API is pinned to it.
            http = http.tls_certs_only([ca]);
        }
        let http = http.build()?;
        Ok(ApiClient {
            base,
            http,
            token,
            timeout: std::time::Duration::from_secs(10),
        })
    }

    pub(crate) async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        let url = self.base.join(path)?;
        self.send(reqwest::Method::GET, url, |r| r.query(query))
            .await
    }

    /// Every page of a list endpoint: follows `Link: <…>; rel="next"` from `path`.
    pub(crate) async fn get_all<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<Vec<T>> {
        let mut url = self.base.join(path)?;
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let mut out = Vec::new();
        loop {
            let mut next = None;
            let page: Vec<T> = self
                .send_seeing(
                    reqwest::Method::GET,
                    url.clone(),
                    |r| r,
                    |headers| {
                        next = headers
                            .get_all(reqwest::header::LINK)
                            .iter()
                            .filter_map(|v| v.to_str().ok())
                            .find_map(|v| query::link_next(v).map(str::to_string));
                    },
                )
                .await?;
            out.extend(page);
            match next {
                Some(n) => {
                    let n = self.base.join(&n)?;
                    if n == url {
                        return Ok(out);
                    }
                    url = n;
                }
                None => return Ok(out),
            }
        }
    }

    async fn post<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let url = self.base.join(path)?;
        self.send(reqwest::Method::POST, url, |r| r).await
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        self.send_seeing(method, url, build, |_| {}).await
    }

    /// [`Self::send`], showing the response headers to `headers` first.
    async fn send_seeing<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
        headers: impl FnOnce(&reqwest::header::HeaderMap),
    ) -> anyhow::Result<T> {
        let mut req = build(self.http.request(method.clone(), url.clone())).timeout(self.timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let what = format!("{method} {url}");
        let resp = req.send().await.with_context(|| what.clone())?;
        headers(resp.headers());
        let status = resp.status();
        let body = resp.text().await.with_context(|| what.clone())?;
        if !status.is_success() {
            let msg = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
                .unwrap_or(body);
            let hint = match (status.as_u16(), &self.token) {
                (401, None) => " (pass --token-file or set BOOTGATE_TOKEN)",
                _ => "",
            };
            bail!("{what}: {status}: {msg}{hint}");
        }
        serde_json::from_str(&body).with_context(|| format!("{what}: unexpected response"))
    }
}

// ---- hand-off (src/handoff/) ----

async fn playbook_render(cli: &Cli, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(&cli.config)?;
    let inv = load_inventory_only(&config)?;
    let states = host_states(&config).await?;
    let rendered = crate::handoff::render(&inv, &states)?;
    match (out, cli.output) {
        (Some(dir), output) => {
            rendered.write_dir(dir)?;
            let summary = serde_json::json!({
                "out": dir,
                "hosts": rendered.hosts.all.hosts.len(),
                "groups": rendered.hosts.all.children.keys().collect::<Vec<_>>(),
            });
            print(output, &summary, || {
                format!(
                    "wrote {} ({} hosts, {} groups)",
                    dir.display(),
                    rendered.hosts.all.hosts.len(),
                    rendered.hosts.all.children.len()
                )
            });
        }
        (None, Output::Json) => println!("{}", serde_json::to_string_pretty(&rendered.hosts)?),
        (None, Output::Table | Output::Csv) => {
            print!("{}", crate::handoff::render::to_yaml(&rendered.hosts)?)
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn handoff(cli: &Cli, host: &str, check: bool) -> anyhow::Result<ExitCode> {
    let config = load_config(&cli.config)?;
    let inv = load_inventory_only(&config)?;
    let store = store::open_with(&config.store, &config.store_options())
        .await
        .with_context(|| format!("opening store {}", config.store))?;
    let runner =
        crate::handoff::Runner::new(config.handoff.clone(), config.state_dir.clone(), store);
    let mode = if check {
        crate::handoff::Mode::Check
    } else {
        crate::handoff::Mode::Apply
    };
    let report = runner.run(&inv, host, mode, "cli").await?;
    print(cli.output, &report, || {
        let recap = report.recap.map_or("no recap".to_string(), |r| {
            format!(
                "ok={} changed={} unreachable={} failed={}",
                r.ok, r.changed, r.unreachable, r.failed
            )
        });
        let mut text = format!(
            "{host}: {:?} ({recap}), state {}, log {}",
            report.outcome,
            report.state,
            report.log.display()
        );
        if let Some(t) = &report.failed_task {
            text.push_str(&format!("\nfailed task: {t}"));
        }
        if let Some(r) = &report.reason {
            text.push_str(&format!("\nreason: {r}"));
        }
        text
    });
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn load_inventory_only(config: &Config) -> anyhow::Result<crate::inventory::Inventory> {
    crate::inventory::load::load_dir(&config.inventory_dir).map_err(|Invalid(problems)| {
        let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        anyhow::anyhow!("invalid inventory:\n{}", lines.join("\n"))
    })
}

/// Host states from the store; an SQLite store not created yet means every host is new.
async fn host_states(
    config: &Config,
) -> anyhow::Result<std::collections::BTreeMap<String, crate::types::HostState>> {
    let store: std::sync::Arc<dyn Store> = match &config.store {
        StoreUrl::Sqlite(path) if !path.exists() => return Ok(Default::default()),
        StoreUrl::Sqlite(path) => {
            std::sync::Arc::new(store::sqlite::SqliteStore::open_read_only(path).await?)
        }
        other => store::open_with(other, &config.store_options()).await?,
    };
    Ok(store
        .list_hosts()
        .await?
        .into_iter()
        .map(|h| (h.name, h.state))
        .collect())
}

// ---- rack onboarding (src/rack/) ----

/// A refused rack command: the conflicts or problems as JSON on stdout, or as lines on
/// stderr; exit 1.
fn rack_refused(cli: &Cli, e: &crate::rack::RackError) -> ExitCode {
    match cli.output {
        Output::Json => println!("{:#}", crate::rack::error_json(e)),
        Output::Table | Output::Csv => eprintln!("error: {e}"),
    }
    ExitCode::from(1)
}

async fn rack_plan(cli: &Cli, a: &RackPlanArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&cli.config)?;
    let bmc = (a.bmc_vendor.is_some()
        || a.bmc_credential.is_some()
        || a.bmc_scheme.is_some()
        || a.bmc_port.is_some())
    .then(|| crate::rack::manifest::BmcDefaults {
        vendor: a.bmc_vendor,
        credential: a.bmc_credential.clone(),
        scheme: a.bmc_scheme,
        port: a.bmc_port,
        ..Default::default()
    });
    let req = crate::rack::PlanRequest {
        manifest: a.manifest.clone(),
        csv: crate::rack::manifest::CsvRackArgs {
            rack: a.rack.clone(),
            location: a.location.clone(),
            role: a.role,
            profile: a.profile.clone(),
            name_pattern: a.name_pattern.clone(),
            bmc,
            addressing: a.first.iter().cloned().collect(),
        },
        write: a.write,
    };
    let out = match crate::rack::plan_command(&config, &req).await {
        Ok(out) => out,
        Err(e) => return Ok(rack_refused(cli, &e)),
    };
    print(cli.output, &out, || {
        let mut text = crate::rack::plan::render_text(&out.plan);
        match &out.written {
            Some(f) => text.push_str(&format!(
                "wrote {}: review it in git, then `bootgate reload`",
                f.display()
            )),
            None => text.push_str("nothing written (add --write to add the rack to the inventory)"),
        }
        text
    });
    Ok(ExitCode::SUCCESS)
}

async fn hosts_discovered(cli: &Cli, manifest: &Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = load_config(&cli.config)?;
    let m = match manifest {
        Some(path) => match crate::rack::manifest::read(path, &Default::default()) {
            Ok(m) => Some(m),
            Err(e) => return Ok(rack_refused(cli, &e.into())),
        },
        None => None,
    };
    let list = match crate::rack::adopt::discovered_command(&config, m.as_ref()).await {
        Ok(l) => l,
        Err(e) => return Ok(rack_refused(cli, &e)),
    };
    print(cli.output, &list, || {
        crate::rack::adopt::render_discovered(&list)
    });
    Ok(ExitCode::SUCCESS)
}

async fn hosts_adopt(cli: &Cli, a: &AdoptArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&cli.config)?;
    let req = crate::rack::adopt::AdoptRequest {
        mac: a.mac,
        name: a.name.clone(),
        rack: a.rack.clone(),
        position: a.position,
        profile: a.profile.clone(),
        role: a.role,
    };
    let done = match crate::rack::adopt::adopt_command(&config, &req).await {
        Ok(d) => d,
        Err(e) => return Ok(rack_refused(cli, &e)),
    };
    print(cli.output, &done, || {
        let what = if done.existing {
            format!("added MAC {} to host {}", done.mac, done.name)
        } else {
            format!(
                "added host {} (MAC {}{}) ",
                done.name,
                done.mac,
                done.ip.map(|ip| format!(", {ip}")).unwrap_or_default()
            )
        };
        format!(
            "{what} in {}: review it in git, then `bootgate reload`",
            done.file.display()
        )
    });
    Ok(ExitCode::SUCCESS)
}
