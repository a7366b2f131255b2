//! Discovered machines (unknown MACs the DHCP server recorded) matched to rack positions
//! through their option-82 switch port, and `bootgate hosts adopt`, which turns one into
//! an inventory host. Matching is pure; adoption edits the inventory with `toml_edit` (so
//! comments and layout survive), validates the result and undoes the edit if it fails.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::manifest::{Manifest, expand_name};
use super::plan::{Allocator, discovered_by_position};
use super::{Origins, RackError, is_dns_label, load_inventory, open_store, read_live};
use crate::config::Config;
use crate::inventory::{Host, Inventory, Purpose, Served, Subnet};
use crate::model::{EventKind, HostRecord, Lease, NewEvent};
use crate::types::{MacAddr, Role};

/// The file `hosts adopt` appends new hosts to.
pub const ADOPTED_FILE: &str = "hosts-adopted.toml";

/// A discovered machine, where it was seen, and the rack position it probably is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Discovered {
    /// The store's name for it (`discovered-<mac hex>`).
    pub name: String,
    pub mac: MacAddr,
    pub first_seen: Option<String>,
    pub last_seen: jiff::Timestamp,
    pub giaddr: Option<Ipv4Addr>,
    pub iface: Option<String>,
    /// Option 82 sub-option 1 (the switch port).
    pub circuit_id: Option<String>,
    /// Option 82 sub-option 2 (the switch).
    pub remote_id: Option<String>,
    /// The address it holds now, if any.
    pub ip: Option<Ipv4Addr>,
    /// The subnet it was seen on.
    pub subnet: Option<String>,
    pub suggestion: Option<Suggestion>,
}

/// The rack position a discovered machine's switch port maps to, and what to do about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suggestion {
    pub rack: String,
    pub position: u32,
    /// The host planned or declared at that position, if any.
    pub host: Option<String>,
    /// `inventory` or the manifest's path.
    pub source: String,
    /// The command that adopts it, when one fits.
    pub command: Option<String>,
    /// One line for the operator.
    pub text: String,
}

fn spec_str(h: &HostRecord, key: &str) -> Option<String> {
    h.spec.get(key).and_then(|v| v.as_str()).map(String::from)
}

/// The subnet a MAC was seen on: its newest lease's, else the one holding the relay's
/// giaddr, else the one served on the arrival interface.
fn seen_subnet<'a>(
    inv: &'a Inventory,
    mac: MacAddr,
    rec: Option<&HostRecord>,
    leases: &[Lease],
) -> Option<&'a Subnet> {
    let by_lease = leases
        .iter()
        .filter(|l| l.mac == mac)
        .max_by_key(|l| l.starts)
        .and_then(|l| inv.subnet(&l.subnet));
    by_lease.or_else(|| {
        let rec = rec?;
        let giaddr = rec
            .spec
            .get("giaddr")
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse::<Ipv4Addr>().ok());
        if let Some(g) = giaddr {
            return inv.subnets.iter().find(|s| s.cidr.contains(&g));
        }
        let iface = spec_str(rec, "iface")?;
        inv.subnets
            .iter()
            .find(|s| matches!(&s.served, Served::Interface(i) if *i == iface))
    })
}

/// Matches each discovered host to a rack position: through the inventory racks'
/// switches, else through `manifest`'s (a rack planned but not written yet).
pub fn match_discovered(
    inv: &Inventory,
    manifest: Option<&Manifest>,
    discovered: &[HostRecord],
    leases: &[Lease],
) -> Vec<Discovered> {
    let from_manifest = manifest
        .map(|m| discovered_by_position(m.rack.switch.as_ref(), discovered))
        .unwrap_or_default();
    // Every MAC seen on each inventory rack position's port: two or more and the port is
    // contested, so no adoption is suggested for any of them.
    let mut on_position: std::collections::HashMap<(String, u32), Vec<MacAddr>> =
        std::collections::HashMap::new();
    for h in discovered {
        let (Some(mac), Some(c)) = (h.macs.first(), spec_str(h, "circuit_id")) else {
            continue;
        };
        if let Some((rack, pos)) = inv.locate(&c, spec_str(h, "remote_id").as_deref()) {
            let macs = on_position.entry((rack.name.clone(), pos)).or_default();
            if !macs.contains(mac) {
                macs.push(*mac);
            }
        }
    }
    let mut out: Vec<Discovered> = discovered
        .iter()
        .filter_map(|h| {
            let mac = *h.macs.first()?;
            let circuit = spec_str(h, "circuit_id");
            let remote = spec_str(h, "remote_id");
            let lease = leases
                .iter()
                .filter(|l| l.mac == mac)
                .max_by_key(|l| l.starts);
            let suggestion = circuit
                .as_deref()
                .and_then(|c| inv.locate(c, remote.as_deref()))
                .map(|(rack, position)| {
                    let seen = on_position
                        .get(&(rack.name.clone(), position))
                        .map_or(&[][..], Vec::as_slice);
                    inventory_suggestion(inv, mac, &rack.name, position, seen)
                })
                .or_else(|| {
                    let m = manifest?;
                    let (position, on) = from_manifest
                        .iter()
                        .find(|(_, s)| s.mac == mac || s.others.contains(&mac))?;
                    let node = m.nodes.iter().find(|n| n.position == *position)?;
                    let name = node
                        .name
                        .clone()
                        .unwrap_or_else(|| expand_name(&m.rack.name_pattern, &m.rack.name, node));
                    if !on.others.is_empty() {
                        return Some(Suggestion {
                            rack: m.rack.name.clone(),
                            position: *position,
                            host: Some(name),
                            source: m.file.display().to_string(),
                            command: None,
                            text: contested(&m.rack.name, *position, &on.all_macs()),
                        });
                    }
                    Some(Suggestion {
                        rack: m.rack.name.clone(),
                        position: *position,
                        host: Some(name.clone()),
                        source: m.file.display().to_string(),
                        command: None,
                        text: format!(
                            "suggested: rack {} position {position} → name {name} (`bootgate rack plan {}` takes its boot MAC)",
                            m.rack.name,
                            m.file.display()
                        ),
                    })
                });
            Some(Discovered {
                name: h.name.clone(),
                mac,
                first_seen: spec_str(h, "first_seen"),
                last_seen: h.updated,
                giaddr: spec_str(h, "giaddr").and_then(|s| s.parse().ok()),
                iface: spec_str(h, "iface"),
                circuit_id: circuit,
                remote_id: remote,
                ip: lease.map(|l| l.ip),
                subnet: seen_subnet(inv, mac, Some(h), leases).map(|s| s.name.clone()),
                suggestion,
            })
        })
        .collect();
    out.sort_by_key(|d| d.mac);
    out
}

/// The text for a position whose switch port more than one MAC claimed.
fn contested(rack: &str, position: u32, macs: &str) -> String {
    format!(
        "contested: rack {rack} position {position}'s switch port was claimed by MACs {macs} (a replaced board, or option 82 forged by another machine): nothing is suggested; check the switch, then adopt the right one by hand"
    )
}

/// What to do with `mac`, discovered on the port of inventory rack `rack` position
/// `position`, where `seen` lists every MAC discovered on that port. A position the
/// inventory holds (its host has a MAC) or that several MACs claim gets no command:
/// discovery never hands a held position to another MAC.
fn inventory_suggestion(
    inv: &Inventory,
    mac: MacAddr,
    rack: &str,
    position: u32,
    seen: &[MacAddr],
) -> Suggestion {
    let host = inv
        .hosts
        .iter()
        .find(|h| h.rack.as_deref() == Some(rack) && h.position == Some(position));
    let rivals = seen.len() > 1 && host.is_none_or(|h| h.macs.is_empty());
    let (command, text) = match host {
        _ if rivals => (
            None,
            contested(
                rack,
                position,
                &seen
                    .iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        ),
        Some(h) if h.macs.is_empty() => (
            Some(format!("bootgate hosts adopt {mac} --as {}", h.name)),
            format!(
                "suggested: rack {rack} position {position} → name {}",
                h.name
            ),
        ),
        Some(h) => (
            None,
            format!(
                "rack {rack} position {position} is {}, declared with MAC {}: not adopted; a replaced board (update its macs by hand) or option 82 forged by another machine",
                h.name,
                h.macs
                    .iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        None => (
            Some(format!(
                "bootgate hosts adopt {mac} --as NAME --rack {rack} --position {position}"
            )),
            format!("suggested: rack {rack} position {position} (no host declared there yet)"),
        ),
    };
    Suggestion {
        rack: rack.to_string(),
        position,
        host: host.map(|h| h.name.clone()),
        source: "inventory".into(),
        command,
        text,
    }
}

/// `bootgate hosts discovered [--manifest FILE]`.
pub async fn discovered_command(
    config: &Config,
    manifest: Option<&Manifest>,
) -> Result<Vec<Discovered>, RackError> {
    let inv = load_inventory(config)?;
    let store = open_store(config, false).await?;
    let live = read_live(store.as_deref()).await?;
    Ok(match_discovered(
        &inv,
        manifest,
        &live.discovered,
        &live.leases,
    ))
}

/// The discovered hosts as a table.
pub fn render_discovered(list: &[Discovered]) -> String {
    if list.is_empty() {
        return "no discovered hosts".into();
    }
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING);
    t.set_header(["MAC", "IP", "SUBNET", "SWITCH PORT", "LAST SEEN", "MATCH"]);
    for d in list {
        let port = match (&d.remote_id, &d.circuit_id) {
            (Some(r), Some(c)) => format!("{r} {c}"),
            (None, Some(c)) => c.clone(),
            _ => "-".into(),
        };
        let mut m = d
            .suggestion
            .as_ref()
            .map_or_else(|| "-".to_string(), |s| s.text.clone());
        if let Some(cmd) = d.suggestion.as_ref().and_then(|s| s.command.as_ref()) {
            m.push_str(&format!("\n  {cmd}"));
        }
        t.add_row([
            d.mac.to_string(),
            d.ip.map_or_else(|| "-".into(), |i| i.to_string()),
            d.subnet.clone().unwrap_or_else(|| "-".into()),
            port,
            d.last_seen.strftime("%Y-%m-%d %H:%M:%S").to_string(),
            m,
        ]);
    }
    t.to_string()
}

/// `bootgate hosts adopt MAC --as NAME …`.
#[derive(Debug, Clone)]
pub struct AdoptRequest {
    pub mac: MacAddr,
    pub name: String,
    pub rack: Option<String>,
    pub position: Option<u32>,
    pub profile: Option<String>,
    pub role: Option<Role>,
}

/// What `hosts adopt` did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Adopted {
    pub name: String,
    pub mac: MacAddr,
    /// The inventory file that changed.
    pub file: PathBuf,
    /// True when the MAC was added to a host already declared (without a MAC).
    pub existing: bool,
    pub rack: Option<String>,
    pub position: Option<u32>,
    pub subnet: Option<String>,
    pub ip: Option<Ipv4Addr>,
}

/// The decision `hosts adopt` makes before touching a file (pure).
#[derive(Debug, Clone, PartialEq)]
pub enum Adoption {
    /// Add the MAC to the host of that name, declared in `file` without a MAC, and an
    /// address on the subnet the MAC was seen on when the host has none there.
    AddMac {
        file: PathBuf,
        address: Option<(String, Ipv4Addr)>,
    },
    /// Append a new host.
    NewHost {
        role: Role,
        rack: Option<String>,
        position: Option<u32>,
        profile: Option<String>,
        subnet: String,
        ip: Ipv4Addr,
    },
}

/// What the site holds that adoption decides over.
pub struct AdoptSite<'a> {
    pub inventory: &'a Inventory,
    pub origins: &'a Origins,
    pub leases: &'a [Lease],
    pub discovered: &'a [HostRecord],
    pub gateway_addresses: &'a [Ipv4Addr],
}

/// Decides how to adopt `req.mac` as `req.name`, or why not.
pub fn decide(req: &AdoptRequest, site: &AdoptSite<'_>) -> Result<Adoption, RackError> {
    let inv = site.inventory;
    for h in &inv.hosts {
        let what = if h.macs.contains(&req.mac) {
            "boot MAC"
        } else if h.bmc.as_ref().and_then(|b| b.mac) == Some(req.mac) {
            "BMC MAC"
        } else {
            continue;
        };
        return Err(RackError::MacTaken {
            mac: req.mac,
            what,
            host: h.name.clone(),
            file: file_of(site.origins, &h.name),
        });
    }
    if let Some(h) = inv.host(&req.name) {
        return decide_add_mac(req, site, h);
    }
    decide_new_host(req, site)
}

/// The inventory file that declares host `name` (empty when unknown).
fn file_of(origins: &Origins, name: &str) -> PathBuf {
    origins
        .host(name)
        .map_or_else(PathBuf::new, Path::to_path_buf)
}

/// `req.name` is declared already: adopt the MAC into it if it has none, with an address
/// on the provisioning subnet the MAC was seen on when it has none there.
fn decide_add_mac(
    req: &AdoptRequest,
    site: &AdoptSite<'_>,
    h: &Host,
) -> Result<Adoption, RackError> {
    let inv = site.inventory;
    let file = file_of(site.origins, &h.name);
    if !h.macs.is_empty() {
        return Err(RackError::NameTaken {
            name: req.name.clone(),
            holder: format!(
                "inventory host in {} with MAC {}",
                file.display(),
                h.macs
                    .iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    if req.rack.is_some() || req.position.is_some() || req.profile.is_some() || req.role.is_some() {
        return Err(RackError::Refused(format!(
            "host {:?} is already declared in {}: --rack, --position, --profile and --role apply only to a new host; edit that file instead",
            req.name,
            file.display()
        )));
    }
    let rec = site.discovered.iter().find(|d| d.macs.contains(&req.mac));
    let address = match seen_subnet(inv, req.mac, rec, site.leases) {
        Some(s) if s.purpose == Purpose::Provisioning && !h.addresses.contains_key(&s.name) => {
            let mut alloc = Allocator::new(inv, site.origins, site.leases, site.gateway_addresses);
            let ip = alloc.next_free(s, None, &req.name).ok_or_else(|| {
                RackError::Refused(format!(
                    "no free address left on subnet {:?} ({}) outside its dynamic ranges",
                    s.name, s.cidr
                ))
            })?;
            Some((s.name.clone(), ip))
        }
        _ => None,
    };
    Ok(Adoption::AddMac { file, address })
}

/// A new host: its rack place, profile and an address on the provisioning subnet the MAC
/// was seen on.
fn decide_new_host(req: &AdoptRequest, site: &AdoptSite<'_>) -> Result<Adoption, RackError> {
    let inv = site.inventory;
    if !is_dns_label(&req.name) {
        return Err(RackError::Refused(format!(
            "{:?} is not a valid host name (a DNS label: lowercase letters, digits, '-')",
            req.name
        )));
    }
    let rec = site.discovered.iter().find(|h| h.macs.contains(&req.mac));
    let (rack, position) = placement(req, site, rec)?;
    let profile = match &req.profile {
        Some(p) if !inv.profiles.iter().any(|x| &x.name == p) => {
            return Err(RackError::Refused(format!(
                "no profile {p:?} in the inventory"
            )));
        }
        Some(p) => Some(p.clone()),
        // The rack's hosts' profile, when they have one.
        None => rack.as_ref().and_then(|r| {
            inv.hosts
                .iter()
                .filter(|h| h.rack.as_ref() == Some(r))
                .find_map(|h| h.profile.clone())
        }),
    };
    let Some(subnet) = seen_subnet(inv, req.mac, rec, site.leases) else {
        return Err(RackError::Refused(format!(
            "MAC {} was never seen by DHCP here (no lease, no discovered record): bootgate cannot tell its subnet; declare it in the inventory by hand",
            req.mac
        )));
    };
    if subnet.purpose != Purpose::Provisioning {
        return Err(RackError::Refused(format!(
            "MAC {} was seen on subnet {:?}, whose purpose is {}, not provisioning: a BMC's MAC belongs in its host's bmc.mac",
            req.mac, subnet.name, subnet.purpose
        )));
    }
    let mut alloc = Allocator::new(inv, site.origins, site.leases, site.gateway_addresses);
    let Some(ip) = alloc.next_free(subnet, None, &req.name) else {
        return Err(RackError::Refused(format!(
            "no free address left on subnet {:?} ({}) outside its dynamic ranges",
            subnet.name, subnet.cidr
        )));
    };
    Ok(Adoption::NewHost {
        role: req.role.unwrap_or(Role::Gpu),
        rack,
        position,
        profile,
        subnet: subnet.name.clone(),
        ip,
    })
}

/// The new host's rack and position: where its switch port says it sits, unless the
/// operator says otherwise; refused when the rack is unknown or the position taken.
fn placement(
    req: &AdoptRequest,
    site: &AdoptSite<'_>,
    rec: Option<&HostRecord>,
) -> Result<(Option<String>, Option<u32>), RackError> {
    let inv = site.inventory;
    let located = rec.and_then(|h| {
        let c = spec_str(h, "circuit_id")?;
        let (rack, pos) = inv.locate(&c, spec_str(h, "remote_id").as_deref())?;
        Some((rack.name.clone(), pos))
    });
    let rack = req
        .rack
        .clone()
        .or_else(|| located.as_ref().map(|l| l.0.clone()));
    let position = req.position.or_else(|| {
        located
            .as_ref()
            .filter(|l| Some(&l.0) == rack.as_ref())
            .map(|l| l.1)
    });
    match (&rack, position) {
        (None, Some(_)) => {
            return Err(RackError::Refused(
                "--position needs --rack (or a switch port that names the rack)".into(),
            ));
        }
        (Some(r), _) if !inv.racks.iter().any(|x| &x.name == r) => {
            return Err(RackError::Refused(format!(
                "no rack named {r:?} in the inventory"
            )));
        }
        (Some(r), Some(p)) => {
            if let Some(h) = inv
                .hosts
                .iter()
                .find(|h| h.rack.as_ref() == Some(r) && h.position == Some(p))
            {
                return Err(RackError::Refused(format!(
                    "rack {r:?} position {p} is already host {:?} ({}); adopt the MAC as that host instead",
                    h.name,
                    file_of(site.origins, &h.name).display()
                )));
            }
        }
        _ => {}
    }
    Ok((rack, position))
}

/// Adopts a MAC: edits the inventory, validates it (undoing the edit if invalid) and
/// records a `host-adopted` event.
pub async fn adopt_command(config: &Config, req: &AdoptRequest) -> Result<Adopted, RackError> {
    let inv = load_inventory(config)?;
    let origins = Origins::scan(&inv);
    let store = open_store(config, true).await?;
    let live = read_live(store.as_deref()).await?;
    let gateways = super::gateway_addresses(config);
    let site = AdoptSite {
        inventory: &inv,
        origins: &origins,
        leases: &live.leases,
        discovered: &live.discovered,
        gateway_addresses: &gateways,
    };
    let decision = decide(req, &site)?;
    let adopted = adopted(config, &inv, req, &decision);
    write_validated(config, &adopted.file, req, &decision)?;
    if let Some(store) = &store {
        let mut ev = NewEvent::new(EventKind::HostAdopted, "cli:hosts-adopt")
            .mac(req.mac)
            .host(&req.name)
            .detail(serde_json::json!({
                "file": adopted.file,
                "existing": adopted.existing,
                "rack": adopted.rack,
                "position": adopted.position,
                "subnet": adopted.subnet,
            }));
        if let Some(ip) = adopted.ip {
            ev = ev.ip(ip);
        }
        store.append(&ev).await?;
    }
    Ok(adopted)
}

/// What `hosts adopt` will report for `decision` (the file it changes included).
fn adopted(config: &Config, inv: &Inventory, req: &AdoptRequest, decision: &Adoption) -> Adopted {
    match decision {
        Adoption::AddMac { file, address } => {
            let h = inv.host(&req.name);
            Adopted {
                name: req.name.clone(),
                mac: req.mac,
                file: file.clone(),
                existing: true,
                rack: h.and_then(|h| h.rack.clone()),
                position: h.and_then(|h| h.position),
                subnet: address.as_ref().map(|a| a.0.clone()),
                ip: address
                    .as_ref()
                    .map(|a| a.1)
                    .or_else(|| h.and_then(|h| inv.provisioning_ip(h))),
            }
        }
        Adoption::NewHost {
            rack,
            position,
            subnet,
            ip,
            ..
        } => Adopted {
            name: req.name.clone(),
            mac: req.mac,
            file: config.inventory_dir.join(ADOPTED_FILE),
            existing: false,
            rack: rack.clone(),
            position: *position,
            subnet: Some(subnet.clone()),
            ip: Some(*ip),
        },
    }
}

/// Applies `decision` to `file`, then loads the inventory again: when it no longer
/// validates, puts the old file back (or removes the new one).
fn write_validated(
    config: &Config,
    file: &Path,
    req: &AdoptRequest,
    decision: &Adoption,
) -> Result<(), RackError> {
    let old = match std::fs::read_to_string(file) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(super::io(file)(e)),
    };
    let new = edit(old.as_deref(), req, decision).map_err(|reason| RackError::Edit {
        path: file.to_path_buf(),
        reason,
    })?;
    replace(file, &new)?;
    if let Err(RackError::Inventory { problems, .. }) = load_inventory(config) {
        match &old {
            Some(text) => replace(file, text)?,
            None => std::fs::remove_file(file).map_err(super::io(file))?,
        }
        return Err(RackError::WrittenInvalid {
            path: file.to_path_buf(),
            problems,
        });
    }
    Ok(())
}

/// Why [`edit`] cannot change the file.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error(transparent)]
    Parse(#[from] toml_edit::TomlError),
    #[error("no [[host]] array of tables")]
    NoHosts,
    #[error("no [[host]] named {0:?}")]
    NoSuchHost(String),
    #[error("`host` is not an array of tables ([[host]])")]
    HostNotArray,
}

/// The file's new text (pure): the MAC added to the named host, or a new `[[host]]`.
pub fn edit(
    old: Option<&str>,
    req: &AdoptRequest,
    decision: &Adoption,
) -> Result<String, EditError> {
    use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, value};
    let header = "# Hosts adopted from discovery with `bootgate hosts adopt`. Review in git.\n";
    let mut doc: DocumentMut = old.unwrap_or(header).parse()?;
    let mut macs = Array::new();
    macs.push(req.mac.to_string());
    match decision {
        Adoption::AddMac { address, .. } => {
            let hosts = doc
                .get_mut("host")
                .and_then(Item::as_array_of_tables_mut)
                .ok_or(EditError::NoHosts)?;
            let host = hosts
                .iter_mut()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(req.name.as_str()))
                .ok_or_else(|| EditError::NoSuchHost(req.name.clone()))?;
            host["macs"] = value(macs);
            if let Some((subnet, ip)) = address {
                match host
                    .get_mut("addresses")
                    .and_then(|a| a.as_inline_table_mut())
                {
                    Some(a) => {
                        a.insert(subnet, ip.to_string().into());
                    }
                    None => {
                        let mut a = InlineTable::new();
                        a.insert(subnet, ip.to_string().into());
                        host["addresses"] = value(a);
                    }
                }
            }
        }
        Adoption::NewHost {
            role,
            rack,
            position,
            profile,
            subnet,
            ip,
        } => {
            let mut t = Table::new();
            t["name"] = value(req.name.as_str());
            t["role"] = value(role.as_str());
            if let Some(r) = rack {
                t["rack"] = value(r.as_str());
            }
            if let Some(p) = position {
                t["position"] = value(i64::from(*p));
            }
            t["macs"] = value(macs);
            if let Some(p) = profile {
                t["profile"] = value(p.as_str());
            }
            let mut a = InlineTable::new();
            a.insert(subnet, ip.to_string().into());
            t["addresses"] = value(a);
            t.decor_mut().set_prefix(format!(
                "\n# adopted {} on {}\n",
                req.mac,
                jiff::Timestamp::now().strftime("%Y-%m-%d")
            ));
            let hosts = doc
                .entry("host")
                .or_insert(Item::ArrayOfTables(ArrayOfTables::new()))
                .as_array_of_tables_mut()
                .ok_or(EditError::HostNotArray)?;
            hosts.push(t);
        }
    }
    Ok(doc.to_string())
}

/// Replaces `path` with `text` atomically (a crash leaves the old or the new file, never
/// half of one). The temporary file does not end in `.toml`, so the loader never reads it.
fn replace(path: &Path, text: &str) -> Result<(), RackError> {
    use std::io::Write;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(super::io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(super::io(&tmp))?;
    f.sync_all().map_err(super::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(super::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HostSource, LeaseState, RelayInfo};
    use crate::rack::test_inventory as inventory;
    use crate::types::HostState;

    fn req(mac: &str, name: &str) -> AdoptRequest {
        AdoptRequest {
            mac: mac.parse().unwrap(),
            name: name.into(),
            rack: None,
            position: None,
            profile: None,
            role: None,
        }
    }

    fn discovered(mac: &str, spec: serde_json::Value) -> HostRecord {
        let now = jiff::Timestamp::now();
        HostRecord {
            name: format!("discovered-{}", mac.replace(':', "")),
            state: HostState::Discovered,
            source: HostSource::Discovered,
            macs: vec![mac.parse().unwrap()],
            ip: None,
            rack: None,
            role: None,
            spec,
            created: now,
            updated: now,
        }
    }

    fn lease(ip: &str, mac: &str, subnet: &str) -> Lease {
        let now = jiff::Timestamp::now();
        Lease {
            ip: ip.parse().unwrap(),
            mac: mac.parse().unwrap(),
            client_id: None,
            state: LeaseState::Active,
            starts: now,
            ends: now,
            host: None,
            subnet: subnet.into(),
            relay: RelayInfo::default(),
        }
    }

    fn decide_in(
        inv: &Inventory,
        o: &Origins,
        r: &AdoptRequest,
        leases: &[Lease],
        disc: &[HostRecord],
    ) -> Result<Adoption, RackError> {
        let gw = ["10.250.0.1".parse().unwrap()];
        decide(
            r,
            &AdoptSite {
                inventory: inv,
                origins: o,
                leases,
                discovered: disc,
                gateway_addresses: &gw,
            },
        )
    }

    #[test]
    fn refuses_a_known_mac_or_a_taken_name() {
        let (inv, o) = inventory("lab");
        let e = decide_in(&inv, &o, &req("52:54:00:d7:8e:1d", "new-one"), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("MAC 52:54:00:d7:8e:1d is already the boot MAC of host \"vm0\""),
            "{e}"
        );
        assert!(e.contains("hosts.toml"), "{e}");
        let e = decide_in(&inv, &o, &req("02:00:00:00:00:01", "vm1"), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("host name \"vm1\" is already taken by inventory host in"),
            "{e}"
        );
        assert!(e.contains("52:54:00:a8:28:2f"), "{e}");
        let e = decide_in(&inv, &o, &req("02:00:00:00:00:01", "Bad_Name"), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid host name"), "{e}");
        let e = decide_in(&inv, &o, &req("02:00:00:00:00:01", "fresh"), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("never seen by DHCP"), "{e}");
    }

    #[test]
    fn a_new_host_gets_the_next_free_address_where_it_was_seen() {
        let (inv, o) = inventory("lab");
        let mac = "02:00:00:00:00:01";
        let leases = [lease("10.250.0.120", mac, "provisioning")];
        let d = decide_in(&inv, &o, &req(mac, "fresh"), &leases, &[]).unwrap();
        assert_eq!(
            d,
            Adoption::NewHost {
                role: Role::Gpu,
                rack: None,
                position: None,
                profile: None,
                subnet: "provisioning".into(),
                ip: "10.250.0.2".parse().unwrap(),
            }
        );
        // Seen only as a discovered record on gw0: same subnet.
        let disc = [discovered(mac, serde_json::json!({"iface": "gw0"}))];
        let mut r = req(mac, "fresh");
        r.rack = Some("lab-r1".into());
        r.position = Some(9);
        match decide_in(&inv, &o, &r, &[], &disc).unwrap() {
            Adoption::NewHost {
                rack,
                position,
                profile,
                subnet,
                ..
            } => {
                assert_eq!(rack.as_deref(), Some("lab-r1"));
                assert_eq!(position, Some(9));
                // The rack's hosts' profile.
                assert_eq!(profile.as_deref(), Some("lab-debian"));
                assert_eq!(subnet, "provisioning");
            }
            other => panic!("{other:?}"),
        }
        r.position = Some(2);
        let e = decide_in(&inv, &o, &r, &[], &disc).unwrap_err().to_string();
        assert!(e.contains("position 2 is already host \"vm1\""), "{e}");
    }

    #[test]
    fn the_switch_port_names_rack_and_position() {
        let (inv, o) = inventory("example");
        let mac = "02:00:0a:99:00:01";
        let disc = [discovered(
            mac,
            serde_json::json!({"circuit_id": "Ethernet1/3", "remote_id": "leaf-r01", "giaddr": "10.20.0.2"}),
        )];
        let list = match_discovered(&inv, None, &disc, &[]);
        let s = list[0].suggestion.as_ref().unwrap();
        assert_eq!((s.rack.as_str(), s.position), ("r01", 3));
        assert_eq!(s.host.as_deref(), Some("gpu-r01-03"));
        assert!(
            s.text
                .contains("rack r01 position 3 is gpu-r01-03, declared with MAC 02:00:0a:01:03:01"),
            "{}",
            s.text
        );
        // A held position gets no command, whatever the switch port says.
        assert_eq!(s.command, None);
        assert_eq!(list[0].subnet.as_deref(), Some("provisioning"));
        let e = decide_in(&inv, &o, &req(mac, "gpu-r01-03b"), &[], &disc)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rack \"r01\" position 3 is already host \"gpu-r01-03\""),
            "{e}"
        );
    }

    #[test]
    fn edits_keep_the_file_and_add_the_host() {
        let old = "# keep me\n[[host]]\nname = \"a\"\nrole = \"gpu\" # and me\n\n[[host]]\nname = \"b\"\nrole = \"gpu\"\nmacs = []\n";
        let r = req("02:00:00:00:00:01", "b");
        let new = edit(
            Some(old),
            &r,
            &Adoption::AddMac {
                file: "x".into(),
                address: Some(("provisioning".into(), "10.0.0.5".parse().unwrap())),
            },
        )
        .unwrap();
        assert!(
            new.starts_with("# keep me\n[[host]]\nname = \"a\"\nrole = \"gpu\" # and me\n"),
            "{new}"
        );
        assert!(new.contains("macs = [\"02:00:00:00:00:01\"]"), "{new}");
        assert!(
            new.contains("addresses = { provisioning = \"10.0.0.5\" }"),
            "{new}"
        );
        let d = Adoption::NewHost {
            role: Role::Gpu,
            rack: Some("r1".into()),
            position: Some(4),
            profile: Some("p".into()),
            subnet: "provisioning".into(),
            ip: "10.0.0.9".parse().unwrap(),
        };
        let new = edit(None, &req("02:00:00:00:00:02", "c"), &d).unwrap();
        let t: toml::Table = new.parse().unwrap();
        let h = &t["host"][0];
        assert_eq!(h["name"].as_str(), Some("c"));
        assert_eq!(h["position"].as_integer(), Some(4));
        assert_eq!(h["macs"][0].as_str(), Some("02:00:00:00:00:02"));
        assert_eq!(h["addresses"]["provisioning"].as_str(), Some("10.0.0.9"));
        assert!(new.contains("# adopted 02:00:00:00:00:02"), "{new}");
    }

    #[test]
    fn a_contested_switch_port_gets_no_adoption_command() {
        let (mut inv, _) = inventory("example");
        // Position 3 declared without a MAC: one discovered MAC would be suggested.
        let h = inv
            .hosts
            .iter_mut()
            .find(|h| h.name == "gpu-r01-03")
            .unwrap();
        h.macs.clear();
        let spec = serde_json::json!({"circuit_id": "Ethernet1/3", "remote_id": "leaf-r01"});
        let one = [discovered("02:00:0a:99:00:01", spec.clone())];
        let list = match_discovered(&inv, None, &one, &[]);
        assert_eq!(
            list[0].suggestion.as_ref().unwrap().command.as_deref(),
            Some("bootgate hosts adopt 02:00:0a:99:00:01 --as gpu-r01-03")
        );
        // A second MAC on the same port: neither is suggested, both are named.
        let two = [one[0].clone(), discovered("02:ee:00:00:00:66", spec)];
        for d in match_discovered(&inv, None, &two, &[]) {
            let s = d.suggestion.unwrap();
            assert_eq!(s.command, None, "{}", s.text);
            assert!(
                s.text.contains("02:00:0a:99:00:01") && s.text.contains("02:ee:00:00:00:66"),
                "{}",
                s.text
            );
        }
    }
}
