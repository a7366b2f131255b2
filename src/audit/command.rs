//! `bootgate audit`: the CLI edge. Reads the inventory and the store named by the config
//! (read-only), runs the pure audit or history, prints a table, JSON or CSV. Part of the
//! command line, so errors are `anyhow` like the rest of `cli.rs`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use comfy_table::{Table, presets::NOTHING};

use super::{Options, Report, Scope, Subject};
use crate::cli::{Cli, Output};
use crate::config::Config;
use crate::http::query::SubnetSel;
use crate::inventory::{Invalid, Inventory};
use crate::store::{self, Event, EventKind, EventQuery, LeaseFilter, Store, StoreUrl};
use crate::types::MacAddr;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub history: Option<HistoryCommand>,
    /// Only this subnet: inventory name or CIDR.
    #[arg(long)]
    pub subnet: Option<SubnetSel>,
    /// Report a host whose newest lease is older than this many days.
    #[arg(long, default_value_t = 30)]
    pub stale_days: u64,
    /// Print the findings as CSV (one line each, with a header) instead of --output.
    #[arg(long)]
    pub csv: bool,
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

struct Snapshot {
    inventory: Inventory,
    store: Arc<dyn Store>,
}

async fn snapshot(cli: &Cli) -> anyhow::Result<Snapshot> {
    if cli.api.is_some() {
        bail!(
            "audit reads the inventory and the store directly; --api is not supported for it yet (run it on a gateway)"
        );
    }
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
        other => store::open(other)
            .await
            .with_context(|| format!("opening store {other}"))?,
    };
    Ok(Snapshot { inventory, store })
}

pub async fn run(cli: &Cli, a: &AuditArgs) -> anyhow::Result<ExitCode> {
    let t = std::time::Instant::now();
    let snap = snapshot(cli).await?;
    tracing::debug!(
        ms = t.elapsed().as_millis() as u64,
        hosts = snap.inventory.hosts.len(),
        "audit: config, inventory and store opened"
    );
    if let Some(h) = &a.history {
        return history(cli, &snap, h).await;
    }
    // Two reads at once: SQLite decodes each on its own connection thread.
    let lease_filter = LeaseFilter::default();
    let seen_query = EventQuery {
        kind: Some(EventKind::LeaseCommitted),
        ..Default::default()
    };
    let (leases, seen) = tokio::try_join!(
        snap.store.list_leases(&lease_filter),
        snap.store.query(&seen_query)
    )?;
    tracing::debug!(
        ms = t.elapsed().as_millis() as u64,
        leases = leases.len(),
        events = seen.len(),
        "audit: store read"
    );
    let opts = Options {
        scope: match &a.subnet {
            None => Scope::All,
            Some(SubnetSel::Name(n)) => Scope::Name(n.clone()),
            Some(SubnetSel::Cidr(c)) => Scope::Cidr(*c),
        },
        stale_after: std::time::Duration::from_secs(a.stale_days.saturating_mul(86_400)),
    };
    let report = super::audit(
        &snap.inventory,
        &leases,
        &seen,
        jiff::Timestamp::now(),
        &opts,
    )?;
    tracing::debug!(
        ms = t.elapsed().as_millis() as u64,
        findings = report.findings.len(),
        "audit: report made"
    );
    if a.csv {
        print!("{}", findings_csv(&report));
    } else {
        match cli.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            Output::Table => println!("{}", report_table(&report)),
        }
    }
    Ok(if report.failing() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn history(cli: &Cli, snap: &Snapshot, cmd: &HistoryCommand) -> anyhow::Result<ExitCode> {
    let inv = &snap.inventory;
    let mut queries: Vec<EventQuery> = Vec::new();
    let subject = match cmd {
        HistoryCommand::Ip { addr } => {
            queries.push(EventQuery {
                ip: Some(*addr),
                ..Default::default()
            });
            Subject::Ip(*addr)
        }
        HistoryCommand::Mac { mac } => {
            queries.push(EventQuery {
                mac: Some(*mac),
                ..Default::default()
            });
            // The host's power actions and state changes carry its name, not the MAC.
            if let Some(h) = inv.host_by_boot_mac(&inv.mac_index(), *mac) {
                queries.push(EventQuery {
                    host: Some(h.name.clone()),
                    ..Default::default()
                });
            }
            Subject::Mac(*mac)
        }
        HistoryCommand::Host { name } => {
            queries.push(EventQuery {
                host: Some(name.clone()),
                ..Default::default()
            });
            // Leases of its MACs committed before it was in the inventory carry no name.
            if let Some(h) = inv.host(name) {
                for m in &h.macs {
                    queries.push(EventQuery {
                        mac: Some(*m),
                        ..Default::default()
                    });
                }
            }
            Subject::Host(name.clone())
        }
    };
    let mut events: Vec<Event> = Vec::new();
    for q in &queries {
        events.extend(snap.store.query(q).await?);
    }
    let h = super::history(&subject, &events);
    match cli.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&h)?),
        Output::Table => println!("{}", history_table(&h)),
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
        t.add_row(vec![
            s.name.clone(),
            s.cidr.to_string(),
            s.size.to_string(),
            s.reserved.to_string(),
            s.leased.to_string(),
            s.free.to_string(),
            s.quarantined.to_string(),
            s.conflicts.to_string(),
        ]);
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

/// RFC 4180 CSV of the findings; list fields are space-separated.
pub fn findings_csv(r: &Report) -> String {
    let mut out = String::from("severity,code,addresses,macs,hosts,message,action\r\n");
    for f in &r.findings {
        let row = [
            f.severity.to_string(),
            f.code.to_string(),
            list(&f.addresses),
            list(&f.macs),
            f.hosts.join(" "),
            f.message.clone(),
            f.action.clone(),
        ];
        let row: Vec<String> = row.iter().map(|s| csv_field(s)).collect();
        out.push_str(&row.join(","));
        out.push_str("\r\n");
    }
    out
}

pub fn history_table(h: &super::History) -> String {
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
    format!("{}\n\n{t}\n\n{e}", h.subject)
}
