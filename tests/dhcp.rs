//! DHCP against real clients (busybox udhcpc, ISC dhclient) in namespaces the tests create:
//! reservations, dynamic addresses, INIT-REBOOT, RELEASE, restarts, known-hosts-only
//! subnets, discovery, and PXE boot file selection. Needs root; scripts/test.sh installs
//! the clients.

mod support;

use serde_json::Value;
use support::*;

const VM0_MAC: &str = "52:54:00:d7:8e:1d";
const VM1_MAC: &str = "52:54:00:a8:28:2f";

/// Adds another client NIC `name` with `mac` to the rack bridge.
fn add_client(lab: &Lab, name: &str, mac: &str) {
    let peer = format!("{name}-br");
    lab.rack
        .ip(&["link", "add", name, "type", "veth", "peer", "name", &peer]);
    lab.rack.ip(&["link", "set", &peer, "master", "br0", "up"]);
    lab.rack.ip(&["link", "set", name, "address", mac]);
    lab.rack.ip(&["link", "set", name, "up"]);
}

fn leases(site: &Site) -> Vec<Value> {
    site.cli_json(&["leases", "list"])
        .as_array()
        .unwrap()
        .clone()
}

fn lease_of<'a>(leases: &'a [Value], ip: &str) -> &'a Value {
    leases
        .iter()
        .find(|l| l["ip"] == ip)
        .unwrap_or_else(|| panic!("no lease on {ip}: {leases:?}"))
}

fn hosts(site: &Site) -> Vec<Value> {
    site.cli_json(&["hosts", "list"])
        .as_array()
        .unwrap()
        .clone()
}

/// The discovered hosts, once there are `n` of them (discovery is written off the DHCP path,
/// a moment after the reply).
fn discovered_hosts(site: &Site, n: usize) -> Vec<Value> {
    let found = wait_for(std::time::Duration::from_secs(5), || {
        let d: Vec<Value> = hosts(site)
            .into_iter()
            .filter(|h| h["state"] == "discovered")
            .collect();
        (d.len() == n).then_some(d)
    });
    found.unwrap_or_else(|| panic!("expected {n} discovered hosts: {:?}", hosts(site)))
}

fn in_dynamic_range(ip: &str) -> bool {
    let last: u8 = ip.rsplit('.').next().unwrap().parse().unwrap();
    ip.starts_with("10.250.0.") && (100..=250).contains(&last)
}

#[test]
fn real_clients_get_reserved_and_dynamic_addresses_renew_and_release() {
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    let _daemon = Daemon::start(&lab, &site);
    let work = tempfile::tempdir().unwrap();

    // A known MAC (vm0) gets its reservation, with the subnet's options.
    lab.rack.ip(&["link", "set", "eth0", "address", VM0_MAC]);
    let l = udhcpc(&lab.rack, "eth0", work.path(), &[]).expect("udhcpc got no lease");
    assert_eq!(l.ip, "10.250.0.10");
    assert_eq!(l.fields["serverid"], "10.250.0.1");
    assert_eq!(l.fields["router"], "10.250.0.1");
    assert_eq!(l.fields["dns"], "10.250.0.1");
    assert_eq!(l.fields["lease"], "43200");
    assert_eq!(l.fields["domain"], "lab.internal");
    let all = leases(&site);
    let vm0 = lease_of(&all, "10.250.0.10");
    assert_eq!(vm0["mac"], VM0_MAC);
    assert_eq!(vm0["state"], "active");
    assert_eq!(vm0["host"], "vm0");
    for field in ["ip", "mac", "state", "starts", "ends", "host"] {
        assert!(vm0.get(field).is_some(), "lease JSON lacks {field}");
    }

    // Filters: by CIDR and IP; an unknown subnet name lists nothing.
    let cfg = site.config();
    let out = bootgate(&[
        "--config",
        path_str(&cfg),
        "leases",
        "list",
        "--subnet",
        "10.250.0.0/24",
        "--ip",
        "10.250.0.10",
        "-o",
        "json",
    ]);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    let out = bootgate(&[
        "--config",
        path_str(&cfg),
        "leases",
        "list",
        "--subnet",
        "10.99.0.0/16",
        "-o",
        "json",
    ]);
    assert_eq!(stdout(&out).trim(), "[]");

    // An operator releases vm0's lease; a second release is refused with the reason.
    let out = bootgate(&[
        "--config",
        path_str(&cfg),
        "leases",
        "release",
        "10.250.0.10",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lease_of(&leases(&site), "10.250.0.10")["state"], "released");
    let out = bootgate(&[
        "--config",
        path_str(&cfg),
        "leases",
        "release",
        "10.250.0.10",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not active"), "{}", stderr(&out));
    let out = bootgate(&[
        "--config",
        path_str(&cfg),
        "leases",
        "release",
        "10.250.0.99",
    ]);
    assert!(
        stderr(&out).contains("no lease on 10.250.0.99"),
        "{}",
        stderr(&out)
    );

    // An unknown MAC gets a dynamic address through ISC dhclient and is discovered.
    add_client(&lab, "eth1", "02:00:00:aa:bb:01");
    let dir = tempfile::tempdir().unwrap();
    let l = dhclient(&lab.rack, "eth1", dir.path()).expect("dhclient got no lease");
    assert!(in_dynamic_range(&l.ip), "{}", l.ip);
    let stranger = l.ip.clone();
    let all = leases(&site);
    assert_eq!(lease_of(&all, &stranger)["mac"], "02:00:00:aa:bb:01");
    assert_eq!(lease_of(&all, &stranger)["host"], Value::Null);
    let discovered = discovered_hosts(&site, 1);
    assert_eq!(discovered[0]["macs"][0], "02:00:00:aa:bb:01");

    // Running again with its lease file: INIT-REBOOT for the same address, ACKed.
    lab.rack.ip(&["-4", "addr", "flush", "dev", "eth1"]);
    let again = dhclient(&lab.rack, "eth1", dir.path()).expect("second dhclient run");
    assert_eq!(again.ip, stranger);

    // DHCPRELEASE: the store shows the lease released.
    dhclient_release(&lab.rack, "eth1", dir.path());
    let released = wait_for(std::time::Duration::from_secs(5), || {
        let all = leases(&site);
        let l = lease_of(&all, &stranger).clone();
        (l["state"] == "released").then_some(l)
    });
    assert!(released.is_some(), "lease on {stranger} not released");

    // Every grant and the release are in the event log.
    let out_json = site.cli_json(&["events", "--ip", &stranger]);
    let kinds: Vec<String> = out_json
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        ["lease-committed", "lease-committed", "lease-released"],
        "{kinds:?}"
    );
}

#[test]
fn a_client_keeps_its_address_across_a_daemon_restart() {
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    let mut daemon = Daemon::start(&lab, &site);
    lab.rack
        .ip(&["link", "set", "eth0", "address", "02:00:00:aa:bb:02"]);
    let dir = tempfile::tempdir().unwrap();
    let first = dhclient(&lab.rack, "eth0", dir.path()).expect("first lease");
    assert!(daemon.stop().success());

    let _daemon = Daemon::start(&lab, &site);
    lab.rack.ip(&["-4", "addr", "flush", "dev", "eth0"]);
    let second = dhclient(&lab.rack, "eth0", dir.path()).expect("lease after restart");
    assert_eq!(first.ip, second.ip);
    // And a brand-new client is not given that address.
    add_client(&lab, "eth1", "02:00:00:aa:bb:03");
    let other = udhcpc(&lab.rack, "eth1", dir.path(), &[]).expect("other client");
    assert_ne!(other.ip, first.ip);
}

#[test]
fn known_hosts_only_subnets_ignore_strangers_but_record_them() {
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    let f = site.inventory_file("subnets.toml");
    let text = std::fs::read_to_string(&f).unwrap();
    std::fs::write(
        &f,
        text.replace("known_hosts_only = false", "known_hosts_only = true"),
    )
    .unwrap();
    let _daemon = Daemon::start(&lab, &site);
    let work = tempfile::tempdir().unwrap();

    lab.rack
        .ip(&["link", "set", "eth0", "address", "02:00:00:aa:bb:04"]);
    assert!(udhcpc(&lab.rack, "eth0", work.path(), &[]).is_none());
    let discovered = discovered_hosts(&site, 1);
    assert_eq!(discovered[0]["macs"][0], "02:00:00:aa:bb:04");
    assert!(leases(&site).is_empty());

    lab.rack.ip(&["link", "set", "eth0", "address", VM1_MAC]);
    let l = udhcpc(&lab.rack, "eth0", work.path(), &[]).expect("known host served");
    assert_eq!(l.ip, "10.250.0.11");
}

#[test]
fn pxe_clients_are_told_their_boot_file() {
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    // vm2 needs snponly.efi (a per-host override of the firmware-stage file).
    let f = site.inventory_file("hosts.toml");
    let text = std::fs::read_to_string(&f).unwrap().replace(
        "macs = [\"52:54:00:e0:a7:44\"]",
        "macs = [\"52:54:00:e0:a7:44\"]\nboot_file = \"snponly.efi\"",
    );
    std::fs::write(&f, text).unwrap();
    let _daemon = Daemon::start(&lab, &site);
    let work = tempfile::tempdir().unwrap();
    lab.rack.ip(&["link", "set", "eth0", "address", VM1_MAC]);

    // (vendor class, option 93 hex, option 77 hex) → expected boot file
    let cases: &[(&str, &str, Option<&str>, String)] = &[
        (
            "PXEClient:Arch:00000:UNDI:002001",
            "0000",
            None,
            "undionly.kpxe".into(),
        ),
        (
            "PXEClient:Arch:00007:UNDI:003000",
            "0007",
            None,
            "ipxe.efi".into(),
        ),
        (
            "PXEClient:Arch:00000:UNDI:002001",
            "0000",
            Some("69505845"),
            format!("http://10.250.0.1:8080/ipxe/mac/{VM1_MAC}"),
        ),
    ];
    for (vendor, arch, user_class, want) in cases {
        let arch_opt = format!("0x5d:{arch}");
        let mut extra = vec!["-V", vendor, "-x", &arch_opt];
        let uc;
        if let Some(u) = user_class {
            uc = format!("0x4d:{u}");
            extra.extend(["-x", &uc]);
        }
        lab.rack.ip(&["-4", "addr", "flush", "dev", "eth0"]);
        let l = udhcpc(&lab.rack, "eth0", work.path(), &extra)
            .unwrap_or_else(|| panic!("no lease for {vendor} arch {arch}"));
        assert_eq!(
            &l.fields["boot_file"], want,
            "{vendor} arch {arch} {user_class:?}"
        );
        assert_eq!(l.fields["siaddr"], "10.250.0.1");
        assert_eq!(l.ip, "10.250.0.11");
    }
    lab.rack
        .ip(&["link", "set", "eth0", "address", "52:54:00:e0:a7:44"]);
    lab.rack.ip(&["-4", "addr", "flush", "dev", "eth0"]);
    let l = udhcpc(
        &lab.rack,
        "eth0",
        work.path(),
        &["-V", "PXEClient:Arch:00007:UNDI:003000", "-x", "0x5d:0007"],
    )
    .expect("vm2 lease");
    assert_eq!(l.fields["boot_file"], "snponly.efi");
}

/// client ns ── cl0 ⇄ rl-down (10.250.1.1/24) [relay ns: ISC dhcrelay -a] rl-up (10.250.0.5/24)
/// ── rack bridge ── gw0 (10.250.0.1): a relayed client gets an address from the relay's
/// subnet (chosen by giaddr), and option 82 (circuit-id = relay interface name) is stored
/// with the lease and mapped to its rack position through the inventory's switch map.
#[test]
fn a_relayed_client_gets_an_address_from_the_relays_subnet_with_option_82() {
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    std::fs::write(
        site.inventory_file("relay.toml"),
        r#"
[[subnet]]
name = "rack2"
cidr = "10.250.1.0/24"
purpose = "provisioning"
relay_addresses = ["10.250.1.1"]
gateway = "10.250.1.1"
lease_time = "1h"
dynamic_ranges = [{ start = "10.250.1.100", end = "10.250.1.200" }]

[[rack]]
name = "r2"
[rack.switch]
name = "leaf-r2"
ports = { "rl-down" = 7 }
"#,
    )
    .unwrap();
    let relay = Netns::new("relay");
    let client = Netns::new("client");
    lab.rack.ip(&[
        "link",
        "add",
        "rl-up-br",
        "type",
        "veth",
        "peer",
        "name",
        "rl-up",
        "netns",
        &relay.name,
    ]);
    lab.rack
        .ip(&["link", "set", "rl-up-br", "master", "br0", "up"]);
    relay.ip(&["addr", "add", "10.250.0.5/24", "dev", "rl-up"]);
    relay.ip(&["link", "set", "rl-up", "up"]);
    relay.ip(&[
        "link",
        "add",
        "rl-down",
        "type",
        "veth",
        "peer",
        "name",
        "cl0",
        "netns",
        &client.name,
    ]);
    relay.ip(&["addr", "add", "10.250.1.1/24", "dev", "rl-down"]);
    relay.ip(&["link", "set", "rl-down", "up"]);
    client.ip(&["link", "set", "cl0", "address", "02:00:00:aa:bb:05"]);
    client.ip(&["link", "set", "cl0", "up"]);
    // The gateway reaches the relay's client-side address through the relay (test ns only).
    lab.gw.ip(&[
        "route",
        "add",
        "10.250.1.0/24",
        "via",
        "10.250.0.5",
        "dev",
        "gw0",
    ]);
    let _daemon = Daemon::start(&lab, &site);
    let work = tempfile::tempdir().unwrap();
    relay.background(
        relay
            .cmd("dhcrelay")
            .args([
                "-4",
                "-d",
                "-q",
                "-a",
                "--no-pid",
                "-id",
                "rl-down",
                "-iu",
                "rl-up",
                "10.250.0.1",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));

    let l = wait_for(std::time::Duration::from_secs(20), || {
        udhcpc(&client, "cl0", work.path(), &[])
    })
    .expect("relayed client got no lease");
    assert!(l.ip.starts_with("10.250.1."), "{}", l.ip);
    assert_eq!(l.fields["router"], "10.250.1.1");
    let all = leases(&site);
    let lease = lease_of(&all, &l.ip);
    assert_eq!(lease["subnet"], "rack2");
    assert_eq!(lease["giaddr"], "10.250.1.1");
    assert_eq!(lease["circuit_id"], "rl-down");
    let ev = site.cli_json(&["events", "--ip", &l.ip, "--kind", "lease-committed"]);
    assert_eq!(ev[0]["detail"]["rack"], "r2", "{ev}");
    assert_eq!(ev[0]["detail"]["position"], 7, "{ev}");
}

/// Kea's perfdhcp drives a few thousand DORA exchanges: every ACKed address is unique and
/// every lease it was ACKed is in the store.
#[test]
fn perfdhcp_exchanges_leave_unique_durable_leases() {
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    let _daemon = Daemon::start(&lab, &site);
    // perfdhcp needs an address on its interface (outside the dynamic range).
    lab.rack
        .ip(&["addr", "add", "10.250.0.2/24", "dev", "eth0"]);
    let out = lab
        .rack
        .cmd("timeout")
        .args([
            "60", "perfdhcp", "-4", "-l", "eth0", "-r", "300", "-R", "140", "-n", "2000", "-p",
            "20",
        ])
        .output()
        .unwrap();
    let text = stdout(&out);
    // "***Statistics for: REQUEST-ACK***" … "received packets: N"
    let acks: usize = text
        .split("REQUEST-ACK")
        .nth(1)
        .and_then(|s| s.lines().find(|l| l.starts_with("received packets:")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no REQUEST-ACK stats in perfdhcp output:\n{text}\n{}",
                stderr(&out)
            )
        });
    assert!(acks >= 1000, "only {acks} ACKs:\n{text}");
    assert!(text.contains("non unique addresses: 0"), "{text}");
    let all = leases(&site);
    let active: Vec<&Value> = all.iter().filter(|l| l["state"] == "active").collect();
    // 140 distinct client MACs, each holding exactly one address.
    let mut macs: Vec<&str> = active.iter().map(|l| l["mac"].as_str().unwrap()).collect();
    macs.sort();
    let n = macs.len();
    macs.dedup();
    assert_eq!(macs.len(), n, "a MAC holds two active leases");
    assert!((100..=140).contains(&n), "{n} active leases");
    // Every ACK was committed: one lease-committed event per ACK.
    let events = site.cli_json(&["events", "--kind", "lease-committed"]);
    assert!(
        events.as_array().unwrap().len() >= acks,
        "{} commits for {acks} ACKs",
        events.as_array().unwrap().len()
    );
}

/// A proxyDHCP subnet (another server assigns addresses): a PXE client's DISCOVER gets a
/// boot-only OFFER (yiaddr 0, PXEClient, boot file), its REQUEST to port 4011 a boot-only
/// ACK; a plain client gets nothing.
#[test]
fn proxy_dhcp_answers_pxe_clients_with_boot_information_only() {
    use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};
    use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    let f = site.inventory_file("subnets.toml");
    let text = std::fs::read_to_string(&f).unwrap();
    let text = text
        .lines()
        .filter(|l| !l.starts_with("dynamic_ranges"))
        .collect::<Vec<_>>()
        .join("\n")
        + "\nproxy_dhcp = true\n";
    std::fs::write(&f, text).unwrap();
    let _daemon = Daemon::start(&lab, &site);
    // The "other" server gave the client 10.250.0.60.
    lab.rack
        .ip(&["addr", "add", "10.250.0.60/24", "dev", "eth0"]);
    lab.rack.ip(&["link", "set", "eth0", "address", VM1_MAC]);

    let ask = |pxe: bool, kind: MessageType, port: u16| {
        let mut m = Message::default();
        m.set_chaddr(&[0x52, 0x54, 0, 0xa8, 0x28, 0x2f])
            .set_xid(0x1234);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        if pxe {
            m.opts_mut().insert(DhcpOption::ClassIdentifier(
                b"PXEClient:Arch:00007:UNDI:003000".to_vec(),
            ));
            m.opts_mut()
                .insert(DhcpOption::Unknown(dhcproto::v4::UnknownOption::new(
                    OptionCode::from(93u8),
                    vec![0, 7],
                )));
        }
        if port == 4011 {
            m.set_ciaddr(Ipv4Addr::new(10, 250, 0, 60));
        } else {
            m.set_flags(dhcproto::v4::Flags::default().set_broadcast());
        }
        let mut buf = Vec::new();
        m.encode(&mut Encoder::new(&mut buf)).unwrap();
        in_netns(&lab.rack, move || {
            let s = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )
            .unwrap();
            s.set_reuse_address(true).unwrap();
            s.set_broadcast(true).unwrap();
            s.bind_device(Some(b"eth0")).unwrap();
            let local = if port == 4011 { 4011 } else { 68 };
            s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, local).into())
                .unwrap();
            let sock: UdpSocket = s.into();
            sock.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let to = if port == 4011 {
                SocketAddrV4::new(Ipv4Addr::new(10, 250, 0, 1), 4011)
            } else {
                SocketAddrV4::new(Ipv4Addr::BROADCAST, 67)
            };
            sock.send_to(&buf, to).unwrap();
            let mut rbuf = [0u8; 1500];
            let n = sock.recv(&mut rbuf).ok()?;
            Message::decode(&mut Decoder::new(&rbuf[..n])).ok()
        })
    };

    assert!(
        ask(false, MessageType::Discover, 67).is_none(),
        "plain client answered"
    );
    let offer = ask(true, MessageType::Discover, 67).expect("no proxy offer");
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(offer.siaddr(), Ipv4Addr::new(10, 250, 0, 1));
    assert!(offer.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert!(matches!(
        offer.opts().get(OptionCode::ClassIdentifier),
        Some(DhcpOption::ClassIdentifier(c)) if c == b"PXEClient"
    ));
    assert!(matches!(
        offer.opts().get(OptionCode::BootfileName),
        Some(DhcpOption::BootfileName(f)) if f == b"ipxe.efi"
    ));
    let ack = ask(true, MessageType::Request, 4011).expect("no answer on port 4011");
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(leases(&site).is_empty(), "proxyDHCP must not lease");
}

/// A squatter uses the first dynamic address without a lease: the conflict probe (ICMP
/// echo) finds it, the address is quarantined with an `address-conflict` event, and the
/// client is offered the next one.
#[test]
fn rfc2131_4_4_1_a_squatted_address_is_probed_and_skipped() {
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    add_client(&lab, "sq0", "02:00:00:aa:bb:06");
    lab.rack
        .ip(&["addr", "add", "10.250.0.100/24", "dev", "sq0"]);
    let _daemon = Daemon::start(&lab, &site);
    let work = tempfile::tempdir().unwrap();
    lab.rack
        .ip(&["link", "set", "eth0", "address", "02:00:00:aa:bb:07"]);
    let l = udhcpc(&lab.rack, "eth0", work.path(), &[]).expect("lease");
    assert_eq!(l.ip, "10.250.0.101");
    let ev = site.cli_json(&["events", "--kind", "address-conflict"]);
    assert_eq!(ev[0]["ip"], "10.250.0.100", "{ev}");
}

/// The gateway has a second interface that the config does not list: a client behind it
/// gets no answer, while the served interface keeps working.
#[test]
fn interfaces_missing_from_the_config_are_never_answered() {
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    let other = Netns::new("other");
    lab.gw.ip(&[
        "link",
        "add",
        "gw1",
        "type",
        "veth",
        "peer",
        "name",
        "oc0",
        "netns",
        &other.name,
    ]);
    lab.gw.ip(&["addr", "add", "10.250.5.1/24", "dev", "gw1"]);
    lab.gw.ip(&["link", "set", "gw1", "up"]);
    other.ip(&["link", "set", "oc0", "up"]);
    let _daemon = Daemon::start(&lab, &site);
    let work = tempfile::tempdir().unwrap();
    assert!(udhcpc(&other, "oc0", work.path(), &[]).is_none());
    lab.rack.ip(&["link", "set", "eth0", "address", VM0_MAC]);
    assert_eq!(
        udhcpc(&lab.rack, "eth0", work.path(), &[]).unwrap().ip,
        "10.250.0.10"
    );
}

/// RFC 2131 §4.3.2 RENEWING: a bound udhcpc renews by unicast (SIGUSR1) and keeps its
/// address with a later end; SIGUSR2 releases it.
#[test]
fn rfc2131_4_3_2_a_bound_client_renews_and_releases() {
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    let _daemon = Daemon::start(&lab, &site);
    let work = tempfile::tempdir().unwrap();
    lab.rack
        .ip(&["link", "set", "eth0", "address", "02:00:00:aa:bb:08"]);
    let (pid, out) = udhcpc_daemon(&lab.rack, "eth0", work.path());
    let bound = wait_for(std::time::Duration::from_secs(10), || {
        hook_events(&out)
            .into_iter()
            .find(|e| e["event"] == "bound")
    })
    .expect("udhcpc never bound");
    let ip = bound["ip"].clone();
    let first_end = lease_of(&leases(&site), &ip)["ends"].clone();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    sh(std::process::Command::new("kill").args(["-USR1", &pid.to_string()]));
    let renewed = wait_for(std::time::Duration::from_secs(10), || {
        hook_events(&out)
            .into_iter()
            .find(|e| e["event"] == "renew")
    })
    .expect("udhcpc never renewed");
    assert_eq!(renewed["ip"], ip);
    let all = leases(&site);
    let l = lease_of(&all, &ip);
    assert_eq!(l["state"], "active");
    assert!(
        l["ends"].as_str().unwrap() > first_end.as_str().unwrap(),
        "{l} vs {first_end}"
    );
    let out_json = site.cli_json(&["events", "--ip", &ip]);
    let states: Vec<String> = out_json
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["detail"]["state"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(states, ["selecting", "renewing"]);

    sh(std::process::Command::new("kill").args(["-USR2", &pid.to_string()]));
    let released = wait_for(std::time::Duration::from_secs(5), || {
        (lease_of(&leases(&site), &ip)["state"] == "released").then_some(())
    });
    assert!(released.is_some(), "SIGUSR2 did not release {ip}");
}
