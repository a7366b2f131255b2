//! IP address assignment audit: pure functions over a snapshot (inventory, leases, events)
//! that say how full each subnet is and what is wrong with its assignments, and the
//! timeline of one address, MAC or host. `crate::cli::audit_cmd` is the CLI edge that reads the
//! snapshot and prints; nothing here does I/O, so the same report can be served over HTTP.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::inventory::{Host, Inventory, Subnet};
use crate::model::{Event, EventKind, LastSeen, Lease, LeaseState};
use crate::types::{MacAddr, text_enum};

pub mod scan;
pub mod source;

/// Why an audit could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("no inventory subnet is named or equal to {0:?} (see subnets.toml)")]
    NoSuchSubnet(String),
}

text_enum!(
    /// How bad a finding is. Warning or worse makes `bootgate audit` exit 1.
    Severity {
        Info => "info",
        Warning => "warning",
        Critical => "critical",
    }
);

text_enum!(
    /// What a finding is about. The text is a stable interface: scripts match on it.
    Code {
        /// One address held or claimed by two MACs (a lease against another host's
        /// reservation, or two hosts' reservations with different MACs).
        AddressTwoMacs => "address-two-macs",
        /// One address reserved more than once where no second MAC tells the claims apart
        /// (the same host twice, or hosts without boot MACs).
        DuplicateReservation => "duplicate-reservation",
        /// `addresses.<subnet>` is not inside that subnet (or names no subnet).
        ReservationOutsideSubnet => "reservation-outside-subnet",
        /// A reserved address lies in its subnet's dynamic pool.
        ReservationInDynamicRange => "reservation-in-dynamic-range",
        /// An active lease for a MAC not in the inventory on a `known_hosts_only` subnet.
        UnknownMacOnKnownOnlySubnet => "unknown-mac-on-known-only-subnet",
        /// An active lease whose MAC's reservation on that subnet is now another address.
        ReservationMoved => "reservation-moved",
        /// An inventory host never seen by DHCP (no lease, no lease-committed event).
        HostNeverSeen => "host-never-seen",
        /// An inventory host whose last lease is older than `--stale-days`.
        HostNotSeenRecently => "host-not-seen-recently",
        /// `--scan`: an address answered ARP or ICMP although nobody was given it (no live
        /// lease, no reservation, not the gateway or one of our addresses).
        AddressAnswersUnassigned => "address-answers-unassigned",
        /// `--bmc`: a BMC did not answer a GET of the Redfish service root.
        BmcUnreachable => "bmc-unreachable",
        /// `--bmc`: a BMC that speaks IPMI only, not checked (Redfish is what is probed).
        BmcNotChecked => "bmc-not-checked",
    }
);

/// Which subnets to audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Name(String),
    Cidr(Ipv4Net),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub scope: Scope,
    /// A host whose newest lease started longer ago than this is reported.
    pub stale_after: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            scope: Scope::All,
            stale_after: Duration::from_secs(30 * 86_400),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub severity: Severity,
    pub code: Code,
    pub message: String,
    pub addresses: Vec<Ipv4Addr>,
    pub macs: Vec<MacAddr>,
    pub hosts: Vec<String>,
    /// What an operator should do about it.
    pub action: String,
}

/// How one subnet's addresses are used. `free` = `size` minus every address that is
/// reserved, leased, offered or quarantined (each counted once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetUsage {
    pub name: String,
    pub cidr: Ipv4Net,
    pub known_hosts_only: bool,
    /// Usable host addresses (network and broadcast excluded, except in a /31 or /32).
    pub size: u64,
    pub reserved: u64,
    /// Active, unexpired leases.
    pub leased: u64,
    pub free: u64,
    /// Declined addresses still in quarantine.
    pub quarantined: u64,
    /// Addresses named by an `address-two-macs` finding.
    pub conflicts: u64,
}

impl SubnetUsage {
    /// name, cidr, size, reserved, leased, free, quarantined, conflicts: the cells the
    /// table and the CSV both print, in that order.
    pub fn cells(&self) -> [String; 8] {
        [
            self.name.clone(),
            self.cidr.to_string(),
            self.size.to_string(),
            self.reserved.to_string(),
            self.leased.to_string(),
            self.free.to_string(),
            self.quarantined.to_string(),
            self.conflicts.to_string(),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub time: Timestamp,
    pub stale_days: u64,
    pub subnets: Vec<SubnetUsage>,
    /// Worst first.
    pub findings: Vec<Finding>,
    /// The worst severity found (`null` when there is no finding).
    pub worst: Option<Severity>,
}

impl Report {
    /// Whether cron/CI should fail: a finding of warning severity or worse.
    pub fn failing(&self) -> bool {
        self.worst.is_some_and(|s| s >= Severity::Warning)
    }

    /// Adds findings made outside [`audit_live`] (scan, BMC check): keeps the order (worst
    /// first), `worst`, and the per-subnet conflict counts right.
    pub fn add_findings(&mut self, more: Vec<Finding>) {
        self.findings.extend(more);
        sort_findings(&mut self.findings);
        self.worst = self.findings.iter().map(|f| f.severity).max();
        for s in &mut self.subnets {
            let ips: HashSet<Ipv4Addr> = self
                .findings
                .iter()
                .filter(|f| f.code == Code::AddressTwoMacs)
                .flat_map(|f| f.addresses.iter().copied())
                .filter(|ip| s.cidr.contains(ip))
                .collect();
            s.conflicts = ips.len() as u64;
        }
    }
}

fn sort_findings(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.code.cmp(&b.code))
            .then(a.addresses.cmp(&b.addresses))
            .then(a.hosts.cmp(&b.hosts))
    });
}

/// One reserved address as the inventory declares it.
#[derive(Debug, Clone, Copy)]
struct Reservation<'a> {
    ip: Ipv4Addr,
    host: usize,
    /// The subnet it belongs to (index), when one contains it.
    subnet: Option<usize>,
    /// The `addresses` key it came from; `None` for a BMC address.
    key: Option<&'a str>,
    bmc: bool,
}

/// Subnets sorted by network address, for a binary-search lookup of the one holding an
/// address (inventory subnets do not overlap).
struct SubnetIndex {
    by_start: Vec<(u32, u32, usize)>,
}

impl SubnetIndex {
    fn new(subnets: &[Subnet]) -> Self {
        let mut by_start: Vec<(u32, u32, usize)> = subnets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    u32::from(s.cidr.network()),
                    u32::from(s.cidr.broadcast()),
                    i,
                )
            })
            .collect();
        by_start.sort_unstable();
        SubnetIndex { by_start }
    }
    fn find(&self, ip: Ipv4Addr) -> Option<usize> {
        let ip = u32::from(ip);
        let n = self.by_start.partition_point(|(start, _, _)| *start <= ip);
        let (_, end, i) = *self.by_start.get(n.checked_sub(1)?)?;
        (ip <= end).then_some(i)
    }
}

fn usable(net: &Ipv4Net) -> u64 {
    let all = 1u64 << (32 - u32::from(net.prefix_len()));
    if all <= 2 { all } else { all - 2 }
}

/// Audits a site's address assignments. `leases` are all stored leases (any state);
/// `seen` are the `lease-committed` events (others are ignored), for hosts whose leases
/// have since been replaced. O((hosts + leases + events) log n). The reference form of
/// [`audit_live`], which the CLI and the API feed from the store's cheaper queries.
pub fn audit(
    inv: &Inventory,
    leases: &[Lease],
    seen: &[Event],
    now: Timestamp,
    opts: &Options,
) -> Result<Report, AuditError> {
    audit_live(inv, leases, &last_seen_from(leases, seen), now, opts)
}

/// What [`crate::model::LeaseStore::last_seen`] answers, folded from leases and events in
/// memory: per MAC the newest lease start or commit, per host name the newest commit.
pub fn last_seen_from(leases: &[Lease], events: &[Event]) -> LastSeen {
    let mut macs: BTreeMap<MacAddr, Timestamp> = BTreeMap::new();
    let mut hosts: BTreeMap<String, Timestamp> = BTreeMap::new();
    fn newer<K: Ord>(m: &mut BTreeMap<K, Timestamp>, k: K, t: Timestamp) {
        let e = m.entry(k).or_insert(t);
        if t > *e {
            *e = t;
        }
    }
    for l in leases {
        newer(&mut macs, l.mac, l.starts);
    }
    for e in events
        .iter()
        .filter(|e| e.kind == EventKind::LeaseCommitted)
    {
        if let Some(m) = e.mac {
            newer(&mut macs, m, e.time);
        }
        if let Some(h) = &e.host {
            newer(&mut hosts, h.clone(), e.time);
        }
    }
    LastSeen {
        macs: macs.into_iter().collect(),
        hosts: hosts.into_iter().collect(),
    }
}

/// The audit over the leases that matter (those holding an address at `now`; others are
/// skipped, so all leases work too) and when each MAC / host last took an address.
pub fn audit_live(
    inv: &Inventory,
    leases: &[Lease],
    last: &LastSeen,
    now: Timestamp,
    opts: &Options,
) -> Result<Report, AuditError> {
    let selected = selected_subnets(&inv.subnets, &opts.scope)?;
    let (site, mut findings) = Site::new(inv);
    findings.extend(site.dynamic_range_findings());
    findings.extend(site.duplicate_findings());
    let held = site.lease_findings(leases, now, &mut findings);
    findings.extend(stale_findings(inv, &host_last_seen(inv, last), now, opts));
    if opts.scope != Scope::All {
        site.retain_in_scope(&mut findings, &selected);
    }
    let usage = site.usage(&selected, &held, &findings);
    sort_findings(&mut findings);
    let worst = findings.iter().map(|f| f.severity).max();
    Ok(Report {
        time: now,
        stale_days: opts.stale_after.as_secs() / 86_400,
        subnets: usage,
        findings,
        worst,
    })
}

/// Which subnets are in scope (by inventory index); an error when none is.
fn selected_subnets(subnets: &[Subnet], scope: &Scope) -> Result<Vec<bool>, AuditError> {
    let selected: Vec<bool> = match scope {
        Scope::All => vec![true; subnets.len()],
        Scope::Name(n) => subnets.iter().map(|s| &s.name == n).collect(),
        Scope::Cidr(c) => subnets
            .iter()
            .map(|s| s.cidr == *c || c.contains(&s.cidr))
            .collect(),
    };
    if !selected.iter().any(|b| *b) {
        let what = match scope {
            Scope::All => "any".to_string(),
            Scope::Name(n) => n.clone(),
            Scope::Cidr(c) => c.to_string(),
        };
        return Err(AuditError::NoSuchSubnet(what));
    }
    Ok(selected)
}

/// The inventory as the finding families read it: its reservations and the lookups over
/// them, built once.
struct Site<'a> {
    inv: &'a Inventory,
    index: SubnetIndex,
    reservations: Vec<Reservation<'a>>,
    /// Indices into `reservations` per reserved address.
    by_ip: HashMap<Ipv4Addr, Vec<usize>>,
    /// Inventory index per host name.
    host_pos: HashMap<&'a str, usize>,
}

/// Per subnet (inventory index): the addresses live leases hold, and how many of those
/// leases are active and how many declined (quarantined).
struct Held {
    addresses: Vec<HashSet<Ipv4Addr>>,
    leased: Vec<u64>,
    quarantined: Vec<u64>,
}

impl<'a> Site<'a> {
    /// The reservations (a host's `addresses` and its BMC address), with a
    /// `reservation-outside-subnet` finding for each address its subnet does not contain.
    fn new(inv: &'a Inventory) -> (Site<'a>, Vec<Finding>) {
        let subnets = &inv.subnets;
        let index = SubnetIndex::new(subnets);
        let mut findings = Vec::new();
        let mut reservations: Vec<Reservation> = Vec::new();
        for (hi, h) in inv.hosts.iter().enumerate() {
            for (key, ip) in &h.addresses {
                let subnet = subnets.iter().position(|s| &s.name == key);
                reservations.push(Reservation {
                    ip: *ip,
                    host: hi,
                    subnet: subnet.filter(|i| subnets[*i].cidr.contains(ip)),
                    key: Some(key.as_str()),
                    bmc: false,
                });
                let inside = subnet.is_some_and(|i| subnets[i].cidr.contains(ip));
                if !inside {
                    findings.push(outside_subnet(h, key, *ip, subnet.map(|i| &subnets[i])));
                }
            }
            if let Some(b) = &h.bmc {
                reservations.push(Reservation {
                    ip: b.address,
                    host: hi,
                    subnet: index.find(b.address),
                    key: None,
                    bmc: true,
                });
            }
        }
        let mut by_ip: HashMap<Ipv4Addr, Vec<usize>> = HashMap::with_capacity(reservations.len());
        for (i, r) in reservations.iter().enumerate() {
            by_ip.entry(r.ip).or_default().push(i);
        }
        let host_pos = inv
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (h.name.as_str(), i))
            .collect();
        let site = Site {
            inv,
            index,
            reservations,
            by_ip,
            host_pos,
        };
        (site, findings)
    }

    /// `reservation-in-dynamic-range`: a reservation the pool could hand to a stranger.
    fn dynamic_range_findings(&self) -> Vec<Finding> {
        let mut findings = Vec::new();
        for r in &self.reservations {
            let Some(si) = r.subnet else { continue };
            let s = &self.inv.subnets[si];
            let Some(range) = s.dynamic_ranges.iter().find(|d| d.contains(r.ip)) else {
                continue;
            };
            let h = &self.inv.hosts[r.host];
            let what = if r.bmc {
                "bmc.address".to_string()
            } else {
                format!("addresses.{}", r.key.unwrap_or("?"))
            };
            findings.push(Finding {
                severity: Severity::Warning,
                code: Code::ReservationInDynamicRange,
                message: format!(
                    "host {} reserves {} ({what}) inside dynamic range {}-{} of subnet {}",
                    h.name, r.ip, range.start, range.end, s.name
                ),
                addresses: vec![r.ip],
                macs: h.macs.clone(),
                hosts: vec![h.name.clone()],
                action: format!(
                    "move the reservation out of {}-{} or shrink the range, so the pool cannot hand {} to a stranger",
                    range.start, range.end, r.ip
                ),
            });
        }
        findings
    }

    /// Two reservations of one address: `address-two-macs` when two hosts with different
    /// MACs claim it, else `duplicate-reservation`. In address order.
    fn duplicate_findings(&self) -> Vec<Finding> {
        let inv = self.inv;
        let mut dup_ips: Vec<(&Ipv4Addr, &Vec<usize>)> =
            self.by_ip.iter().filter(|(_, v)| v.len() > 1).collect();
        dup_ips.sort_unstable_by_key(|(ip, _)| **ip);
        let mut findings = Vec::new();
        for (ip, rs) in dup_ips {
            // Hosts may share one BMC (each naming its own bmc.system): not a conflict.
            if rs.iter().all(|i| self.reservations[*i].bmc) {
                continue;
            }
            let hosts: BTreeSet<usize> = rs.iter().map(|i| self.reservations[*i].host).collect();
            let macs: BTreeSet<MacAddr> = rs
                .iter()
                .flat_map(|i| {
                    let r = &self.reservations[*i];
                    let h = &inv.hosts[r.host];
                    if r.bmc {
                        h.bmc
                            .as_ref()
                            .and_then(|b| b.mac)
                            .into_iter()
                            .collect::<Vec<_>>()
                    } else {
                        h.macs.clone()
                    }
                })
                .collect();
            let names: Vec<String> = hosts.iter().map(|i| inv.hosts[*i].name.clone()).collect();
            let two_macs = hosts.len() > 1 && macs.len() > 1;
            findings.push(Finding {
                severity: Severity::Critical,
                code: if two_macs {
                    Code::AddressTwoMacs
                } else {
                    Code::DuplicateReservation
                },
                message: if two_macs {
                    format!("{ip} is reserved for {} hosts: {}", hosts.len(), names.join(", "))
                } else {
                    format!("{ip} is reserved {} times ({})", rs.len(), names.join(", "))
                },
                addresses: vec![*ip],
                macs: macs.into_iter().collect(),
                hosts: names,
                action: format!("keep one reservation of {ip} in the inventory and give the others their own address"),
            });
        }
        findings
    }

    /// Counts the live leases per subnet and adds each active lease's findings to
    /// `findings`: held against another host's reservation, unknown on a known-hosts-only
    /// subnet, or off its host's moved reservation.
    fn lease_findings(
        &self,
        leases: &[Lease],
        now: Timestamp,
        findings: &mut Vec<Finding>,
    ) -> Held {
        let (inv, subnets) = (self.inv, &self.inv.subnets);
        let mut held = Held {
            addresses: vec![HashSet::new(); subnets.len()],
            leased: vec![0u64; subnets.len()],
            quarantined: vec![0u64; subnets.len()],
        };
        let mac_index = inv.mac_index();
        for l in leases {
            let owner = inv
                .host_by_boot_mac(&mac_index, l.mac)
                .and_then(|h| self.host_pos.get(h.name.as_str()).copied());
            let live = l.state.holds_address() && l.ends > now;
            if !live {
                continue;
            }
            let si = subnets
                .iter()
                .position(|s| s.name == l.subnet && s.cidr.contains(&l.ip))
                .or_else(|| self.index.find(l.ip));
            let Some(si) = si else { continue };
            held.addresses[si].insert(l.ip);
            match l.state {
                LeaseState::Active => held.leased[si] += 1,
                LeaseState::Declined => {
                    held.quarantined[si] += 1;
                    continue;
                }
                _ => continue,
            }
            findings.extend(self.reserved_for_others(l, owner));
            findings.extend(self.owner_finding(l, &subnets[si], owner));
        }
        held
    }

    /// `address-two-macs`: an active lease on an address reserved for another host.
    fn reserved_for_others(&self, l: &Lease, owner: Option<usize>) -> Option<Finding> {
        let inv = self.inv;
        let rs = self.by_ip.get(&l.ip)?;
        let others: BTreeSet<usize> = rs
            .iter()
            .map(|i| self.reservations[*i].host)
            .filter(|h| Some(*h) != owner)
            .filter(|h| {
                let r = &inv.hosts[*h];
                !r.macs.contains(&l.mac) && r.bmc.as_ref().and_then(|b| b.mac) != Some(l.mac)
            })
            .collect();
        if others.is_empty() {
            return None;
        }
        let lease_host = owner.map(|i| inv.hosts[i].name.clone());
        let mut macs = vec![l.mac];
        let mut hosts: Vec<String> = lease_host.iter().cloned().collect();
        for h in &others {
            macs.extend(inv.hosts[*h].macs.iter().copied());
            hosts.push(inv.hosts[*h].name.clone());
        }
        let holder = match &lease_host {
            Some(h) => format!("{} (host {h})", l.mac),
            None => format!("{} (not in the inventory)", l.mac),
        };
        let reserved_for: Vec<String> = others
            .iter()
            .map(|h| format!("host {}", inv.hosts[*h].name))
            .collect();
        Some(Finding {
            severity: Severity::Critical,
            code: Code::AddressTwoMacs,
            message: format!(
                "{} is leased to {holder} until {} but reserved for {}",
                l.ip,
                l.ends,
                reserved_for.join(", ")
            ),
            addresses: vec![l.ip],
            macs,
            hosts,
            action: format!(
                "find {} (`bootgate audit mac {}`), take it off {} and run `bootgate leases release {}`",
                l.mac, l.mac, l.ip, l.ip
            ),
        })
    }

    /// What an active lease on subnet `s` says about its holder: a MAC in no host's `macs`
    /// on a known-hosts-only subnet, or a host whose reservation there is now another
    /// address.
    fn owner_finding(&self, l: &Lease, s: &Subnet, owner: Option<usize>) -> Option<Finding> {
        match owner {
            None if s.known_hosts_only => Some(Finding {
                severity: Severity::Warning,
                code: Code::UnknownMacOnKnownOnlySubnet,
                message: format!(
                    "{} holds {} on subnet {} ({}), which serves inventory hosts only, but is in no host's macs",
                    l.mac, l.ip, s.name, s.cidr
                ),
                addresses: vec![l.ip],
                macs: vec![l.mac],
                hosts: vec![],
                action: format!(
                    "add {} to its host in the inventory, or release the lease (`bootgate leases release {}`) and find who handed it out",
                    l.mac, l.ip
                ),
            }),
            Some(hi) => {
                let h = &self.inv.hosts[hi];
                let want = h.addresses.get(&s.name).filter(|want| **want != l.ip)?;
                Some(Finding {
                    severity: Severity::Warning,
                    code: Code::ReservationMoved,
                    message: format!(
                        "host {} ({}) holds {} until {}, but its reservation on {} is now {want}",
                        h.name, l.mac, l.ip, l.ends, s.name
                    ),
                    addresses: vec![l.ip, *want],
                    macs: vec![l.mac],
                    hosts: vec![h.name.clone()],
                    action: format!(
                        "release {} (`bootgate leases release {}`) and renew or reboot {} so it takes {want}",
                        l.ip, l.ip, h.name
                    ),
                })
            }
            None => None,
        }
    }

    /// Keeps the findings about an in-scope address, or about a host with one.
    fn retain_in_scope(&self, findings: &mut Vec<Finding>, selected: &[bool]) {
        let in_scope = |ip: &Ipv4Addr| self.index.find(*ip).is_some_and(|i| selected[i]);
        findings.retain(|f| {
            f.addresses.iter().any(in_scope)
                || f.hosts.iter().any(|n| {
                    self.host_pos
                        .get(n.as_str())
                        .is_some_and(|hi| self.inv.hosts[*hi].addresses.values().any(in_scope))
                })
        });
    }

    /// The per-subnet summary of the selected subnets.
    fn usage(&self, selected: &[bool], held: &Held, findings: &[Finding]) -> Vec<SubnetUsage> {
        let subnets = &self.inv.subnets;
        let mut conflict_ips: Vec<HashSet<Ipv4Addr>> = vec![HashSet::new(); subnets.len()];
        for f in findings.iter().filter(|f| f.code == Code::AddressTwoMacs) {
            for ip in &f.addresses {
                if let Some(i) = self.index.find(*ip) {
                    conflict_ips[i].insert(*ip);
                }
            }
        }
        let mut reserved: Vec<HashSet<Ipv4Addr>> = vec![HashSet::new(); subnets.len()];
        for r in &self.reservations {
            if let Some(i) = r.subnet {
                reserved[i].insert(r.ip);
            }
        }
        let mut usage = Vec::new();
        for (i, s) in subnets.iter().enumerate() {
            if !selected[i] {
                continue;
            }
            let size = usable(&s.cidr);
            let used = reserved[i].len()
                + held.addresses[i]
                    .iter()
                    .filter(|ip| !reserved[i].contains(ip))
                    .count();
            usage.push(SubnetUsage {
                name: s.name.clone(),
                cidr: s.cidr,
                known_hosts_only: s.known_hosts_only,
                size,
                reserved: reserved[i].len() as u64,
                leased: held.leased[i],
                free: size.saturating_sub(used as u64),
                quarantined: held.quarantined[i],
                conflicts: conflict_ips[i].len() as u64,
            });
        }
        usage
    }
}

/// `reservation-outside-subnet`: host `h` reserves `ip` under `addresses.<key>`, which
/// `subnet` (the one named `key`, if any) does not contain.
fn outside_subnet(h: &Host, key: &str, ip: Ipv4Addr, subnet: Option<&Subnet>) -> Finding {
    let why = match subnet {
        Some(s) => format!("outside {} ({})", s.name, s.cidr),
        None => format!("on subnet {key:?}, which the inventory does not define"),
    };
    Finding {
        severity: Severity::Critical,
        code: Code::ReservationOutsideSubnet,
        message: format!("host {} reserves {ip} {why}", h.name),
        addresses: vec![ip],
        macs: h.macs.clone(),
        hosts: vec![h.name.clone()],
        action: format!(
            "fix addresses.{key} of host {} in the inventory (an address inside the subnet, outside its dynamic ranges)",
            h.name
        ),
    }
}

/// When each host (inventory index) last took an address: its MACs' newest commit or its
/// name's.
fn host_last_seen(inv: &Inventory, last: &LastSeen) -> HashMap<usize, Timestamp> {
    let mac_seen: HashMap<MacAddr, Timestamp> = last.macs.iter().copied().collect();
    let host_seen: HashMap<&str, Timestamp> =
        last.hosts.iter().map(|(h, t)| (h.as_str(), *t)).collect();
    inv.hosts
        .iter()
        .enumerate()
        .filter_map(|(hi, h)| {
            let t = h
                .macs
                .iter()
                .filter_map(|m| mac_seen.get(m).copied())
                .chain(host_seen.get(h.name.as_str()).copied())
                .max()?;
            Some((hi, t))
        })
        .collect()
}

/// Hosts DHCP never saw, or not lately. Only hosts that can DHCP (a boot MAC).
fn stale_findings(
    inv: &Inventory,
    last_seen: &HashMap<usize, Timestamp>,
    now: Timestamp,
    opts: &Options,
) -> Vec<Finding> {
    let stale =
        jiff::SignedDuration::try_from(opts.stale_after).unwrap_or(jiff::SignedDuration::MAX);
    let cutoff = now.checked_sub(stale).unwrap_or(Timestamp::MIN);
    let mut findings = Vec::new();
    for (hi, h) in inv.hosts.iter().enumerate() {
        if h.macs.is_empty() {
            continue;
        }
        let addrs: Vec<Ipv4Addr> = h.addresses.values().copied().collect();
        match last_seen.get(&hi) {
            None => findings.push(Finding {
                severity: Severity::Info,
                code: Code::HostNeverSeen,
                message: format!(
                    "host {} ({}) has never had a lease",
                    h.name,
                    join(&h.macs)
                ),
                addresses: addrs,
                macs: h.macs.clone(),
                hosts: vec![h.name.clone()],
                action: format!(
                    "if {} is racked, check its cabling and that it PXE-boots (`bootgate power pxe-once {}`); if it is gone, remove it from the inventory",
                    h.name, h.name
                ),
            }),
            Some(t) if *t < cutoff => findings.push(Finding {
                severity: Severity::Warning,
                code: Code::HostNotSeenRecently,
                message: format!(
                    "host {} ({}) last took a lease at {t}, more than {} days ago",
                    h.name,
                    join(&h.macs),
                    opts.stale_after.as_secs() / 86_400
                ),
                addresses: addrs,
                macs: h.macs.clone(),
                hosts: vec![h.name.clone()],
                action: format!(
                    "check whether {} is down or replaced (`bootgate power status {}`); remove it from the inventory if it is gone",
                    h.name, h.name
                ),
            }),
            Some(_) => {}
        }
    }
    findings
}

fn join(macs: &[MacAddr]) -> String {
    macs.iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------
// History

/// Whose history to tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Ip(Ipv4Addr),
    Mac(MacAddr),
    Host(String),
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Ip(ip) => write!(f, "ip {ip}"),
            Subject::Mac(m) => write!(f, "mac {m}"),
            Subject::Host(h) => write!(f, "host {h}"),
        }
    }
}

/// One MAC holding one address, from its first commit to its end (renewals folded in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holding {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub host: Option<String>,
    pub from: Timestamp,
    /// When it ended; `null` while it is still held (as far as the log knows).
    pub until: Option<Timestamp>,
    /// The event that ended it: `lease-released`, `lease-expired`, `lease-declined`, or
    /// `taken-over` when another MAC committed the address without an end in between.
    pub ended_by: Option<String>,
    /// Commits after the first (renewals).
    pub renewals: u32,
    /// Relay and switch port of the newest commit (option 82), when relayed.
    pub giaddr: Option<Ipv4Addr>,
    pub circuit_id: Option<String>,
    pub remote_id: Option<String>,
}

/// One event, in order, with a line an operator can read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub id: i64,
    pub time: Timestamp,
    pub kind: EventKind,
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<MacAddr>,
    pub host: Option<String>,
    pub actor: String,
    pub summary: String,
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub subject: String,
    /// Who held which address, from when to when, oldest first.
    pub holdings: Vec<Holding>,
    /// Every event about the subject, oldest first.
    pub timeline: Vec<Entry>,
    /// How far back the event log reaches: the time of its oldest event (`None` when
    /// empty, or when not asked of the store).
    #[serde(default)]
    pub events_since: Option<Timestamp>,
    /// Whether retention pruned older events (`[events] retain`/`max_rows`): the history
    /// may then start after the subject's first appearance.
    #[serde(default)]
    pub pruned: bool,
}

fn detail_str(d: &serde_json::Value, key: &str) -> Option<String> {
    match d.get(key)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn summary(e: &Event) -> String {
    let d = &e.detail;
    let mac = e.mac.map(|m| m.to_string()).unwrap_or_else(|| "?".into());
    let ip = e.ip.map(|i| i.to_string()).unwrap_or_else(|| "?".into());
    let via = match (detail_str(d, "giaddr"), detail_str(d, "circuit_id")) {
        (Some(g), Some(c)) => format!(" via relay {g} port {c}"),
        (Some(g), None) => format!(" via relay {g}"),
        _ => String::new(),
    };
    match e.kind {
        EventKind::LeaseCommitted => {
            let until = detail_str(d, "ends")
                .map(|t| format!(" until {t}"))
                .unwrap_or_default();
            format!("{mac} took {ip}{until}{via}")
        }
        EventKind::LeaseOffered => format!("{ip} offered to {mac}{via}"),
        EventKind::LeaseReleased => format!("{mac} released {ip}"),
        EventKind::LeaseExpired => format!("{mac}'s lease on {ip} expired"),
        EventKind::LeaseDeclined => format!("{mac} declined {ip} (quarantined)"),
        EventKind::HostStateChanged => match (detail_str(d, "from"), detail_str(d, "to")) {
            (Some(f), Some(t)) => format!("state {f} → {t}"),
            _ => format!("state changed {}", compact(d)),
        },
        EventKind::PowerAction => format!("power {}", compact(d)),
        _ => {
            let c = compact(d);
            if c.is_empty() {
                e.kind.to_string()
            } else {
                format!("{} {c}", e.kind)
            }
        }
    }
}

fn compact(d: &serde_json::Value) -> String {
    match d {
        serde_json::Value::Null => String::new(),
        serde_json::Value::Object(m) => m
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

/// The timeline of `subject` from `events` (any order; duplicates by id are dropped):
/// commits are paired with the release, expiry or decline that ended them, per address
/// and MAC.
pub fn history(subject: &Subject, events: &[Event]) -> History {
    let mut evs: Vec<&Event> = events.iter().collect();
    evs.sort_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id)));
    evs.dedup_by_key(|e| e.id);
    let mut holdings: Vec<Holding> = Vec::new();
    // Open holding per address (index into `holdings`).
    let mut open: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for e in &evs {
        let (Some(ip), Some(mac)) = (e.ip, e.mac) else {
            continue;
        };
        match e.kind {
            EventKind::LeaseCommitted => {
                if let Some(&i) = open.get(&ip) {
                    if holdings[i].mac == mac {
                        let h = &mut holdings[i];
                        h.renewals += 1;
                        h.giaddr = detail_str(&e.detail, "giaddr").and_then(|g| g.parse().ok());
                        h.circuit_id = detail_str(&e.detail, "circuit_id");
                        h.remote_id = detail_str(&e.detail, "remote_id");
                        if h.host.is_none() {
                            h.host = e.host.clone();
                        }
                        continue;
                    }
                    holdings[i].until = Some(e.time);
                    holdings[i].ended_by = Some("taken-over".into());
                }
                open.insert(ip, holdings.len());
                holdings.push(Holding {
                    ip,
                    mac,
                    host: e.host.clone(),
                    from: e.time,
                    until: None,
                    ended_by: None,
                    renewals: 0,
                    giaddr: detail_str(&e.detail, "giaddr").and_then(|g| g.parse().ok()),
                    circuit_id: detail_str(&e.detail, "circuit_id"),
                    remote_id: detail_str(&e.detail, "remote_id"),
                });
            }
            EventKind::LeaseReleased | EventKind::LeaseExpired | EventKind::LeaseDeclined => {
                if let Some(&i) = open.get(&ip)
                    && holdings[i].mac == mac
                {
                    holdings[i].until = Some(e.time);
                    holdings[i].ended_by = Some(e.kind.to_string());
                    open.remove(&ip);
                }
            }
            _ => {}
        }
    }
    History {
        subject: subject.to_string(),
        events_since: None,
        pruned: false,
        holdings,
        timeline: evs
            .iter()
            .map(|e| Entry {
                id: e.id,
                time: e.time,
                kind: e.kind,
                ip: e.ip,
                mac: e.mac,
                host: e.host.clone(),
                actor: e.actor.clone(),
                summary: summary(e),
                detail: e.detail.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
