//! A one-sided partition (issue 15, item 5): gateway A loses PostgreSQL while gateway B
//! keeps it and takes the pool. A client renews at A while A is degraded: A may ACK only up
//! to the end its book already holds (never extended), so when that end passes and B hands
//! the address to another MAC, no address was ever ACKed to two MACs at once. Twenty
//! rounds, each cutting A's own path to the real PostgreSQL (a unix-socket forwarder the
//! test owns) and healing it again; the witnesses are a DHCP client in the rack namespace
//! that records every ACK it receives, both gateways' address books (`/api/v1/book`) and
//! the store, checked twice a round.

#[path = "support/ha.rs"]
mod ha;
#[path = "support/postgres.rs"]
mod pg;
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};
use ha::{GwDaemon, HaLab};
use pg::PgCluster;
use support::wait_for;

const LEASE_SECS: u64 = 6;
/// The one dynamic address: whatever B hands out after a lease ends is this one.
const POOL: &str = "10.250.0.100";

/// A unix-socket forwarder standing in for gateway A's path to PostgreSQL: `cut` closes
/// every connection and removes the socket (A's connects fail at once), `heal` listens
/// again.
struct PgPath {
    socket: PathBuf,
    upstream: PathBuf,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<UnixStream>>>,
}

impl PgPath {
    fn new(dir: &Path, upstream: PathBuf, port: u16) -> PgPath {
        let p = PgPath {
            socket: dir.join(format!(".s.PGSQL.{port}")),
            upstream,
            up: Arc::new(AtomicBool::new(false)),
            conns: Arc::default(),
        };
        p.heal();
        p
    }

    fn heal(&self) {
        let _ = std::fs::remove_file(&self.socket);
        let listener = UnixListener::bind(&self.socket).unwrap();
        self.up.store(true, Ordering::SeqCst);
        let (up, conns, upstream) = (self.up.clone(), self.conns.clone(), self.upstream.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if !up.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { break };
                let Ok(server) = UnixStream::connect(&upstream) else {
                    continue;
                };
                {
                    let mut c = conns.lock().unwrap();
                    c.push(client.try_clone().unwrap());
                    c.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let _ = std::fs::remove_file(&self.socket);
        // Wake the accept loop so it sees `up` is false and drops the listener.
        let _ = UnixStream::connect(&self.socket);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// One ACK the client received.
#[derive(Debug, Clone)]
struct Acked {
    ip: Ipv4Addr,
    mac: [u8; 6],
    from: Ipv4Addr,
    at: Instant,
    lease: Duration,
}

/// A raw DHCP client on the rack's `eth0` (port 68, broadcast, bound to the device).
struct Client {
    /// The rack namespace's name.
    rack: String,
    /// The gateway namespaces' names.
    gateways: [String; 2],
    sock: UdpSocket,
    acks: Vec<Acked>,
    xid: u32,
}

impl Client {
    fn new(lab: &HaLab) -> Client {
        let rack = lab.rack.name.clone();
        let sock = support::in_netns(&lab.rack, || {
            let s = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )
            .unwrap();
            s.set_reuse_address(true).unwrap();
            s.set_broadcast(true).unwrap();
            s.bind_device(Some(b"eth0")).unwrap();
            s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())
                .unwrap();
            UdpSocket::from(s)
        });
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Client {
            rack,
            gateways: [lab.gwa.name.clone(), lab.gwb.name.clone()],
            sock,
            acks: vec![],
            xid: 0x6000_0000,
        }
    }

    fn message(&mut self, mac: [u8; 6], kind: MessageType) -> Message {
        self.xid += 1;
        let mut m = Message::default();
        m.set_opcode(Opcode::BootRequest)
            .set_htype(HType::Eth)
            .set_chaddr(&mac)
            .set_xid(self.xid)
            .set_flags(Flags::default().set_broadcast());
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m
    }

    fn send(&self, m: &Message, to: Ipv4Addr) {
        self.sock
            .send_to(&m.to_vec().unwrap(), SocketAddrV4::new(to, 67))
            .unwrap();
    }

    /// Replies to `xid` within `wait`: (message type, server id, message). ACKs are
    /// recorded.
    fn replies(&mut self, xid: u32, wait: Duration) -> Vec<(MessageType, Ipv4Addr, Message)> {
        let end = Instant::now() + wait;
        let mut out = vec![];
        let mut buf = [0u8; 1500];
        while Instant::now() < end {
            let Ok(n) = self.sock.recv(&mut buf) else {
                continue;
            };
            let Ok(m) = Message::from_bytes(&buf[..n]) else {
                continue;
            };
            if m.xid() != xid || m.opcode() != Opcode::BootReply {
                continue;
            }
            let kind = match m.opts().get(OptionCode::MessageType) {
                Some(DhcpOption::MessageType(k)) => *k,
                _ => continue,
            };
            let sid = match m.opts().get(OptionCode::ServerIdentifier) {
                Some(DhcpOption::ServerIdentifier(ip)) => *ip,
                _ => Ipv4Addr::UNSPECIFIED,
            };
            if kind == MessageType::Ack {
                let secs = match m.opts().get(OptionCode::AddressLeaseTime) {
                    Some(DhcpOption::AddressLeaseTime(s)) => *s,
                    _ => 0,
                };
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&m.chaddr()[..6]);
                self.acks.push(Acked {
                    ip: m.yiaddr(),
                    mac,
                    from: sid,
                    at: Instant::now(),
                    lease: Duration::from_secs(secs.into()),
                });
            }
            out.push((kind, sid, m));
        }
        out
    }

    /// DISCOVER, then REQUEST the offer of `server`: the address ACKed, if any.
    fn dora(&mut self, mac: [u8; 6], server: Ipv4Addr) -> Option<Ipv4Addr> {
        let d = self.message(mac, MessageType::Discover);
        self.send(&d, Ipv4Addr::BROADCAST);
        let offers = self.replies(d.xid(), Duration::from_millis(800));
        let (_, _, offer) = offers
            .into_iter()
            .find(|(k, sid, _)| *k == MessageType::Offer && *sid == server)?;
        let mut r = self.message(mac, MessageType::Request);
        r.set_xid(d.xid());
        r.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        r.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        self.send(&r, Ipv4Addr::BROADCAST);
        self.replies(d.xid(), Duration::from_millis(800))
            .into_iter()
            .find(|(k, sid, _)| *k == MessageType::Ack && *sid == server)
            .map(|(_, _, m)| m.yiaddr())
    }

    /// A RENEWING request (RFC 2131 §4.3.2: ciaddr filled, no server id or requested
    /// address) unicast to `server`: the reply type, if any.
    fn renew(&mut self, mac: [u8; 6], ip: Ipv4Addr, server: Ipv4Addr) -> Option<MessageType> {
        // The gateway sends the unicast reply to the MAC it leased the address to: the NIC
        // takes that MAC, as the real client's would be.
        let text = mac.map(|b| format!("{b:02x}")).join(":");
        let ok = std::process::Command::new("ip")
            .args(["-n", &self.rack, "link", "set", "eth0", "address", &text])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "could not set eth0's MAC to {text}");
        // And the gateways resolve the address to it, as they would a real client's NIC
        // (their cache still holds the MAC this one test NIC had before).
        for gw in &self.gateways {
            let _ = std::process::Command::new("ip")
                .args([
                    "-n",
                    gw,
                    "neigh",
                    "replace",
                    &ip.to_string(),
                    "lladdr",
                    &text,
                ])
                .args(["dev", "gw0", "nud", "reachable"])
                .status();
        }
        let mut r = self.message(mac, MessageType::Request);
        r.set_ciaddr(ip).set_flags(Flags::default());
        let xid = r.xid();
        self.send(&r, server);
        self.replies(xid, Duration::from_millis(800))
            .into_iter()
            .map(|(k, _, _)| k)
            .next()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A gateway's address book (`GET /api/v1/book`): its live claims.
fn book(ns: &support::Netns, ip: &str) -> Vec<serde_json::Value> {
    let (code, body) = ha::get(ns, &format!("http://{ip}:8080/api/v1/book")).expect("book");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Both books and the store agree that no address is held by two MACs: the live lease
/// claims of A's and B's books name one MAC per address, and that MAC is the store's
/// active lease holder where the store has one (B reads the store).
fn check_books(lab: &HaLab, round: u8, when: &str) {
    let claims: Vec<serde_json::Value> = book(&lab.gwa, ha::GWA_IP)
        .into_iter()
        .chain(book(&lab.gwb, ha::GWB_IP))
        .filter(|c| c["kind"] == "lease" || c["kind"] == "committing")
        .collect();
    let mut holders: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for c in &claims {
        holders
            .entry(c["ip"].as_str().unwrap().to_string())
            .or_default()
            .insert(c["mac"].as_str().unwrap().to_string());
    }
    let (_, body) = ha::get(
        &lab.gwb,
        &format!("http://{}:8080/api/v1/leases?state=active", ha::GWB_IP),
    )
    .expect("B's leases");
    let stored: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    for (ip, macs) in &holders {
        assert_eq!(
            macs.len(),
            1,
            "round {round} ({when}): {ip} held by {macs:?}: {claims:#?}"
        );
        if let Some(l) = stored.iter().find(|l| l["ip"] == ip.as_str()) {
            assert!(
                macs.contains(l["mac"].as_str().unwrap()),
                "round {round} ({when}): the books say {macs:?} hold {ip}, the store {l}"
            );
        }
    }
}

fn health(ns: &support::Netns, ip: &str) -> String {
    ha::get(ns, &format!("http://{ip}:8080/healthz"))
        .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["status"].as_str().map(String::from))
        .unwrap_or_default()
}

/// The lab site for a gateway, with a short lease and a one-address pool.
fn site(addr: &str, store: &str) -> support::Site {
    let site = ha::gateway_site(addr, store);
    let subnets = site.inventory_file("subnets.toml");
    let text = std::fs::read_to_string(&subnets)
        .unwrap()
        .replace(
            "lease_time = \"12h\"",
            &format!("lease_time = {LEASE_SECS}"),
        )
        .replace(
            "dynamic_ranges = [{ start = \"10.250.0.100\", end = \"10.250.0.250\" }]",
            &format!("dynamic_ranges = [{{ start = \"{POOL}\", end = \"{POOL}\" }}]"),
        );
    assert!(text.contains(POOL) && text.contains(&format!("lease_time = {LEASE_SECS}")));
    std::fs::write(&subnets, text).unwrap();
    site
}

#[test]
fn one_sided_partition_never_acks_an_address_to_two_macs() {
    support::require_root!();
    let cluster = PgCluster::start();
    let url = rt().block_on(cluster.fresh_db());
    let real = ha::socket_url(&url, cluster.socket_dir(), cluster.port());
    // A reaches PostgreSQL through the forwarder's directory, B directly.
    let a_dir = tempfile::tempdir().unwrap();
    let path = PgPath::new(
        a_dir.path(),
        cluster
            .socket_dir()
            .join(format!(".s.PGSQL.{}", cluster.port())),
        cluster.port(),
    );
    let via_path = ha::socket_url(&url, a_dir.path(), cluster.port());
    let lab = HaLab::new();
    let (site_a, site_b) = (site(ha::GWA_IP, &via_path), site(ha::GWB_IP, &real));
    let _b = GwDaemon::start(&lab.gwb, &site_b);
    let _a = GwDaemon::start(&lab.gwa, &site_a);
    let (a, b) = (
        ha::GWA_IP.parse::<Ipv4Addr>().unwrap(),
        ha::GWB_IP.parse::<Ipv4Addr>().unwrap(),
    );
    // The client's own addresses: one to send from, and the pool's (unicast replies to a
    // renewing client go to its ciaddr).
    lab.rack.ip(&[
        "addr",
        "add",
        &format!("{}/24", ha::CLIENT_IP),
        "dev",
        "eth0",
    ]);
    lab.rack
        .ip(&["addr", "add", &format!("{POOL}/32"), "dev", "eth0"]);
    let mut client = Client::new(&lab);
    let pool: Ipv4Addr = POOL.parse().unwrap();
    let lease = Duration::from_secs(LEASE_SECS);
    let mut capped = 0;

    // The first holder takes the pool's address from B.
    let mut holder = [0x02, 0xaa, 0, 0, 0, 0];
    let mut held_at = Instant::now();
    let ip = wait_for(Duration::from_secs(10), || client.dora(holder, b))
        .unwrap_or_else(|| panic!("no first lease\n{}", ha::daemon_log(&site_b)));
    assert_eq!(ip, pool);
    // BOOTGATE_PARTITION_ROUNDS: fewer rounds when debugging (20 is the bar).
    let rounds: u8 = std::env::var("BOOTGATE_PARTITION_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    for round in 1..=rounds {
        // A (healthy, synced every second) learns the holder's lease from the store.
        std::thread::sleep(Duration::from_millis(1200));

        // A loses PostgreSQL; B keeps it.
        path.cut();
        wait_for(Duration::from_secs(5), || {
            (health(&lab.gwa, ha::GWA_IP) == "degraded").then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "round {round}: A never noticed\n{}",
                ha::daemon_log(&site_a)
            )
        });
        assert_eq!(health(&lab.gwb, ha::GWB_IP), "ok");

        // The holder renews at A: an ACK only up to the end A's book holds, never beyond.
        let before = client.acks.len();
        let answer = client.renew(holder, pool, a);
        eprintln!("round {round}: degraded A answered the renewal with {answer:?}");
        if answer == Some(MessageType::Ack) {
            let ack = client.acks[before..]
                .iter()
                .find(|k| k.from == a)
                .expect("the ACK was recorded")
                .clone();
            assert!(
                ack.at + ack.lease <= held_at + lease + Duration::from_millis(250),
                "round {round}: degraded A extended the lease: {ack:?}"
            );
            capped += 1;
        }
        check_books(&lab, round, "after the degraded renewal");

        // The holder's end passes: B (with the store) hands the address to a new MAC.
        let end = held_at + lease + Duration::from_millis(300);
        std::thread::sleep(end.saturating_duration_since(Instant::now()));
        let next = [0x02, 0xaa, 0, 0, 0, round];
        let got = wait_for(Duration::from_secs(5), || client.dora(next, b)).unwrap_or_else(|| {
            panic!(
                "round {round}: B did not take the pool\n{}",
                ha::daemon_log(&site_b)
            )
        });
        assert_eq!(got, pool);
        // The old holder, still talking to degraded A, never gets an ACK.
        let before = client.acks.len();
        let answer = client.renew(holder, pool, a);
        assert_ne!(
            answer,
            Some(MessageType::Ack),
            "round {round}: {:?}",
            &client.acks[before..]
        );
        check_books(&lab, round, "after B handed the address on");
        (holder, held_at) = (next, Instant::now());

        // Heal A.
        path.heal();
        wait_for(Duration::from_secs(10), || {
            (health(&lab.gwa, ha::GWA_IP) == "ok").then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "round {round}: A did not recover\n{}",
                ha::daemon_log(&site_a)
            )
        });
    }
    assert!(
        capped > 0,
        "A never ACKed a renewal while degraded: nothing was tested"
    );

    // No address was ever ACKed to two MACs for overlapping times.
    let mut by_ip: BTreeMap<Ipv4Addr, Vec<&Acked>> = BTreeMap::new();
    for k in &client.acks {
        by_ip.entry(k.ip).or_default().push(k);
    }
    for (ip, acks) in &by_ip {
        for (i, p) in acks.iter().enumerate() {
            for q in &acks[i + 1..] {
                if p.mac != q.mac {
                    let (first, second) = if p.at <= q.at { (p, q) } else { (q, p) };
                    assert!(
                        first.at + first.lease <= second.at + Duration::from_millis(250),
                        "{ip} ACKed to two MACs at once: {first:?} and {second:?}"
                    );
                }
            }
        }
    }
    // The store agrees: one lease row for the address, and no conflict alert was needed.
    let (leases, conflicts) = rt().block_on(async {
        use bootgate::store::{EventKind, EventLog, EventQuery, LeaseFilter, LeaseStore};
        let s = bootgate::store::postgres::PostgresStore::open(
            &url,
            &bootgate::store::postgres::PgOptions::default(),
        )
        .await
        .unwrap();
        let leases = s.list_leases(&LeaseFilter::default()).await.unwrap();
        let conflicts = s
            .query(&EventQuery {
                kind: Some(EventKind::LeaseConflict),
                ..Default::default()
            })
            .await
            .unwrap();
        (leases, conflicts)
    });
    let at_pool: Vec<_> = leases.iter().filter(|l| l.ip == pool).collect();
    assert_eq!(at_pool.len(), 1, "{at_pool:?}");
    assert!(conflicts.is_empty(), "{conflicts:#?}");
}
