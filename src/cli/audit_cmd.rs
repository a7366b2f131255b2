//! `bootgate audit`: the CLI edge of `crate::audit`. Reads the inventory and the store named
//! by the config (read-only), runs the pure audit or history, prints a table, JSON or CSV.
//! Part of the command line, so errors are `anyhow` like the rest of `cli`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use comfy_table::{Table, presets::NOTHING};

use super::{Cli, Output};
use crate::audit::{History, Options, Report, Scope, Subject, scan};
use crate::config::Config;
use crate::http::query::SubnetSel;
use crate::inventory::{Invalid, Inventory};
use crate::store::{self, Store, StoreUrl};
use crate::types::MacAddr;

#[derive(clap::Args, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "\
Output: -o table (default), -o json (the same document as GET /api/v1/audit), or -o csv:
one RFC 4180 table with a header, first column `record` = `subnet` (per-subnet counts in
columns subnet..conflicts) or `finding` (columns severity..action); list fields are
space-separated. `grep -E '^(record|subnet),'` keeps the counts, `^(record|finding),` the
findings.

On the wire (run on a gateway, as root or with CAP_NET_RAW; not with --api):
  --scan  ARP on each in-scope subnet DHCP serves directly (out of the interface the subnet
          names) and ICMP echo on relayed ones, every address, at most --scan-rate packets
          a second. An address that answers without a live lease or reservation (and is not
          a gateway or ours) is a warning; an address whose ARP answer comes from a MAC other
          than its lease's or reservation's, or from two MACs, is critical.
  --bmc   GET of the Redfish service root (/redfish/v1/, unauthenticated, no secrets file
          needed) of every in-scope BMC, --bmc-concurrency at once, --bmc-timeout each; one
          that does not answer (timeout, refused, TLS, HTTP status) is a warning naming the
          host. IPMI BMCs are listed as not checked (info).

Exit code: 0 when clean, 1 when any finding is a warning or worse (and on an error, which
prints `error: ...` on stderr and no report)."
)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub history: Option<HistoryCommand>,
    /// Only this subnet: inventory name or CIDR.
    #[arg(long)]
    pub subnet: Option<SubnetSel>,
    /// Report a host whose newest lease is older than this many days.
    #[arg(long, default_value_t = 30)]
    pub stale_days: u64,
    /// Same as `-o csv` (kept for scripts written before -o csv).
    #[arg(long, hide = true)]
    pub csv: bool,
    /// Sweep the served subnets with ARP / ICMP (see below).
    #[arg(long)]
    pub scan: bool,
    /// Scan packets per second, all subnets together.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub scan_rate: u32,
    /// How long to wait for answers (per ICMP probe; after the last ARP request).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub scan_wait: std::time::Duration,
    /// Check that every BMC answers Redfish (see below).
    #[arg(long)]
    pub bmc: bool,
    /// Deadline of one BMC check.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub bmc_timeout: std::time::Duration,
    /// BMCs checked at once.
    #[arg(long, default_value_t = 32)]
    pub bmc_concurrency: usize,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let span: jiff::Span = s
        .parse()
        .map_err(|e| format!("{e} (expected e.g. 500ms, 2s)"))?;
    let d = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| e.to_string())?;
    std::time::Duration::try_from(d).map_err(|e| e.to_string())
}

#[derive(clap::Subcommand, Debug)]
pub enum HistoryCommand {
    /// Who held an address, from when to when, and everything else logged about it.
    Ip { addr: Ipv4Addr },
    /// Which addresses a MAC held, and its host's power actions and state changes.
    Mac { mac: MacAddr },
    /// A host's addresses over time, power actions and state changes.
    Host { name: String },
}

impl HistoryCommand {
    fn subject(&self) -> Subject {
        match self {
            HistoryCommand::Ip { addr } => Subject::Ip(*addr),
            HistoryCommand::Mac { mac } => Subject::Mac(*mac),
            HistoryCommand::Host { name } => Subject::Host(name.clone()),
        }
    }
}

/// The API path of a subject's history.
pub fn history_path(subject: &Subject) -> String {
    match subject {
        Subject::Ip(ip) => format!("/api/v1/audit/ip/{ip}"),
        Subject::Mac(m) => format!("/api/v1/audit/mac/{m}"),
        Subject::Host(h) => format!("/api/v1/audit/host/{h}"),
    }
}

struct Snapshot {
    config: Config,
    inventory: Inventory,
    store: Arc<dyn Store>,
}

async fn snapshot(cli: &Cli) -> anyhow::Result<Snapshot> {
    let config = Config::load(&cli.config).map_err(|Invalid(problems)| {
        let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        anyhow::anyhow!("invalid config:\n{}", lines.join("\n"))
    })?;
    let inventory =
        crate::inventory::load::load_dir(&config.inventory_dir).map_err(|Invalid(problems)| {
            let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            anyhow::anyhow!(
                "inventory {}:\n{}",
                config.inventory_dir.display(),
                lines.join("\n")
            )
        })?;
    let store: Arc<dyn Store> = match &config.store {
        StoreUrl::Sqlite(path) => Arc::new(
            store::sqlite::SqliteStore::open_read_only(path)
                .await
                .with_context(|| format!("opening store {}", config.store))?,
        ),
        other => store::open_with(other, &config.store_options())
            .await
            .with_context(|| format!("opening store {other}"))?,
    };
    Ok(Snapshot {
        config,
        inventory,
        store,
    })
}

fn scope(a: &AuditArgs) -> Scope {
    match &a.subnet {
        None => Scope::All,
        Some(SubnetSel::Name(n)) => Scope::Name(n.clone()),
        Some(SubnetSel::Cidr(c)) => Scope::Cidr(*c),
    }
}

pub async fn run(cli: &Cli, a: &AuditArgs) -> anyhow::Result<ExitCode> {
    let csv = a.csv || cli.output == Output::Csv;
    if let Some(url) = &cli.api {
        return run_remote(cli, a, url, csv).await;
    }
    let t = std::time::Instant::now();
    let snap = snapshot(cli).await?;
    tracing::debug!(
        ms = t.elapsed().as_millis() as u64,
        hosts = snap.inventory.hosts.len(),
        "audit: config, inventory and store opened"
    );
    if let Some(h) = &a.history {
        let history =
            crate::audit::source::history_of(&*snap.store, &snap.inventory, &h.subject()).await?;
        return print_history(cli, &history);
    }
    let now = jiff::Timestamp::now();
    let (leases, last) = crate::audit::source::read(&*snap.store, &snap.inventory, now).await?;
    tracing::debug!(
        ms = t.elapsed().as_millis() as u64,
        leases = leases.len(),
        macs = last.macs.len(),
        "audit: store read"
    );
    let opts = Options {
        scope: scope(a),
        stale_after: std::time::Duration::from_secs(a.stale_days.saturating_mul(86_400)),
    };
    let mut report = crate::audit::audit_live(&snap.inventory, &leases, &last, now, &opts)?;
    tracing::debug!(
        ms = t.elapsed().as_millis() as u64,
        findings = report.findings.len(),
        "audit: report made"
    );
    if a.scan {
        report.add_findings(scan_findings(&snap, a, &opts, &leases, now).await?);
    }
    if a.bmc {
        let settings = crate::bmc::BmcSettings {
            timeout: a.bmc_timeout,
            retries: 0,
            concurrency: a.bmc_concurrency.max(1),
            ..Default::default()
        };
        let checks = scan::check_bmcs(&snap.inventory, &opts.scope, settings).await;
        report.add_findings(scan::bmc_findings(&checks));
    }
    print_report(cli, csv, &report)
}

/// `--api URL`: the same report or history from a running daemon.
async fn run_remote(cli: &Cli, a: &AuditArgs, url: &str, csv: bool) -> anyhow::Result<ExitCode> {
    if a.scan || a.bmc {
        bail!(
            "--scan and --bmc probe from this machine with the gateway's config; run them on the gateway, without --api"
        );
    }
    let c = crate::cli::api_client(cli, url)?;
    if let Some(h) = &a.history {
        let history: History = c.get(&history_path(&h.subject()), &[]).await?;
        return print_history(cli, &history);
    }
    let mut q = vec![("stale_days", a.stale_days.to_string())];
    if let Some(s) = &a.subnet {
        q.push(("subnet", s.to_string()));
    }
    let report: Report = c.get("/api/v1/audit", &q).await?;
    print_report(cli, csv, &report)
}

/// `--scan`: who answers on the audited subnets, against what the store says.
async fn scan_findings(
    snap: &Snapshot,
    a: &AuditArgs,
    opts: &Options,
    leases: &[crate::model::Lease],
    now: jiff::Timestamp,
) -> anyhow::Result<Vec<crate::audit::Finding>> {
    let own: Vec<ipnet::Ipv4Net> = snap.config.interfaces.iter().map(|i| i.address).collect();
    let targets = scan::plan(&snap.inventory, &opts.scope, &own);
    let answers = scan::sweep(&targets, a.scan_rate, a.scan_wait).await?;
    tracing::info!(
        subnets = targets.len(),
        addresses = targets.iter().map(|t| t.addresses.len()).sum::<usize>(),
        answered = answers.len(),
        "scan done"
    );
    let skip = scan::skipped(&snap.inventory, &own);
    Ok(scan::scan_findings(
        &snap.inventory,
        leases,
        &answers,
        &skip,
        now,
    ))
}

fn print_report(cli: &Cli, csv: bool, report: &Report) -> anyhow::Result<ExitCode> {
    if csv {
        print!("{}", report_csv(report));
    } else {
        match cli.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(report)?),
            Output::Table | Output::Csv => println!("{}", report_table(report)),
        }
    }
    Ok(if report.failing() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_history(cli: &Cli, h: &History) -> anyhow::Result<ExitCode> {
    match cli.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(h)?),
        Output::Table => println!("{}", history_table(h)),
        Output::Csv => bail!("-o csv applies to the audit report; use -o json for a history"),
    }
    Ok(ExitCode::SUCCESS)
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(NOTHING).set_header(header.to_vec());
    t
}

fn list<T: ToString>(v: &[T]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Subnets, then findings (worst first), then a one-line verdict.
pub fn report_table(r: &Report) -> String {
    let mut t = table(&[
        "SUBNET",
        "CIDR",
        "SIZE",
        "RESERVED",
        "LEASED",
        "FREE",
        "QUARANTINED",
        "CONFLICTS",
    ]);
    for s in &r.subnets {
        t.add_row(s.cells().to_vec());
    }
    let mut out = t.to_string();
    out.push_str("\n\n");
    if r.findings.is_empty() {
        out.push_str("no findings");
        return out;
    }
    for f in &r.findings {
        out.push_str(&format!(
            "{:<8} {}: {}\n         → {}\n",
            f.severity.to_string().to_uppercase(),
            f.code,
            f.message,
            f.action
        ));
    }
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for f in &r.findings {
        *by.entry(f.severity.to_string()).or_default() += 1;
    }
    let counts: Vec<String> = by.iter().map(|(k, n)| format!("{n} {k}")).collect();
    out.push_str(&format!(
        "{} finding(s): {}",
        r.findings.len(),
        counts.join(", ")
    ));
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The columns of [`report_csv`]: `record`, then the subnet columns, then the finding
/// columns. A row fills its own columns and leaves the others empty, so every row has the
/// same number of fields (what csv parsers and spreadsheets want).
pub const CSV_HEADER: [&str; 16] = [
    "record",
    "subnet",
    "cidr",
    "size",
    "reserved",
    "leased",
    "free",
    "quarantined",
    "conflicts",
    "severity",
    "code",
    "addresses",
    "macs",
    "hosts",
    "message",
    "action",
];

/// RFC 4180 CSV (CRLF line ends) of the per-subnet counts, then the findings (worst first).
pub fn report_csv(r: &Report) -> String {
    let mut out = CSV_HEADER.join(",");
    out.push_str("\r\n");
    let mut row = |cells: [String; 16]| {
        let cells: Vec<String> = cells.iter().map(|s| csv_field(s)).collect();
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    };
    for s in &r.subnets {
        // "subnet", the eight counts, then the finding columns left empty.
        let mut cells: [String; 16] = Default::default();
        cells[0] = "subnet".into();
        for (cell, value) in cells[1..9].iter_mut().zip(s.cells()) {
            *cell = value;
        }
        row(cells);
    }
    for f in &r.findings {
        row([
            "finding".into(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            f.severity.to_string(),
            f.code.to_string(),
            list(&f.addresses),
            list(&f.macs),
            f.hosts.join(" "),
            f.message.clone(),
            f.action.clone(),
        ]);
    }
    out
}

pub fn history_table(h: &History) -> String {
    let mut t = table(&[
        "IP", "MAC", "HOST", "FROM", "UNTIL", "ENDED BY", "RENEWALS", "RELAY", "PORT",
    ]);
    for x in &h.holdings {
        t.add_row(vec![
            x.ip.to_string(),
            x.mac.to_string(),
            x.host.clone().unwrap_or_else(|| "-".into()),
            x.from.to_string(),
            x.until
                .map(|u| u.to_string())
                .unwrap_or_else(|| "(held)".into()),
            x.ended_by.clone().unwrap_or_else(|| "-".into()),
            x.renewals.to_string(),
            x.giaddr
                .map(|g| g.to_string())
                .unwrap_or_else(|| "-".into()),
            x.circuit_id.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut e = table(&["TIME", "KIND", "ACTOR", "WHAT"]);
    for x in &h.timeline {
        e.add_row(vec![
            x.time.to_string(),
            x.kind.to_string(),
            x.actor.clone(),
            x.summary.clone(),
        ]);
    }
    let reach = match (h.events_since, h.pruned) {
        (Some(t), true) => format!("\nevents since {t} (older events were pruned by retention)"),
        (Some(t), false) => format!("\nevents since {t} (the whole log)"),
        (None, _) => String::new(),
    };
    format!("{}{reach}\n\n{t}\n\n{e}", h.subject)
}
