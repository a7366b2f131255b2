//! Two gateways on one segment sharing one PostgreSQL store (issue 8): both answer, an
//! address never goes to two MACs, every ACK is durable through `kill -9`s, and a
//! PostgreSQL restart puts both daemons into degraded mode and back without a restart of
//! their own. Real peers: Debian's PostgreSQL (tests/support/postgres.rs), Kea's perfdhcp
//! as the client load, tcpdump on the client segment as the witness of what was ACKed.

#[path = "support/ha.rs"]
mod ha;
#[path = "support/postgres.rs"]
mod pg;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use bootgate::store::postgres::{PgOptions, PostgresStore};
use bootgate::store::{
    EventKind, EventLog, EventQuery, Lease, LeaseFilter, LeaseState, LeaseStore,
};
use ha::{Ack, Capture, GwDaemon, HaLab};
use pg::PgCluster;
use support::wait_for;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every lease row of the database behind `url` (host side, over TCP).
fn store_leases(url: &str) -> Vec<Lease> {
    rt().block_on(async {
        let s = PostgresStore::open(url, &PgOptions::default())
            .await
            .unwrap();
        let l = s.list_leases(&LeaseFilter::default()).await.unwrap();
        s.close().await;
        l
    })
}

fn store_events(url: &str, kind: EventKind) -> Vec<bootgate::store::Event> {
    rt().block_on(async {
        let s = PostgresStore::open(url, &PgOptions::default())
            .await
            .unwrap();
        let e = s
            .query(&EventQuery {
                kind: Some(kind),
                ..Default::default()
            })
            .await
            .unwrap();
        s.close().await;
        e
    })
}

/// The two invariants over what the wire saw and what the store holds:
/// no address was ACKed to two MACs (leases are 12 h and perfdhcp never releases, so
/// every ACK still stands), and every ACKed (MAC, address) is an active lease in the store.
fn check_acks(acks: &[Ack], leases: &[Lease]) {
    let mut by_ip: BTreeMap<Ipv4Addr, BTreeSet<String>> = BTreeMap::new();
    for a in acks {
        by_ip.entry(a.ip).or_default().insert(a.mac_text());
    }
    let doubles: Vec<_> = by_ip.iter().filter(|(_, m)| m.len() > 1).collect();
    assert!(
        doubles.is_empty(),
        "addresses ACKed to two MACs: {doubles:?}"
    );
    let stored: BTreeMap<Ipv4Addr, &Lease> = leases.iter().map(|l| (l.ip, l)).collect();
    for a in acks {
        let l = stored
            .get(&a.ip)
            .unwrap_or_else(|| panic!("ACK of {} to {} is not in the store", a.ip, a.mac_text()));
        assert_eq!(l.mac.to_string(), a.mac_text(), "ACK of {} vs {l:?}", a.ip);
        assert_eq!(l.state, LeaseState::Active, "{l:?}");
    }
}

/// A fresh database on `cluster`, the three namespaces, and both gateways' sites on it
/// (reached over the cluster's unix socket): (TCP URL for the test's own reads, lab, A, B).
fn two_gateway_lab(cluster: &PgCluster) -> (String, HaLab, support::Site, support::Site) {
    let url = rt().block_on(cluster.fresh_db());
    let sock = ha::socket_url(&url, cluster.socket_dir(), cluster.port());
    (
        url,
        HaLab::new(),
        ha::gateway_site(ha::GWA_IP, &sock),
        ha::gateway_site(ha::GWB_IP, &sock),
    )
}

/// Waits until the gateway at `ip` in `ns` answers `/healthz` with status ok.
fn wait_healthy(ns: &support::Netns, ip: &str, secs: u64) {
    wait_for(Duration::from_secs(secs), || {
        ha::get(ns, &format!("http://{ip}:8080/healthz"))
            .filter(|(code, body)| *code == 200 && body.contains("\"ok\""))
    })
    .unwrap_or_else(|| panic!("{ip} is not healthy"));
}

/// The end of perfdhcp's run (its child exits by itself after -p seconds).
fn finish(mut child: std::process::Child) -> String {
    let out = wait_for(Duration::from_secs(60), || child.try_wait().ok().flatten());
    assert!(out.is_some(), "perfdhcp did not finish");
    let mut text = String::new();
    use std::io::Read;
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut text);
    }
    text
}

/// Load spread over both daemons; gateway A is `kill -9`ed midway and B carries on:
/// both ACKed, no address went to two MACs, every ACK is an active lease in the store.
#[test]
fn two_gateways_share_load_and_survive_a_kill_9() {
    support::require_root!();
    let cluster = PgCluster::shared();
    let (url, lab, site_a, site_b) = two_gateway_lab(cluster);
    let mut a = GwDaemon::start(&lab.gwa, &site_a);
    let _b = GwDaemon::start(&lab.gwb, &site_b);
    lab.rack.ip(&[
        "addr",
        "add",
        &format!("{}/24", ha::CLIENT_IP),
        "dev",
        "eth0",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let cap = Capture::start(&lab.rack, "br0", dir.path());
    let perf = ha::perfdhcp(&lab.rack, 40, 120, 8);
    std::thread::sleep(Duration::from_secs(3));
    a.kill9();
    let text = finish(perf);
    std::thread::sleep(Duration::from_millis(300));
    let acks = cap.stop();
    let servers: BTreeSet<_> = acks.iter().filter_map(|a| a.server).collect();
    assert!(acks.len() >= 50, "only {} ACKs:\n{text}", acks.len());
    assert_eq!(
        servers.len(),
        2,
        "ACKs from {servers:?} only; both gateways should answer:\n{text}\nA:\n{}\nB:\n{}",
        ha::daemon_log(&site_a),
        ha::daemon_log(&site_b)
    );
    check_acks(&acks, &store_leases(&url));
}

/// RFC 3074 load balancing under load: two gateways with `[ha]` see each other's
/// heartbeat, split the unknown clients by hash bucket and take fresh addresses from
/// different halves of the pool, so under perfdhcp on both no REQUEST is NAKed for an
/// address the other gateway took (the race that cost 9 NAKs at 500/s without it), both
/// still ACK, and no address is ACKed to two MACs. Then B is `kill -9`ed: A sees the
/// heartbeat stop and answers everybody.
#[test]
fn rfc3074_load_balancing_ends_the_naks_and_fails_over() {
    support::require_root!();
    let cluster = PgCluster::shared();
    let url = rt().block_on(cluster.fresh_db());
    let sock = ha::socket_url(&url, cluster.socket_dir(), cluster.port());
    let lab = HaLab::new();
    let (site_a, site_b) = (
        ha::gateway_site_ha(ha::GWA_IP, &sock, "gw-a", "gw-b"),
        ha::gateway_site_ha(ha::GWB_IP, &sock, "gw-b", "gw-a"),
    );
    let _a = GwDaemon::start(&lab.gwa, &site_a);
    let mut b = GwDaemon::start(&lab.gwb, &site_b);
    let metrics = |ns: &support::Netns, ip: &str| {
        ha::get(ns, &format!("http://{ip}:8080/metrics"))
            .map(|(_, m)| m)
            .unwrap_or_default()
    };
    for (ns, ip) in [(&lab.gwa, ha::GWA_IP), (&lab.gwb, ha::GWB_IP)] {
        wait_for(Duration::from_secs(10), || {
            metrics(ns, ip)
                .contains("bootgate_ha_peer_up 1")
                .then_some(())
        })
        .unwrap_or_else(|| panic!("{ip} never saw its peer: {}", metrics(ns, ip)));
    }
    lab.rack.ip(&[
        "addr",
        "add",
        &format!("{}/24", ha::CLIENT_IP),
        "dev",
        "eth0",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let cap = Capture::start(&lab.rack, "br0", dir.path());
    let text = finish(ha::perfdhcp(&lab.rack, 200, 100, 10));
    std::thread::sleep(Duration::from_millis(300));
    let acks = cap.stop();
    let (ma, mb) = (metrics(&lab.gwa, ha::GWA_IP), metrics(&lab.gwb, ha::GWB_IP));
    let naks = ha::metric_sum(&ma, "bootgate_dhcp_naks_total")
        + ha::metric_sum(&mb, "bootgate_dhcp_naks_total");
    let conflicts = ha::metric_sum(&ma, "bootgate_lease_conflicts_total")
        + ha::metric_sum(&mb, "bootgate_lease_conflicts_total");
    assert!(
        naks == 0.0 && conflicts == 0.0,
        "{naks} NAKs, {conflicts} commit conflicts:\n{text}"
    );
    let servers: BTreeSet<_> = acks.iter().filter_map(|a| a.server).collect();
    assert!(acks.len() >= 100, "only {} ACKs:\n{text}", acks.len());
    assert_eq!(servers.len(), 2, "ACKs from {servers:?} only:\n{text}");
    for m in [&ma, &mb] {
        assert!(
            ha::metric_sum(m, "bootgate_dhcp_dropped_total{reason=\"peer-bucket\"}") > 0.0,
            "each gateway leaves the peer's buckets alone"
        );
    }
    let leases = store_leases(&url);
    check_acks(&acks, &leases);

    // B dies: A stops hearing it and answers B's buckets too.
    b.kill9();
    wait_for(Duration::from_secs(10), || {
        metrics(&lab.gwa, ha::GWA_IP)
            .contains("bootgate_ha_peer_up 0")
            .then_some(())
    })
    .expect("A never noticed B's silence");
    let cap = Capture::start(&lab.rack, "br0", dir.path());
    let text = finish(ha::perfdhcp(&lab.rack, 50, 40, 4));
    std::thread::sleep(Duration::from_millis(300));
    let acks = cap.stop();
    let servers: BTreeSet<_> = acks.iter().filter_map(|a| a.server).collect();
    assert!(
        acks.len() >= 20,
        "only {} ACKs after B died:\n{text}",
        acks.len()
    );
    assert_eq!(servers.len(), 1, "{servers:?}");
    check_acks(&acks, &store_leases(&url));
}

/// Crash loop: 20 rounds of `kill -9` (alternating gateways, each restarted at once)
/// during a perfdhcp storm, then both up: every address perfdhcp saw ACKed is an active
/// lease in the store, held by the MAC it was ACKed to, and none went to two MACs.
#[test]
fn crash_loop_of_kill_9_loses_no_acked_lease() {
    support::require_root!();
    let cluster = PgCluster::shared();
    let url = rt().block_on(cluster.fresh_db());
    let sock = ha::socket_url(&url, cluster.socket_dir(), cluster.port());
    let lab = HaLab::new();
    let sites = [
        ha::gateway_site(ha::GWA_IP, &sock),
        ha::gateway_site(ha::GWB_IP, &sock),
    ];
    let nss = [&lab.gwa, &lab.gwb];
    let mut daemons = [
        GwDaemon::start(nss[0], &sites[0]),
        GwDaemon::start(nss[1], &sites[1]),
    ];
    lab.rack.ip(&[
        "addr",
        "add",
        &format!("{}/24", ha::CLIENT_IP),
        "dev",
        "eth0",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let cap = Capture::start(&lab.rack, "br0", dir.path());
    let perf = ha::perfdhcp(&lab.rack, 50, 120, 25);
    for round in 0..20 {
        let i = round % 2;
        std::thread::sleep(Duration::from_millis(250));
        daemons[i].kill9();
        daemons[i] = GwDaemon::start(nss[i], &sites[i]);
    }
    let text = finish(perf);
    std::thread::sleep(Duration::from_millis(300));
    let acks = cap.stop();
    assert!(acks.len() >= 50, "only {} ACKs:\n{text}", acks.len());
    check_acks(&acks, &store_leases(&url));
}

/// PostgreSQL stops under load: both daemons go degraded (/healthz says so with the
/// reason, /metrics has bootgate_store_up 0), a known host still gets its reserved
/// address, a new client gets nothing; PostgreSQL starts again: both recover by
/// themselves, the degraded ACK's lease and event arrive in the store, and dynamic
/// allocation resumes.
#[test]
fn postgres_restart_degrades_both_and_they_recover() {
    support::require_root!();
    let cluster = PgCluster::start();
    let (url, lab, site_a, site_b) = two_gateway_lab(&cluster);
    let _a = GwDaemon::start(&lab.gwa, &site_a);
    let _b = GwDaemon::start(&lab.gwb, &site_b);
    // The client NIC is inventory host vm0 (reserved 10.250.0.10).
    lab.rack
        .ip(&["link", "set", "eth0", "address", "52:54:00:d7:8e:1d"]);
    let dir = tempfile::tempdir().unwrap();
    let health = |ns: &support::Netns, ip: &str| {
        ha::get(ns, &format!("http://{ip}:8080/healthz"))
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
    };
    cluster.stop();
    for (ns, ip) in [(&lab.gwa, ha::GWA_IP), (&lab.gwb, ha::GWB_IP)] {
        let h = wait_for(Duration::from_secs(15), || {
            health(ns, ip).filter(|h| h["status"] == "degraded" && !h["degraded"].is_null())
        })
        .unwrap_or_else(|| panic!("{ip} never reported degraded: {:?}", health(ns, ip)));
        assert!(
            h["degraded"]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{h}"
        );
        let (_, metrics) = ha::get(ns, &format!("http://{ip}:8080/metrics")).unwrap();
        assert!(metrics.contains("bootgate_store_up 0"), "{metrics}");
    }
    // The known host is served its reservation from memory.
    let lease = support::udhcpc(&lab.rack, "eth0", dir.path(), &[])
        .expect("known host got no lease while degraded");
    assert_eq!(lease.ip, "10.250.0.10");
    // A new client gets no dynamic address while allocation is paused.
    lab.rack
        .ip(&["link", "set", "eth0", "address", "02:00:00:00:be:ef"]);
    lab.rack.ip(&["-4", "addr", "flush", "dev", "eth0"]);
    assert!(
        support::udhcpc(&lab.rack, "eth0", dir.path(), &["-t", "2"]).is_none(),
        "a dynamic address was handed out while the store was down"
    );

    cluster.start_again();
    for (ns, ip) in [(&lab.gwa, ha::GWA_IP), (&lab.gwb, ha::GWB_IP)] {
        wait_for(Duration::from_secs(20), || {
            health(ns, ip).filter(|h| h["status"] == "ok")
        })
        .unwrap_or_else(|| panic!("{ip} did not recover: {:?}", health(ns, ip)));
        let (_, metrics) = ha::get(ns, &format!("http://{ip}:8080/metrics")).unwrap();
        assert!(metrics.contains("bootgate_store_up 1"), "{metrics}");
        assert!(
            metrics.contains("bootgate_degraded_seconds_total"),
            "{metrics}"
        );
    }
    // The degraded ACK's lease write and its event arrived.
    let leases = store_leases(&url);
    let l = leases
        .iter()
        .find(|l| l.ip == Ipv4Addr::new(10, 250, 0, 10))
        .unwrap_or_else(|| panic!("the degraded ACK's lease is missing: {leases:?}"));
    assert_eq!(l.mac.to_string(), "52:54:00:d7:8e:1d");
    assert_eq!(l.state, LeaseState::Active);
    let commits = store_events(&url, EventKind::LeaseCommitted);
    assert!(
        commits
            .iter()
            .any(|e| e.ip == Some(Ipv4Addr::new(10, 250, 0, 10))),
        "{commits:?}"
    );
    // And dynamic allocation is back.
    let lease = support::udhcpc(&lab.rack, "eth0", dir.path(), &[])
        .expect("no dynamic lease after the store came back");
    let ip: Ipv4Addr = lease.ip.parse().unwrap();
    assert!(ip >= Ipv4Addr::new(10, 250, 0, 100), "{ip}");
}

/// A gateway starts while PostgreSQL is down: it comes up degraded instead of exiting,
/// serves a known host its reservation and boot file from the inventory, records the
/// sighting of a stranger it cannot give an address to; PostgreSQL starts: the daemon
/// becomes healthy without a restart, the inventory is reconciled into the store, and what
/// it queued meanwhile (the daemon-started event, the degraded ACK's lease and event, the
/// stranger as a discovered host) is in the database.
#[test]
fn gateway_starts_degraded_without_postgres_and_recovers() {
    support::require_root!();
    let cluster = PgCluster::start();
    let url = rt().block_on(cluster.fresh_db());
    let sock = ha::socket_url(&url, cluster.socket_dir(), cluster.port());
    cluster.stop();
    let lab = HaLab::new();
    let site = ha::gateway_site(ha::GWA_IP, &sock);
    let _a = GwDaemon::start(&lab.gwa, &site);
    let health = || {
        ha::get(&lab.gwa, &format!("http://{}:8080/healthz", ha::GWA_IP))
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
    };
    let h = wait_for(Duration::from_secs(10), || {
        health().filter(|h| h["status"] == "degraded")
    })
    .unwrap_or_else(|| panic!("not degraded: {:?}\n{}", health(), ha::daemon_log(&site)));
    assert!(!h["degraded"]["reason"].is_null(), "{h}");

    // vm0 (reserved 10.250.0.10), as a BIOS PXE client: its address and its boot file.
    let dir = tempfile::tempdir().unwrap();
    lab.rack
        .ip(&["link", "set", "eth0", "address", "52:54:00:d7:8e:1d"]);
    let lease = support::udhcpc(
        &lab.rack,
        "eth0",
        dir.path(),
        &["-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000"],
    )
    .unwrap_or_else(|| panic!("vm0 got no lease while degraded\n{}", ha::daemon_log(&site)));
    assert_eq!(lease.ip, "10.250.0.10");
    assert_eq!(
        lease.fields["boot_file"], "undionly.kpxe",
        "{:?}",
        lease.fields
    );
    // A stranger: no address (allocation paused), but its sighting is kept.
    lab.rack
        .ip(&["link", "set", "eth0", "address", "02:00:00:00:be:ef"]);
    lab.rack.ip(&["-4", "addr", "flush", "dev", "eth0"]);
    assert!(support::udhcpc(&lab.rack, "eth0", dir.path(), &["-t", "2"]).is_none());

    cluster.start_again();
    wait_for(Duration::from_secs(30), || {
        health().filter(|h| h["status"] == "ok")
    })
    .unwrap_or_else(|| panic!("did not recover: {:?}\n{}", health(), ha::daemon_log(&site)));
    let (hosts, started, commits) = wait_for(Duration::from_secs(20), || {
        let r = rt().block_on(async {
            use bootgate::store::HostStore;
            let s = PostgresStore::open(&url, &PgOptions::default())
                .await
                .ok()?;
            let hosts = s.list_hosts().await.ok()?;
            let q = |kind| EventQuery {
                kind: Some(kind),
                ..Default::default()
            };
            let started = s.query(&q(EventKind::DaemonStarted)).await.ok()?;
            let commits = s.query(&q(EventKind::LeaseCommitted)).await.ok()?;
            s.close().await;
            Some((hosts, started, commits))
        })?;
        let discovered = r.0.iter().any(|h| h.name == "discovered-02000000beef");
        (discovered && r.0.iter().any(|h| h.name == "vm0") && !r.1.is_empty()).then_some(r)
    })
    .unwrap_or_else(|| {
        panic!(
            "queued work never reached the store\n{}",
            ha::daemon_log(&site)
        )
    });
    let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    assert!(names.contains(&"vm0"), "inventory reconciled: {names:?}");
    assert_eq!(started.len(), 1, "{started:?}");
    assert!(
        commits
            .iter()
            .any(|e| e.ip == Some(Ipv4Addr::new(10, 250, 0, 10))),
        "{commits:?}"
    );
    let leases = store_leases(&url);
    assert!(
        leases.iter().any(|l| l.ip == Ipv4Addr::new(10, 250, 0, 10)
            && l.mac.to_string() == "52:54:00:d7:8e:1d"
            && l.state == LeaseState::Active),
        "{leases:?}"
    );
    // And the stranger now gets a dynamic address.
    let lease = support::udhcpc(&lab.rack, "eth0", dir.path(), &[])
        .expect("no dynamic lease after the store came back");
    assert!(lease.ip.parse::<Ipv4Addr>().unwrap() >= Ipv4Addr::new(10, 250, 0, 100));
}

/// A QEMU VM (SeaBIOS + iPXE ROM, inventory host vm0) network-boots the test image while
/// gateway A is dead: B alone answers DHCP, serves the iPXE script and image, takes the
/// phone-home, and the shared store ends with vm0 `provisioned`.
#[test]
fn vm_network_boots_while_one_gateway_is_dead() {
    support::require_root!();
    use support::qemu::{self, Firmware, Vm};
    let missing = qemu::missing_host_files();
    support::require_peer!(
        "QEMU host files",
        format!("{missing:?}"),
        missing.is_empty()
    );
    let image = qemu::test_image();
    let cluster = PgCluster::shared();
    let (url, lab, site_a, site_b) = two_gateway_lab(cluster);
    for site in [&site_a, &site_b] {
        let images = site.boot_images();
        std::fs::create_dir_all(images.join("test")).unwrap();
        std::fs::copy(&image.vmlinuz, images.join("test/vmlinuz")).unwrap();
        std::fs::copy(&image.initrd, images.join("test/initrd.gz")).unwrap();
        for f in [&image.undionly, &image.ipxe_efi, &image.snponly] {
            std::fs::copy(f, images.join(f.file_name().unwrap())).unwrap();
        }
    }
    // iPXE waits ~13 s for IPv6 autoconf unless a router says "no IPv6 here".
    let _ = lab
        .gwb
        .cmd("sysctl")
        .args(["-qw", "net.ipv6.conf.gw0.accept_dad=0"])
        .status();
    lab.gwb.background(
        lab.gwb
            .cmd("python3")
            .arg(support::repo().join("tests/support/ra.py"))
            .arg("gw0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let mut a = GwDaemon::start(&lab.gwa, &site_a);
    let _b = GwDaemon::start(&lab.gwb, &site_b);
    a.kill9();
    let work = tempfile::tempdir().unwrap();
    let mut vm = Vm::start(
        &lab.rack.name,
        "vm0",
        &qemu::mac_for("vm0"),
        Firmware::Bios,
        work.path(),
    );
    assert!(
        vm.wait_serial(
            "BOOTGATE-MARKER: INSTALLED status=ok",
            Duration::from_secs(240)
        ),
        "vm0 did not finish:\n{}\nB:\n{}",
        vm.diagnostics(),
        ha::daemon_log(&site_b)
    );
    vm.wait_exit(Duration::from_secs(30));
    let host = rt().block_on(async {
        use bootgate::store::HostStore;
        let s = PostgresStore::open(&url, &PgOptions::default())
            .await
            .unwrap();
        s.get_host("vm0").await.unwrap().unwrap()
    });
    assert_eq!(host.state.as_str(), "provisioned", "{host:?}");
    let leases = store_leases(&url);
    assert!(
        leases
            .iter()
            .any(|l| l.ip == Ipv4Addr::new(10, 250, 0, 10) && l.state == LeaseState::Active),
        "{leases:?}"
    );
}

fn store_hosts(url: &str) -> Vec<bootgate::store::HostRecord> {
    use bootgate::store::HostStore;
    rt().block_on(async {
        let s = PostgresStore::open(url, &PgOptions::default())
            .await
            .unwrap();
        let h = s.list_hosts().await.unwrap();
        s.close().await;
        h
    })
}

/// Two gateways started at the same moment on an empty database: both race to migrate
/// and reconcile the inventory; both come up healthy, every inventory host is in the store
/// exactly once and was added once (one `host-added` event each).
#[test]
fn two_gateways_starting_together_on_an_empty_database_reconcile_once() {
    support::require_root!();
    let cluster = PgCluster::shared();
    let (url, lab, site_a, site_b) = two_gateway_lab(cluster);
    let (_a, _b) = std::thread::scope(|s| {
        let a = s.spawn(|| GwDaemon::start(&lab.gwa, &site_a));
        let b = s.spawn(|| GwDaemon::start(&lab.gwb, &site_b));
        (a.join().unwrap(), b.join().unwrap())
    });
    for (ns, ip) in [(&lab.gwa, ha::GWA_IP), (&lab.gwb, ha::GWB_IP)] {
        wait_healthy(ns, ip, 20);
    }
    let hosts = store_hosts(&url);
    let mut names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["vm0", "vm1", "vm2", "vm3"], "{hosts:?}");
    let added = store_events(&url, EventKind::HostAdded);
    let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
    for e in &added {
        *per_host
            .entry(e.host.clone().unwrap_or_default())
            .or_default() += 1;
    }
    assert!(
        per_host.len() == 4 && per_host.values().all(|&n| n == 1),
        "host-added per host: {per_host:?}"
    );
}

/// PostgreSQL stops and starts again while perfdhcp keeps both gateways busy: both degrade
/// and recover without a restart of their own (same processes, healthy again), no address
/// was ACKed to two MACs, every ACK (before, during and after the outage) is an active
/// lease in the store, every ACKed stranger was recorded as a discovered host, and after
/// the outage both gateways ACK again under load.
#[test]
fn postgres_restart_under_perfdhcp_load_loses_no_ack() {
    support::require_root!();
    let cluster = PgCluster::start();
    let (url, lab, site_a, site_b) = two_gateway_lab(&cluster);
    let mut a = GwDaemon::start(&lab.gwa, &site_a);
    let mut b = GwDaemon::start(&lab.gwb, &site_b);
    lab.rack.ip(&[
        "addr",
        "add",
        &format!("{}/24", ha::CLIENT_IP),
        "dev",
        "eth0",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let cap = Capture::start(&lab.rack, "br0", dir.path());
    // 120 strangers at 40 exchanges/s for 14 s; PostgreSQL goes down after 3 s and comes
    // back once both gateways have said they are degraded.
    let perf = ha::perfdhcp(&lab.rack, 40, 120, 14);
    std::thread::sleep(Duration::from_secs(3));
    cluster.stop();
    for (ns, ip) in [(&lab.gwa, ha::GWA_IP), (&lab.gwb, ha::GWB_IP)] {
        wait_for(Duration::from_secs(8), || {
            ha::get(ns, &format!("http://{ip}:8080/healthz"))
                .filter(|(_, body)| body.contains("\"degraded\""))
        })
        .unwrap_or_else(|| panic!("{ip} never reported degraded while PostgreSQL was down"));
    }
    std::thread::sleep(Duration::from_secs(2));
    cluster.start_again();
    let text = finish(perf);
    for (ns, ip) in [(&lab.gwa, ha::GWA_IP), (&lab.gwb, ha::GWB_IP)] {
        wait_healthy(ns, ip, 30);
    }
    assert!(a.child.try_wait().unwrap().is_none(), "gateway A exited");
    assert!(b.child.try_wait().unwrap().is_none(), "gateway B exited");
    // After the outage, both answer new clients again.
    let perf = ha::perfdhcp(&lab.rack, 40, 240, 5);
    let after = finish(perf);
    std::thread::sleep(Duration::from_secs(2));
    let acks = cap.stop();
    assert!(
        acks.len() >= 50,
        "only {} ACKs:\n{text}\n{after}",
        acks.len()
    );
    let servers: BTreeSet<_> = acks.iter().filter_map(|a| a.server).collect();
    assert_eq!(servers.len(), 2, "ACKs from {servers:?} only");
    check_acks(&acks, &store_leases(&url));
    let discovered: BTreeSet<String> = store_hosts(&url)
        .into_iter()
        .flat_map(|h| h.macs)
        .map(|m| m.to_string())
        .collect();
    for ack in &acks {
        assert!(
            discovered.contains(&ack.mac_text()),
            "ACKed {} was never recorded as a discovered host",
            ack.mac_text()
        );
    }
}
