//! The validated inventory: what the operators declared in `inventory/*.toml`, as typed
//! values. Built only by `load.rs` after every check passed, so code holding an
//! [`Inventory`] may rely on names being unique and references resolving.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::types::{MacAddr, Role, text_enum};

/// One site: a datacenter (or the test lab) served by one pair of gateways.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inventory {
    pub site: Site,
    pub subnets: Vec<Subnet>,
    pub racks: Vec<Rack>,
    pub profiles: Vec<Profile>,
    pub hosts: Vec<Host>,
    /// The files it was loaded from, sorted (for messages and `check-config`).
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Site {
    pub name: String,
    pub description: Option<String>,
    pub location: Option<String>,
    /// The gateway boxes that serve this site (names of hosts with role `gateway`, or free
    /// names when the gateways are not inventoried as hosts).
    pub gateways: Vec<String>,
    /// CA bundle (PEM) that signs the site's BMC certificates, unless a BMC names its own
    /// (`[site] bmc_ca_file`, made absolute relative to the inventory directory).
    pub bmc_ca_file: Option<PathBuf>,
    /// What the hand-off playbooks configure site-wide (`group_vars/all.yml`).
    pub settings: SiteSettings,
}

/// The site-level settings the Ansible hand-off needs: `[site]`'s `domain`, `ntp_servers`,
/// `[[site.users]]`, `[site.packages]`, `[site.kubernetes]` and `[site.oidc]`. Absent
/// parts take the defaults the playbooks assume (see `handoff::render`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct SiteSettings {
    /// DNS domain of the hosts (`/etc/hosts`, FQDNs).
    pub domain: Option<String>,
    /// chrony servers (host names or addresses).
    pub ntp_servers: Vec<String>,
    /// Operator accounts created on every host.
    pub users: Vec<User>,
    pub packages: Packages,
    pub kubernetes: Kubernetes,
    pub oidc: Option<Oidc>,
}

/// A login account on every host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub name: String,
    /// Public keys for `authorized_keys`, one OpenSSH line each.
    pub ssh_keys: Vec<String>,
    /// Passwordless sudo.
    pub sudo: bool,
}

/// Where the hosts install vendor packages from (`None`: the playbooks' defaults).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Packages {
    pub nvidia_repo_url: Option<String>,
    /// NVIDIA driver branch, e.g. `550`.
    pub nvidia_driver_branch: Option<String>,
    pub nvidia_container_toolkit_repo_url: Option<String>,
    /// DOCA-OFED repository; unset means Debian's rdma-core.
    pub doca_repo_url: Option<String>,
    pub kubernetes_repo_url: Option<String>,
}

/// How the hosts join Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Kubernetes {
    /// kubelet/kubeadm version pinned on the hosts, e.g. `1.31.4`.
    pub version: Option<String>,
    /// The API server the workers join, `host:port`.
    pub api_endpoint: Option<String>,
    /// Taint put on GPU nodes, `key=value:Effect` (default `nvidia.com/gpu=present:NoSchedule`).
    pub gpu_taint: Option<String>,
}

/// kube-apiserver OpenID Connect sign-in (the company's Google accounts) and who gets which
/// RBAC role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Oidc {
    pub client_id: String,
    pub issuer_url: String,
    pub username_claim: String,
    pub groups_claim: String,
    /// E-mail addresses bound to `cluster-admin`.
    pub admins: Vec<String>,
    /// E-mail addresses bound to `view`.
    pub viewers: Vec<String>,
}

text_enum!(
    /// What a subnet carries; decides which hosts' addresses live there.
    Purpose {
        /// PXE boot and the hosts' primary address.
        Provisioning => "provisioning",
        /// BMC (out-of-band management) network.
        Bmc => "bmc",
        /// IP over InfiniBand: addresses are configured by Ansible, not served by DHCP.
        Ipoib => "ipoib",
    }
);

/// How DHCP reaches a subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Served {
    /// Directly attached to one of the gateway's interfaces (by name, e.g. `gw0`).
    Interface(String),
    /// Behind DHCP relays with these `giaddr` addresses (each inside the subnet).
    Relays(Vec<Ipv4Addr>),
    /// Not served by DHCP (e.g. IPoIB, addressed by Ansible).
    NotServed,
}

/// An inclusive range of addresses handed out to clients without a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IpRange {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

impl IpRange {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.start <= ip && ip <= self.end
    }
    /// Number of addresses in the range.
    pub fn len(&self) -> u64 {
        u64::from(u32::from(self.end)) - u64::from(u32::from(self.start)) + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Subnet {
    pub name: String,
    pub cidr: Ipv4Net,
    pub purpose: Purpose,
    /// Option 3 router.
    pub gateway: Option<Ipv4Addr>,
    /// Option 6 DNS servers.
    pub dns: Vec<Ipv4Addr>,
    /// Option 15 domain name.
    pub domain: Option<String>,
    /// Option 51 lease time.
    #[serde(with = "duration_secs")]
    pub lease_time: Duration,
    pub dynamic_ranges: Vec<IpRange>,
    /// When true, only inventory hosts get addresses here (no dynamic pool for strangers).
    pub known_hosts_only: bool,
    /// proxyDHCP: another server assigns addresses; we only tell PXE clients what to boot.
    pub proxy_dhcp: bool,
    pub served: Served,
    pub mtu: Option<u16>,
    /// Option 82 on requests that arrive straight on the served interface (giaddr 0) is
    /// believed: a trusted switch inserts it (RFC 3046 §2.1). Otherwise it is ignored.
    pub trust_option82: bool,
}

impl Subnet {
    pub fn in_dynamic_range(&self, ip: Ipv4Addr) -> bool {
        self.dynamic_ranges.iter().any(|r| r.contains(ip))
    }
}

/// A switch port a rack's hosts hang off, as DHCP option 82 names it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Switch {
    pub name: String,
    /// Option 82 remote-id (sub-option 2) the switch sends, if it sends one.
    pub remote_id: Option<String>,
    /// Option 82 circuit-id (sub-option 1) → rack position (U) of the host on that port.
    pub ports: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rack {
    pub name: String,
    pub location: Option<String>,
    pub switch: Option<Switch>,
}

/// How a host boots: which image, which iPXE template.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    pub name: String,
    pub description: Option<String>,
    /// Image name in `boot-images/images.toml`.
    pub image: Option<String>,
    /// iPXE template in `boot-images/ipxe/` (`discovery`, `install`, `local`, `rescue`).
    pub template: String,
    /// Extra kernel command line.
    pub cmdline: Option<String>,
    /// Firmware-stage boot file for this profile's hosts (default: per architecture).
    pub boot_file: Option<String>,
}

text_enum!(
    /// BMC manufacturer; selects the Redfish quirks.
    BmcVendor {
        Dell => "dell",
        Hpe => "hpe",
        Lenovo => "lenovo",
        Supermicro => "supermicro",
        Nvidia => "nvidia",
        Ami => "ami",
        Generic => "generic",
    }
);

text_enum!(
    /// The Redfish URL scheme of a BMC.
    BmcScheme {
        Https => "https",
        /// Plain HTTP: only emulators and labs (the sushy-emulator) speak it.
        Http => "http",
    }
);

text_enum!(
    /// How bootgate talks to a BMC.
    BmcProtocol {
        Redfish => "redfish",
        Ipmi => "ipmi",
    }
);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bmc {
    pub address: Ipv4Addr,
    /// The BMC's own NIC, for its DHCP reservation on the BMC subnet.
    pub mac: Option<MacAddr>,
    pub vendor: BmcVendor,
    pub protocol: BmcProtocol,
    /// Name of the credential in the secrets file (never the secret itself).
    pub credential: String,
    /// Port (Redfish HTTPS 443 / HTTP 80, IPMI UDP 623 by default).
    pub port: Option<u16>,
    /// Redfish URL scheme (default https).
    pub scheme: BmcScheme,
    /// Redfish system Id or Name, for a BMC that manages several systems.
    pub system: Option<String>,
    /// CA bundle (PEM) for this BMC's certificate, made absolute relative to the inventory
    /// directory; wins over `[site] bmc_ca_file`.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (the operator's explicit choice; warned once per BMC).
    pub insecure: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gpus {
    pub model: String,
    pub count: u32,
    /// An NVSwitch system (HGX): needs `nvidia-fabricmanager`.
    pub nvswitch: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InfiniBand {
    pub hca_count: u32,
    /// Link rate in Gb/s per port (e.g. 400 for NDR).
    pub rate_gbps: u32,
    /// Runs `opensm` for its fabric.
    pub subnet_manager: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Hardware {
    pub gpus: Option<Gpus>,
    pub infiniband: Option<InfiniBand>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Host {
    pub name: String,
    pub role: Role,
    pub rack: Option<String>,
    /// Rack unit.
    pub position: Option<u32>,
    /// Boot NIC MACs (the ones that PXE).
    pub macs: Vec<MacAddr>,
    /// Reserved address per subnet name.
    pub addresses: BTreeMap<String, Ipv4Addr>,
    pub bmc: Option<Bmc>,
    pub hardware: Hardware,
    /// Boot profile name.
    pub profile: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Firmware-stage boot file for this host (wins over the profile's).
    pub boot_file: Option<String>,
}

impl Inventory {
    pub fn subnet(&self, name: &str) -> Option<&Subnet> {
        self.subnets.iter().find(|s| s.name == name)
    }
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }
    /// The host's reserved address on the (first) provisioning subnet.
    pub fn provisioning_ip(&self, host: &Host) -> Option<Ipv4Addr> {
        self.subnets
            .iter()
            .filter(|s| s.purpose == Purpose::Provisioning)
            .find_map(|s| host.addresses.get(&s.name).copied())
    }
}

/// Which NIC of a host a MAC is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicKind {
    /// A boot NIC: its address on a subnet is `host.addresses[subnet]`.
    Boot,
    /// The BMC's NIC: its address is `bmc.address`.
    Bmc,
}

/// MAC → host lookup, built once per inventory generation (the DHCP hot path uses it).
#[derive(Debug, Default, Clone)]
pub struct MacIndex {
    map: std::collections::HashMap<MacAddr, (usize, NicKind)>,
}

impl Inventory {
    pub fn mac_index(&self) -> MacIndex {
        let mut map = std::collections::HashMap::new();
        for (i, h) in self.hosts.iter().enumerate() {
            for m in &h.macs {
                map.insert(*m, (i, NicKind::Boot));
            }
            if let Some(m) = h.bmc.as_ref().and_then(|b| b.mac) {
                map.insert(m, (i, NicKind::Bmc));
            }
        }
        MacIndex { map }
    }

    /// The host whose boot NIC is `mac` (BMC MACs don't count: they don't PXE-boot).
    pub fn host_by_boot_mac(&self, index: &MacIndex, mac: MacAddr) -> Option<&Host> {
        match index.map.get(&mac) {
            Some((i, NicKind::Boot)) => self.hosts.get(*i),
            _ => None,
        }
    }

    /// The host owning `mac`, and its reserved address on `subnet` for that NIC.
    pub fn reservation(
        &self,
        index: &MacIndex,
        mac: MacAddr,
        subnet: &Subnet,
    ) -> Option<(&Host, Option<Ipv4Addr>)> {
        let (i, kind) = *index.map.get(&mac)?;
        let host = self.hosts.get(i)?;
        let ip = match kind {
            NicKind::Boot => host.addresses.get(&subnet.name).copied(),
            NicKind::Bmc => host
                .bmc
                .as_ref()
                .map(|b| b.address)
                .filter(|a| subnet.cidr.contains(a)),
        };
        Some((host, ip))
    }

    /// Where a relayed client sits: the rack whose switch reports `remote_id` (when the
    /// relay sends one) and maps `circuit_id` to a rack position (DHCP option 82).
    pub fn locate(&self, circuit_id: &str, remote_id: Option<&str>) -> Option<(&Rack, u32)> {
        self.racks.iter().find_map(|r| {
            let sw = r.switch.as_ref()?;
            if let (Some(want), Some(have)) = (remote_id, sw.remote_id.as_deref())
                && want != have
            {
                return None;
            }
            sw.ports.get(circuit_id).map(|pos| (r, *pos))
        })
    }

    /// The firmware-stage boot file a host should get instead of the default: its own, else
    /// its profile's.
    pub fn boot_file<'a>(&'a self, host: &'a Host) -> Option<&'a str> {
        host.boot_file
            .as_deref()
            .or_else(|| self.profile(host).and_then(|p| p.boot_file.as_deref()))
    }

    /// The profile a host boots with.
    pub fn profile(&self, host: &Host) -> Option<&Profile> {
        let name = host.profile.as_deref()?;
        self.profiles.iter().find(|p| p.name == name)
    }
}

mod duration_secs {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}
