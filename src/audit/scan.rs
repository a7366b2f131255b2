//! `bootgate audit --scan` and `--bmc`: what answers on the wire, compared with what was
//! given out. The effects are at the bottom (an ARP or ICMP sweep of the served subnets
//! through [`crate::dhcp::probe`], one GET of each BMC's Redfish service root through
//! [`crate::bmc::redfish`]); `plan`, `scan_findings` and `bmc_findings` are pure.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::Serialize;

use super::{Code, Finding, Scope, Severity};
use crate::bmc::{BmcError, BmcSettings, BmcTarget};
use crate::dhcp::probe::{self, ProbeError, ProbeMode, Prober};
use crate::inventory::{BmcProtocol, Inventory, Served};
use crate::model::{Lease, LeaseState};
use crate::types::MacAddr;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("scanning subnet {subnet}: {source}")]
    Probe {
        subnet: String,
        #[source]
        source: ProbeError,
    },
}

/// How a subnet is swept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum How {
    /// Directly attached: ARP out of the interface the subnet names, from our address on
    /// it (0.0.0.0, an RFC 5227 probe, when the config gives none). Finds the MAC too.
    Arp { iface: String, source: Ipv4Addr },
    /// Behind relays: ICMP echo, routed by the kernel. No MAC.
    Icmp,
}

/// One subnet's sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    pub subnet: String,
    pub how: How,
    /// Every usable address except ours and the subnet's gateway.
    pub addresses: Vec<Ipv4Addr>,
}

/// Something that answered: `mac` when it answered ARP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Answer {
    pub ip: Ipv4Addr,
    pub mac: Option<MacAddr>,
}

/// The sweeps for the in-scope subnets DHCP serves (not-served subnets are skipped).
/// `own` are the gateway's interface addresses from the config.
pub fn plan(inv: &Inventory, scope: &Scope, own: &[Ipv4Net]) -> Vec<Target> {
    let mut out = Vec::new();
    for s in &inv.subnets {
        let selected = match scope {
            Scope::All => true,
            Scope::Name(n) => &s.name == n,
            Scope::Cidr(c) => s.cidr == *c || c.contains(&s.cidr),
        };
        if !selected || s.proxy_dhcp {
            continue;
        }
        let skip = skipped(inv, own);
        let how = match &s.served {
            Served::Interface(iface) => How::Arp {
                iface: iface.clone(),
                source: own
                    .iter()
                    .map(|n| n.addr())
                    .find(|a| s.cidr.contains(a))
                    .unwrap_or(Ipv4Addr::UNSPECIFIED),
            },
            Served::Relays(_) => How::Icmp,
            Served::NotServed => continue,
        };
        let addresses = s.cidr.hosts().filter(|ip| !skip.contains(ip)).collect();
        out.push(Target {
            subnet: s.name.clone(),
            how,
            addresses,
        });
    }
    out
}

/// Addresses whose answer means nothing: ours, the subnets' gateways, relay addresses.
pub fn skipped(inv: &Inventory, own: &[Ipv4Net]) -> HashSet<Ipv4Addr> {
    let mut skip: HashSet<Ipv4Addr> = own.iter().map(|n| n.addr()).collect();
    for s in &inv.subnets {
        skip.extend(s.gateway);
        if let Served::Relays(r) = &s.served {
            skip.extend(r.iter().copied());
        }
    }
    skip
}

/// Findings from what answered: an address nobody was given (no live offered/active lease,
/// no reservation) that answers → `address-answers-unassigned` (warning); an address whose
/// ARP answer comes from a MAC other than its lease's or reservation's, or that two MACs
/// answer for → `address-two-macs` (critical). Declined (quarantined) leases do not count
/// as given: whoever answers there is the conflict that caused the decline.
pub fn scan_findings(
    inv: &Inventory,
    leases: &[Lease],
    answers: &[Answer],
    skip: &HashSet<Ipv4Addr>,
    now: jiff::Timestamp,
) -> Vec<Finding> {
    let given = given(inv, leases, now);
    let mut by_ip: BTreeMap<Ipv4Addr, BTreeSet<Option<MacAddr>>> = BTreeMap::new();
    for a in answers {
        by_ip.entry(a.ip).or_default().insert(a.mac);
    }
    let mut out = Vec::new();
    for (ip, macs) in by_ip {
        if skip.contains(&ip) {
            continue;
        }
        let seen: Vec<MacAddr> = macs.iter().flatten().copied().collect();
        let seen_text = if seen.is_empty() {
            "ICMP echo".to_string()
        } else {
            format!("ARP from {}", super::join(&seen))
        };
        match given.get(&ip) {
            None => {
                out.push(unassigned(ip, &seen, &seen_text));
                if seen.len() > 1 {
                    out.push(two_macs(ip, &seen, &BTreeSet::new(), &[], &seen_text));
                }
            }
            Some(g) => {
                let strangers: Vec<MacAddr> = seen
                    .iter()
                    .filter(|m| !g.macs.contains(m))
                    .copied()
                    .collect();
                // Two answers from outside the expected set, or one beside an expected
                // MAC we cannot know (a reservation without MACs) with another answering.
                let conflict = (!strangers.is_empty() && !g.macs.is_empty()) || seen.len() > 1;
                if conflict {
                    out.push(two_macs(
                        ip,
                        &seen,
                        &g.macs,
                        &g.hosts.iter().cloned().collect::<Vec<_>>(),
                        &format!("{seen_text}; it is {}", g.why.join(", ")),
                    ));
                }
            }
        }
    }
    out
}

/// Who may answer for one given address: MACs, the hosts they belong to, and why (for
/// the message).
#[derive(Default)]
struct Given {
    macs: BTreeSet<MacAddr>,
    hosts: BTreeSet<String>,
    why: Vec<String>,
}

/// Every given address: live offered/active leases, reservations, BMC addresses.
fn given(inv: &Inventory, leases: &[Lease], now: jiff::Timestamp) -> BTreeMap<Ipv4Addr, Given> {
    let mut given: BTreeMap<Ipv4Addr, Given> = BTreeMap::new();
    for l in leases {
        if matches!(l.state, LeaseState::Active | LeaseState::Offered) && l.ends > now {
            let g = given.entry(l.ip).or_default();
            g.macs.insert(l.mac);
            g.hosts.extend(l.host.clone());
            g.why.push(format!("leased to {}", l.mac));
        }
    }
    for h in &inv.hosts {
        for ip in h.addresses.values() {
            let g = given.entry(*ip).or_default();
            g.macs.extend(h.macs.iter().copied());
            g.hosts.insert(h.name.clone());
            g.why.push(format!("reserved for host {}", h.name));
        }
        if let Some(b) = &h.bmc {
            let g = given.entry(b.address).or_default();
            g.macs.extend(b.mac);
            g.hosts.insert(h.name.clone());
            g.why.push(format!("the BMC of host {}", h.name));
        }
    }
    given
}

/// `address-answers-unassigned`: `ip` answered (`seen_text`) though nobody was given it.
fn unassigned(ip: Ipv4Addr, seen: &[MacAddr], seen_text: &str) -> Finding {
    Finding {
        severity: Severity::Warning,
        code: Code::AddressAnswersUnassigned,
        message: format!("{ip} answers ({seen_text}) but has no lease and no reservation"),
        addresses: vec![ip],
        macs: seen.to_vec(),
        hosts: vec![],
        action: match seen.first() {
            Some(m) => format!(
                "find the machine with MAC {m} (switch MAC table) that set {ip} by hand, and move it to DHCP or reserve {ip} for it in the inventory"
            ),
            None => format!(
                "find the machine that set {ip} by hand (its relay's ARP table has the MAC), and move it to DHCP or reserve {ip} for it in the inventory"
            ),
        },
    }
}

fn two_macs(
    ip: Ipv4Addr,
    seen: &[MacAddr],
    expected: &BTreeSet<MacAddr>,
    hosts: &[String],
    why: &str,
) -> Finding {
    let macs: BTreeSet<MacAddr> = seen.iter().chain(expected.iter()).copied().collect();
    let macs: Vec<MacAddr> = macs.into_iter().collect();
    Finding {
        severity: Severity::Critical,
        code: Code::AddressTwoMacs,
        message: format!("{ip} is claimed by {} MACs on the wire ({why})", macs.len()),
        addresses: vec![ip],
        macs: macs.clone(),
        hosts: hosts.to_vec(),
        action: format!(
            "find which of {} should have {ip} (`bootgate audit ip {ip}`), reconfigure the other one, and clear stale ARP entries on the gateway and switches",
            super::join(&macs)
        ),
    }
}

/// Runs the sweeps one after another, each paced to `per_second` requests (so the whole
/// scan is too); ICMP replies are awaited up to `wait`, ARP replies `wait` after the last
/// request.
pub async fn sweep(
    targets: &[Target],
    per_second: u32,
    wait: Duration,
) -> Result<Vec<Answer>, ScanError> {
    let prober = Prober::new(ProbeMode::Icmp, wait);
    let mut out = Vec::new();
    for t in targets {
        let err = |source| ScanError::Probe {
            subnet: t.subnet.clone(),
            source,
        };
        tracing::info!(subnet = %t.subnet, addresses = t.addresses.len(), per_second, how = ?t.how, "scanning");
        match &t.how {
            How::Arp { iface, source } => {
                let found = probe::arp_sweep(iface, *source, &t.addresses, per_second, wait)
                    .await
                    .map_err(err)?;
                out.extend(found.into_iter().map(|a| Answer {
                    ip: a.ip,
                    mac: Some(a.mac),
                }));
            }
            How::Icmp => {
                let found = prober
                    .icmp_sweep(None, &t.addresses, per_second)
                    .await
                    .map_err(err)?;
                out.extend(found.into_iter().map(|ip| Answer { ip, mac: None }));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// BMCs

/// How one BMC endpoint answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum BmcOutcome {
    Answered,
    /// `kind` is [`BmcError::kind`]: timeout, connect (refused), tls, http, …
    Failed {
        kind: String,
        error: String,
    },
    /// IPMI-only: not probed.
    Skipped {
        why: String,
    },
}

/// One BMC endpoint (hosts sharing a chassis BMC share the check).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BmcCheck {
    pub hosts: Vec<String>,
    pub address: Ipv4Addr,
    pub endpoint: String,
    pub outcome: BmcOutcome,
}

/// Probes the service root of every in-scope Redfish BMC, `settings.concurrency` at once,
/// each bounded by `settings.timeout` (retries as configured). Unauthenticated: no
/// secrets file needed. IPMI BMCs are listed as skipped.
pub async fn check_bmcs(inv: &Inventory, scope: &Scope, settings: BmcSettings) -> Vec<BmcCheck> {
    let (endpoints, mut out) = bmc_endpoints(inv, scope);
    out.extend(probe_roots(endpoints, settings).await);
    out.sort_by(|a, b| a.endpoint.cmp(&b.endpoint).then(a.hosts.cmp(&b.hosts)));
    out
}

/// Redfish BMC endpoints to probe: label → target and the hosts behind it.
type Endpoints = BTreeMap<String, (BmcTarget, Vec<String>)>;

/// The in-scope Redfish BMC endpoints, and the checks already decided without a probe: a
/// BMC that does not resolve, an IPMI one.
fn bmc_endpoints(inv: &Inventory, scope: &Scope) -> (Endpoints, Vec<BmcCheck>) {
    let in_scope = |ip: &Ipv4Addr| match scope {
        Scope::All => true,
        Scope::Name(n) => inv
            .subnets
            .iter()
            .any(|s| &s.name == n && s.cidr.contains(ip)),
        Scope::Cidr(c) => c.contains(ip),
    };
    // One probe per endpoint.
    let mut endpoints: Endpoints = BTreeMap::new();
    let mut out = Vec::new();
    for h in &inv.hosts {
        let Some(b) = &h.bmc else { continue };
        if !in_scope(&b.address) {
            continue;
        }
        let secrets = crate::secrets::Secrets::default().with_bmc(&b.credential, "", "");
        let t = match BmcTarget::resolve(h, inv, &secrets) {
            Ok(t) => t,
            Err(e) => {
                out.push(BmcCheck {
                    hosts: vec![h.name.clone()],
                    address: b.address,
                    endpoint: b.address.to_string(),
                    outcome: BmcOutcome::Failed {
                        kind: e.kind().into(),
                        error: e.to_string(),
                    },
                });
                continue;
            }
        };
        if b.protocol == BmcProtocol::Ipmi {
            out.push(BmcCheck {
                hosts: vec![h.name.clone()],
                address: b.address,
                endpoint: t.bmc_label(),
                outcome: BmcOutcome::Skipped {
                    why: "IPMI BMC: not probed (check it with `bootgate power status`)".into(),
                },
            });
            continue;
        }
        endpoints
            .entry(t.bmc_label())
            .or_insert_with(|| (t, Vec::new()))
            .1
            .push(h.name.clone());
    }
    (endpoints, out)
}

/// One GET of each endpoint's service root, `settings.concurrency` at once; in the order
/// they finish.
async fn probe_roots(endpoints: Endpoints, settings: BmcSettings) -> Vec<BmcCheck> {
    let redfish = std::sync::Arc::new(crate::bmc::redfish::Redfish::new(settings.clone()));
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(settings.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (label, (t, hosts)) in endpoints {
        let redfish = redfish.clone();
        let permits = permits.clone();
        tasks.spawn(async move {
            let _p = permits.acquire_owned().await;
            let r: Result<_, BmcError> = redfish.service_root(&t).await;
            BmcCheck {
                hosts,
                address: t.address,
                endpoint: label,
                outcome: match r {
                    Ok(_) => BmcOutcome::Answered,
                    Err(e) => BmcOutcome::Failed {
                        kind: e.kind().into(),
                        error: e.to_string(),
                    },
                },
            }
        });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(c) => out.push(c),
            Err(e) => tracing::warn!(error = %e, "BMC check task failed"),
        }
    }
    out
}

/// A warning per BMC that did not answer, an info per BMC not checked.
pub fn bmc_findings(checks: &[BmcCheck]) -> Vec<Finding> {
    let mut out = Vec::new();
    for c in checks {
        let who = c.hosts.join(", ");
        match &c.outcome {
            BmcOutcome::Answered => {}
            BmcOutcome::Failed { kind, error } => out.push(Finding {
                severity: Severity::Warning,
                code: Code::BmcUnreachable,
                message: format!(
                    "the BMC of host {who} ({}, {}) does not answer Redfish ({kind}): {error}",
                    c.address, c.endpoint
                ),
                addresses: vec![c.address],
                macs: vec![],
                hosts: c.hosts.clone(),
                action: format!(
                    "check the BMC's cabling, address and Redfish service (`curl -k {}/redfish/v1/`), then `bootgate power status {}`",
                    c.endpoint,
                    c.hosts.first().map(String::as_str).unwrap_or("HOST")
                ),
            }),
            BmcOutcome::Skipped { why } => out.push(Finding {
                severity: Severity::Info,
                code: Code::BmcNotChecked,
                message: format!("the BMC of host {who} ({}): {why}", c.address),
                addresses: vec![c.address],
                macs: vec![],
                hosts: c.hosts.clone(),
                action: "none needed; run `bootgate power status` to check it over IPMI".into(),
            }),
        }
    }
    out
}
