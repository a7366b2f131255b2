//! Trust boundaries of the DHCP server (issue 15, items 2 and 4), attacked from a namespace
//! with crafted packets (dhcproto on a raw UDP socket): a giaddr no subnet lists is dropped
//! and counted; option 82 and RFC 3527 link selection sent by a client straight on the
//! served segment are ignored (not in the reply, not in `hosts discovered`); a listed
//! relay's option 82 is still believed; a flood of REQUESTs for addresses never offered
//! takes at most the subnet's per-minute budget, and a normal DORA still works.

mod support;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use dhcproto::v4::relay::{RelayAgentInformation, RelayCode, RelayInfo};
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use serde_json::Value;
use support::*;

const GW: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
/// The listed relay's giaddr (client side) and the address it sends from (server side).
const RELAY_GIADDR: Ipv4Addr = Ipv4Addr::new(10, 250, 1, 1);
const RELAY_SOURCE: &str = "10.250.0.5";

/// A subnet behind the relay 10.250.1.1, and a rack whose switch maps port swp7 to U7.
const RELAY_TOML: &str = r#"
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
remote_id = "leaf-r2"
ports = { "swp7" = 7 }
"#;

fn mac(last: u8, tag: u8) -> [u8; 6] {
    [0x02, tag, 0, 0, 0, last]
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A client message of `kind` from `chaddr`.
fn message(kind: MessageType, chaddr: [u8; 6], xid: u32) -> Message {
    let mut m = Message::default();
    m.set_chaddr(&chaddr).set_xid(xid);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m
}

/// Option 82 with circuit-id `circuit`, remote-id `remote` and, if given, RFC 3527 link
/// selection.
fn option82(circuit: &str, remote: &str, link: Option<Ipv4Addr>) -> DhcpOption {
    let mut info = RelayAgentInformation::default();
    info.insert(RelayInfo::AgentCircuitId(circuit.as_bytes().to_vec()));
    info.insert(RelayInfo::AgentRemoteId(remote.as_bytes().to_vec()));
    if let Some(l) = link {
        info.insert(RelayInfo::LinkSelection(l));
    }
    DhcpOption::RelayAgentInformation(info)
}

/// Sends each of `msgs` from the rack namespace's `eth0` (source port `port`) to `to`, and
/// returns the replies that arrive on that socket within `wait` of the last send.
fn send(
    lab: &Lab,
    msgs: Vec<Message>,
    port: u16,
    to: SocketAddrV4,
    wait: Duration,
) -> Vec<Message> {
    in_netns(&lab.rack, move || {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_broadcast(true).unwrap();
        // A broadcast must leave through eth0. A unicast is routed, and its reply must be
        // heard on whichever interface the kernel takes it in: the rack namespace's bridge
        // answers ARP for eth0's addresses too (arp_ignore 0), so it may arrive on br0.
        if to.ip().is_broadcast() {
            s.bind_device(Some(b"eth0")).unwrap();
        }
        s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())
            .unwrap();
        let sock: UdpSocket = s.into();
        for m in &msgs {
            let mut buf = Vec::new();
            m.encode(&mut Encoder::new(&mut buf)).unwrap();
            sock.send_to(&buf, to).unwrap();
        }
        let mut replies = Vec::new();
        let until = Instant::now() + wait;
        let mut rbuf = [0u8; 1500];
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let Ok(n) = sock.recv(&mut rbuf) else { break };
            if let Ok(r) = Message::decode(&mut Decoder::new(&rbuf[..n])) {
                replies.push(r);
            }
        }
        replies
    })
}

/// The value of one Prometheus series (`name{labels}`) on the daemon's /metrics, 0 if absent.
fn metric(lab: &Lab, series: &str) -> f64 {
    let (_, text) =
        curl(&lab.rack, &format!("http://{GW_IP}:{HTTP_PORT}/metrics")).expect("no /metrics");
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// `bootgate hosts discovered` as JSON.
fn discovered(site: &Site) -> Vec<Value> {
    site.cli_json(&["hosts", "discovered"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn discovered_mac(site: &Site, m: [u8; 6]) -> Option<Value> {
    let m = mac_str(m);
    discovered(site)
        .into_iter()
        .find(|d| d["mac"] == m.as_str())
}

/// The rack namespace's eth0 as a relay agent: it sends from 10.250.0.5 and also holds its
/// client-side address 10.250.1.1, which the gateway reaches on gw0 (test namespaces only).
fn relay_lab() -> (Lab, Site) {
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    std::fs::write(site.inventory_file("relay.toml"), RELAY_TOML).unwrap();
    lab.rack
        .ip(&["addr", "add", &format!("{RELAY_SOURCE}/24"), "dev", "eth0"]);
    lab.rack
        .ip(&["addr", "add", "10.250.1.1/24", "dev", "eth0"]);
    lab.gw.ip(&["route", "add", "10.250.1.0/24", "dev", "gw0"]);
    (lab, site)
}

/// Issue 15 item 2: a machine on the provisioning segment forging a relay (a giaddr no
/// subnet lists; or one of the segment's addresses that is not its own, which would aim
/// our reply at a third machine) gets no answer, is counted under
/// `bootgate_dhcp_dropped_total{reason="untrusted-relay"}` and its option 82 never reaches
/// `hosts discovered`; the listed relay's option 82 is believed, echoed and mapped to the
/// rack position.
#[test]
fn forged_giaddr_from_a_non_relay_is_dropped_and_a_listed_relays_option82_believed() {
    require_root!();
    let (lab, site) = relay_lab();
    let _daemon = Daemon::start(&lab, &site);
    let server = SocketAddrV4::new(GW, 67);

    let forger = mac(0x66, 0xee);
    let forged = |giaddr: Ipv4Addr, xid: u32| {
        let mut m = message(MessageType::Discover, forger, xid);
        m.set_giaddr(giaddr).set_hops(1);
        m.opts_mut().insert(option82("swp7", "leaf-r2", None));
        m
    };
    let replies = send(
        &lab,
        vec![
            forged(Ipv4Addr::new(10, 250, 5, 5), 0x0bad_0001),
            forged(Ipv4Addr::new(10, 250, 0, 66), 0x0bad_0002),
        ],
        67,
        server,
        Duration::from_secs(2),
    );
    assert!(
        replies.is_empty(),
        "a forged relay was answered: {replies:?}"
    );
    assert_eq!(
        metric(
            &lab,
            r#"bootgate_dhcp_dropped_total{reason="untrusted-relay"}"#
        ),
        2.0
    );

    let real = mac(0x07, 0xaa);
    let mut relayed = message(MessageType::Discover, real, 0x600d_0001);
    relayed.set_giaddr(RELAY_GIADDR).set_hops(1);
    relayed.opts_mut().insert(option82("swp7", "leaf-r2", None));
    let replies = send(&lab, vec![relayed], 67, server, Duration::from_secs(3));
    let offer = replies
        .iter()
        .find(|r| r.xid() == 0x600d_0001)
        .unwrap_or_else(|| panic!("the listed relay got no OFFER: {replies:?}"));
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert!(
        offer.yiaddr().octets()[..3] == [10, 250, 1],
        "offer from the relay's subnet, got {}",
        offer.yiaddr()
    );
    let Some(DhcpOption::RelayAgentInformation(echo)) =
        offer.opts().get(OptionCode::RelayAgentInformation)
    else {
        panic!("RFC 3046 §2.2: option 82 not echoed to the listed relay");
    };
    assert_eq!(
        echo.get(RelayCode::AgentCircuitId),
        Some(&RelayInfo::AgentCircuitId(b"swp7".to_vec()))
    );

    // Discovery is written in order, so once the relayed MAC shows, the forger would too.
    let d = wait_for(Duration::from_secs(10), || discovered_mac(&site, real))
        .expect("the relayed MAC was not discovered");
    assert_eq!(d["circuit_id"], "swp7", "{d}");
    assert_eq!(d["suggestion"]["rack"], "r2", "{d}");
    assert_eq!(d["suggestion"]["position"], 7, "{d}");
    assert!(
        discovered_mac(&site, forger).is_none(),
        "a forged relay's MAC reached hosts discovered: {:?}",
        discovered(&site)
    );
}

/// Issue 15 item 2: a client on the served segment (giaddr 0) that inserts option 82 with a
/// rack's circuit-id and an RFC 3527 link selection for the relay subnet is served from its
/// own segment's subnet, gets no option 82 back, and its forged switch port is not recorded:
/// `hosts discovered` shows the MAC without a port or a rack suggestion. The same from a
/// "relay" on the segment itself (giaddr = its own address, as Kea's perfdhcp sends).
#[test]
fn option82_forged_by_a_client_on_a_served_interface_does_not_reach_hosts_discovered() {
    require_root!();
    let (lab, site) = relay_lab();
    let _daemon = Daemon::start(&lab, &site);

    let client = mac(0x99, 0xee);
    let mut m = message(MessageType::Discover, client, 0x0bad_0002);
    m.set_flags(Flags::default().set_broadcast());
    m.opts_mut().insert(option82(
        "swp7",
        "leaf-r2",
        Some(Ipv4Addr::new(10, 250, 1, 0)),
    ));
    let replies = send(
        &lab,
        vec![m],
        68,
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
        Duration::from_secs(3),
    );
    let offer = replies
        .iter()
        .find(|r| r.xid() == 0x0bad_0002)
        .unwrap_or_else(|| panic!("the client got no OFFER: {replies:?}"));
    assert!(
        offer.yiaddr().octets()[..3] == [10, 250, 0],
        "link selection from a client was honoured: {}",
        offer.yiaddr()
    );
    assert!(
        offer
            .opts()
            .get(OptionCode::RelayAgentInformation)
            .is_none(),
        "ignored option 82 was echoed"
    );

    let on_segment = mac(0x98, 0xee);
    let mut m = message(MessageType::Discover, on_segment, 0x0bad_0003);
    m.set_giaddr(RELAY_SOURCE.parse::<Ipv4Addr>().unwrap())
        .set_hops(1);
    m.opts_mut().insert(option82(
        "swp7",
        "leaf-r2",
        Some(Ipv4Addr::new(10, 250, 1, 0)),
    ));
    let replies = send(
        &lab,
        vec![m],
        67,
        SocketAddrV4::new(GW, 67),
        Duration::from_secs(3),
    );
    let offer = replies
        .iter()
        .find(|r| r.xid() == 0x0bad_0003)
        .unwrap_or_else(|| panic!("the on-segment relay got no OFFER: {replies:?}"));
    assert!(
        offer.yiaddr().octets()[..3] == [10, 250, 0],
        "{}",
        offer.yiaddr()
    );
    assert!(
        offer
            .opts()
            .get(OptionCode::RelayAgentInformation)
            .is_none()
    );

    for m in [client, on_segment] {
        let d = wait_for(Duration::from_secs(10), || discovered_mac(&site, m))
            .expect("the client was not discovered");
        assert!(d["circuit_id"].is_null(), "forged circuit-id recorded: {d}");
        assert!(d["remote_id"].is_null(), "forged remote-id recorded: {d}");
        assert!(d["suggestion"].is_null(), "forged port suggested: {d}");
    }
    assert_eq!(
        metric(
            &lab,
            r#"bootgate_dhcp_relay_info_ignored_total{what="option82"}"#
        ),
        2.0
    );
}

/// Issue 15 item 4: 40 SELECTING REQUESTs from new MACs for free addresses we never
/// offered, then 20 REBINDING ones for addresses we hold no record of, take at most
/// `[dhcp] unoffered_acks_per_minute` (5 here) leases; the rest get no answer and are
/// counted. A normal DISCOVER/OFFER/REQUEST (busybox udhcpc) still gets its address.
#[test]
fn a_flood_of_requests_without_offers_takes_at_most_the_budget() {
    require_root!();
    require_peer!("udhcpc", "busybox udhcpc plays the normal client");
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    let cfg = std::fs::read_to_string(site.config()).unwrap();
    std::fs::write(
        site.config(),
        cfg + "\n[dhcp]\nunoffered_acks_per_minute = 5\nconflict_probe = \"off\"\n",
    )
    .unwrap();
    lab.rack
        .ip(&["addr", "add", "10.250.0.5/24", "dev", "eth0"]);
    let _daemon = Daemon::start(&lab, &site);

    let mut flood = Vec::new();
    for i in 0..40u8 {
        let mut m = message(
            MessageType::Request,
            mac(i, 0xdd),
            0xd000_0000 + u32::from(i),
        );
        m.set_flags(Flags::default().set_broadcast());
        let o = m.opts_mut();
        o.insert(DhcpOption::ServerIdentifier(GW));
        o.insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(
            10,
            250,
            0,
            120 + i,
        )));
        flood.push(m);
    }
    for i in 0..20u8 {
        let mut m = message(
            MessageType::Request,
            mac(i, 0xde),
            0xd100_0000 + u32::from(i),
        );
        m.set_flags(Flags::default().set_broadcast());
        m.set_ciaddr(Ipv4Addr::new(10, 250, 0, 200 + i));
        flood.push(m);
    }
    let replies = send(
        &lab,
        flood,
        68,
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
        Duration::from_secs(2),
    );
    let refused = wait_for(Duration::from_secs(10), || {
        let n = metric(
            &lab,
            r#"bootgate_dhcp_dropped_total{reason="unoffered-budget"}"#,
        );
        (n >= 55.0).then_some(n)
    })
    .expect("requests past the budget were not counted");
    assert_eq!(refused, 55.0);
    let acks = replies
        .iter()
        .filter(|r| r.opts().msg_type() == Some(MessageType::Ack))
        .count();
    assert!(acks <= 5, "{acks} ACKs for unoffered addresses");
    let leases = site.cli_json(&["leases", "list"]);
    let active = leases
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["state"] == "active")
        .count();
    assert_eq!(active, 5, "{leases}");

    // The normal flow is never limited.
    lab.rack.ip(&[
        "link", "add", "cl1", "type", "veth", "peer", "name", "cl1-br",
    ]);
    lab.rack
        .ip(&["link", "set", "cl1-br", "master", "br0", "up"]);
    lab.rack
        .ip(&["link", "set", "cl1", "address", "02:cc:00:00:00:01"]);
    lab.rack.ip(&["link", "set", "cl1", "up"]);
    let work = tempfile::tempdir().unwrap();
    let l = wait_for(Duration::from_secs(20), || {
        udhcpc(&lab.rack, "cl1", work.path(), &[])
    })
    .expect("a normal DORA got no lease after the flood");
    assert!(l.ip.starts_with("10.250.0."), "{}", l.ip);
}

/// Issue 15 item 2, end to end: two MACs claim the same switch port through option 82 (the
/// real machine, then another one forging its circuit-id; here both through the listed
/// relay, the worst case). `rack plan --write` refuses with a conflict naming both MACs
/// and writes nothing: discovery never decides which machine a rack position is.
#[test]
fn rack_plan_write_refuses_a_switch_port_claimed_by_two_macs() {
    require_root!();
    let (lab, site) = relay_lab();
    let _daemon = Daemon::start(&lab, &site);
    let server = SocketAddrV4::new(GW, 67);
    let real = mac(0x01, 0xab);
    let forger = mac(0x02, 0xee);
    let relayed = |chaddr: [u8; 6], xid: u32| {
        let mut m = message(MessageType::Discover, chaddr, xid);
        m.set_giaddr(RELAY_GIADDR).set_hops(1);
        m.opts_mut().insert(option82("swp1", "leaf-rz", None));
        m
    };
    send(
        &lab,
        vec![relayed(real, 0xab00_0001), relayed(forger, 0xab00_0002)],
        67,
        server,
        Duration::from_secs(1),
    );
    for m in [real, forger] {
        let d = wait_for(Duration::from_secs(10), || discovered_mac(&site, m))
            .expect("the relayed MAC was not discovered");
        assert_eq!(d["circuit_id"], "swp1", "{d}");
    }

    let manifest = site.dir.path().join("rz.toml");
    std::fs::write(
        &manifest,
        "[rack]\nname = \"lab-rz\"\nprofile = \"lab-debian\"\n\n[rack.switch]\nname = \"leaf-rz\"\nremote_id = \"leaf-rz\"\nports = { swp1 = 1 }\n\n\
         [rack.addressing]\nprovisioning = \"10.250.0.60\"\n\n[[node]]\nposition = 1\nserial = \"SN-Z1\"\n",
    )
    .unwrap();
    let config = site.config();
    let out = bootgate(&[
        "--config",
        path_str(&config),
        "rack",
        "plan",
        path_str(&manifest),
        "--write",
    ]);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "planned a contested port:\n{text}");
    assert!(
        text.contains("switch port swp1 was claimed by more than one MAC")
            && text.contains(&mac_str(real))
            && text.contains(&mac_str(forger)),
        "{text}"
    );
    assert!(
        !site.inventory_file("rack-lab-rz.toml").exists(),
        "the rack was written"
    );
}
