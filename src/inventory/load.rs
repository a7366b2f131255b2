//! Loads `inventory/<site>/*.toml` into a validated [`Inventory`]: every file is parsed to a
//! TOML table first and each `[[host]]`, `[[subnet]]`, … deserialized on its own, so a
//! problem names its file, entry and field, and one bad entry does not hide the others.
//! Cross-entry checks (unique names, MACs and addresses; references; address plans) follow.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{
    Bmc, BmcProtocol, BmcScheme, BmcVendor, Gpus, Hardware, Host, InfiniBand, Invalid, Inventory,
    IpRange, Kubernetes, Oidc, Packages, Problem, Profile, Purpose, Rack, Served, Site,
    SiteSettings, Subnet, Switch, User,
};
use crate::diag::{MAX_IFNAME_LEN, deserialize_collecting, lease_time, syntax_problem};
use crate::types::{MacAddr, Role};

/// The daemon's own config may sit in the inventory directory; it is not inventory.
const CONFIG_FILE_NAME: &str = "bootgate.toml";

/// `secrets*.toml` (e.g. the lab's `secrets.example.toml`) holds BMC logins, not inventory.
const SECRETS_FILE_PREFIX: &str = "secrets";

/// Top-level keys an inventory file may hold: `[site]` and arrays of tables for the rest.
const TOP_LEVEL_KEYS: &[&str] = &["site", "subnet", "rack", "profile", "host"];

// ---------------------------------------------------------------------------------------
// Wire format. Field names are what operators type; everything unknown is refused.
// ---------------------------------------------------------------------------------------

/// `[site]`: exactly one across the directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteWire {
    name: String,
    description: Option<String>,
    location: Option<String>,
    #[serde(default)]
    gateways: Vec<String>,
    // Site-wide settings for the Ansible hand-off (group_vars/all.yml).
    domain: Option<String>,
    #[serde(default)]
    ntp_servers: Vec<String>,
    #[serde(default)]
    users: Vec<UserWire>,
    #[serde(default)]
    packages: PackagesWire,
    #[serde(default)]
    kubernetes: KubernetesWire,
    oidc: Option<OidcWire>,
    /// CA bundle (PEM) for the site's BMC certificates, relative to the inventory dir.
    bmc_ca_file: Option<PathBuf>,
}

/// `[[site.users]]`: an operator account on every host.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserWire {
    name: String,
    #[serde(default)]
    ssh_keys: Vec<String>,
    #[serde(default)]
    sudo: bool,
}

/// `[site.packages]`: vendor repositories and the driver branch.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PackagesWire {
    nvidia_repo_url: Option<String>,
    nvidia_driver_branch: Option<String>,
    nvidia_container_toolkit_repo_url: Option<String>,
    doca_repo_url: Option<String>,
    kubernetes_repo_url: Option<String>,
}

/// `[site.kubernetes]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KubernetesWire {
    version: Option<String>,
    api_endpoint: Option<String>,
    gpu_taint: Option<String>,
}

/// `[site.oidc]`: Google sign-in for kube-apiserver.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OidcWire {
    client_id: String,
    #[serde(default = "default_issuer")]
    issuer_url: String,
    #[serde(default = "default_username_claim")]
    username_claim: String,
    #[serde(default = "default_groups_claim")]
    groups_claim: String,
    #[serde(default)]
    admins: Vec<String>,
    #[serde(default)]
    viewers: Vec<String>,
}

fn default_issuer() -> String {
    "https://accounts.google.com".to_string()
}
fn default_username_claim() -> String {
    "email".to_string()
}
fn default_groups_claim() -> String {
    "groups".to_string()
}

/// `[[subnet]]`. Served on `interface` (directly attached) or behind `relay_addresses`
/// (giaddr of each relay); neither means not served by DHCP (required for `ipoib`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubnetWire {
    name: String,
    cidr: Ipv4Net,
    purpose: Purpose,
    gateway: Option<Ipv4Addr>,
    #[serde(default)]
    dns: Vec<Ipv4Addr>,
    domain: Option<String>,
    #[serde(default = "default_lease_time", deserialize_with = "lease_time")]
    lease_time: Duration,
    #[serde(default)]
    dynamic_ranges: Vec<RangeWire>,
    #[serde(default)]
    known_hosts_only: bool,
    /// Another DHCP server hands out addresses here; bootgate answers PXE clients with
    /// boot information only (proxyDHCP).
    #[serde(default)]
    proxy_dhcp: bool,
    interface: Option<String>,
    relay_addresses: Option<Vec<Ipv4Addr>>,
    mtu: Option<u16>,
    /// Believe option 82 on requests arriving directly on `interface` (giaddr 0): a
    /// trusted switch inserts it. Relayed requests are trusted by `relay_addresses`.
    #[serde(default)]
    trust_option82: bool,
}

/// `{ start = "10.250.0.100", end = "10.250.0.250" }`, both inclusive.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeWire {
    start: Ipv4Addr,
    end: Ipv4Addr,
}

/// `[[rack]]`, with its leaf switch when DHCP relays tag requests with option 82.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RackWire {
    name: String,
    location: Option<String>,
    switch: Option<SwitchWire>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchWire {
    name: String,
    remote_id: Option<String>,
    /// Option 82 circuit-id → rack position.
    #[serde(default)]
    ports: BTreeMap<String, u32>,
}

/// `[[profile]]`; `template` defaults to `install`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileWire {
    name: String,
    description: Option<String>,
    image: Option<String>,
    #[serde(default = "default_template")]
    template: String,
    cmdline: Option<String>,
    /// The firmware-stage boot file for hosts of this profile (e.g. `snponly.efi` where
    /// iPXE's own NIC drivers misbehave), instead of the daemon's per-architecture default.
    boot_file: Option<String>,
}

/// `[[host]]`. `addresses` maps a subnet name to the address reserved there.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostWire {
    name: String,
    role: Role,
    rack: Option<String>,
    position: Option<u32>,
    #[serde(default)]
    macs: Vec<MacAddr>,
    profile: Option<String>,
    #[serde(default)]
    addresses: BTreeMap<String, Ipv4Addr>,
    bmc: Option<BmcWire>,
    #[serde(default)]
    hardware: HardwareWire,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Overrides the profile's (and the daemon's) firmware-stage boot file for this host.
    boot_file: Option<String>,
}

/// `bmc = { … }`; `protocol` defaults to `redfish`, the only one most BMCs still need.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BmcWire {
    address: Ipv4Addr,
    mac: Option<MacAddr>,
    vendor: BmcVendor,
    #[serde(default = "default_bmc_protocol")]
    protocol: BmcProtocol,
    credential: String,
    port: Option<u16>,
    /// `https` (default) or `http` (emulators only).
    #[serde(default = "default_bmc_scheme")]
    scheme: BmcScheme,
    /// Redfish system Id or Name when the BMC manages several systems.
    system: Option<String>,
    /// CA bundle (PEM) for this BMC, relative to the inventory dir.
    ca_file: Option<PathBuf>,
    /// Accept any certificate: an explicit, visible choice.
    #[serde(default)]
    insecure: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HardwareWire {
    gpus: Option<GpusWire>,
    infiniband: Option<InfiniBandWire>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GpusWire {
    model: String,
    count: u32,
    /// HGX-style NVSwitch board (the hand-off installs nvidia-fabricmanager).
    #[serde(default)]
    nvswitch: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InfiniBandWire {
    hca_count: u32,
    rate_gbps: u32,
    #[serde(default)]
    subnet_manager: bool,
}

fn default_lease_time() -> Duration {
    Duration::from_secs(12 * 3600)
}

fn default_template() -> String {
    "install".to_string()
}

fn default_bmc_protocol() -> BmcProtocol {
    BmcProtocol::Redfish
}

fn default_bmc_scheme() -> BmcScheme {
    BmcScheme::Https
}

// ---------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------

/// Where an entry was declared, for messages: `hosts.toml` + `host "vm0"`.
#[derive(Debug, Clone)]
struct Loc {
    file: PathBuf,
    entry: String,
}

impl fmt::Display for Loc {
    /// `host "vm0" in hosts.toml` (all files share one directory, so the name suffices).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.file.file_name().unwrap_or(self.file.as_os_str());
        write!(f, "{} in {}", self.entry, Path::new(name).display())
    }
}

/// Raw entries of one kind, in file order, with where each came from.
struct Raw<'a> {
    kind: &'static str,
    entries: Vec<(Loc, &'a toml::Value)>,
}

/// Every problem found so far.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn at(&mut self, loc: &Loc, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            file: loc.file.clone(),
            entry: loc.entry.clone(),
            field: field.into(),
            reason: reason.into(),
        });
    }
    fn file(&mut self, file: &Path, entry: &str, field: &str, reason: impl Into<String>) {
        self.0.push(Problem {
            file: file.to_path_buf(),
            entry: entry.to_string(),
            field: field.to_string(),
            reason: reason.into(),
        });
    }
}

/// Reads every `*.toml` in `dir` (sorted, not recursive, skipping `bootgate.toml` and
/// `secrets*.toml`) and validates the whole inventory. All problems are returned, each
/// naming file, entry and field.
pub fn load_dir(dir: &Path) -> Result<Inventory, Invalid> {
    let mut problems = Problems::default();
    let files = match inventory_files(dir) {
        Ok(files) => files,
        Err(reason) => {
            problems.file(dir, "-", "-", reason);
            return Err(Invalid(problems.0));
        }
    };
    if files.is_empty() {
        problems.file(dir, "-", "-", "no *.toml inventory files in this directory");
        return Err(Invalid(problems.0));
    }

    let tables = read_tables(&files, &mut problems);
    let entries = Entries::sort(&tables, &mut problems);
    let site = match entries.site {
        Some((loc, value)) => site(dir, &loc, value, &mut problems),
        None => {
            // Only worth saying when the files themselves were readable.
            if problems.0.is_empty() {
                problems.file(dir, "site", "-", "no [site] table in any *.toml file");
            }
            None
        }
    };

    let mut v = Validator::new(problems);
    let subnets = v.subnets(&entries.subnets);
    let racks = v.racks(&entries.racks);
    let profiles = v.profiles(&entries.profiles);
    let hosts = v.hosts(dir, &entries.hosts, &subnets, &racks, &profiles);

    match site {
        Some(site) if v.problems.0.is_empty() => Ok(Inventory {
            site,
            subnets: subnets.into_iter().map(|(_, s)| s).collect(),
            racks: racks.into_iter().map(|(_, r)| r).collect(),
            profiles: profiles.into_iter().map(|(_, p)| p).collect(),
            hosts: hosts.into_iter().map(|(_, h)| h).collect(),
            files,
        }),
        _ => Err(Invalid(v.problems.0)),
    }
}

/// Each file read and parsed as TOML; a file that fails is reported and left out.
fn read_tables(files: &[PathBuf], problems: &mut Problems) -> Vec<(PathBuf, toml::Table)> {
    let mut tables = Vec::with_capacity(files.len());
    for file in files {
        match std::fs::read_to_string(file) {
            Err(e) => problems.file(file, "-", "-", format!("cannot read: {e}")),
            Ok(text) => match text.parse::<toml::Table>() {
                Ok(table) => tables.push((file.clone(), table)),
                Err(e) => problems.0.push(syntax_problem(file, &text, &e)),
            },
        }
    }
    tables
}

/// The raw entries of all files, by kind.
struct Entries<'a> {
    site: Option<(Loc, &'a toml::Value)>,
    subnets: Raw<'a>,
    racks: Raw<'a>,
    profiles: Raw<'a>,
    hosts: Raw<'a>,
}

impl<'a> Entries<'a> {
    /// Sorts every top-level key of every file into its kind; unknown keys and a second
    /// `[site]` are reported.
    fn sort(tables: &'a [(PathBuf, toml::Table)], problems: &mut Problems) -> Self {
        let mut e = Entries {
            site: None,
            subnets: Raw::new("subnet"),
            racks: Raw::new("rack"),
            profiles: Raw::new("profile"),
            hosts: Raw::new("host"),
        };
        for (file, table) in tables {
            for (key, value) in table {
                let raw = match key.as_str() {
                    "site" => {
                        e.site_table(file, value, problems);
                        continue;
                    }
                    "subnet" => &mut e.subnets,
                    "rack" => &mut e.racks,
                    "profile" => &mut e.profiles,
                    "host" => &mut e.hosts,
                    _ => {
                        problems.file(
                            file,
                            "-",
                            key,
                            format!(
                                "unknown top-level key, expected one of: {}",
                                TOP_LEVEL_KEYS.join(", ")
                            ),
                        );
                        continue;
                    }
                };
                raw.collect(file, key, value, problems);
            }
        }
        e
    }

    /// The one `[site]` table of the directory.
    fn site_table(&mut self, file: &Path, value: &'a toml::Value, problems: &mut Problems) {
        let loc = Loc {
            file: file.to_path_buf(),
            entry: "site".to_string(),
        };
        if !value.is_table() {
            problems.at(&loc, "-", "expected a single [site] table");
        } else if let Some((first, _)) = &self.site {
            problems.at(
                &loc,
                "-",
                format!(
                    "second [site] table; the site is already defined in {}",
                    first_file(first)
                ),
            );
        } else {
            self.site = Some((loc, value));
        }
    }
}

/// Deserializes and validates `[site]`; its CA file is taken relative to the inventory dir.
fn site(dir: &Path, loc: &Loc, value: &toml::Value, problems: &mut Problems) -> Option<Site> {
    let w = deserialize_entry::<SiteWire>(loc, value, problems)?;
    let settings = site_settings(loc, &w, problems);
    let bmc_ca_file = w.bmc_ca_file.map(|f| {
        let path = dir.join(f);
        if let Some(why) = not_a_file(&path) {
            problems.at(loc, "bmc_ca_file", why);
        }
        path
    });
    Some(Site {
        settings,
        name: w.name,
        description: w.description,
        location: w.location,
        gateways: w.gateways,
        bmc_ca_file,
    })
}

fn first_file(loc: &Loc) -> String {
    loc.file.file_name().map_or_else(
        || loc.file.display().to_string(),
        |n| Path::new(n).display().to_string(),
    )
}

fn inventory_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read directory: {e}"))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read directory: {e}"))?;
        let path = entry.path();
        let is_toml = path.extension().is_some_and(|e| e == "toml");
        let is_config = path.file_name().is_some_and(|n| n == CONFIG_FILE_NAME);
        let is_secrets = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(SECRETS_FILE_PREFIX));
        if is_toml && !is_config && !is_secrets && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

impl<'a> Raw<'a> {
    fn new(kind: &'static str) -> Self {
        Raw {
            kind,
            entries: Vec::new(),
        }
    }

    /// Takes the elements of a `[[kind]]` array, each labelled by its name (or its 1-based
    /// position in the file when it has none).
    fn collect(&mut self, file: &Path, key: &str, value: &'a toml::Value, problems: &mut Problems) {
        let Some(array) = value.as_array() else {
            problems.file(
                file,
                "-",
                key,
                format!("expected an array of tables ([[{key}]])"),
            );
            return;
        };
        for (i, element) in array.iter().enumerate() {
            let entry = match element.get("name").and_then(toml::Value::as_str) {
                Some(name) => format!("{} {name:?}", self.kind),
                None => format!("{} #{}", self.kind, i + 1),
            };
            let loc = Loc {
                file: file.to_path_buf(),
                entry,
            };
            if element.is_table() {
                self.entries.push((loc, element));
            } else {
                problems.at(&loc, "-", format!("expected a table ([[{key}]])"));
            }
        }
    }
}

fn deserialize_entry<T: DeserializeOwned>(
    loc: &Loc,
    value: &toml::Value,
    problems: &mut Problems,
) -> Option<T> {
    match deserialize_collecting::<T>(value) {
        Ok(t) => Some(t),
        Err(errors) => {
            for e in errors {
                problems.at(loc, e.field, e.reason);
            }
            None
        }
    }
}

/// Why `ip` cannot be a host's address on `net`, if it cannot.
fn unusable(net: &Ipv4Net, ip: Ipv4Addr) -> Option<String> {
    if !net.contains(&ip) {
        Some(format!("{ip} is outside {net}"))
    } else if net.prefix_len() < 31 && ip == net.network() {
        Some(format!("{ip} is the network address of {net}"))
    } else if net.prefix_len() < 31 && ip == net.broadcast() {
        Some(format!("{ip} is the broadcast address of {net}"))
    } else {
        None
    }
}

/// A DNS label (RFC 1123 host name part): what the hosts' names become in DHCP option 12,
/// Ansible and Kubernetes.
fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Cross-entry checks over entries that deserialized. Names of entries that did not are
/// remembered, so a broken subnet does not also make every host "reference an unknown
/// subnet".
struct Validator {
    problems: Problems,
    broken_subnets: HashSet<String>,
    broken_racks: HashSet<String>,
    broken_profiles: HashSet<String>,
}

/// Names of the entries that failed to deserialize (to silence follow-on reference errors).
fn broken_names(raw: &Raw<'_>, ok: &[Loc]) -> HashSet<String> {
    raw.entries
        .iter()
        .filter(|(loc, _)| {
            !ok.iter()
                .any(|o| o.file == loc.file && o.entry == loc.entry)
        })
        .filter_map(|(_, v)| v.get("name").and_then(toml::Value::as_str))
        .map(str::to_string)
        .collect()
}

/// Reports a name seen before. Returns true when it is new.
fn unique_name(
    seen: &mut HashMap<String, Loc>,
    name: &str,
    loc: &Loc,
    kind: &str,
    problems: &mut Problems,
) -> bool {
    if let Some(first) = seen.get(name) {
        problems.at(
            loc,
            "name",
            format!("duplicate {kind} name {name:?}; also defined as {first}"),
        );
        false
    } else {
        seen.insert(name.to_string(), loc.clone());
        true
    }
}

impl Validator {
    fn new(problems: Problems) -> Self {
        Validator {
            problems,
            broken_subnets: HashSet::new(),
            broken_racks: HashSet::new(),
            broken_profiles: HashSet::new(),
        }
    }

    fn subnets(&mut self, raw: &Raw<'_>) -> Vec<(Loc, Subnet)> {
        let mut out: Vec<(Loc, Subnet)> = Vec::new();
        let mut seen = HashMap::new();
        for (loc, value) in &raw.entries {
            let Some(w) = deserialize_entry::<SubnetWire>(loc, value, &mut self.problems) else {
                continue;
            };
            if !unique_name(&mut seen, &w.name, loc, "subnet", &mut self.problems) {
                continue;
            }
            out.push((loc.clone(), self.subnet(loc, w)));
        }
        let ok: Vec<Loc> = out.iter().map(|(l, _)| l.clone()).collect();
        self.broken_subnets = broken_names(raw, &ok);

        // Overlapping CIDRs: an address would belong to two subnets. Few subnets: pairwise.
        for (i, (loc, s)) in out.iter().enumerate() {
            if let Some((other_loc, other)) = out[..i].iter().find(|(_, o)| {
                o.cidr.contains(&s.cidr.network()) || s.cidr.contains(&o.cidr.network())
            }) {
                self.problems.at(
                    loc,
                    "cidr",
                    format!(
                        "{} overlaps {} (subnet {:?} {})",
                        s.cidr, other.cidr, other.name, other_loc
                    ),
                );
            }
        }
        out
    }

    fn subnet(&mut self, loc: &Loc, w: SubnetWire) -> Subnet {
        let p = &mut self.problems;
        let net = w.cidr;
        if net.addr() != net.network() {
            p.at(
                loc,
                "cidr",
                format!("{net} has host bits set; the subnet is {}", net.trunc()),
            );
        }
        let net = net.trunc();
        if let Some(gw) = w.gateway
            && let Some(why) = unusable(&net, gw)
        {
            p.at(loc, "gateway", format!("gateway {why}"));
        }
        let ranges = dynamic_ranges(loc, &net, &w.dynamic_ranges, p);
        if let Some(gw) = w.gateway
            && let Some(r) = range_with(&ranges, gw)
        {
            p.at(
                loc,
                "gateway",
                format!("gateway {gw} is inside dynamic range {}-{}", r.start, r.end),
            );
        }
        let served = served(
            loc,
            &net,
            &ranges,
            w.purpose,
            w.interface,
            w.relay_addresses,
            p,
        );
        check_proxy_and_mtu(loc, w.proxy_dhcp, w.mtu, &served, &ranges, p);
        if w.trust_option82 && !matches!(served, Served::Interface(_)) {
            p.at(
                loc,
                "trust_option82",
                "applies to option 82 inserted on a served interface (set interface); relayed requests are trusted through relay_addresses",
            );
        }
        Subnet {
            name: w.name,
            cidr: net,
            purpose: w.purpose,
            gateway: w.gateway,
            dns: w.dns,
            domain: w.domain,
            lease_time: w.lease_time,
            dynamic_ranges: ranges,
            known_hosts_only: w.known_hosts_only,
            proxy_dhcp: w.proxy_dhcp,
            served,
            mtu: w.mtu,
            trust_option82: w.trust_option82,
        }
    }

    fn racks(&mut self, raw: &Raw<'_>) -> Vec<(Loc, Rack)> {
        let mut out: Vec<(Loc, Rack)> = Vec::new();
        let mut seen = HashMap::new();
        let mut remote_ids: HashMap<String, Loc> = HashMap::new();
        for (loc, value) in &raw.entries {
            let Some(w) = deserialize_entry::<RackWire>(loc, value, &mut self.problems) else {
                continue;
            };
            if !unique_name(&mut seen, &w.name, loc, "rack", &mut self.problems) {
                continue;
            }
            let switch = w.switch.map(|s| {
                if let Some(id) = &s.remote_id {
                    // Option 82 remote-id picks the rack; two racks with one id are ambiguous.
                    if let Some(first) = remote_ids.get(id) {
                        self.problems.at(
                            loc,
                            "switch.remote_id",
                            format!("remote_id {id:?} is also the switch of {first}"),
                        );
                    } else {
                        remote_ids.insert(id.clone(), loc.clone());
                    }
                }
                Switch {
                    name: s.name,
                    remote_id: s.remote_id,
                    ports: s.ports,
                }
            });
            out.push((
                loc.clone(),
                Rack {
                    name: w.name,
                    location: w.location,
                    switch,
                },
            ));
        }
        let ok: Vec<Loc> = out.iter().map(|(l, _)| l.clone()).collect();
        self.broken_racks = broken_names(raw, &ok);
        out
    }

    fn profiles(&mut self, raw: &Raw<'_>) -> Vec<(Loc, Profile)> {
        let mut out: Vec<(Loc, Profile)> = Vec::new();
        let mut seen = HashMap::new();
        for (loc, value) in &raw.entries {
            let Some(w) = deserialize_entry::<ProfileWire>(loc, value, &mut self.problems) else {
                continue;
            };
            if !unique_name(&mut seen, &w.name, loc, "profile", &mut self.problems) {
                continue;
            }
            if w.template.is_empty() {
                self.problems.at(loc, "template", "empty template name");
            }
            out.push((
                loc.clone(),
                Profile {
                    name: w.name,
                    description: w.description,
                    image: w.image,
                    template: w.template,
                    cmdline: w.cmdline,
                    boot_file: w.boot_file,
                },
            ));
        }
        let ok: Vec<Loc> = out.iter().map(|(l, _)| l.clone()).collect();
        self.broken_profiles = broken_names(raw, &ok);
        out
    }

    fn hosts(
        &mut self,
        dir: &Path,
        raw: &Raw<'_>,
        subnets: &[(Loc, Subnet)],
        racks: &[(Loc, Rack)],
        profiles: &[(Loc, Profile)],
    ) -> Vec<(Loc, Host)> {
        let known = Known::new(subnets, racks, profiles);
        let mut out: Vec<(Loc, Host)> = Vec::with_capacity(raw.entries.len());
        let mut seen = HashMap::new();
        let mut claims = Claims::default();

        for (loc, value) in &raw.entries {
            let Some(w) = deserialize_entry::<HostWire>(loc, value, &mut self.problems) else {
                continue;
            };
            let p = &mut self.problems;
            if !is_dns_label(&w.name) {
                p.at(
                    loc,
                    "name",
                    format!(
                        "host name {:?} is not a DNS label (1-63 of a-z, 0-9 and '-', not starting or ending with '-')",
                        w.name
                    ),
                );
            }
            if !unique_name(&mut seen, &w.name, loc, "host", p) {
                continue;
            }
            self.host_placement(loc, &w, &known, &mut claims.slots);
            self.host_addresses(loc, &w, &known, &mut claims);
            if let Some(bmc) = &w.bmc {
                claim_bmc(dir, loc, bmc, &known, &mut claims, &mut self.problems);
            }
            out.push((loc.clone(), host(dir, w)));
        }
        out
    }

    /// The host's rack and position (one host per slot) and its profile must exist.
    fn host_placement(
        &mut self,
        loc: &Loc,
        w: &HostWire,
        known: &Known<'_>,
        slots: &mut HashMap<(String, u32), String>,
    ) {
        let p = &mut self.problems;
        let rack_known = w
            .rack
            .as_ref()
            .is_none_or(|r| known.rack_names.contains(r.as_str()));
        match (&w.rack, w.position) {
            // A rack that failed to parse was reported already.
            (Some(rack), _) if !rack_known && !self.broken_racks.contains(rack) => {
                p.at(loc, "rack", format!("no rack named {rack:?}"));
            }
            (Some(_), _) if !rack_known => {}
            (Some(rack), Some(pos)) => match slots.entry((rack.clone(), pos)) {
                Entry::Occupied(first) => p.at(
                    loc,
                    "position",
                    format!(
                        "position {pos} in rack {rack:?} is already taken by {}",
                        first.get()
                    ),
                ),
                Entry::Vacant(slot) => {
                    slot.insert(loc.to_string());
                }
            },
            (None, Some(_)) => p.at(loc, "position", "position given without a rack"),
            _ => {}
        }
        if let Some(profile) = &w.profile
            && !known.profile_names.contains(profile.as_str())
            && !self.broken_profiles.contains(profile)
        {
            p.at(loc, "profile", format!("no profile named {profile:?}"));
        }
    }

    /// The host's MACs (and its BMC's) are its own; each reserved address is on a known
    /// subnet, usable there, nobody else's, and reachable by DHCP when the subnet is served.
    fn host_addresses(&mut self, loc: &Loc, w: &HostWire, known: &Known<'_>, claims: &mut Claims) {
        let p = &mut self.problems;
        for (i, mac) in w.macs.iter().enumerate() {
            let field = format!("macs[{i}]");
            claim_mac(&mut claims.macs, *mac, loc, &field, p);
        }
        if let Some(mac) = w.bmc.as_ref().and_then(|b| b.mac) {
            claim_mac(&mut claims.macs, mac, loc, "bmc.mac", p);
        }

        for (subnet_name, ip) in &w.addresses {
            let field = format!("addresses.{subnet_name}");
            let Some(subnet) = known.subnet_by_name.get(subnet_name.as_str()) else {
                if !self.broken_subnets.contains(subnet_name) {
                    p.at(loc, &field, format!("no subnet named {subnet_name:?}"));
                }
                continue;
            };
            check_reserved(subnet, *ip, loc, &field, p);
            claim_ip(&mut claims.ips, *ip, loc, &field, p);
            if w.macs.is_empty() && subnet.served != Served::NotServed {
                p.at(
                    loc,
                    &field,
                    format!(
                        "the host has no MAC in macs, but needs one to be served by DHCP on subnet {subnet_name:?}"
                    ),
                );
            }
        }
    }
}

/// What the other entries define, as the host checks look it up.
struct Known<'a> {
    subnets: &'a [(Loc, Subnet)],
    subnet_by_name: HashMap<&'a str, &'a Subnet>,
    rack_names: HashSet<&'a str>,
    profile_names: HashSet<&'a str>,
    bmc_subnets: Vec<&'a Subnet>,
}

impl<'a> Known<'a> {
    fn new(
        subnets: &'a [(Loc, Subnet)],
        racks: &'a [(Loc, Rack)],
        profiles: &'a [(Loc, Profile)],
    ) -> Self {
        Known {
            subnets,
            subnet_by_name: subnets.iter().map(|(_, s)| (s.name.as_str(), s)).collect(),
            rack_names: racks.iter().map(|(_, r)| r.name.as_str()).collect(),
            profile_names: profiles.iter().map(|(_, p)| p.name.as_str()).collect(),
            bmc_subnets: subnets
                .iter()
                .map(|(_, s)| s)
                .filter(|s| s.purpose == Purpose::Bmc)
                .collect(),
        }
    }
}

/// Who holds each MAC / reserved IP / rack slot / BMC endpoint so far, described for the
/// message.
#[derive(Default)]
struct Claims {
    macs: HashMap<MacAddr, String>,
    ips: HashMap<Ipv4Addr, String>,
    slots: HashMap<(String, u32), String>,
    /// BMC endpoint → (system, who): hosts may share a BMC (one BMC, several systems)
    /// when each names a different system.
    endpoints: HashMap<(Ipv4Addr, Option<u16>), Vec<SharedBmc>>,
}

/// A host's BMC address lies in a bmc subnet (when there are any) and is usable there; its
/// endpoint is shared with another host only to reach a different system.
fn claim_bmc(
    dir: &Path,
    loc: &Loc,
    bmc: &BmcWire,
    known: &Known<'_>,
    claims: &mut Claims,
    p: &mut Problems,
) {
    let ip = bmc.address;
    let bmc_subnets = &known.bmc_subnets;
    if !bmc_subnets.is_empty() && !bmc_subnets.iter().any(|s| s.cidr.contains(&ip)) {
        let names: Vec<String> = bmc_subnets
            .iter()
            .map(|s| format!("{:?} ({})", s.name, s.cidr))
            .collect();
        p.at(
            loc,
            "bmc.address",
            format!("{ip} is not inside any bmc subnet: {}", names.join(", ")),
        );
    } else if let Some(subnet) = known
        .subnets
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.cidr.contains(&ip))
    {
        check_reserved(subnet, ip, loc, "bmc.address", p);
    }
    // Another port on the same address is another BMC (emulators, port
    // forwards): the address is claimed once, by the first.
    let address_claimed = claims.endpoints.keys().any(|(a, _)| *a == ip);
    let shared = claims.endpoints.entry((ip, bmc.port)).or_default();
    if shared.is_empty() {
        if !address_claimed {
            claim_ip(&mut claims.ips, ip, loc, "bmc.address", p);
        }
    } else if let Some((_, first)) = shared
        .iter()
        .find(|(system, _)| system.is_none() || bmc.system.is_none() || *system == bmc.system)
    {
        let why = match &bmc.system {
            Some(s) if shared.iter().any(|(x, _)| x.as_ref() == Some(s)) => {
                format!("BMC {ip} system {s:?} is already {first}'s")
            }
            _ => format!(
                "duplicate reserved address {ip}; also bmc.address of {first} (hosts may share a BMC only when each names a different bmc.system)"
            ),
        };
        p.at(loc, "bmc.address", why);
    }
    shared.push((bmc.system.clone(), loc.to_string()));
    check_bmc_access(dir, bmc, loc, p);
}

/// `dynamic_ranges`: each range inside the subnet, in order, and not overlapping another.
/// A bad range is still kept, so later ranges keep their indices in messages.
fn dynamic_ranges(loc: &Loc, net: &Ipv4Net, raw: &[RangeWire], p: &mut Problems) -> Vec<IpRange> {
    let mut ranges: Vec<IpRange> = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let field = format!("dynamic_ranges[{i}]");
        let mut ok = true;
        for (end, ip) in [("start", r.start), ("end", r.end)] {
            if let Some(why) = unusable(net, ip) {
                p.at(loc, format!("{field}.{end}"), format!("range {end} {why}"));
                ok = false;
            }
        }
        if r.start > r.end {
            p.at(
                loc,
                &field,
                format!("range start {} is after its end {}", r.start, r.end),
            );
            ok = false;
        }
        let range = IpRange {
            start: r.start,
            end: r.end,
        };
        if ok
            && let Some((j, other)) = ranges
                .iter()
                .enumerate()
                .find(|(_, o)| o.start <= range.end && range.start <= o.end)
        {
            p.at(
                loc,
                &field,
                format!(
                    "range {}-{} overlaps dynamic_ranges[{j}] ({}-{})",
                    range.start, range.end, other.start, other.end
                ),
            );
        }
        ranges.push(range);
    }
    ranges
}

/// The dynamic range holding `ip`, if any.
fn range_with(ranges: &[IpRange], ip: Ipv4Addr) -> Option<&IpRange> {
    ranges.iter().find(|r| r.contains(ip))
}

/// How the subnet is reached by DHCP: on an interface, behind relays, or not at all.
fn served(
    loc: &Loc,
    net: &Ipv4Net,
    ranges: &[IpRange],
    purpose: Purpose,
    interface: Option<String>,
    relays: Option<Vec<Ipv4Addr>>,
    p: &mut Problems,
) -> Served {
    match (purpose, interface, relays) {
        (Purpose::Ipoib, interface, relays) if interface.is_some() || relays.is_some() => {
            let field = if interface.is_some() {
                "interface"
            } else {
                "relay_addresses"
            };
            p.at(
                loc,
                field,
                "ipoib subnets are not served by DHCP (Ansible configures the addresses); remove it",
            );
            Served::NotServed
        }
        (_, Some(_), Some(_)) => {
            p.at(
                loc,
                "relay_addresses",
                "interface and relay_addresses are both set; a subnet is served either on an interface or behind relays",
            );
            Served::NotServed
        }
        (_, Some(name), None) => {
            if name.is_empty() || name.len() > MAX_IFNAME_LEN {
                p.at(
                    loc,
                    "interface",
                    format!(
                        "interface name {name:?} must be 1 to {MAX_IFNAME_LEN} bytes (IFNAMSIZ)"
                    ),
                );
            }
            Served::Interface(name)
        }
        (_, None, Some(relays)) => {
            check_relays(loc, net, ranges, &relays, p);
            Served::Relays(relays)
        }
        (_, None, None) => Served::NotServed,
    }
}

/// `relay_addresses`: at least one, each a usable address of the subnet outside the pool.
fn check_relays(
    loc: &Loc,
    net: &Ipv4Net,
    ranges: &[IpRange],
    relays: &[Ipv4Addr],
    p: &mut Problems,
) {
    if relays.is_empty() {
        p.at(
            loc,
            "relay_addresses",
            "empty: list the relays' giaddr addresses, or drop the key if the subnet is not served",
        );
    }
    for (i, relay) in relays.iter().enumerate() {
        if let Some(why) = unusable(net, *relay) {
            p.at(
                loc,
                format!("relay_addresses[{i}]"),
                format!("relay address {why}"),
            );
        } else if let Some(r) = range_with(ranges, *relay) {
            p.at(
                loc,
                format!("relay_addresses[{i}]"),
                format!(
                    "relay address {relay} is inside dynamic range {}-{}",
                    r.start, r.end
                ),
            );
        }
    }
}

/// A proxyDHCP subnet must be served and hand out no addresses; `mtu` must be legal.
fn check_proxy_and_mtu(
    loc: &Loc,
    proxy_dhcp: bool,
    mtu: Option<u16>,
    served: &Served,
    ranges: &[IpRange],
    p: &mut Problems,
) {
    if proxy_dhcp && *served == Served::NotServed {
        p.at(
            loc,
            "proxy_dhcp",
            "a proxyDHCP subnet must be served: set interface or relay_addresses",
        );
    }
    if proxy_dhcp && !ranges.is_empty() {
        p.at(
            loc,
            "dynamic_ranges",
            "a proxyDHCP subnet hands out no addresses (another server does): remove the ranges",
        );
    }
    if let Some(mtu) = mtu
        && mtu < 68
    {
        // RFC 2132 §5.1: option 26's minimum legal value is 68.
        p.at(
            loc,
            "mtu",
            format!("mtu {mtu} is below 68, the minimum of DHCP option 26"),
        );
    }
}

/// A reserved address must be a usable host address of its subnet and outside the pool
/// handed to strangers (or a stranger could get a reserved host's address).
fn check_reserved(subnet: &Subnet, ip: Ipv4Addr, loc: &Loc, field: &str, p: &mut Problems) {
    if let Some(why) = unusable(&subnet.cidr, ip) {
        p.at(loc, field, format!("{why} (subnet {:?})", subnet.name));
    } else if let Some(r) = subnet.dynamic_ranges.iter().find(|r| r.contains(ip)) {
        p.at(
            loc,
            field,
            format!(
                "{ip} is inside dynamic range {}-{} of subnet {:?}; reserved addresses must lie outside the pool",
                r.start, r.end, subnet.name
            ),
        );
    }
}

fn claim_mac(
    seen: &mut HashMap<MacAddr, String>,
    mac: MacAddr,
    loc: &Loc,
    field: &str,
    p: &mut Problems,
) {
    if let Some(first) = seen.get(&mac) {
        p.at(loc, field, format!("duplicate MAC {mac}; also {first}"));
    } else {
        seen.insert(mac, format!("{field} of {loc}"));
    }
}

fn claim_ip(
    seen: &mut HashMap<Ipv4Addr, String>,
    ip: Ipv4Addr,
    loc: &Loc,
    field: &str,
    p: &mut Problems,
) {
    if let Some(first) = seen.get(&ip) {
        p.at(
            loc,
            field,
            format!("duplicate reserved address {ip}; also {first}"),
        );
    } else {
        seen.insert(ip, format!("{field} of {loc}"));
    }
}

/// One host's use of a BMC endpoint: the system it names and who it is (for messages).
type SharedBmc = (Option<String>, String);

/// The TLS and protocol settings of a BMC must agree: a CA file that exists, `insecure`
/// or `ca_file` (not both), neither for plain HTTP or IPMI, a non-empty system name.
fn check_bmc_access(dir: &Path, bmc: &BmcWire, loc: &Loc, p: &mut Problems) {
    if let Some(f) = &bmc.ca_file
        && let Some(why) = not_a_file(&dir.join(f))
    {
        p.at(loc, "bmc.ca_file", why);
    }
    if bmc.system.as_deref().is_some_and(|s| s.trim().is_empty()) {
        p.at(
            loc,
            "bmc.system",
            "empty; give the Redfish system's Id or Name",
        );
    }
    let tls_set = if bmc.insecure { "insecure" } else { "ca_file" };
    if bmc.protocol == BmcProtocol::Ipmi && (bmc.insecure || bmc.ca_file.is_some()) {
        p.at(
            loc,
            format!("bmc.{tls_set}"),
            "IPMI has no TLS: insecure and ca_file apply only to Redfish over https",
        );
    } else if bmc.scheme == BmcScheme::Http && (bmc.insecure || bmc.ca_file.is_some()) {
        p.at(
            loc,
            format!("bmc.{tls_set}"),
            "scheme = \"http\" has no TLS: insecure and ca_file apply only to https",
        );
    } else if bmc.insecure && bmc.ca_file.is_some() {
        p.at(
            loc,
            "bmc.insecure",
            "insecure = true together with ca_file: choose one (ca_file verifies the certificate against that CA, insecure verifies nothing)",
        );
    }
}

/// Why `path` cannot serve as a CA file, if it cannot.
fn not_a_file(path: &Path) -> Option<String> {
    if path.is_file() {
        None
    } else if path.exists() {
        Some(format!("{} is not a file", path.display()))
    } else {
        Some(format!("{} does not exist", path.display()))
    }
}

fn host(dir: &Path, w: HostWire) -> Host {
    Host {
        name: w.name,
        role: w.role,
        rack: w.rack,
        position: w.position,
        macs: w.macs,
        addresses: w.addresses,
        bmc: w.bmc.map(|b| Bmc {
            address: b.address,
            mac: b.mac,
            vendor: b.vendor,
            protocol: b.protocol,
            credential: b.credential,
            port: b.port,
            scheme: b.scheme,
            system: b.system,
            ca_file: b.ca_file.map(|f| dir.join(f)),
            insecure: b.insecure,
        }),
        hardware: Hardware {
            gpus: w.hardware.gpus.map(|g| Gpus {
                model: g.model,
                count: g.count,
                nvswitch: g.nvswitch,
            }),
            infiniband: w.hardware.infiniband.map(|ib| InfiniBand {
                hca_count: ib.hca_count,
                rate_gbps: ib.rate_gbps,
                subnet_manager: ib.subnet_manager,
            }),
        },
        profile: w.profile,
        labels: w.labels,
        boot_file: w.boot_file,
    }
}

// ---------------------------------------------------------------------------------------
// Site-wide hand-off settings ([site] domain, ntp_servers, users, packages, kubernetes, oidc)
// ---------------------------------------------------------------------------------------

/// Validates the hand-off settings of `[site]`; every problem names its field.
fn site_settings(loc: &Loc, w: &SiteWire, p: &mut Problems) -> SiteSettings {
    if let Some(d) = &w.domain
        && !is_dns_name(d)
    {
        p.at(loc, "domain", format!("{d:?} is not a DNS name"));
    }
    for (i, s) in w.ntp_servers.iter().enumerate() {
        if s.parse::<Ipv4Addr>().is_err() && !is_dns_name(s) {
            p.at(
                loc,
                format!("ntp_servers[{i}]"),
                format!("{s:?} is neither an IPv4 address nor a DNS name"),
            );
        }
    }
    let users = users(loc, &w.users, p);
    let pk = &w.packages;
    check_packages(loc, pk, p);
    let k = &w.kubernetes;
    check_kubernetes(loc, k, p);
    let oidc = w.oidc.as_ref().map(|o| oidc(loc, o, p));

    SiteSettings {
        domain: w.domain.clone(),
        ntp_servers: w.ntp_servers.clone(),
        users,
        packages: Packages {
            nvidia_repo_url: pk.nvidia_repo_url.clone(),
            nvidia_driver_branch: pk.nvidia_driver_branch.clone(),
            nvidia_container_toolkit_repo_url: pk.nvidia_container_toolkit_repo_url.clone(),
            doca_repo_url: pk.doca_repo_url.clone(),
            kubernetes_repo_url: pk.kubernetes_repo_url.clone(),
        },
        kubernetes: Kubernetes {
            version: k.version.clone(),
            api_endpoint: k.api_endpoint.clone(),
            gpu_taint: k.gpu_taint.clone(),
        },
        oidc,
    }
}

/// `[[site.users]]`: Linux user names, unique, with OpenSSH public keys.
fn users(loc: &Loc, raw: &[UserWire], p: &mut Problems) -> Vec<User> {
    let mut users = Vec::with_capacity(raw.len());
    let mut seen: HashSet<&str> = HashSet::new();
    for (i, u) in raw.iter().enumerate() {
        let f = |field: &str| format!("users[{i}].{field}");
        if !is_user_name(&u.name) {
            p.at(
                loc,
                f("name"),
                format!(
                    "{:?} is not a Linux user name (1-32 of a-z, 0-9, '_' and '-', starting with a letter or '_')",
                    u.name
                ),
            );
        } else if !seen.insert(&u.name) {
            p.at(loc, f("name"), format!("duplicate user {:?}", u.name));
        }
        for (k, key) in u.ssh_keys.iter().enumerate() {
            if let Err(why) = check_ssh_public_key(key) {
                p.at(loc, f(&format!("ssh_keys[{k}]")), why);
            }
        }
        users.push(User {
            name: u.name.clone(),
            ssh_keys: u.ssh_keys.clone(),
            sudo: u.sudo,
        });
    }
    users
}

/// `[site.packages]`: repository URLs and the driver branch.
fn check_packages(loc: &Loc, pk: &PackagesWire, p: &mut Problems) {
    for (field, url) in [
        ("packages.nvidia_repo_url", &pk.nvidia_repo_url),
        (
            "packages.nvidia_container_toolkit_repo_url",
            &pk.nvidia_container_toolkit_repo_url,
        ),
        ("packages.doca_repo_url", &pk.doca_repo_url),
        ("packages.kubernetes_repo_url", &pk.kubernetes_repo_url),
    ] {
        if let Some(u) = url
            && !is_http_url(u)
        {
            p.at(
                loc,
                field,
                format!("{u:?}: expected an http:// or https:// URL"),
            );
        }
    }
    if let Some(b) = &pk.nvidia_driver_branch
        && (!(1..=4).contains(&b.len()) || !b.bytes().all(|c| c.is_ascii_digit()))
    {
        p.at(
            loc,
            "packages.nvidia_driver_branch",
            format!("{b:?}: expected a driver branch number like \"550\""),
        );
    }
}

/// `[site.kubernetes]`: version, API endpoint and GPU taint as kubeadm and kubectl take them.
fn check_kubernetes(loc: &Loc, k: &KubernetesWire, p: &mut Problems) {
    if let Some(v) = &k.version
        && !is_version(v)
    {
        p.at(
            loc,
            "kubernetes.version",
            format!("{v:?}: expected MAJOR.MINOR.PATCH like \"1.31.4\" (no leading v)"),
        );
    }
    if let Some(e) = &k.api_endpoint
        && let Err(why) = check_endpoint(e)
    {
        p.at(loc, "kubernetes.api_endpoint", why);
    }
    if let Some(t) = &k.gpu_taint
        && let Err(why) = check_taint(t)
    {
        p.at(loc, "kubernetes.gpu_taint", why);
    }
}

/// `[site.oidc]`: what kube-apiserver accepts (an https issuer, claim names, e-mails).
fn oidc(loc: &Loc, o: &OidcWire, p: &mut Problems) -> Oidc {
    if o.client_id.trim().is_empty() {
        p.at(loc, "oidc.client_id", "empty client id");
    }
    if !o.issuer_url.starts_with("https://") || o.issuer_url.len() <= "https://".len() {
        p.at(
            loc,
            "oidc.issuer_url",
            format!(
                "{:?}: kube-apiserver accepts only an https:// issuer",
                o.issuer_url
            ),
        );
    }
    for (field, claim) in [
        ("oidc.username_claim", &o.username_claim),
        ("oidc.groups_claim", &o.groups_claim),
    ] {
        if claim.is_empty() || claim.contains(char::is_whitespace) {
            p.at(loc, field, format!("{claim:?} is not a claim name"));
        }
    }
    for (list, emails) in [("admins", &o.admins), ("viewers", &o.viewers)] {
        for (i, e) in emails.iter().enumerate() {
            if !is_email(e) {
                p.at(
                    loc,
                    format!("oidc.{list}[{i}]"),
                    format!("{e:?} is not an e-mail address"),
                );
            }
        }
    }
    Oidc {
        client_id: o.client_id.clone(),
        issuer_url: o.issuer_url.clone(),
        username_claim: o.username_claim.clone(),
        groups_claim: o.groups_claim.clone(),
        admins: o.admins.clone(),
        viewers: o.viewers.clone(),
    }
}

/// A dotted DNS name of labels (upper case allowed, as resolvers are case-blind).
fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && !s.is_empty()
        && s.trim_end_matches('.').split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// What `useradd` accepts by default (Debian's NAME_REGEX, without the trailing `$`).
fn is_user_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// `local@domain.tld`: what Google puts in the `email` claim. Not RFC 5322 in full, but
/// rejects the typos that matter (no `@`, spaces, a domain without a dot).
fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && !local.contains(char::is_whitespace)
        && !local.contains(['@', ',', ';', '<', '>', '"'])
        && domain.contains('.')
        && is_dns_name(domain)
}

fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.contains(char::is_whitespace))
}

/// `1.31.4`: three numbers, no `v` (the Debian packages are `1.31.4-1.1`).
fn is_version(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `host:port` with a DNS name or IPv4 address and a port 1-65535.
fn check_endpoint(s: &str) -> Result<(), String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!(
            "{s:?}: expected HOST:PORT like \"cp.example.net:6443\""
        ));
    };
    if host.parse::<Ipv4Addr>().is_err() && !is_dns_name(host) {
        return Err(format!(
            "{s:?}: {host:?} is neither an IPv4 address nor a DNS name"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{s:?}: port {port:?} is not in 1-65535")),
    }
}

/// `key=value:Effect` or `key:Effect`, as `kubectl taint` takes it.
fn check_taint(s: &str) -> Result<(), String> {
    let expected = "expected KEY[=VALUE]:EFFECT like \"nvidia.com/gpu=present:NoSchedule\"";
    let Some((kv, effect)) = s.rsplit_once(':') else {
        return Err(format!("{s:?}: {expected}"));
    };
    if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
        return Err(format!(
            "{s:?}: effect {effect:?} is not NoSchedule, PreferNoSchedule or NoExecute"
        ));
    }
    let key = kv.split_once('=').map_or(kv, |(k, _)| k);
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(format!("{s:?}: {expected}"));
    }
    Ok(())
}

/// One OpenSSH public key line: `TYPE BASE64 [comment]`.
pub(crate) fn check_ssh_public_key(line: &str) -> Result<(), String> {
    const TYPES: &[&str] = &[
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    let mut words = line.split_whitespace();
    let (Some(kind), Some(blob)) = (words.next(), words.next()) else {
        return Err(format!(
            "{line:?}: expected an OpenSSH public key line (TYPE BASE64 [comment])"
        ));
    };
    if !TYPES.contains(&kind) {
        return Err(format!(
            "{line:?}: unknown key type {kind:?}, expected one of: {}",
            TYPES.join(", ")
        ));
    }
    let base64 = blob
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
    if blob.len() < 16 || !base64 {
        return Err(format!("{line:?}: the key is not base64"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::FieldError;

    fn de<T: DeserializeOwned>(src: &str) -> Result<T, Vec<FieldError>> {
        let table: toml::Table = src.parse().unwrap();
        deserialize_collecting::<T>(&toml::Value::Table(table))
    }

    #[test]
    fn collects_every_field_error_in_an_entry() {
        let errs = de::<HostWire>(
            r#"
            name = "a"
            role = "gpux"
            macs = ["52:54:00:00:00:01", "nope", "also-bad"]
            colour = "red"
            bmc = { address = "10.0.0.300", vendor = "dell", credential = "c", shade = 1 }
            "#,
        )
        .unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        // toml tables are sorted maps, so errors come in key order, not file order.
        assert_eq!(
            fields,
            ["bmc.address", "bmc.shade", "colour", "macs[1]", "role"]
        );
        assert!(
            errs[2]
                .reason
                .starts_with("unknown field, expected one of: name, role"),
            "{errs:?}"
        );
        assert!(errs[0].reason.contains("\"10.0.0.300\""), "{errs:?}");
    }

    #[test]
    fn missing_fields_reported_once() {
        let errs = de::<HostWire>(r#"role = 5"#).unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["role", "name"]);
        assert_eq!(errs[1].reason, "missing (required)");
        let errs = de::<HostWire>(
            r#"
            name = "a"
            role = "gpu"
            bmc = { address = "10.0.0.1", vendor = "dell" }
            "#,
        )
        .unwrap_err();
        assert_eq!(
            errs,
            [FieldError {
                field: "bmc.credential".into(),
                reason: "missing (required)".into()
            }]
        );
    }

    #[test]
    fn lease_times() {
        for (src, secs) in [
            ("\"12h\"", 43200),
            ("\"30m\"", 1800),
            ("\"1d\"", 86400),
            ("3600", 3600),
            ("\"PT1H\"", 3600),
        ] {
            let w: SubnetWire = de(&format!(
                "name = \"s\"\ncidr = \"10.0.0.0/24\"\npurpose = \"bmc\"\nlease_time = {src}"
            ))
            .unwrap();
            assert_eq!(w.lease_time, Duration::from_secs(secs), "{src}");
        }
        for src in ["\"1y\"", "0", "-5", "\"soon\"", "\"1.5s\""] {
            let e = de::<SubnetWire>(&format!(
                "name = \"s\"\ncidr = \"10.0.0.0/24\"\npurpose = \"bmc\"\nlease_time = {src}"
            ))
            .unwrap_err();
            assert_eq!(e[0].field, "lease_time", "{src}");
        }
    }

    #[test]
    fn dns_labels() {
        for ok in ["vm0", "gpu-r01-01", "a", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "VM0", "vm_0", "-vm", "vm-", "vm.0", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    /// The hand-off settings of `[site]`: every bad value is reported with its field.
    #[test]
    fn site_settings_are_validated_field_by_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("site.toml"),
            r#"
[site]
name = "t"
domain = "bad domain"
ntp_servers = ["pool.ntp.org", "not a host"]
[[site.users]]
name = "Root"
ssh_keys = ["ssh-dss AAAAB3NzaC1kc3MAAACBAP"]
[[site.users]]
name = "ops"
ssh_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH3mTQzG ops@x"]
[site.packages]
nvidia_repo_url = "ftp://mirror/nvidia"
nvidia_driver_branch = "r550"
[site.kubernetes]
version = "v1.31.4"
api_endpoint = "cp.example.net"
gpu_taint = "nvidia.com/gpu=present:Never"
[site.oidc]
client_id = "1234-abc.apps.googleusercontent.com"
issuer_url = "http://accounts.google.com"
admins = ["alice@example.com", "bob at example.com"]
viewers = ["carol@localhost"]
"#,
        )
        .unwrap();
        let Invalid(problems) = load_dir(dir.path()).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "domain",
                "ntp_servers[1]",
                "users[0].name",
                "users[0].ssh_keys[0]",
                "packages.nvidia_repo_url",
                "packages.nvidia_driver_branch",
                "kubernetes.version",
                "kubernetes.api_endpoint",
                "kubernetes.gpu_taint",
                "oidc.issuer_url",
                "oidc.admins[1]",
                "oidc.viewers[0]",
            ],
            "{problems:#?}"
        );
        assert!(problems.iter().all(|p| p.entry == "site"));
        assert!(problems[10].reason.contains("\"bob at example.com\""));

        // Absent settings are fine; oidc claims default to Google's.
        std::fs::write(
            dir.path().join("site.toml"),
            "[site]\nname = \"t\"\n[site.oidc]\nclient_id = \"x.apps.googleusercontent.com\"\n",
        )
        .unwrap();
        let inv = load_dir(dir.path()).unwrap();
        let oidc = inv.site.settings.oidc.unwrap();
        assert_eq!(oidc.issuer_url, "https://accounts.google.com");
        assert_eq!(
            (oidc.username_claim.as_str(), oidc.groups_claim.as_str()),
            ("email", "groups")
        );
    }
}
