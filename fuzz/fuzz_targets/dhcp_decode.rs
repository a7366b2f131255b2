//! Arbitrary bytes on the DHCP port: decoding must never panic, and whatever decodes must
//! turn into a reply that encodes, reaches the BOOTP minimum and decodes again with the
//! request's xid and MAC. `src/dhcp/request.rs` runs the same property as a proptest in CI.

#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use bootgate::dhcp::Arrival;
use bootgate::dhcp::policy::Decision;
use bootgate::dhcp::reply::{self, BootInfo, ReplyParams};
use bootgate::dhcp::request;
use bootgate::inventory::{IpRange, Purpose, Served, Subnet};
use dhcproto::{Decodable, Decoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let arrival = Arrival {
        iface: "fuzz0".to_string(),
        local_ip: Ipv4Addr::new(10, 0, 0, 1),
        local_port: 67,
        peer: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
    };
    let Ok(req) = request::decode(data, arrival) else {
        return;
    };
    let subnet = Subnet {
        name: "fuzz".to_string(),
        cidr: "10.0.0.0/24".parse().expect("a valid CIDR"),
        purpose: Purpose::Provisioning,
        gateway: Some(Ipv4Addr::new(10, 0, 0, 254)),
        dns: vec![Ipv4Addr::new(10, 0, 0, 2)],
        domain: Some("fuzz.example".to_string()),
        lease_time: Duration::from_secs(3600),
        dynamic_ranges: vec![IpRange {
            start: Ipv4Addr::new(10, 0, 0, 100),
            end: Ipv4Addr::new(10, 0, 0, 199),
        }],
        known_hosts_only: false,
        proxy_dhcp: false,
        served: Served::Interface("fuzz0".to_string()),
        mtu: Some(1500),
        trust_option82: false,
    };
    let boot = BootInfo {
        next_server: Ipv4Addr::new(10, 0, 0, 1),
        filename: "undionly.kpxe".to_string(),
        vendor_class: Some("PXEClient"),
        pxe_discovery_control: true,
        tftp_server_name: Some("10.0.0.1".to_string()),
    };
    let decision = Decision::Offer {
        ip: Ipv4Addr::new(10, 0, 0, 100),
        lease_time: Duration::from_secs(3600),
    };
    let params = ReplyParams {
        server_id: Ipv4Addr::new(10, 0, 0, 1),
        subnet: Some(&subnet),
        boot: Some(&boot),
    };
    let Some(msg) = reply::build(&req, &decision, &params) else {
        panic!("an OFFER decision must produce a reply");
    };
    let _ = reply::destination(&req, &msg);
    let bytes = match reply::encode(&msg) {
        Ok(bytes) => bytes,
        Err(e) => panic!("reply to a decodable request failed to encode: {e}"),
    };
    assert!(bytes.len() >= reply::BOOTP_MIN_LEN);
    let again = match dhcproto::v4::Message::decode(&mut Decoder::new(&bytes)) {
        Ok(m) => m,
        Err(e) => panic!("our own reply does not decode: {e}"),
    };
    assert_eq!(again.xid(), req.xid);
    assert_eq!(again.chaddr(), req.mac.octets());
});
