//! Planning a rack: from a manifest and the current site (inventory, leases, discovered
//! machines) to the inventory entries the rack would add, or every conflict that forbids
//! it. [`plan`] is pure; [`render_toml`] makes the new inventory file's text.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Serialize;

use super::manifest::{Manifest, Node, Origin, expand_name};
use super::{Origins, is_dns_label};
use crate::inventory::{
    Bmc, BmcProtocol, BmcScheme, Hardware, Host, Inventory, Purpose, Rack, Subnet, Switch,
};
use crate::model::{HostRecord, Lease};
use crate::types::{MacAddr, Role};

/// What the site looks like now, as far as planning needs it.
pub struct Site<'a> {
    pub inventory: &'a Inventory,
    /// Which inventory file declares each host and rack (for messages).
    pub origins: &'a Origins,
    /// Leases that hold their address now (offered, active or declined, not ended).
    pub leases: &'a [Lease],
    /// Hosts the DHCP server recorded as `discovered`.
    pub discovered: &'a [HostRecord],
    /// The gateways' own addresses (never handed out).
    pub gateway_addresses: &'a [Ipv4Addr],
}

/// The inventory entries a manifest would add.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub manifest: PathBuf,
    pub rack: Rack,
    pub hosts: Vec<PlannedHost>,
    /// Things the operator should know that do not stop the plan.
    pub notes: Vec<String>,
}

/// One node as it would enter the inventory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedHost {
    pub name: String,
    pub position: u32,
    pub serial: Option<String>,
    /// Where the node is in the manifest.
    pub origin: Origin,
    pub role: Role,
    pub profile: Option<String>,
    pub macs: Vec<MacAddr>,
    /// Where the boot MAC came from when the manifest did not give it.
    pub boot_mac_source: Option<String>,
    /// Reserved address per subnet name.
    pub addresses: BTreeMap<String, Ipv4Addr>,
    pub bmc: Option<Bmc>,
    /// The Ansible groups `bootgate playbook render` would put the host in.
    pub groups: Vec<String>,
}

/// Something in the manifest that collides with the site (or with itself), located in the
/// manifest and, when the other side is in the inventory, there too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub origin: Origin,
    /// The node's position, when the conflict is about one node.
    pub position: Option<u32>,
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.origin)?;
        if let Some(p) = self.position {
            write!(f, "position {p}: ")?;
        }
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Who holds an address already.
#[derive(Debug, Clone)]
enum Holder {
    Host { name: String, what: &'static str },
    Lease { mac: MacAddr, subnet: String },
    Gateway,
    Planned { name: String },
}

/// Addresses that cannot be handed out, and who holds each. Shared by `rack plan` and
/// `hosts adopt`.
pub struct Allocator {
    held: HashMap<Ipv4Addr, Holder>,
    /// Inventory file per host, for messages.
    files: HashMap<String, PathBuf>,
}

impl Allocator {
    pub fn new(
        inv: &Inventory,
        origins: &Origins,
        leases: &[Lease],
        gateway_addresses: &[Ipv4Addr],
    ) -> Self {
        let mut held = HashMap::new();
        for ip in gateway_addresses {
            held.insert(*ip, Holder::Gateway);
        }
        for l in leases {
            held.entry(l.ip).or_insert(Holder::Lease {
                mac: l.mac,
                subnet: l.subnet.clone(),
            });
        }
        // Reservations win over leases in messages: they are what the operator declared.
        for h in &inv.hosts {
            for ip in h.addresses.values() {
                held.insert(
                    *ip,
                    Holder::Host {
                        name: h.name.clone(),
                        what: "address",
                    },
                );
            }
            if let Some(b) = &h.bmc {
                held.entry(b.address).or_insert(Holder::Host {
                    name: h.name.clone(),
                    what: "BMC address",
                });
            }
        }
        let files = inv
            .hosts
            .iter()
            .filter_map(|h| Some((h.name.clone(), origins.host(&h.name)?.to_path_buf())))
            .collect();
        Allocator { held, files }
    }

    fn describe(&self, ip: Ipv4Addr, h: &Holder) -> String {
        match h {
            Holder::Host { name, what } => match self.files.get(name) {
                Some(f) => format!("{ip} is the {what} of host {name:?} ({})", f.display()),
                None => format!("{ip} is the {what} of host {name:?}"),
            },
            Holder::Lease { mac, subnet } => {
                format!("{ip} is leased to {mac} on subnet {subnet:?}")
            }
            Holder::Gateway => format!("{ip} is an address of this gateway"),
            Holder::Planned { name } => format!("{ip} is planned for {name:?} already"),
        }
    }

    /// Why `ip` cannot be given to `mac` (one of `macs`, the node's own NICs) on `subnet`.
    fn why_not(&self, subnet: &Subnet, ip: Ipv4Addr, macs: &[MacAddr]) -> Option<String> {
        if let Some(why) = unusable(subnet, ip) {
            return Some(why);
        }
        match self.held.get(&ip) {
            Some(Holder::Lease { mac, .. }) if macs.contains(mac) => None,
            Some(h) => Some(self.describe(ip, h)),
            None => None,
        }
    }

    fn take(&mut self, ip: Ipv4Addr, name: &str) {
        self.held.insert(
            ip,
            Holder::Planned {
                name: name.to_string(),
            },
        );
    }

    /// The first address at or after `from` (default: the subnet's first host address)
    /// that is usable and held by nobody; taken for `name`.
    pub fn next_free(
        &mut self,
        subnet: &Subnet,
        from: Option<Ipv4Addr>,
        name: &str,
    ) -> Option<Ipv4Addr> {
        let net = subnet.cidr;
        let start = from.map_or(u32::from(net.network()), u32::from);
        let end = u32::from(net.broadcast());
        let ip = (start..=end)
            .map(Ipv4Addr::from)
            .find(|ip| unusable(subnet, *ip).is_none() && !self.held.contains_key(ip))?;
        self.take(ip, name);
        Some(ip)
    }
}

/// Why `ip` can never be a reserved host address on `subnet`.
fn unusable(subnet: &Subnet, ip: Ipv4Addr) -> Option<String> {
    let net = subnet.cidr;
    let name = &subnet.name;
    if !net.contains(&ip) {
        Some(format!("{ip} is outside subnet {name:?} ({net})"))
    } else if net.prefix_len() < 31 && (ip == net.network() || ip == net.broadcast()) {
        Some(format!("{ip} is the network or broadcast address of {net}"))
    } else if subnet.gateway == Some(ip) {
        Some(format!("{ip} is the gateway of subnet {name:?}"))
    } else if subnet.dns.contains(&ip) {
        Some(format!("{ip} is a DNS server of subnet {name:?}"))
    } else if matches!(&subnet.served, crate::inventory::Served::Relays(r) if r.contains(&ip)) {
        Some(format!("{ip} is a DHCP relay of subnet {name:?}"))
    } else if subnet.in_dynamic_range(ip) {
        Some(format!("{ip} is inside a dynamic range of subnet {name:?}"))
    } else {
        None
    }
}

/// The subnets a rack's hosts get addresses on, by purpose: the one `[rack.addressing]`
/// names, else the site's first subnet of that purpose.
fn rack_subnets<'a>(m: &Manifest, inv: &'a Inventory) -> BTreeMap<Purpose, &'a Subnet> {
    let mut out = BTreeMap::new();
    for purpose in [Purpose::Provisioning, Purpose::Bmc, Purpose::Ipoib] {
        let named = m
            .rack
            .addressing
            .keys()
            .filter_map(|n| inv.subnet(n))
            .find(|s| s.purpose == purpose);
        if let Some(s) = named.or_else(|| inv.subnets.iter().find(|s| s.purpose == purpose)) {
            out.insert(purpose, s);
        }
    }
    out
}

/// Plans a manifest against the site: every conflict, or the hosts it would add.
pub fn plan(m: &Manifest, site: &Site<'_>) -> Result<Plan, Vec<Conflict>> {
    let inv = site.inventory;
    let mut p = Planner {
        m,
        site,
        subnets: rack_subnets(m, inv),
        alloc: Allocator::new(inv, site.origins, site.leases, site.gateway_addresses),
        planned_names: HashMap::new(),
        conflicts: Vec::new(),
        notes: Vec::new(),
    };
    p.check_rack();
    let known = Known {
        names: inv.hosts.iter().map(|h| h.name.as_str()).collect(),
        owner: inventory_macs(inv),
        boot: p.boot_macs(),
        manifest: manifest_macs(m),
    };
    p.reserve_explicit();
    let mut hosts: Vec<PlannedHost> = m.nodes.iter().map(|n| p.plan_node(n, &known)).collect();
    if !p.subnets.contains_key(&Purpose::Provisioning) {
        p.notes
            .push("the site has no provisioning subnet: hosts get no boot address".into());
    }
    let rack = Rack {
        name: m.rack.name.clone(),
        location: m.rack.location.clone(),
        switch: m.rack.switch.clone(),
    };
    if p.conflicts.is_empty() {
        p.assign_groups(&rack, &mut hosts);
    }
    let Planner {
        mut conflicts,
        notes,
        ..
    } = p;
    if conflicts.is_empty() {
        Ok(Plan {
            manifest: m.file.clone(),
            rack,
            hosts,
            notes,
        })
    } else {
        // In manifest order, so the operator can walk the file top to bottom.
        conflicts
            .sort_by(|a, b| (&a.origin.file, a.origin.line).cmp(&(&b.origin.file, b.origin.line)));
        Err(conflicts)
    }
}

/// `"name" (file)` when the file is known.
fn in_file(name: &str, file: Option<&std::path::Path>) -> String {
    match file {
        Some(f) => format!("{name:?} ({})", f.display()),
        None => format!("{name:?}"),
    }
}

/// What a node's name and MACs must not collide with.
struct Known<'a> {
    /// Inventory host names.
    names: HashSet<&'a str>,
    /// Inventory MACs: the host and which of its MACs it is.
    owner: HashMap<MacAddr, (String, &'static str)>,
    /// Boot MAC per position: the manifest's, else the discovered one and where it came from.
    boot: HashMap<u32, (MacAddr, Option<String>)>,
    /// The manifest's own boot and BMC MACs, by position.
    manifest: HashMap<MacAddr, u32>,
}

fn inventory_macs(inv: &Inventory) -> HashMap<MacAddr, (String, &'static str)> {
    let mut mac_owner = HashMap::new();
    for h in &inv.hosts {
        for mac in &h.macs {
            mac_owner.insert(*mac, (h.name.clone(), "boot MAC"));
        }
        if let Some(mac) = h.bmc.as_ref().and_then(|b| b.mac) {
            mac_owner.insert(mac, (h.name.clone(), "BMC MAC"));
        }
    }
    mac_owner
}

/// A discovered MAC filled in must not be another node's declared MAC.
fn manifest_macs(m: &Manifest) -> HashMap<MacAddr, u32> {
    let mut manifest_macs = HashMap::new();
    for n in &m.nodes {
        for mac in [n.boot_mac, n.bmc_mac].into_iter().flatten() {
            manifest_macs.insert(mac, n.position);
        }
    }
    manifest_macs
}

/// One planning run: the manifest, the site, the addresses taken so far, and what it
/// found (conflicts and notes in the order found).
struct Planner<'a> {
    m: &'a Manifest,
    site: &'a Site<'a>,
    /// The rack's subnets by purpose.
    subnets: BTreeMap<Purpose, &'a Subnet>,
    alloc: Allocator,
    /// Names planned so far, and where.
    planned_names: HashMap<String, Origin>,
    conflicts: Vec<Conflict>,
    notes: Vec<String>,
}

impl Planner<'_> {
    fn rack_conflict(&mut self, field: &str, reason: String) {
        self.conflicts.push(Conflict {
            origin: self.m.rack.origin.clone(),
            position: None,
            field: field.to_string(),
            reason,
        });
    }

    fn node_conflict(&mut self, n: &Node, field: &str, reason: String) {
        self.conflicts.push(Conflict {
            origin: n.origin.clone(),
            position: Some(n.position),
            field: field.to_string(),
            reason,
        });
    }

    /// The rack itself: its name, its switch, its `[rack.addressing]`.
    fn check_rack(&mut self) {
        let (m, inv, origins) = (self.m, self.site.inventory, self.site.origins);
        let rack_name = &m.rack.name;
        if !is_dns_label(rack_name) {
            self.rack_conflict(
                "rack.name",
                format!("{rack_name:?} is not a DNS label (lowercase letters, digits, '-')"),
            );
        }
        if inv.racks.iter().any(|r| &r.name == rack_name) {
            self.rack_conflict(
                "rack.name",
                format!(
                    "rack {} is already in the inventory",
                    in_file(rack_name, origins.rack(rack_name))
                ),
            );
        }
        if let Some(sw) = &m.rack.switch {
            for r in &inv.racks {
                let Some(other) = &r.switch else { continue };
                if other.name == sw.name {
                    self.rack_conflict(
                        "rack.switch.name",
                        format!(
                            "switch {:?} is already the switch of rack {}",
                            sw.name,
                            in_file(&r.name, origins.rack(&r.name))
                        ),
                    );
                }
                if sw.remote_id.is_some() && sw.remote_id == other.remote_id {
                    self.rack_conflict(
                        "rack.switch.remote_id",
                        format!(
                            "remote-id {:?} is already sent by the switch of rack {}",
                            sw.remote_id.as_deref().unwrap_or_default(),
                            in_file(&r.name, origins.rack(&r.name))
                        ),
                    );
                }
            }
        }
        for (subnet, ip) in &m.rack.addressing {
            match inv.subnet(subnet) {
                None => self.rack_conflict(
                    &format!("rack.addressing.{subnet}"),
                    format!("no subnet named {subnet:?} in the inventory"),
                ),
                Some(s) if !s.cidr.contains(ip) => self.rack_conflict(
                    &format!("rack.addressing.{subnet}"),
                    format!("{ip} is outside subnet {subnet:?} ({})", s.cidr),
                ),
                Some(_) => {}
            }
        }
    }

    /// Boot MACs the manifest lacks, from machines that DHCPed on the rack's switch ports;
    /// a note where the machine on a port disagrees with the manifest. Discovery never
    /// decides a position that is held or contested: a port the inventory's racks already
    /// map (the switch port of a declared position) or a port more than one MAC claimed
    /// (a forged option 82 looks exactly like that) is a conflict naming the MACs, and the
    /// operator gives the MAC in the manifest or adopts one with `bootgate hosts adopt`.
    fn boot_macs(&mut self) -> HashMap<u32, (MacAddr, Option<String>)> {
        let (m, inv) = (self.m, self.site.inventory);
        let mut boot_macs = HashMap::new();
        let held_port = |h: &&HostRecord| {
            let spec = |k: &str| h.spec.get(k).and_then(|v| v.as_str());
            spec("circuit_id").is_some_and(|c| inv.locate(c, spec("remote_id")).is_some())
        };
        let (held, free): (Vec<&HostRecord>, Vec<&HostRecord>) =
            self.site.discovered.iter().partition(held_port);
        let free: Vec<HostRecord> = free.into_iter().cloned().collect();
        let held: Vec<HostRecord> = held.into_iter().cloned().collect();
        let on_port = discovered_by_position(m.rack.switch.as_ref(), &free);
        let on_held = discovered_by_position(m.rack.switch.as_ref(), &held);
        for n in &m.nodes {
            if n.boot_mac.is_none()
                && let Some(seen) = on_held.get(&n.position)
            {
                self.node_conflict(
                    n,
                    "boot_mac",
                    format!(
                        "switch port {} is also a port of a rack in the inventory, so the MAC(s) seen on it ({}) are not taken: give boot_mac in the manifest",
                        seen.port,
                        seen.all_macs()
                    ),
                );
                continue;
            }
            match (n.boot_mac, on_port.get(&n.position)) {
                (None, Some(seen)) if !seen.others.is_empty() => {
                    self.node_conflict(
                        n,
                        "boot_mac",
                        format!(
                            "switch port {} was claimed by more than one MAC ({}): a replaced board, or another machine forging option 82; give boot_mac in the manifest, or `bootgate hosts adopt MAC --as NAME` the right one once the rack is written",
                            seen.port,
                            seen.all_macs()
                        ),
                    );
                }
                (Some(mac), seen) => {
                    if let Some(seen) = seen
                        && seen.mac != mac
                    {
                        self.notes.push(format!(
                            "{}: position {}: the machine on switch port {} DHCPed with MAC {}, but the manifest says {mac}: check the cabling or the sheet",
                            n.origin, n.position, seen.port, seen.mac
                        ));
                    }
                    boot_macs.insert(n.position, (mac, None));
                }
                (None, Some(seen)) => {
                    boot_macs.insert(
                        n.position,
                        (
                            seen.mac,
                            Some(format!(
                                "discovered host {} on switch port {}",
                                seen.host, seen.port
                            )),
                        ),
                    );
                }
                (None, None) => {}
            }
        }
        boot_macs
    }

    /// Explicit addresses first, so allocation never hands one of them to an earlier node.
    fn reserve_explicit(&mut self) {
        let (m, inv) = (self.m, self.site.inventory);
        let mut explicit: HashMap<Ipv4Addr, &Node> = HashMap::new();
        for n in &m.nodes {
            let own: Vec<MacAddr> = [n.boot_mac, n.bmc_mac].into_iter().flatten().collect();
            let fixed = n
                .addresses
                .iter()
                .map(|(s, ip)| (format!("addresses.{s}"), Some(s.as_str()), *ip))
                .chain(
                    n.bmc_address
                        .map(|ip| ("bmc_address".to_string(), None, ip)),
                );
            for (field, subnet, ip) in fixed {
                let subnet = match subnet {
                    Some(name) => match inv.subnet(name) {
                        Some(s) => Some(s),
                        None => {
                            self.node_conflict(
                                n,
                                &field,
                                format!("no subnet named {name:?} in the inventory"),
                            );
                            continue;
                        }
                    },
                    // A BMC address need not be on a served subnet (emulators on loopback).
                    None => inv.subnets.iter().find(|s| s.cidr.contains(&ip)),
                };
                if let Some(first) = explicit.insert(ip, n)
                    && !(subnet.is_none() && field == "bmc_address")
                {
                    self.node_conflict(
                        n,
                        &field,
                        format!(
                            "{ip} is also given to position {} at {}",
                            first.position, first.origin
                        ),
                    );
                }
                if let Some(s) = subnet
                    && let Some(why) = self.alloc.why_not(s, ip, &own)
                {
                    self.node_conflict(n, &field, why);
                }
            }
        }
        for ip in explicit.keys() {
            self.alloc.take(*ip, "an explicit manifest address");
        }
    }

    /// One node as it would enter the inventory, noting its conflicts.
    fn plan_node(&mut self, n: &Node, known: &Known<'_>) -> PlannedHost {
        let m = self.m;
        let name = self.node_name(n, &known.names);
        let (boot_mac, source) = match known.boot.get(&n.position) {
            Some((mac, src)) => (Some(*mac), src.clone()),
            None => (None, None),
        };
        self.check_macs(n, boot_mac, source.is_some(), known);
        if boot_mac.is_none() {
            self.notes.push(format!(
                "{}: position {}: {name} has no boot MAC yet, so no DHCP address: once it DHCPs, `bootgate hosts adopt MAC --as {name}`",
                n.origin, n.position
            ));
        }
        if let Some(src) = &source {
            self.notes.push(format!(
                "{}: position {}: boot MAC {} taken from {src}",
                n.origin,
                n.position,
                boot_mac.map(|m| m.to_string()).unwrap_or_default()
            ));
        }

        let role = n.role.unwrap_or(m.rack.role);
        let profile = n.profile.clone().or_else(|| m.rack.profile.clone());
        let profiles = &self.site.inventory.profiles;
        if let Some(p) = &profile
            && !profiles.iter().any(|x| &x.name == p)
        {
            let known_profiles = profiles
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            self.node_conflict(
                n,
                "profile",
                format!("no profile {p:?} in the inventory (known: {known_profiles})"),
            );
        }

        let addresses = self.node_addresses(n, &name, boot_mac);
        let bmc = plan_bmc(m, n, &name, &self.subnets, &mut self.alloc).unwrap_or_else(|c| {
            self.conflicts.push(c);
            None
        });
        PlannedHost {
            name,
            position: n.position,
            serial: n.serial.clone(),
            origin: n.origin.clone(),
            role,
            profile,
            macs: boot_mac.into_iter().collect(),
            boot_mac_source: source,
            addresses,
            bmc,
            groups: Vec::new(),
        }
    }

    /// The node's host name (given, else from the rack's pattern): a DNS label, not in
    /// the inventory, not planned twice.
    fn node_name(&mut self, n: &Node, taken: &HashSet<&str>) -> String {
        let m = self.m;
        let name = n
            .name
            .clone()
            .unwrap_or_else(|| expand_name(&m.rack.name_pattern, &m.rack.name, n));
        if !is_dns_label(&name) {
            self.node_conflict(
                n,
                "name",
                format!("{name:?} is not a DNS label (lowercase letters, digits, '-')"),
            );
        }
        if taken.contains(name.as_str()) {
            self.node_conflict(
                n,
                "name",
                format!(
                    "host {} is already in the inventory",
                    in_file(&name, self.site.origins.host(&name))
                ),
            );
        }
        if let Some(first) = self.planned_names.insert(name.clone(), n.origin.clone()) {
            self.node_conflict(
                n,
                "name",
                format!("name {name:?} is also planned for {first}"),
            );
        }
        name
    }

    /// The node's boot MAC (`discovered`: filled in from discovery) and BMC MAC are no
    /// inventory host's, and a discovered one is no other node's in the manifest.
    fn check_macs(
        &mut self,
        n: &Node,
        boot_mac: Option<MacAddr>,
        discovered: bool,
        known: &Known<'_>,
    ) {
        for (field, mac) in [("boot_mac", boot_mac), ("bmc_mac", n.bmc_mac)] {
            let Some(mac) = mac else { continue };
            if let Some((owner, what)) = known.owner.get(&mac) {
                self.node_conflict(
                    n,
                    field,
                    format!(
                        "MAC {mac} is already the {what} of host {}",
                        in_file(owner, self.site.origins.host(owner))
                    ),
                );
            }
            if discovered
                && field == "boot_mac"
                && let Some(other) = known.manifest.get(&mac)
                && *other != n.position
            {
                self.node_conflict(
                    n,
                    field,
                    format!("discovered MAC {mac} is the manifest's MAC of position {other}"),
                );
            }
        }
    }

    /// Addresses: explicit ones, then the next free one on each of the rack's subnets.
    fn node_addresses(
        &mut self,
        n: &Node,
        name: &str,
        boot_mac: Option<MacAddr>,
    ) -> BTreeMap<String, Ipv4Addr> {
        let mut addresses = n.addresses.clone();
        for (purpose, subnet) in self.subnets.clone() {
            if purpose == Purpose::Bmc || addresses.contains_key(&subnet.name) {
                continue;
            }
            // The inventory refuses a DHCP-served address without a MAC to serve it to:
            // `hosts adopt` assigns it with the MAC.
            if boot_mac.is_none() && subnet.served != crate::inventory::Served::NotServed {
                continue;
            }
            let from = self.m.rack.addressing.get(&subnet.name).copied();
            match self.alloc.next_free(subnet, from, name) {
                Some(ip) => {
                    addresses.insert(subnet.name.clone(), ip);
                }
                None => self.node_conflict(
                    n,
                    &format!("addresses.{}", subnet.name),
                    format!(
                        "no free address left on subnet {:?} ({}){}",
                        subnet.name,
                        subnet.cidr,
                        from.map(|f| format!(" from {f}")).unwrap_or_default()
                    ),
                ),
            }
        }
        addresses
    }

    /// The Ansible groups, exactly as `bootgate playbook render` would make them.
    fn assign_groups(&mut self, rack: &Rack, hosts: &mut [PlannedHost]) {
        let mut with = self.site.inventory.clone();
        with.racks.push(rack.clone());
        with.hosts
            .extend(hosts.iter().map(|h| h.to_host(&rack.name)));
        match crate::handoff::render(&with, &BTreeMap::new()) {
            Ok(rendered) => {
                for h in hosts {
                    h.groups = rendered
                        .hosts
                        .all
                        .children
                        .iter()
                        .filter(|(_, g)| g.hosts.contains_key(&h.name))
                        .map(|(name, _)| name.clone())
                        .collect();
                }
            }
            Err(e) => self.rack_conflict("-", format!("Ansible groups: {e}")),
        }
    }
}

/// The node's BMC: `[rack.bmc]` defaults plus the node's own fields; its address given, or
/// the next free one on the site's BMC subnet.
fn plan_bmc(
    m: &Manifest,
    n: &Node,
    name: &str,
    subnets: &BTreeMap<Purpose, &Subnet>,
    alloc: &mut Allocator,
) -> Result<Option<Bmc>, Conflict> {
    let has_own = n.bmc_mac.is_some()
        || n.bmc_address.is_some()
        || n.bmc_port.is_some()
        || n.bmc_system.is_some();
    let defaults = match (&m.rack.bmc, has_own) {
        (None, false) => return Ok(None),
        (d, _) => d.clone().unwrap_or_default(),
    };
    let at = |field: &str, reason: String| Conflict {
        origin: n.origin.clone(),
        position: Some(n.position),
        field: field.to_string(),
        reason,
    };
    let Some(vendor) = defaults.vendor else {
        return Err(at(
            "bmc.vendor",
            "no BMC vendor: set [rack.bmc] vendor (or --bmc-vendor for a CSV)".into(),
        ));
    };
    let Some(credential) = defaults.credential else {
        return Err(at(
            "bmc.credential",
            "no BMC credential name: set [rack.bmc] credential (or --bmc-credential for a CSV)"
                .into(),
        ));
    };
    let address = match n.bmc_address {
        Some(ip) => ip,
        None => {
            let Some(subnet) = subnets.get(&Purpose::Bmc) else {
                return Err(at(
                    "bmc_address",
                    "no BMC address given and the site has no subnet with purpose \"bmc\"".into(),
                ));
            };
            let from = m.rack.addressing.get(&subnet.name).copied();
            alloc.next_free(subnet, from, name).ok_or_else(|| {
                at(
                    "bmc_address",
                    format!(
                        "no free address left on subnet {:?} ({})",
                        subnet.name, subnet.cidr
                    ),
                )
            })?
        }
    };
    Ok(Some(Bmc {
        address,
        mac: n.bmc_mac,
        vendor,
        protocol: defaults.protocol.unwrap_or(BmcProtocol::Redfish),
        credential,
        port: n.bmc_port.or(defaults.port),
        scheme: defaults.scheme.unwrap_or(BmcScheme::Https),
        system: n.bmc_system.clone().or(defaults.system),
        ca_file: defaults.ca_file,
        insecure: defaults.insecure,
    }))
}

/// A discovered machine on one of a switch's ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnPort {
    pub host: String,
    pub mac: MacAddr,
    pub port: String,
    /// Other MACs discovered on the same port, sorted. Not empty: the port is contested
    /// (a replaced board, or a machine forging option 82) and discovery decides nothing.
    pub others: Vec<MacAddr>,
}

impl OnPort {
    /// Every MAC seen on the port, the most recent first.
    pub fn all_macs(&self) -> String {
        std::iter::once(&self.mac)
            .chain(&self.others)
            .map(|m| m.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Discovered hosts by the rack position their option-82 circuit-id maps to on `switch`
/// (the remote-id must match when both the switch and the relay have one). The most
/// recently seen machine is `mac`; any other MAC seen on the port is in `others`.
pub fn discovered_by_position(
    switch: Option<&Switch>,
    discovered: &[HostRecord],
) -> HashMap<u32, OnPort> {
    let mut out: HashMap<u32, (OnPort, jiff::Timestamp)> = HashMap::new();
    let Some(sw) = switch else {
        return HashMap::new();
    };
    for h in discovered {
        let Some(mac) = h.macs.first() else { continue };
        let Some(circuit) = h.spec.get("circuit_id").and_then(|v| v.as_str()) else {
            continue;
        };
        let remote = h.spec.get("remote_id").and_then(|v| v.as_str());
        if let (Some(want), Some(have)) = (sw.remote_id.as_deref(), remote)
            && want != have
        {
            continue;
        }
        let Some(pos) = sw.ports.get(circuit) else {
            continue;
        };
        let seen = OnPort {
            host: h.name.clone(),
            mac: *mac,
            port: circuit.to_string(),
            others: Vec::new(),
        };
        match out.get_mut(pos) {
            None => {
                out.insert(*pos, (seen, h.updated));
            }
            Some((old, _)) if old.mac == *mac => {}
            Some((old, t)) if *t >= h.updated => old.others.push(*mac),
            Some((old, t)) => {
                let mut others = std::mem::take(&mut old.others);
                others.push(old.mac);
                *old = OnPort { others, ..seen };
                *t = h.updated;
            }
        }
    }
    out.into_iter()
        .map(|(p, (mut s, _))| {
            s.others.sort();
            s.others.dedup();
            (p, s)
        })
        .collect()
}

impl PlannedHost {
    /// The inventory host this entry becomes.
    pub fn to_host(&self, rack: &str) -> Host {
        Host {
            name: self.name.clone(),
            role: self.role,
            rack: Some(rack.to_string()),
            position: Some(self.position),
            macs: self.macs.clone(),
            addresses: self.addresses.clone(),
            bmc: self.bmc.clone(),
            hardware: Hardware::default(),
            profile: self.profile.clone(),
            labels: BTreeMap::new(),
            boot_file: None,
        }
    }
}

/// A TOML string literal.
fn q(s: &str) -> String {
    toml_edit::Value::from(s).to_string()
}

/// The new inventory file: the `[[rack]]` and its `[[host]]`s in the inventory's own
/// format (one line per field, `addresses` and `bmc` inline), each host preceded by a
/// comment naming its serial and manifest line.
pub fn render_toml(plan: &Plan, manifest_label: &str) -> String {
    let mut out = format!(
        "# Rack {} from {manifest_label}, written by `bootgate rack plan --write`.\n\
         # Review it in git, then `bootgate reload`.\n\n[[rack]]\nname = {}\n",
        plan.rack.name,
        q(&plan.rack.name)
    );
    if let Some(l) = &plan.rack.location {
        out.push_str(&format!("location = {}\n", q(l)));
    }
    if let Some(sw) = &plan.rack.switch {
        out.push_str(&format!("\n[rack.switch]\nname = {}\n", q(&sw.name)));
        if let Some(r) = &sw.remote_id {
            out.push_str(&format!("remote_id = {}\n", q(r)));
        }
        if !sw.ports.is_empty() {
            out.push_str("\n[rack.switch.ports]\n");
            let mut ports: Vec<_> = sw.ports.iter().collect();
            ports.sort_by_key(|(name, pos)| (**pos, (*name).clone()));
            for (port, pos) in ports {
                out.push_str(&format!("{} = {pos}\n", q(port)));
            }
        }
    }
    for h in &plan.hosts {
        out.push('\n');
        let mut comment = format!("# position {}", h.position);
        if let Some(s) = &h.serial {
            comment.push_str(&format!(", serial {s}"));
        }
        comment.push_str(&format!(" ({})", h.origin));
        if let Some(src) = &h.boot_mac_source {
            comment.push_str(&format!("; boot MAC from {src}"));
        }
        out.push_str(&comment);
        out.push_str(&format!(
            "\n[[host]]\nname = {}\nrole = {}\nrack = {}\nposition = {}\n",
            q(&h.name),
            q(h.role.as_str()),
            q(&plan.rack.name),
            h.position
        ));
        let macs: Vec<String> = h.macs.iter().map(|m| q(&m.to_string())).collect();
        out.push_str(&format!("macs = [{}]\n", macs.join(", ")));
        if let Some(p) = &h.profile {
            out.push_str(&format!("profile = {}\n", q(p)));
        }
        if !h.addresses.is_empty() {
            let a: Vec<String> = h
                .addresses
                .iter()
                .map(|(s, ip)| format!("{} = {}", key(s), q(&ip.to_string())))
                .collect();
            out.push_str(&format!("addresses = {{ {} }}\n", a.join(", ")));
        }
        if let Some(b) = &h.bmc {
            out.push_str(&format!("bmc = {{ {} }}\n", bmc_fields(b).join(", ")));
        }
    }
    out
}

/// A TOML key: bare when it can be.
fn key(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        s.to_string()
    } else {
        q(s)
    }
}

fn bmc_fields(b: &Bmc) -> Vec<String> {
    let mut f = vec![format!("address = {}", q(&b.address.to_string()))];
    if let Some(m) = b.mac {
        f.push(format!("mac = {}", q(&m.to_string())));
    }
    if let Some(p) = b.port {
        f.push(format!("port = {p}"));
    }
    if b.scheme != BmcScheme::Https {
        f.push(format!("scheme = {}", q(b.scheme.as_str())));
    }
    if let Some(s) = &b.system {
        f.push(format!("system = {}", q(s)));
    }
    f.push(format!("vendor = {}", q(b.vendor.as_str())));
    f.push(format!("protocol = {}", q(b.protocol.as_str())));
    f.push(format!("credential = {}", q(&b.credential)));
    if let Some(c) = &b.ca_file {
        f.push(format!("ca_file = {}", q(&c.display().to_string())));
    }
    if b.insecure {
        f.push("insecure = true".into());
    }
    f
}

/// The plan as an operator reads it.
pub fn render_text(plan: &Plan) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING);
    let mut header = vec!["POS", "NAME", "ROLE", "PROFILE", "BOOT MAC"];
    let subnet_names: Vec<String> = {
        let mut s: Vec<String> = plan
            .hosts
            .iter()
            .flat_map(|h| h.addresses.keys().cloned())
            .collect();
        s.sort();
        s.dedup();
        s
    };
    let upper: Vec<String> = subnet_names.iter().map(|s| s.to_uppercase()).collect();
    header.extend(upper.iter().map(String::as_str));
    header.extend(["BMC", "GROUPS"]);
    t.set_header(header);
    for h in &plan.hosts {
        let mut row = vec![
            h.position.to_string(),
            h.name.clone(),
            h.role.to_string(),
            h.profile.clone().unwrap_or_else(|| "-".into()),
            h.macs.first().map_or_else(|| "-".into(), |m| m.to_string()),
        ];
        for s in &subnet_names {
            row.push(
                h.addresses
                    .get(s)
                    .map_or_else(|| "-".into(), |ip| ip.to_string()),
            );
        }
        row.push(h.bmc.as_ref().map_or_else(
            || "-".into(),
            |b| {
                let mut s = b.address.to_string();
                if let Some(p) = b.port {
                    s.push_str(&format!(":{p}"));
                }
                if let Some(sys) = &b.system {
                    s.push_str(&format!(" ({sys})"));
                }
                s
            },
        ));
        row.push(h.groups.join(","));
        t.add_row(row);
    }
    let mut out = format!(
        "rack {} ({} hosts) from {}\n{t}\n",
        plan.rack.name,
        plan.hosts.len(),
        plan.manifest.display()
    );
    for n in &plan.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LeaseState, RelayInfo};
    use crate::rack::manifest::{self, CsvRackArgs};
    use crate::rack::test_inventory as inventory;
    use crate::types::HostState;
    use std::path::Path;

    fn lab_manifest() -> Manifest {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("inventory/lab/manifests/lab-r2.toml");
        manifest::read(&path, &CsvRackArgs::default()).unwrap()
    }

    fn run(
        m: &Manifest,
        inv: &Inventory,
        o: &Origins,
        leases: &[Lease],
        disc: &[HostRecord],
    ) -> Result<Plan, Vec<Conflict>> {
        let gw = [Ipv4Addr::new(10, 250, 0, 1)];
        plan(
            m,
            &Site {
                inventory: inv,
                origins: o,
                leases,
                discovered: disc,
                gateway_addresses: &gw,
            },
        )
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn lease(addr: &str, mac: &str) -> Lease {
        let now = jiff::Timestamp::now();
        Lease {
            ip: ip(addr),
            mac: mac.parse().unwrap(),
            client_id: None,
            state: LeaseState::Active,
            starts: now,
            ends: now,
            host: None,
            subnet: "provisioning".into(),
            relay: RelayInfo::default(),
        }
    }

    #[test]
    fn lab_r2_plans_three_vms_from_20() {
        let (inv, o) = inventory("lab");
        let p = run(&lab_manifest(), &inv, &o, &[], &[]).unwrap();
        let names: Vec<_> = p.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["vm4", "vm5", "vm6"]);
        let ips: Vec<_> = p
            .hosts
            .iter()
            .map(|h| h.addresses["provisioning"])
            .collect();
        assert_eq!(
            ips,
            [ip("10.250.0.20"), ip("10.250.0.21"), ip("10.250.0.22")]
        );
        let b = p.hosts[1].bmc.as_ref().unwrap();
        assert_eq!(
            (b.address, b.port, b.system.as_deref()),
            (ip("127.0.0.1"), Some(8000), Some("vm5"))
        );
        assert_eq!(b.scheme, BmcScheme::Http);
        assert_eq!(b.credential, "lab");
        assert_eq!(p.hosts[0].macs[0].to_string(), "52:54:00:08:34:dc");
        assert!(
            p.hosts[0].groups.contains(&"rack_lab_r2".to_string()),
            "{:?}",
            p.hosts[0].groups
        );
        assert!(p.hosts[0].groups.contains(&"kube_workers".to_string()));
        assert!(p.notes.is_empty(), "{:?}", p.notes);
    }

    #[test]
    fn leased_addresses_are_skipped_and_reserved_ones_refused() {
        let (inv, o) = inventory("lab");
        // .20 is leased to a stranger: allocation moves on.
        let p = run(
            &lab_manifest(),
            &inv,
            &o,
            &[lease("10.250.0.20", "02:00:00:00:00:99")],
            &[],
        )
        .unwrap();
        assert_eq!(p.hosts[0].addresses["provisioning"], ip("10.250.0.21"));
        // An explicit address reserved for vm0 and one leased to another MAC.
        let mut m = lab_manifest();
        m.nodes[0]
            .addresses
            .insert("provisioning".into(), ip("10.250.0.10"));
        m.nodes[1]
            .addresses
            .insert("provisioning".into(), ip("10.250.0.30"));
        let c = run(
            &m,
            &inv,
            &o,
            &[lease("10.250.0.30", "02:00:00:00:00:99")],
            &[],
        )
        .unwrap_err();
        let text: Vec<String> = c.iter().map(|c| c.to_string()).collect();
        assert_eq!(c.len(), 2, "{text:#?}");
        assert!(text[0].contains("lab-r2.csv:2: position 1: addresses.provisioning: 10.250.0.10 is the address of host \"vm0\""), "{text:#?}");
        assert!(text[0].contains("hosts.toml"), "{text:#?}");
        assert!(
            text[1].contains("10.250.0.30 is leased to 02:00:00:00:00:99"),
            "{text:#?}"
        );
        // The node's own MAC holding the lease is fine.
        let mut m = lab_manifest();
        m.nodes[0]
            .addresses
            .insert("provisioning".into(), ip("10.250.0.30"));
        run(
            &m,
            &inv,
            &o,
            &[lease("10.250.0.30", "52:54:00:08:34:dc")],
            &[],
        )
        .unwrap();
    }

    #[test]
    fn every_inventory_collision_is_reported_with_both_sides() {
        let (inv, o) = inventory("lab");
        let mut m = lab_manifest();
        m.rack.name = "lab-r1".into();
        m.nodes[0].boot_mac = Some("52:54:00:d7:8e:1d".parse().unwrap()); // vm0's
        m.nodes[1].name = Some("vm1".into());
        m.nodes[2]
            .addresses
            .insert("provisioning".into(), ip("10.250.0.150"));
        let c = run(&m, &inv, &o, &[], &[]).unwrap_err();
        let text: Vec<String> = c.iter().map(|c| c.to_string()).collect();
        assert_eq!(c.len(), 4, "{text:#?}");
        let has = |needle: &str| {
            assert!(
                text.iter().any(|t| t.contains(needle)),
                "{needle}: {text:#?}"
            )
        };
        has("lab-r2.toml:10: rack.name: rack \"lab-r1\" (");
        has("racks.toml) is already in the inventory");
        has(
            "lab-r2.csv:2: position 1: boot_mac: MAC 52:54:00:d7:8e:1d is already the boot MAC of host \"vm0\"",
        );
        has("lab-r2.csv:3: position 2: name: host \"vm1\" (");
        has(
            "lab-r2.csv:4: position 3: addresses.provisioning: 10.250.0.150 is inside a dynamic range",
        );
    }

    #[test]
    fn allocation_skips_dynamic_ranges_gateway_and_network() {
        let (inv, o) = inventory("lab");
        let mut m = lab_manifest();
        m.rack
            .addressing
            .insert("provisioning".into(), ip("10.250.0.249"));
        // .249 and .250 are inside the dynamic range; .251..254 are free.
        let p = run(&m, &inv, &o, &[], &[]).unwrap();
        let ips: Vec<_> = p
            .hosts
            .iter()
            .map(|h| h.addresses["provisioning"])
            .collect();
        assert_eq!(
            ips,
            [ip("10.250.0.251"), ip("10.250.0.252"), ip("10.250.0.253")]
        );
        m.rack
            .addressing
            .insert("provisioning".into(), ip("10.250.0.253"));
        let c = run(&m, &inv, &o, &[], &[]).unwrap_err();
        assert!(
            c[0].to_string()
                .contains("no free address left on subnet \"provisioning\""),
            "{c:?}"
        );
        // Without addressing: from the start of the subnet, skipping the gateway .1.
        m.rack.addressing.clear();
        let p = run(&m, &inv, &o, &[], &[]).unwrap();
        assert_eq!(p.hosts[0].addresses["provisioning"], ip("10.250.0.2"));
    }

    #[test]
    fn a_discovered_machine_on_the_switch_port_fills_a_missing_boot_mac() {
        let (inv, o) = inventory("lab");
        let mut m = lab_manifest();
        m.rack.switch = Some(Switch {
            name: "leaf-lab-r2".into(),
            remote_id: Some("leaf-lab-r2".into()),
            ports: [("swp1".to_string(), 1), ("swp2".to_string(), 2)].into(),
        });
        m.nodes[0].boot_mac = None;
        let now = jiff::Timestamp::now();
        let rec = |mac: &str, port: &str, remote: &str| HostRecord {
            name: format!("discovered-{}", mac.replace(':', "")),
            state: HostState::Discovered,
            source: crate::model::HostSource::Discovered,
            macs: vec![mac.parse().unwrap()],
            ip: None,
            rack: None,
            role: None,
            spec: serde_json::json!({"circuit_id": port, "remote_id": remote}),
            created: now,
            updated: now,
        };
        let disc = [
            rec("02:aa:00:00:00:01", "swp1", "leaf-lab-r2"),
            rec("02:aa:00:00:00:02", "swp2", "leaf-lab-r2"),
            rec("02:aa:00:00:00:03", "swp1", "some-other-leaf"),
        ];
        let p = run(&m, &inv, &o, &[], &disc).unwrap();
        assert_eq!(p.hosts[0].macs[0].to_string(), "02:aa:00:00:00:01");
        assert_eq!(
            p.hosts[0].boot_mac_source.as_deref(),
            Some("discovered host discovered-02aa00000001 on switch port swp1")
        );
        let notes = p.notes.join("\n");
        assert!(
            notes.contains("boot MAC 02:aa:00:00:00:01 taken from discovered host"),
            "{notes}"
        );
        // Position 2's sheet MAC differs from the machine on its port: said, not refused.
        assert!(
            notes.contains(
                "position 2: the machine on switch port swp2 DHCPed with MAC 02:aa:00:00:00:02"
            ),
            "{notes}"
        );
        assert_eq!(p.hosts[1].macs[0].to_string(), "52:54:00:5f:cc:d4");
        // Without a discovered machine the host is planned without a MAC, with a hint.
        let p = run(&m, &inv, &o, &[], &[]).unwrap();
        assert!(p.hosts[0].macs.is_empty());
        assert!(
            p.notes
                .join("\n")
                .contains("bootgate hosts adopt MAC --as vm4")
        );
    }

    #[test]
    fn example_r05_gets_provisioning_bmc_and_ipoib_addresses() {
        let (inv, o) = inventory("example");
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("inventory/example/manifests/r05.toml");
        let m = manifest::read(&path, &CsvRackArgs::default()).unwrap();
        let gw = [];
        let p = plan(
            &m,
            &Site {
                inventory: &inv,
                origins: &o,
                leases: &[],
                discovered: &[],
                gateway_addresses: &gw,
            },
        )
        .unwrap();
        assert_eq!(p.hosts.len(), 16);
        let h = &p.hosts[15];
        assert_eq!(h.name, "gpu-r05-16");
        assert_eq!(h.addresses["provisioning"], ip("10.20.0.56"));
        assert_eq!(h.addresses["ipoib"], ip("10.30.5.26"));
        let b = h.bmc.as_ref().unwrap();
        assert_eq!(b.address, ip("10.21.0.56"));
        assert_eq!(b.mac.unwrap().to_string(), "02:00:0b:05:10:01");
        assert_eq!(b.vendor, crate::inventory::BmcVendor::Dell);
        // The rendered file parses as inventory TOML with the same hosts.
        let text = render_toml(&p, "r05.toml");
        let t: toml::Table = text.parse().unwrap();
        assert_eq!(t["host"].as_array().unwrap().len(), 16);
        assert_eq!(
            t["rack"][0]["switch"]["ports"]["Ethernet1/16"].as_integer(),
            Some(16)
        );
    }

    #[test]
    fn discovery_never_decides_a_contested_or_held_switch_port() {
        let (inv, o) = inventory("lab");
        let mut m = lab_manifest();
        m.rack.switch = Some(Switch {
            name: "leaf-lab-r2".into(),
            remote_id: Some("leaf-lab-r2".into()),
            ports: [("swp1".to_string(), 1), ("swp2".to_string(), 2)].into(),
        });
        m.nodes[0].boot_mac = None;
        let now = jiff::Timestamp::now();
        let rec = |mac: &str, port: &str, at: jiff::Timestamp| HostRecord {
            name: format!("discovered-{}", mac.replace(':', "")),
            state: HostState::Discovered,
            source: crate::model::HostSource::Discovered,
            macs: vec![mac.parse().unwrap()],
            ip: None,
            rack: None,
            role: None,
            spec: serde_json::json!({"circuit_id": port, "remote_id": "leaf-lab-r2"}),
            created: at,
            updated: at,
        };
        // The real machine DHCPed first; a forger claimed its port afterwards.
        let disc = [
            rec(
                "02:aa:00:00:00:01",
                "swp1",
                now - std::time::Duration::from_secs(60),
            ),
            rec("02:ee:00:00:00:66", "swp1", now),
        ];
        let conflicts = run(&m, &inv, &o, &[], &disc).unwrap_err();
        let text = conflicts
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            text.contains(
                "position 1: boot_mac: switch port swp1 was claimed by more than one MAC (02:ee:00:00:00:66, 02:aa:00:00:00:01)"
            ),
            "{text}"
        );
        // The manifest's own MAC settles it.
        m.nodes[0].boot_mac = Some("02:aa:00:00:00:01".parse().unwrap());
        let p = run(&m, &inv, &o, &[], &disc).unwrap();
        assert_eq!(p.hosts[0].macs[0].to_string(), "02:aa:00:00:00:01");

        // A port the inventory's racks already map is never filled from discovery.
        let mut inv = inv;
        inv.racks.push(Rack {
            name: "old".into(),
            location: None,
            switch: Some(Switch {
                name: "leaf-old".into(),
                remote_id: None,
                ports: [("swp2".to_string(), 9)].into(),
            }),
        });
        m.nodes[1].boot_mac = None;
        let disc = [rec("02:ee:00:00:00:77", "swp2", now)];
        let conflicts = run(&m, &inv, &o, &[], &disc).unwrap_err();
        let text = conflicts
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            text.contains("position 2: boot_mac: switch port swp2 is also a port of a rack in the inventory, so the MAC(s) seen on it (02:ee:00:00:00:77) are not taken"),
            "{text}"
        );
    }
}
