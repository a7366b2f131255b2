//! Inventory and daemon-config loading: the shipped examples load cleanly, and every
//! validation check reports the file, entry and field an operator has to fix.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use bootgate::config::{Config, check_inventory};
use bootgate::inventory::load::load_dir;
use bootgate::inventory::{BmcScheme, Inventory, Problem, Purpose, Served};
use bootgate::store::StoreUrl;
use bootgate::types::{MacAddr, Role};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn load_ok(dir: &Path) -> Inventory {
    match load_dir(dir) {
        Ok(inv) => inv,
        Err(e) => panic!("{} should load: {e}", dir.display()),
    }
}

fn config_ok(path: &Path) -> Config {
    match Config::load(path) {
        Ok(c) => c,
        Err(e) => panic!("{} should load: {e}", path.display()),
    }
}

// ---------------------------------------------------------------------------------------
// (a) The shipped inventories
// ---------------------------------------------------------------------------------------

#[test]
fn lab_inventory_loads_and_matches_its_config() {
    let dir = repo("inventory/lab");
    let inv = load_ok(&dir);
    assert_eq!(inv.site.name, "lab");
    assert!(
        inv.files.iter().all(|f| !f.ends_with("bootgate.toml")),
        "the daemon config is not inventory: {:?}",
        inv.files
    );

    let expected = [
        ("vm0", "52:54:00:d7:8e:1d", "10.250.0.10"),
        ("vm1", "52:54:00:a8:28:2f", "10.250.0.11"),
        ("vm2", "52:54:00:e0:a7:44", "10.250.0.12"),
        ("vm3", "52:54:00:12:72:62", "10.250.0.13"),
    ];
    assert_eq!(inv.hosts.len(), expected.len());
    for (i, (name, mac, ip)) in expected.iter().enumerate() {
        let host = inv.host(name).unwrap_or_else(|| panic!("no host {name}"));
        assert_eq!(host.macs, [mac.parse::<MacAddr>().unwrap()], "{name}");
        assert_eq!(
            inv.provisioning_ip(host),
            Some(ip.parse().unwrap()),
            "{name}"
        );
        assert_eq!(host.rack.as_deref(), Some("lab-r1"));
        assert_eq!(host.position, Some(i as u32 + 1));
        assert_eq!(host.profile.as_deref(), Some("lab-debian"));
        // Each VM's BMC is its system on the lab's sushy-emulator (gw's 127.0.0.1:8000).
        let bmc = host
            .bmc
            .as_ref()
            .unwrap_or_else(|| panic!("{name} has a bmc"));
        assert_eq!(bmc.address, Ipv4Addr::LOCALHOST);
        assert_eq!((bmc.port, bmc.scheme), (Some(8000), BmcScheme::Http));
        assert_eq!(bmc.system.as_deref(), Some(*name));
        assert_eq!(bmc.credential, "lab");
    }
    assert_eq!(inv.host("vm0").unwrap().role, Role::Gpu);

    let prov = inv.subnet("provisioning").unwrap();
    assert_eq!(prov.cidr, "10.250.0.0/24".parse().unwrap());
    assert_eq!(prov.served, Served::Interface("gw0".into()));
    assert_eq!(prov.lease_time.as_secs(), 12 * 3600);
    assert!(!prov.known_hosts_only);
    assert_eq!(prov.dynamic_ranges.len(), 1);
    assert_eq!(prov.dynamic_ranges[0].len(), 151);
    assert_eq!(inv.profiles[0].template, "install");

    let cfg = config_ok(&dir.join("bootgate.toml"));
    assert_eq!(cfg.state_dir, PathBuf::from("/var/lib/bootgate-lab"));
    assert_eq!(
        cfg.store,
        StoreUrl::Sqlite("/var/lib/bootgate-lab/bootgate.db".into())
    );
    assert_eq!(
        cfg.control_socket,
        PathBuf::from("/var/lib/bootgate-lab/control.sock")
    );
    assert_eq!(cfg.http_listen, "10.250.0.1:8080".parse().unwrap());
    assert_eq!(cfg.interfaces.len(), 1);
    assert_eq!(cfg.interfaces[0].name, "gw0");
    assert_eq!(cfg.inventory_dir, dir.join("."));
    assert_eq!(
        check_inventory(&inv, &cfg),
        [],
        "lab inventory vs its config"
    );
    // The config names the inventory it was shipped with.
    assert_eq!(load_ok(&cfg.inventory_dir).hosts, inv.hosts);
}

#[test]
fn example_inventory_loads_and_matches_its_config() {
    let dir = repo("inventory/example");
    let inv = load_ok(&dir);
    assert_eq!(inv.site.name, "dc1");
    assert_eq!(inv.site.gateways, ["gw-a", "gw-b"]);
    assert_eq!(inv.racks.len(), 4);
    assert!(
        inv.racks
            .iter()
            .all(|r| r.switch.as_ref().is_some_and(|s| s.ports.len() == 16))
    );

    let gpus = inv.hosts.iter().filter(|h| h.role == Role::Gpu).count();
    assert_eq!(gpus, 64);
    assert!(inv.hosts.len() >= 64 + 4 + 3);
    let sms = inv
        .hosts
        .iter()
        .filter(|h| {
            h.hardware
                .infiniband
                .as_ref()
                .is_some_and(|ib| ib.subnet_manager)
        })
        .count();
    assert_eq!(sms, 2, "two subnet managers");
    // Every GPU node has a boot MAC, provisioning and IPoIB addresses and a BMC.
    for h in inv.hosts.iter().filter(|h| h.role == Role::Gpu) {
        assert!(!h.macs.is_empty(), "{}", h.name);
        assert!(inv.provisioning_ip(h).is_some(), "{}", h.name);
        assert!(h.addresses.contains_key("ipoib"), "{}", h.name);
        assert!(h.bmc.is_some(), "{}", h.name);
        assert_eq!(h.hardware.gpus.as_ref().map(|g| g.count), Some(8));
    }
    let purposes: Vec<Purpose> = inv.subnets.iter().map(|s| s.purpose).collect();
    for p in [Purpose::Provisioning, Purpose::Bmc, Purpose::Ipoib] {
        assert!(purposes.contains(&p), "{p}");
    }
    assert_eq!(inv.subnet("ipoib").unwrap().served, Served::NotServed);
    assert!(inv.subnet("bmc").unwrap().known_hosts_only);

    let cfg = config_ok(&dir.join("bootgate.toml"));
    assert_eq!(
        cfg.store,
        StoreUrl::Sqlite("/var/lib/bootgate/bootgate.db".into())
    );
    assert_eq!(
        cfg.secrets_file,
        Some(PathBuf::from("/etc/bootgate/secrets.toml"))
    );
    assert_eq!(check_inventory(&inv, &cfg), []);
}

#[test]
fn example_inventory_loads_fast() {
    let dir = repo("inventory/example");
    let start = std::time::Instant::now();
    load_ok(&dir);
    // Generous even for an unoptimised build; a quadratic loader would blow it.
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// (b) One case per inventory validation check
// ---------------------------------------------------------------------------------------

/// A small inventory that loads cleanly; each case adds (or replaces, or deletes) files.
const BASE: &[(&str, &str)] = &[
    ("site.toml", "[site]\nname = \"t\"\n"),
    (
        "subnets.toml",
        r#"
[[subnet]]
name = "prov"
cidr = "10.0.0.0/24"
purpose = "provisioning"
interface = "gw0"
gateway = "10.0.0.1"
dynamic_ranges = [{ start = "10.0.0.100", end = "10.0.0.200" }]

[[subnet]]
name = "bmc"
cidr = "10.1.0.0/24"
purpose = "bmc"
relay_addresses = ["10.1.0.1"]
known_hosts_only = true

[[subnet]]
name = "ib"
cidr = "10.2.0.0/16"
purpose = "ipoib"
"#,
    ),
    (
        "racks.toml",
        r#"
[[rack]]
name = "r1"
[rack.switch]
name = "leaf-r1"
remote_id = "leaf-r1"
ports = { "Ethernet1/1" = 1 }
"#,
    ),
    ("profiles.toml", "[[profile]]\nname = \"p\"\n"),
    (
        "hosts.toml",
        r#"
[[host]]
name = "h1"
role = "gpu"
rack = "r1"
position = 1
macs = ["02:00:00:00:00:01"]
profile = "p"
addresses = { prov = "10.0.0.10", ib = "10.2.0.10" }
bmc = { address = "10.1.0.10", mac = "02:00:00:00:01:01", vendor = "dell", credential = "c" }
"#,
    ),
];

/// Writes BASE with the case's changes (`None` deletes a file) into a fresh directory.
fn write_inventory(changes: &[(&str, Option<&str>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in BASE {
        if !changes.iter().any(|(n, _)| n == name) {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
    }
    for (name, text) in changes {
        if let Some(text) = text {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
    }
    dir
}

fn problems(dir: &Path) -> Vec<Problem> {
    match load_dir(dir) {
        Ok(_) => Vec::new(),
        Err(e) => e.0,
    }
}

struct Case {
    what: &'static str,
    changes: &'static [(&'static str, Option<&'static str>)],
    /// File name relative to the inventory dir; "" for the directory itself.
    file: &'static str,
    entry: &'static str,
    field: &'static str,
    /// Words the reason must contain.
    reason: &'static [&'static str],
}

/// Asserts the case yields exactly one problem, at the expected place.
fn check(case: &Case) {
    let dir = write_inventory(case.changes);
    let found = problems(dir.path());
    let expected_file = if case.file.is_empty() {
        dir.path().to_path_buf()
    } else {
        dir.path().join(case.file)
    };
    let shown: Vec<String> = found.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        found.len(),
        1,
        "{}: expected exactly one problem, got {shown:#?}",
        case.what
    );
    let p = &found[0];
    assert_eq!(p.file, expected_file, "{}: file in {p}", case.what);
    assert_eq!(p.entry, case.entry, "{}: entry in {p}", case.what);
    assert_eq!(p.field, case.field, "{}: field in {p}", case.what);
    for word in case.reason {
        assert!(
            p.reason.contains(word),
            "{}: reason should mention {word:?}: {p}",
            case.what
        );
    }
}

/// A second host `h2` (with a MAC of its own) plus the case's extra lines.
macro_rules! host2 {
    ($extra:literal) => {
        concat!(
            "[[host]]\nname = \"h2\"\nrole = \"gpu\"\nmacs = [\"02:00:00:00:00:02\"]\n",
            $extra,
            "\n"
        )
    };
}

/// A subnet `x`; the case supplies every other line.
macro_rules! subnet {
    ($body:literal) => {
        concat!("[[subnet]]\nname = \"x\"\n", $body, "\n")
    };
}

#[test]
fn base_inventory_is_valid() {
    let dir = write_inventory(&[]);
    let inv = load_ok(dir.path());
    assert_eq!(inv.hosts.len(), 1);
    assert_eq!(inv.files.len(), BASE.len());
}

#[test]
fn daemon_config_in_the_inventory_dir_is_ignored() {
    let dir = write_inventory(&[("bootgate.toml", Some("state_dir = \"/x\"\n"))]);
    let inv = load_ok(dir.path());
    assert_eq!(inv.files.len(), BASE.len());
}

#[test]
fn only_toml_files_at_the_top_are_read() {
    let dir = write_inventory(&[("notes.txt", Some("[[host]]\nname = 1\n"))]);
    std::fs::create_dir(dir.path().join("old")).unwrap();
    std::fs::write(dir.path().join("old/hosts.toml"), "garbage [").unwrap();
    load_ok(dir.path());
}

#[test]
fn duplicate_subnet_name() {
    check(&Case {
        what: "duplicate subnet",
        changes: &[(
            "x.toml",
            Some(
                "[[subnet]]\nname = \"prov\"\ncidr = \"10.9.0.0/24\"\npurpose = \"provisioning\"\n",
            ),
        )],
        file: "x.toml",
        entry: "subnet \"prov\"",
        field: "name",
        reason: &["duplicate", "subnets.toml"],
    });
}

#[test]
fn duplicate_rack_name() {
    check(&Case {
        what: "duplicate rack",
        changes: &[("x.toml", Some("[[rack]]\nname = \"r1\"\n"))],
        file: "x.toml",
        entry: "rack \"r1\"",
        field: "name",
        reason: &["duplicate", "racks.toml"],
    });
}

#[test]
fn duplicate_profile_name() {
    check(&Case {
        what: "duplicate profile",
        changes: &[("x.toml", Some("[[profile]]\nname = \"p\"\n"))],
        file: "x.toml",
        entry: "profile \"p\"",
        field: "name",
        reason: &["duplicate", "profiles.toml"],
    });
}

#[test]
fn duplicate_host_name() {
    check(&Case {
        what: "duplicate host",
        changes: &[(
            "x.toml",
            Some("[[host]]\nname = \"h1\"\nrole = \"gpu\"\nmacs = [\"02:00:00:00:00:09\"]\n"),
        )],
        file: "x.toml",
        entry: "host \"h1\"",
        field: "name",
        reason: &["duplicate", "host \"h1\" in hosts.toml"],
    });
}

#[test]
fn duplicate_mac_across_hosts() {
    check(&Case {
        what: "duplicate MAC",
        changes: &[(
            "x.toml",
            Some("[[host]]\nname = \"h2\"\nrole = \"gpu\"\nmacs = [\"02:00:00:00:00:01\"]\n"),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "macs[0]",
        reason: &["duplicate MAC 02:00:00:00:00:01", "host \"h1\""],
    });
}

#[test]
fn duplicate_mac_within_a_host() {
    check(&Case {
        what: "MAC listed twice",
        changes: &[(
            "x.toml",
            Some(
                "[[host]]\nname = \"h2\"\nrole = \"gpu\"\nmacs = [\"02:00:00:00:00:02\", \"02:00:00:00:00:02\"]\n",
            ),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "macs[1]",
        reason: &["duplicate MAC", "macs[0]"],
    });
}

#[test]
fn duplicate_bmc_mac() {
    check(&Case {
        what: "duplicate BMC MAC",
        changes: &[(
            "x.toml",
            Some(host2!(
                "bmc = { address = \"10.1.0.11\", mac = \"02:00:00:00:01:01\", vendor = \"dell\", credential = \"c\" }"
            )),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "bmc.mac",
        reason: &["duplicate MAC", "bmc.mac of host \"h1\""],
    });
}

#[test]
fn bmc_mac_equal_to_a_boot_mac() {
    check(&Case {
        what: "BMC MAC = boot MAC",
        changes: &[(
            "x.toml",
            Some(host2!(
                "bmc = { address = \"10.1.0.11\", mac = \"02:00:00:00:00:01\", vendor = \"dell\", credential = \"c\" }"
            )),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "bmc.mac",
        reason: &["duplicate MAC", "macs[0] of host \"h1\""],
    });
}

#[test]
fn duplicate_reserved_ip() {
    check(&Case {
        what: "duplicate reserved IP",
        changes: &[(
            "x.toml",
            Some(host2!("addresses = { prov = \"10.0.0.10\" }")),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "addresses.prov",
        reason: &["duplicate reserved address 10.0.0.10", "host \"h1\""],
    });
}

#[test]
fn duplicate_reserved_ip_bmc() {
    check(&Case {
        what: "BMC address reserved twice",
        changes: &[(
            "x.toml",
            Some(host2!(
                "bmc = { address = \"10.1.0.10\", vendor = \"dell\", credential = \"c\" }"
            )),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "bmc.address",
        reason: &["duplicate reserved address", "bmc.address of host \"h1\""],
    });
}

#[test]
fn reserved_ip_outside_its_subnet() {
    check(&Case {
        what: "reserved IP outside subnet",
        changes: &[(
            "x.toml",
            Some(host2!("addresses = { prov = \"10.0.1.5\" }")),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "addresses.prov",
        reason: &["outside", "10.0.0.0/24"],
    });
}

#[test]
fn reserved_ip_inside_dynamic_range() {
    check(&Case {
        what: "reserved IP in pool",
        changes: &[(
            "x.toml",
            Some(host2!("addresses = { prov = \"10.0.0.150\" }")),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "addresses.prov",
        reason: &["dynamic range", "10.0.0.100-10.0.0.200"],
    });
}

#[test]
fn reserved_ip_is_network_address() {
    check(&Case {
        what: "network address",
        changes: &[(
            "x.toml",
            Some(host2!("addresses = { prov = \"10.0.0.0\" }")),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "addresses.prov",
        reason: &["network address"],
    });
}

#[test]
fn reserved_ip_is_broadcast_address() {
    check(&Case {
        what: "broadcast address",
        changes: &[(
            "x.toml",
            Some(host2!("addresses = { prov = \"10.0.0.255\" }")),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "addresses.prov",
        reason: &["broadcast"],
    });
}

#[test]
fn address_on_unknown_subnet() {
    check(&Case {
        what: "unknown subnet",
        changes: &[(
            "x.toml",
            Some(host2!("addresses = { provisioning = \"10.0.0.20\" }")),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "addresses.provisioning",
        reason: &["no subnet named \"provisioning\""],
    });
}

#[test]
fn unknown_rack() {
    check(&Case {
        what: "unknown rack",
        changes: &[("x.toml", Some(host2!("rack = \"r9\"")))],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "rack",
        reason: &["no rack", "r9"],
    });
}

#[test]
fn unknown_profile() {
    check(&Case {
        what: "unknown profile",
        changes: &[("x.toml", Some(host2!("profile = \"nope\"")))],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "profile",
        reason: &["no profile", "nope"],
    });
}

#[test]
fn position_without_rack() {
    check(&Case {
        what: "position without rack",
        changes: &[("x.toml", Some(host2!("position = 4")))],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "position",
        reason: &["without a rack"],
    });
}

#[test]
fn rack_position_taken_twice() {
    check(&Case {
        what: "same rack slot",
        changes: &[("x.toml", Some(host2!("rack = \"r1\"\nposition = 1")))],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "position",
        reason: &["already taken", "host \"h1\""],
    });
}

#[test]
fn dynamic_range_outside_subnet() {
    check(&Case {
        what: "range outside subnet",
        changes: &[(
            "x.toml",
            Some(subnet!(
                "cidr = \"10.9.0.0/24\"\npurpose = \"provisioning\"\ndynamic_ranges = [{ start = \"10.9.0.10\", end = \"10.9.1.10\" }]"
            )),
        )],
        file: "x.toml",
        entry: "subnet \"x\"",
        field: "dynamic_ranges[0].end",
        reason: &["outside", "10.9.0.0/24"],
    });
}

#[test]
fn dynamic_range_start_after_end() {
    check(&Case {
        what: "range start > end",
        changes: &[(
            "x.toml",
            Some(subnet!(
                "cidr = \"10.9.0.0/24\"\npurpose = \"provisioning\"\ndynamic_ranges = [{ start = \"10.9.0.50\", end = \"10.9.0.10\" }]"
            )),
        )],
        file: "x.toml",
        entry: "subnet \"x\"",
        field: "dynamic_ranges[0]",
        reason: &["after"],
    });
}

#[test]
fn dynamic_ranges_overlap() {
    check(&Case {
        what: "overlapping ranges",
        changes: &[(
            "x.toml",
            Some(subnet!(
                "cidr = \"10.9.0.0/24\"\npurpose = \"provisioning\"\ndynamic_ranges = [{ start = \"10.9.0.10\", end = \"10.9.0.20\" }, { start = \"10.9.0.20\", end = \"10.9.0.30\" }]"
            )),
        )],
        file: "x.toml",
        entry: "subnet \"x\"",
        field: "dynamic_ranges[1]",
        reason: &["overlaps dynamic_ranges[0]"],
    });
}

#[test]
fn gateway_outside_subnet() {
    check(&Case {
        what: "gateway outside",
        changes: &[(
            "x.toml",
            Some(subnet!(
                "cidr = \"10.9.0.0/24\"\npurpose = \"provisioning\"\ngateway = \"10.8.0.1\""
            )),
        )],
        file: "x.toml",
        entry: "subnet \"x\"",
        field: "gateway",
        reason: &["outside"],
    });
}

#[test]
fn gateway_inside_dynamic_range() {
    check(&Case {
        what: "gateway in pool",
        changes: &[(
            "x.toml",
            Some(subnet!(
                "cidr = \"10.9.0.0/24\"\npurpose = \"provisioning\"\ngateway = \"10.9.0.15\"\ndynamic_ranges = [{ start = \"10.9.0.10\", end = \"10.9.0.20\" }]"
            )),
        )],
        file: "x.toml",
        entry: "subnet \"x\"",
        field: "gateway",
        reason: &["dynamic range"],
    });
}

#[test]
fn relay_address_outside_subnet() {
    check(&Case {
        what: "relay outside",
        changes: &[(
            "x.toml",
            Some(subnet!(
                "cidr = \"10.9.0.0/24\"\npurpose = \"provisioning\"\nrelay_addresses = [\"10.9.0.1\", \"10.9.1.1\"]"
            )),
        )],
        file: "x.toml",
        entry: "subnet \"x\"",
        field: "relay_addresses[1]",
        reason: &["outside"],
    });
}

#[test]
fn overlapping_subnets() {
    check(&Case {
        what: "overlapping CIDRs",
        changes: &[(
            "x.toml",
            Some(subnet!(
                "cidr = \"10.0.0.128/25\"\npurpose = \"provisioning\""
            )),
        )],
        file: "x.toml",
        entry: "subnet \"x\"",
        field: "cidr",
        reason: &["overlaps", "\"prov\""],
    });
}

#[test]
fn cidr_with_host_bits() {
    check(&Case {
        what: "cidr host bits",
        changes: &[(
            "x.toml",
            Some(subnet!(
                "cidr = \"10.9.0.5/24\"\npurpose = \"provisioning\""
            )),
        )],
        file: "x.toml",
        entry: "subnet \"x\"",
        field: "cidr",
        reason: &["host bits", "10.9.0.0/24"],
    });
}

#[test]
fn served_address_needs_a_mac() {
    check(&Case {
        what: "no MAC on a served subnet",
        changes: &[(
            "x.toml",
            Some(
                "[[host]]\nname = \"h2\"\nrole = \"gpu\"\naddresses = { prov = \"10.0.0.20\", ib = \"10.2.0.20\" }\n",
            ),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "addresses.prov",
        reason: &["MAC", "served"],
    });
}

#[test]
fn interface_and_relays_both_set() {
    check(&Case {
        what: "interface + relays",
        changes: &[(
            "x.toml",
            Some(subnet!(
                "cidr = \"10.9.0.0/24\"\npurpose = \"provisioning\"\ninterface = \"gw1\"\nrelay_addresses = [\"10.9.0.1\"]"
            )),
        )],
        file: "x.toml",
        entry: "subnet \"x\"",
        field: "relay_addresses",
        reason: &["both"],
    });
}

#[test]
fn ipoib_subnet_on_an_interface() {
    check(&Case {
        what: "served ipoib (interface)",
        changes: &[(
            "x.toml",
            Some(subnet!(
                "cidr = \"10.9.0.0/24\"\npurpose = \"ipoib\"\ninterface = \"ib0\""
            )),
        )],
        file: "x.toml",
        entry: "subnet \"x\"",
        field: "interface",
        reason: &["ipoib", "not served"],
    });
}

#[test]
fn ipoib_subnet_behind_relays() {
    check(&Case {
        what: "served ipoib (relays)",
        changes: &[(
            "x.toml",
            Some(subnet!(
                "cidr = \"10.9.0.0/24\"\npurpose = \"ipoib\"\nrelay_addresses = [\"10.9.0.1\"]"
            )),
        )],
        file: "x.toml",
        entry: "subnet \"x\"",
        field: "relay_addresses",
        reason: &["ipoib", "not served"],
    });
}

#[test]
fn trust_option82_behind_relays() {
    check(&Case {
        what: "trust_option82 without an interface",
        changes: &[(
            "x.toml",
            Some(subnet!(
                "cidr = \"10.9.0.0/24\"\npurpose = \"provisioning\"\nrelay_addresses = [\"10.9.0.1\"]\ntrust_option82 = true"
            )),
        )],
        file: "x.toml",
        entry: "subnet \"x\"",
        field: "trust_option82",
        reason: &["relay_addresses"],
    });
}

#[test]
fn bmc_address_outside_bmc_subnets() {
    check(&Case {
        what: "BMC not on a bmc subnet",
        changes: &[(
            "x.toml",
            Some(host2!(
                "bmc = { address = \"10.0.0.50\", vendor = \"dell\", credential = \"c\" }"
            )),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "bmc.address",
        reason: &["bmc subnet", "10.1.0.0/24"],
    });
}

#[test]
fn bmc_address_anywhere_without_bmc_subnets() {
    // No subnet of purpose bmc: a BMC may live on any network bootgate does not manage.
    let dir = write_inventory(&[
        (
            "subnets.toml",
            Some(
                "[[subnet]]\nname = \"prov\"\ncidr = \"10.0.0.0/24\"\npurpose = \"provisioning\"\n[[subnet]]\nname = \"ib\"\ncidr = \"10.2.0.0/16\"\npurpose = \"ipoib\"\n",
            ),
        ),
        (
            "x.toml",
            Some(host2!(
                "bmc = { address = \"192.168.7.7\", vendor = \"ami\", protocol = \"ipmi\", credential = \"c\" }"
            )),
        ),
    ]);
    let inv = load_ok(dir.path());
    let bmc = inv.host("h2").unwrap().bmc.as_ref().unwrap();
    assert_eq!(bmc.address, Ipv4Addr::new(192, 168, 7, 7));
}

/// A CA bundle file for the BMC TLS cases (its content is not read by the loader).
const CA: (&str, Option<&str>) = ("ca.pem", Some("-----BEGIN CERTIFICATE-----\n"));

#[test]
fn bmc_fields_default_and_paths_resolve() {
    let dir = write_inventory(&[
        CA,
        (
            "x.toml",
            Some(host2!(
                "bmc = { address = \"10.1.0.11\", vendor = \"lenovo\", credential = \"c\", ca_file = \"ca.pem\", system = \"1\" }"
            )),
        ),
    ]);
    let inv = load_ok(dir.path());
    let h1 = inv.host("h1").unwrap().bmc.as_ref().unwrap();
    assert_eq!(h1.scheme, BmcScheme::Https);
    assert_eq!(
        (h1.system.as_deref(), h1.ca_file.as_deref(), h1.insecure),
        (None, None, false)
    );
    let h2 = inv.host("h2").unwrap().bmc.as_ref().unwrap();
    assert_eq!(
        h2.ca_file.as_deref(),
        Some(dir.path().join("ca.pem").as_path())
    );
    assert_eq!(h2.system.as_deref(), Some("1"));
    assert_eq!(inv.site.bmc_ca_file, None);
}

#[test]
fn bmc_ca_file_missing() {
    check(&Case {
        what: "BMC CA file does not exist",
        changes: &[(
            "x.toml",
            Some(host2!(
                "bmc = { address = \"10.1.0.11\", vendor = \"dell\", credential = \"c\", ca_file = \"no-such-ca.pem\" }"
            )),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "bmc.ca_file",
        reason: &["no-such-ca.pem", "does not exist"],
    });
}

#[test]
fn bmc_insecure_with_ca_file() {
    check(&Case {
        what: "insecure and ca_file together",
        changes: &[
            CA,
            (
                "x.toml",
                Some(host2!(
                    "bmc = { address = \"10.1.0.11\", vendor = \"dell\", credential = \"c\", ca_file = \"ca.pem\", insecure = true }"
                )),
            ),
        ],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "bmc.insecure",
        reason: &["insecure", "ca_file", "choose one"],
    });
}

#[test]
fn bmc_tls_options_with_http() {
    check(&Case {
        what: "insecure with scheme http",
        changes: &[(
            "x.toml",
            Some(host2!(
                "bmc = { address = \"10.1.0.11\", vendor = \"generic\", credential = \"c\", scheme = \"http\", insecure = true }"
            )),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "bmc.insecure",
        reason: &["http", "no TLS"],
    });
    check(&Case {
        what: "ca_file with scheme http",
        changes: &[
            CA,
            (
                "x.toml",
                Some(host2!(
                    "bmc = { address = \"10.1.0.11\", vendor = \"generic\", credential = \"c\", scheme = \"http\", ca_file = \"ca.pem\" }"
                )),
            ),
        ],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "bmc.ca_file",
        reason: &["http", "no TLS"],
    });
}

#[test]
fn bmc_tls_options_with_ipmi() {
    check(&Case {
        what: "ca_file for an IPMI BMC",
        changes: &[
            CA,
            (
                "x.toml",
                Some(host2!(
                    "bmc = { address = \"10.1.0.11\", vendor = \"ami\", protocol = \"ipmi\", credential = \"c\", ca_file = \"ca.pem\" }"
                )),
            ),
        ],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "bmc.ca_file",
        reason: &["IPMI has no TLS"],
    });
}

#[test]
fn bmc_unknown_scheme() {
    check(&Case {
        what: "scheme ftp",
        changes: &[(
            "x.toml",
            Some(host2!(
                "bmc = { address = \"10.1.0.11\", vendor = \"dell\", credential = \"c\", scheme = \"ftp\" }"
            )),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "bmc.scheme",
        reason: &["ftp", "https"],
    });
}

#[test]
fn bmc_empty_system() {
    check(&Case {
        what: "empty system name",
        changes: &[(
            "x.toml",
            Some(host2!(
                "bmc = { address = \"10.1.0.11\", vendor = \"nvidia\", credential = \"c\", system = \"\" }"
            )),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "bmc.system",
        reason: &["empty", "Id or Name"],
    });
}

#[test]
fn site_bmc_ca_file_missing() {
    check(&Case {
        what: "site CA file does not exist",
        changes: &[(
            "site.toml",
            Some("[site]\nname = \"t\"\nbmc_ca_file = \"site-ca.pem\"\n"),
        )],
        file: "site.toml",
        entry: "site",
        field: "bmc_ca_file",
        reason: &["site-ca.pem", "does not exist"],
    });
    let dir = write_inventory(&[
        ("site-ca.pem", Some("x")),
        (
            "site.toml",
            Some("[site]\nname = \"t\"\nbmc_ca_file = \"site-ca.pem\"\n"),
        ),
    ]);
    let inv = load_ok(dir.path());
    assert_eq!(inv.site.bmc_ca_file, Some(dir.path().join("site-ca.pem")));
}

#[test]
fn shared_bmc_needs_a_system_per_host() {
    // h1's BMC (10.1.0.10) names no system: another host cannot share it.
    check(&Case {
        what: "shared BMC without systems",
        changes: &[(
            "x.toml",
            Some(host2!(
                "bmc = { address = \"10.1.0.10\", vendor = \"dell\", credential = \"c\", system = \"2\" }"
            )),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "bmc.address",
        reason: &["duplicate reserved address", "host \"h1\"", "bmc.system"],
    });
}

#[test]
fn shared_bmc_same_system_twice() {
    check(&Case {
        what: "one BMC system for two hosts",
        changes: &[(
            "x.toml",
            Some(concat!(
                host2!(
                    "bmc = { address = \"10.1.0.20\", vendor = \"nvidia\", credential = \"c\", system = \"DGX\" }"
                ),
                "[[host]]\nname = \"h3\"\nrole = \"gpu\"\nmacs = [\"02:00:00:00:00:03\"]\n",
                "bmc = { address = \"10.1.0.20\", vendor = \"nvidia\", credential = \"c\", system = \"DGX\" }\n"
            )),
        )],
        file: "x.toml",
        entry: "host \"h3\"",
        field: "bmc.address",
        reason: &["system \"DGX\"", "host \"h2\""],
    });
}

#[test]
fn shared_bmc_with_one_system_per_host_loads() {
    let dir = write_inventory(&[(
        "x.toml",
        Some(concat!(
            host2!(
                "bmc = { address = \"10.1.0.20\", vendor = \"nvidia\", credential = \"c\", system = \"A\" }"
            ),
            "[[host]]\nname = \"h3\"\nrole = \"gpu\"\nmacs = [\"02:00:00:00:00:03\"]\n",
            "bmc = { address = \"10.1.0.20\", vendor = \"nvidia\", credential = \"c\", system = \"B\" }\n"
        )),
    )]);
    let inv = load_ok(dir.path());
    assert_eq!(inv.hosts.len(), 3);
}

#[test]
fn secrets_files_in_the_inventory_dir_are_not_inventory() {
    let dir = write_inventory(&[(
        "secrets.example.toml",
        Some("[bmc.lab]\nusername = \"admin\"\npassword = \"password\"\n"),
    )]);
    let inv = load_ok(dir.path());
    assert_eq!(inv.files.len(), BASE.len());
}

#[test]
fn invalid_host_name() {
    check(&Case {
        what: "bad host name",
        changes: &[(
            "x.toml",
            Some("[[host]]\nname = \"GPU_1\"\nrole = \"gpu\"\nmacs = [\"02:00:00:00:00:02\"]\n"),
        )],
        file: "x.toml",
        entry: "host \"GPU_1\"",
        field: "name",
        reason: &["DNS label"],
    });
}

#[test]
fn missing_site() {
    check(&Case {
        what: "no [site]",
        changes: &[("site.toml", None)],
        file: "",
        entry: "site",
        field: "-",
        reason: &["no [site]"],
    });
}

#[test]
fn two_sites() {
    check(&Case {
        what: "two [site]",
        changes: &[("x.toml", Some("[site]\nname = \"u\"\n"))],
        file: "x.toml",
        entry: "site",
        field: "-",
        reason: &["second [site]", "site.toml"],
    });
}

#[test]
fn empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    // The daemon config alone is not an inventory.
    std::fs::write(dir.path().join("bootgate.toml"), "").unwrap();
    let found = problems(dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].file, dir.path());
    assert_eq!(
        (found[0].entry.as_str(), found[0].field.as_str()),
        ("-", "-")
    );
    assert!(found[0].reason.contains("no *.toml"), "{}", found[0]);
}

#[test]
fn missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("nope");
    let found = problems(&gone);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].file, gone);
    assert!(
        found[0].reason.contains("cannot read directory"),
        "{}",
        found[0]
    );
}

#[test]
fn invalid_mac() {
    check(&Case {
        what: "bad MAC",
        changes: &[(
            "x.toml",
            Some(
                "[[host]]\nname = \"h2\"\nrole = \"gpu\"\nmacs = [\"02:00:00:00:00:02\", \"02:00:00:00:zz:02\"]\n",
            ),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "macs[1]",
        reason: &["invalid MAC", "02:00:00:00:zz:02"],
    });
}

#[test]
fn invalid_ip() {
    check(&Case {
        what: "bad IP",
        changes: &[(
            "x.toml",
            Some(host2!("addresses = { prov = \"10.0.0.300\" }")),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "addresses.prov",
        reason: &["invalid", "10.0.0.300"],
    });
}

#[test]
fn invalid_bmc_ip() {
    check(&Case {
        what: "bad BMC IP",
        changes: &[(
            "x.toml",
            Some(host2!(
                "bmc = { address = \"10.1.0\", vendor = \"dell\", credential = \"c\" }"
            )),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "bmc.address",
        reason: &["invalid", "10.1.0"],
    });
}

#[test]
fn invalid_cidr() {
    check(&Case {
        what: "bad CIDR",
        changes: &[(
            "x.toml",
            Some(subnet!("cidr = \"10.9.0.0/33\"\npurpose = \"bmc\"")),
        )],
        file: "x.toml",
        entry: "subnet \"x\"",
        field: "cidr",
        reason: &["invalid", "10.9.0.0/33"],
    });
}

#[test]
fn invalid_enum_value() {
    check(&Case {
        what: "bad vendor",
        changes: &[(
            "x.toml",
            Some(host2!(
                "bmc = { address = \"10.1.0.20\", vendor = \"acme\", credential = \"c\" }"
            )),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "bmc.vendor",
        reason: &["acme", "dell"],
    });
}

#[test]
fn invalid_lease_time() {
    check(&Case {
        what: "bad lease_time",
        changes: &[(
            "x.toml",
            Some(subnet!(
                "cidr = \"10.9.0.0/24\"\npurpose = \"bmc\"\nlease_time = \"1 fortnight\""
            )),
        )],
        file: "x.toml",
        entry: "subnet \"x\"",
        field: "lease_time",
        reason: &["invalid duration", "12h"],
    });
}

#[test]
fn unknown_field_nested() {
    check(&Case {
        what: "unknown field",
        changes: &[(
            "x.toml",
            Some(host2!(
                "bmc = { address = \"10.1.0.20\", vendor = \"dell\", credential = \"c\", colour = \"red\" }"
            )),
        )],
        file: "x.toml",
        entry: "host \"h2\"",
        field: "bmc.colour",
        reason: &["unknown field", "expected one of:", "credential"],
    });
}

#[test]
fn unknown_top_level_key() {
    check(&Case {
        what: "unknown top-level key",
        changes: &[("x.toml", Some("[[hosts]]\nname = \"h2\"\n"))],
        file: "x.toml",
        entry: "-",
        field: "hosts",
        reason: &["unknown", "host"],
    });
}

#[test]
fn missing_required_field_and_unnamed_entry() {
    check(&Case {
        what: "host without name",
        changes: &[("x.toml", Some("[[host]]\nrole = \"gpu\"\n"))],
        file: "x.toml",
        entry: "host #1",
        field: "name",
        reason: &["missing"],
    });
}

#[test]
fn syntax_error_names_line() {
    check(&Case {
        what: "TOML syntax",
        changes: &[("x.toml", Some("[[host]]\nname = \"h2\nrole = \"gpu\"\n"))],
        file: "x.toml",
        entry: "-",
        field: "-",
        reason: &["syntax", "line 2"],
    });
}

#[test]
fn duplicate_switch_remote_id() {
    check(&Case {
        what: "remote-id twice",
        changes: &[(
            "x.toml",
            Some(
                "[[rack]]\nname = \"r2\"\n[rack.switch]\nname = \"leaf-r2\"\nremote_id = \"leaf-r1\"\n",
            ),
        )],
        file: "x.toml",
        entry: "rack \"r2\"",
        field: "switch.remote_id",
        reason: &["rack \"r1\""],
    });
}

#[test]
fn every_problem_in_a_directory_is_reported() {
    let dir = write_inventory(&[(
        "x.toml",
        Some(concat!(
            "[[host]]\nname = \"h2\"\nrole = \"gpux\"\nmacs = [\"bad\"]\n\n",
            "[[host]]\nname = \"h3\"\nrole = \"gpu\"\nrack = \"r9\"\nprofile = \"nope\"\n",
            "addresses = { prov = \"10.0.0.10\" }\n",
        )),
    )]);
    let found = problems(dir.path());
    let places: Vec<(&str, &str)> = found
        .iter()
        .map(|p| (p.entry.as_str(), p.field.as_str()))
        .collect();
    assert_eq!(
        places,
        [
            // Within an entry, fields come in key order (toml tables are sorted maps).
            ("host \"h2\"", "macs[0]"),
            ("host \"h2\"", "role"),
            ("host \"h3\"", "rack"),
            ("host \"h3\"", "profile"),
            ("host \"h3\"", "addresses.prov"),
            ("host \"h3\"", "addresses.prov"),
        ],
        "{found:#?}"
    );
}

#[test]
fn broken_entries_do_not_cascade() {
    // The subnet fails to parse; the host referring to it is not blamed for that.
    let dir = write_inventory(&[
        (
            "x.toml",
            Some(subnet!("cidr = \"10.9.0.0/24\"\npurpose = \"nope\"")),
        ),
        ("y.toml", Some(host2!("addresses = { x = \"10.9.0.5\" }"))),
    ]);
    let found = problems(dir.path());
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].field, "purpose");
}

// ---------------------------------------------------------------------------------------
// Inventory vs daemon config
// ---------------------------------------------------------------------------------------

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("bootgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const CONFIG_HEAD: &str = "state_dir = \"state\"\ninventory = \".\"\nboot_images = \".\"\n[http]\nlisten = \"10.0.0.1:8080\"\n";

#[test]
fn subnet_on_an_interface_the_config_lacks() {
    let dir = write_inventory(&[]);
    let inv = load_ok(dir.path());
    let path = write_config(
        dir.path(),
        &format!("{CONFIG_HEAD}[[interface]]\nname = \"eth9\"\naddress = \"10.0.0.1/24\"\n"),
    );
    let cfg = config_ok(&path);
    let found = check_inventory(&inv, &cfg);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].file, path);
    assert_eq!(
        (found[0].entry.as_str(), found[0].field.as_str()),
        ("-", "interface")
    );
    assert!(
        found[0].reason.contains("\"gw0\"") && found[0].reason.contains("\"prov\""),
        "{}",
        found[0]
    );
}

#[test]
fn interface_address_outside_its_subnet() {
    let dir = write_inventory(&[]);
    let inv = load_ok(dir.path());
    let path = write_config(
        dir.path(),
        &format!("{CONFIG_HEAD}[[interface]]\nname = \"gw0\"\naddress = \"10.5.0.1/24\"\n"),
    );
    let cfg = config_ok(&path);
    let found = check_inventory(&inv, &cfg);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].file, path);
    assert_eq!(
        (found[0].entry.as_str(), found[0].field.as_str()),
        ("interface \"gw0\"", "address")
    );
    assert!(
        found[0].reason.contains("not inside subnet \"prov\""),
        "{}",
        found[0]
    );

    let path = write_config(
        dir.path(),
        &format!("{CONFIG_HEAD}[[interface]]\nname = \"gw0\"\naddress = \"10.0.0.1/16\"\n"),
    );
    let found = check_inventory(&inv, &config_ok(&path));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].reason.contains("prefix /16"), "{}", found[0]);
}

// ---------------------------------------------------------------------------------------
// (c) Daemon config wire errors
// ---------------------------------------------------------------------------------------

fn config_problems(text: &str) -> (tempfile::TempDir, PathBuf, Vec<Problem>) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), text);
    let found = match Config::load(&path) {
        Ok(c) => panic!("should fail: {c:?}"),
        Err(e) => e.0,
    };
    (dir, path, found)
}

fn assert_one(found: &[Problem], file: &Path, entry: &str, field: &str, words: &[&str]) {
    assert_eq!(found.len(), 1, "{found:#?}");
    let p = &found[0];
    assert_eq!(p.file, file, "{p}");
    assert_eq!((p.entry.as_str(), p.field.as_str()), (entry, field), "{p}");
    for w in words {
        assert!(p.reason.contains(w), "reason should mention {w:?}: {p}");
    }
}

#[test]
fn config_unknown_top_level_field() {
    let (_d, path, found) = config_problems(&format!("statedir = \"/x\"\n{CONFIG_HEAD}"));
    assert_one(
        &found,
        &path,
        "-",
        "statedir",
        &["unknown field", "state_dir", "interface"],
    );
}

#[test]
fn config_unknown_http_field() {
    let (_d, path, found) = config_problems(&format!("{CONFIG_HEAD}port = 8080\n"));
    assert_one(&found, &path, "http", "port", &["unknown field", "listen"]);
}

#[test]
fn config_unknown_interface_field() {
    let (_d, path, found) = config_problems(&format!(
        "{CONFIG_HEAD}[[interface]]\nname = \"gw0\"\naddress = \"10.0.0.1/24\"\nmtu = 9000\n"
    ));
    assert_one(
        &found,
        &path,
        "interface \"gw0\"",
        "mtu",
        &["unknown field"],
    );
}

#[test]
fn config_bad_interface_address() {
    let (_d, path, found) = config_problems(&format!(
        "{CONFIG_HEAD}[[interface]]\nname = \"gw0\"\naddress = \"10.0.0.300/24\"\n"
    ));
    assert_one(
        &found,
        &path,
        "interface \"gw0\"",
        "address",
        &["invalid", "10.0.0.300/24"],
    );
}

#[test]
fn config_interface_network_address() {
    let (_d, path, found) = config_problems(&format!(
        "{CONFIG_HEAD}[[interface]]\nname = \"gw0\"\naddress = \"10.0.0.0/24\"\n"
    ));
    assert_one(
        &found,
        &path,
        "interface \"gw0\"",
        "address",
        &["10.0.0.1/24"],
    );
}

#[test]
fn config_bad_listen_address() {
    let (_d, path, found) = config_problems(
        "state_dir = \"s\"\ninventory = \".\"\nboot_images = \".\"\n[http]\nlisten = \"10.0.0.1\"\n",
    );
    assert_one(&found, &path, "http", "listen", &["invalid", "10.0.0.1"]);
}

#[test]
fn config_missing_required_key() {
    let (_d, path, found) = config_problems(
        "inventory = \".\"\nboot_images = \".\"\n[http]\nlisten = \"10.0.0.1:80\"\n",
    );
    assert_one(&found, &path, "-", "state_dir", &["missing"]);
    let (_d, path, found) =
        config_problems("state_dir = \"s\"\ninventory = \".\"\nboot_images = \".\"\n[http]\n");
    assert_one(&found, &path, "http", "listen", &["missing"]);
}

#[test]
fn config_bad_type() {
    let (_d, path, found) = config_problems(&format!(
        "{CONFIG_HEAD}[[interface]]\nname = 0\naddress = \"10.0.0.1/24\"\n"
    ));
    assert_one(&found, &path, "interface #1", "name", &["invalid type"]);
}

#[test]
fn config_syntax_error_has_line() {
    let (_d, path, found) =
        config_problems("state_dir = \"s\"\ninventory = \".\"\nboot_images = [\n");
    assert_one(&found, &path, "-", "-", &["syntax", "line 3"]);
}

#[test]
fn config_unreadable_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let found = Config::load(&path).unwrap_err().0;
    assert_one(&found, &path, "-", "-", &["cannot read"]);
}

#[test]
fn config_duplicate_interface_names() {
    let (_d, path, found) = config_problems(&format!(
        "{CONFIG_HEAD}[[interface]]\nname = \"gw0\"\naddress = \"10.0.0.1/24\"\n[[interface]]\nname = \"gw0\"\naddress = \"10.0.1.1/24\"\n"
    ));
    assert_one(
        &found,
        &path,
        "interface \"gw0\"",
        "name",
        &["duplicate", "#1"],
    );
}

#[test]
fn config_interface_name_too_long() {
    let (_d, path, found) = config_problems(&format!(
        "{CONFIG_HEAD}[[interface]]\nname = \"provisioning-net0\"\naddress = \"10.0.0.1/24\"\n"
    ));
    assert_one(
        &found,
        &path,
        "interface \"provisioning-net0\"",
        "name",
        &["15", "IFNAMSIZ"],
    );
}

#[test]
fn config_invalid_store_url() {
    let (_d, path, found) = config_problems(&format!("store = \"mysql://db/x\"\n{CONFIG_HEAD}"));
    assert_one(&found, &path, "-", "store", &["mysql://db/x"]);
}

#[test]
fn config_missing_directories() {
    let (_d, path, found) = config_problems(
        "state_dir = \"s\"\ninventory = \"inv\"\nboot_images = \"img\"\n[http]\nlisten = \"10.0.0.1:80\"\n",
    );
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_eq!(
        (found[0].field.as_str(), found[1].field.as_str()),
        ("inventory", "boot_images")
    );
    assert!(
        found
            .iter()
            .all(|p| p.file == path && p.reason.contains("does not exist")),
        "{found:#?}"
    );
}

#[test]
fn config_reports_every_problem() {
    let (_d, _path, found) = config_problems(
        "state_dir = 5\ncolour = \"red\"\ninventory = \".\"\nboot_images = \".\"\n[http]\nlisten = \"x\"\n\
         [[interface]]\nname = \"gw0\"\naddress = \"bad\"\n[[interface]]\nname = \"gw1\"\naddress = \"10.0.0.1/8\"\nspeed = 1\n",
    );
    let mut places: Vec<(&str, &str)> = found
        .iter()
        .map(|p| (p.entry.as_str(), p.field.as_str()))
        .collect();
    places.sort();
    assert_eq!(
        places,
        [
            ("-", "colour"),
            ("-", "state_dir"),
            ("http", "listen"),
            ("interface \"gw0\"", "address"),
            ("interface \"gw1\"", "speed"),
        ],
        "{found:#?}"
    );
}

#[test]
fn config_relative_paths_resolve_against_its_directory() {
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(root.path().join("inv")).unwrap();
    std::fs::create_dir_all(root.path().join("images")).unwrap();
    let path = etc.join("bootgate.toml");
    std::fs::write(
        &path,
        "state_dir = \"state\"\nstore = \"sqlite:db/b.db\"\ninventory = \"../inv\"\n\
         boot_images = \"../images\"\nsecrets = \"secrets.toml\"\n[http]\nlisten = \"127.0.0.1:8080\"\n",
    )
    .unwrap();
    let cfg = config_ok(&path);
    assert_eq!(cfg.path, path);
    assert_eq!(cfg.state_dir, etc.join("state"));
    assert_eq!(cfg.store, StoreUrl::Sqlite(etc.join("db/b.db")));
    assert_eq!(cfg.inventory_dir, etc.join("../inv"));
    assert_eq!(cfg.boot_images_dir, etc.join("../images"));
    assert_eq!(cfg.secrets_file, Some(etc.join("secrets.toml")));
    assert_eq!(cfg.control_socket, etc.join("state/control.sock"));
    assert!(cfg.interfaces.is_empty());

    // Defaults follow the resolved state_dir; absolute paths and postgres URLs are kept.
    std::fs::write(
        &path,
        "state_dir = \"/var/lib/bg\"\nstore = \"postgres://bg@db1/bootgate\"\ninventory = \"../inv\"\n\
         boot_images = \"../images\"\ncontrol_socket = \"/run/bootgate.sock\"\n[http]\nlisten = \"127.0.0.1:8080\"\n",
    )
    .unwrap();
    let cfg = config_ok(&path);
    assert_eq!(
        cfg.store,
        StoreUrl::Postgres("postgres://bg@db1/bootgate".into())
    );
    assert_eq!(cfg.control_socket, PathBuf::from("/run/bootgate.sock"));
    assert_eq!(cfg.secrets_file, None);

    std::fs::write(
        &path,
        "state_dir = \"state\"\ninventory = \"../inv\"\nboot_images = \"../images\"\n[http]\nlisten = \"127.0.0.1:8080\"\n",
    )
    .unwrap();
    assert_eq!(
        config_ok(&path).store,
        StoreUrl::Sqlite(etc.join("state/bootgate.db"))
    );
}

#[test]
fn bmcs_on_one_address_with_different_ports_are_different_bmcs() {
    // e.g. emulators or port forwards: 10.1.0.20:623 and 10.1.0.20:624 each power one host
    let dir = write_inventory(&[(
        "x.toml",
        Some(concat!(
            host2!(
                "bmc = { address = \"10.1.0.20\", port = 623, vendor = \"generic\", protocol = \"ipmi\", credential = \"c\" }"
            ),
            "[[host]]\nname = \"h3\"\nrole = \"gpu\"\nmacs = [\"02:00:00:00:00:03\"]\n",
            "bmc = { address = \"10.1.0.20\", port = 624, vendor = \"generic\", protocol = \"ipmi\", credential = \"c\" }\n"
        )),
    )]);
    let inv = load_ok(dir.path());
    assert_eq!(inv.hosts.len(), 3);
}
