//! Table-style unit tests over the lab inventory, edited in memory into shapes the loader
//! would refuse (the audit must still say what is wrong with them).

use super::*;
use crate::store::RelayInfo;

fn lab() -> Inventory {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("inventory/lab");
    crate::inventory::load::load_dir(&dir).expect("lab inventory loads")
}

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

const NOW: &str = "2026-11-25T12:00:00Z";

fn lease(ip: &str, mac: &str, state: LeaseState, starts: &str, ends: &str) -> Lease {
    Lease {
        ip: ip.parse().unwrap(),
        mac: mac.parse().unwrap(),
        client_id: None,
        state,
        starts: t(starts),
        ends: t(ends),
        host: None,
        subnet: "provisioning".into(),
        relay: RelayInfo::default(),
    }
}

/// Every lab host with a fresh lease on its reservation.
fn healthy(inv: &Inventory) -> Vec<Lease> {
    inv.hosts
        .iter()
        .map(|h| {
            let ip = h.addresses["provisioning"].to_string();
            lease(
                &ip,
                &h.macs[0].to_string(),
                LeaseState::Active,
                "2026-11-25T11:00:00Z",
                "2026-11-25T23:00:00Z",
            )
        })
        .collect()
}

fn codes(r: &Report) -> Vec<String> {
    r.findings.iter().map(|f| f.code.to_string()).collect()
}

#[test]
fn clean_lab_has_no_findings() {
    let inv = lab();
    let r = audit(&inv, &healthy(&inv), &[], t(NOW), &Options::default()).unwrap();
    assert!(r.findings.is_empty(), "{:#?}", r.findings);
    assert!(!r.failing());
    let s = &r.subnets[0];
    assert_eq!((s.size, s.reserved, s.leased, s.free), (254, 4, 4, 250));
}

#[test]
fn reservation_shapes_the_loader_refuses() {
    let mut inv = lab();
    // vm1 outside its subnet, vm2 in the pool, vm3 on vm0's address (two MACs), and
    // vm0 reserving its own address twice (a second subnet name: duplicate).
    inv.hosts[1]
        .addresses
        .insert("provisioning".into(), "10.99.0.11".parse().unwrap());
    inv.hosts[2]
        .addresses
        .insert("provisioning".into(), "10.250.0.120".parse().unwrap());
    inv.hosts[3]
        .addresses
        .insert("provisioning".into(), "10.250.0.10".parse().unwrap());
    let mut second = inv.subnets[0].clone();
    second.name = "prov-alias".into();
    second.cidr = "10.250.0.0/25".parse().unwrap();
    inv.subnets.push(second);
    inv.hosts[0]
        .addresses
        .insert("prov-alias".into(), "10.250.0.10".parse().unwrap());
    let leases = healthy(&inv);
    let r = audit(&inv, &leases, &[], t(NOW), &Options::default()).unwrap();
    let c = codes(&r);
    for want in [
        "reservation-outside-subnet",
        "reservation-in-dynamic-range",
        "address-two-macs",
    ] {
        assert!(c.contains(&want.to_string()), "{want} missing: {c:?}");
    }
    let two = r
        .findings
        .iter()
        .find(|f| f.code == Code::AddressTwoMacs)
        .unwrap();
    assert_eq!(two.hosts, vec!["vm0", "vm3"]);
    assert!(r.failing());

    // Same host, same address, twice: duplicate-reservation.
    let mut inv = lab();
    let mut second = inv.subnets[0].clone();
    second.name = "prov-alias".into();
    inv.subnets.push(second);
    inv.hosts[0]
        .addresses
        .insert("prov-alias".into(), "10.250.0.10".parse().unwrap());
    let r = audit(&inv, &healthy(&inv), &[], t(NOW), &Options::default()).unwrap();
    assert_eq!(
        codes(&r),
        vec!["duplicate-reservation"],
        "{:#?}",
        r.findings
    );
}

#[test]
fn lease_findings() {
    let mut inv = lab();
    inv.subnets[0].known_hosts_only = true;
    let mut leases = healthy(&inv);
    leases.retain(|l| l.ip.octets()[3] != 10 && l.ip.octets()[3] != 11);
    // A stranger on vm0's address, vm1 on a pool address, a stranger in the pool, an
    // expired stranger (ignored) and a quarantined address.
    leases.push(lease(
        "10.250.0.10",
        "aa:00:00:00:00:01",
        LeaseState::Active,
        "2026-11-25T10:00:00Z",
        "2026-11-25T22:00:00Z",
    ));
    leases.push(lease(
        "10.250.0.150",
        "52:54:00:a8:28:2f",
        LeaseState::Active,
        "2026-11-25T10:00:00Z",
        "2026-11-25T22:00:00Z",
    ));
    leases.push(lease(
        "10.250.0.151",
        "aa:00:00:00:00:02",
        LeaseState::Active,
        "2026-11-25T10:00:00Z",
        "2026-11-25T22:00:00Z",
    ));
    leases.push(lease(
        "10.250.0.152",
        "aa:00:00:00:00:03",
        LeaseState::Active,
        "2026-11-20T10:00:00Z",
        "2026-11-20T22:00:00Z",
    ));
    leases.push(lease(
        "10.250.0.153",
        "aa:00:00:00:00:04",
        LeaseState::Declined,
        "2026-11-25T10:00:00Z",
        "2026-11-25T22:00:00Z",
    ));
    let r = audit(&inv, &leases, &[], t(NOW), &Options::default()).unwrap();
    let c = codes(&r);
    assert_eq!(
        c,
        vec![
            "address-two-macs",
            "unknown-mac-on-known-only-subnet",
            "unknown-mac-on-known-only-subnet",
            "reservation-moved",
            "host-never-seen",
        ],
        "{:#?}",
        r.findings
    );
    let s = &r.subnets[0];
    assert_eq!(
        (s.reserved, s.leased, s.quarantined, s.conflicts),
        (4, 5, 1, 1)
    );
    assert_eq!(s.free, 254 - 4 - 3);
    let moved = r
        .findings
        .iter()
        .find(|f| f.code == Code::ReservationMoved)
        .unwrap();
    assert_eq!(moved.hosts, vec!["vm1"]);
    assert_eq!(
        moved.addresses,
        vec![
            "10.250.0.150".parse::<Ipv4Addr>().unwrap(),
            "10.250.0.11".parse().unwrap()
        ]
    );
    // vm0 has no lease of its own: never seen.
    let never = r
        .findings
        .iter()
        .find(|f| f.code == Code::HostNeverSeen)
        .unwrap();
    assert_eq!(never.hosts, vec!["vm0"]);
}

#[test]
fn stale_hosts_count_history_events() {
    let inv = lab();
    let mut leases = healthy(&inv);
    leases.retain(|l| l.ip.octets()[3] < 12);
    let old = Event {
        id: 1,
        time: t("2026-09-01T00:00:00Z"),
        kind: EventKind::LeaseCommitted,
        ip: Some("10.250.0.12".parse().unwrap()),
        mac: Some("52:54:00:e0:a7:44".parse().unwrap()),
        host: Some("vm2".into()),
        actor: "dhcp".into(),
        detail: serde_json::Value::Null,
    };
    let r = audit(
        &inv,
        &leases,
        std::slice::from_ref(&old),
        t(NOW),
        &Options::default(),
    )
    .unwrap();
    assert_eq!(codes(&r), vec!["host-not-seen-recently", "host-never-seen"]);
    assert_eq!(r.findings[0].hosts, vec!["vm2"]);
    // A wider window forgives vm2.
    let opts = Options {
        stale_after: Duration::from_secs(100 * 86_400),
        ..Default::default()
    };
    let r = audit(&inv, &leases, &[old], t(NOW), &opts).unwrap();
    assert_eq!(codes(&r), vec!["host-never-seen"]);
    assert!(!r.failing(), "info only");
}

#[test]
fn scope_selects_subnets() {
    let inv = lab();
    let opts = Options {
        scope: Scope::Name("nope".into()),
        ..Default::default()
    };
    assert_eq!(
        audit(&inv, &[], &[], t(NOW), &opts).unwrap_err(),
        AuditError::NoSuchSubnet("nope".into())
    );
    let opts = Options {
        scope: Scope::Cidr("10.250.0.0/16".parse().unwrap()),
        ..Default::default()
    };
    let r = audit(&inv, &[], &[], t(NOW), &opts).unwrap();
    assert_eq!(r.subnets.len(), 1);
}

fn ev(id: i64, time: &str, kind: EventKind, ip: &str, mac: &str) -> Event {
    Event {
        id,
        time: t(time),
        kind,
        ip: Some(ip.parse().unwrap()),
        mac: Some(mac.parse().unwrap()),
        host: None,
        actor: "dhcp".into(),
        detail: serde_json::json!({"giaddr": "10.250.1.1", "circuit_id": "Eth1/7"}),
    }
}

#[test]
fn history_pairs_commits_with_their_end() {
    let a = "aa:00:00:00:00:0a";
    let b = "aa:00:00:00:00:0b";
    let ip = "10.250.0.60";
    let events = vec![
        ev(4, "2026-11-03T00:00:00Z", EventKind::LeaseCommitted, ip, b),
        ev(1, "2026-11-01T00:00:00Z", EventKind::LeaseCommitted, ip, a),
        ev(2, "2026-11-01T12:00:00Z", EventKind::LeaseCommitted, ip, a),
        ev(3, "2026-11-02T00:00:00Z", EventKind::LeaseReleased, ip, a),
        ev(5, "2026-11-04T00:00:00Z", EventKind::LeaseCommitted, ip, a),
    ];
    let h = history(&Subject::Ip(ip.parse().unwrap()), &events);
    let ids: Vec<i64> = h.timeline.iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    assert_eq!(h.holdings.len(), 3);
    assert_eq!(h.holdings[0].mac.to_string(), a);
    assert_eq!(h.holdings[0].renewals, 1);
    assert_eq!(h.holdings[0].until, Some(t("2026-11-02T00:00:00Z")));
    assert_eq!(h.holdings[0].ended_by.as_deref(), Some("lease-released"));
    assert_eq!(h.holdings[1].mac.to_string(), b);
    assert_eq!(h.holdings[1].ended_by.as_deref(), Some("taken-over"));
    assert_eq!(h.holdings[1].circuit_id.as_deref(), Some("Eth1/7"));
    assert_eq!(h.holdings[2].until, None);
    assert!(
        h.timeline[0]
            .summary
            .contains("via relay 10.250.1.1 port Eth1/7"),
        "{}",
        h.timeline[0].summary
    );
}
