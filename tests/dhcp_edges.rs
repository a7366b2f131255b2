//! The DHCP server's two kernel edges against a real peer: the ICMP conflict probe
//! (RFC 2131 §4.4.1) and the ARP entry that lets a reply be unicast to `yiaddr` at `chaddr`
//! (RFC 2131 §4.1). Each test builds two namespaces of its own joined by a veth pair
//! (A: `pa0` 10.250.9.1/24, B: `pb0` 10.250.9.2/24) and runs the code under test on a thread
//! that has entered A (`setns` moves only the calling thread). No host interface, route or
//! sysctl is touched; the namespaces are deleted on drop.

use std::future::Future;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use bootgate::dhcp::arp::set_arp_entry;
use bootgate::dhcp::probe::{IcmpSocket, ProbeError, ProbeMode, Prober};
use bootgate::types::MacAddr;

// ---- namespace helper -------------------------------------------------------------------

mod support;
use support::{Netns, in_netns, sh};

/// What these tests need of a namespace beyond tests/support.
trait EdgeNs {
    fn exec(&self, program: &str, args: &[&str]) -> String;
    fn run<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static;
    fn echo_requests_received(&self) -> u64;
}

impl EdgeNs for Netns {
    /// Runs a program inside the namespace (`ip netns exec`), returning stdout.
    fn exec(&self, program: &str, args: &[&str]) -> String {
        let out = sh(self.cmd(program).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a thread that has entered this namespace, inside a current-thread tokio
    /// runtime (which starts no other threads, so every socket is opened in here).
    fn run<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        in_netns(self, move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f())
        })
    }

    /// The `Icmp: InEchos` counter: echo requests this namespace's kernel received.
    fn echo_requests_received(&self) -> u64 {
        let snmp = self.exec("cat", &["/proc/net/snmp"]);
        let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
        let (Some(names), Some(values)) = (icmp.next(), icmp.next()) else {
            panic!("no Icmp lines in /proc/net/snmp:\n{snmp}");
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "InEchos")
            .and_then(|(_, v)| v.parse().ok())
            .expect("InEchos counter")
    }
}

/// Namespaces A and B joined by a veth pair: `pa0` 10.250.9.1/24 in A, `pb0` 10.250.9.2/24
/// in B.
struct Pair {
    a: Netns,
    b: Netns,
}

impl Pair {
    fn new() -> Pair {
        let a = Netns::new("a");
        let b = Netns::new("b");
        a.ip(&[
            "link", "add", "pa0", "type", "veth", "peer", "name", "pb0", "netns", &b.name,
        ]);
        a.ip(&["addr", "add", "10.250.9.1/24", "dev", "pa0"]);
        b.ip(&["addr", "add", "10.250.9.2/24", "dev", "pb0"]);
        a.ip(&["link", "set", "pa0", "up"]);
        b.ip(&["link", "set", "pb0", "up"]);
        Pair { a, b }
    }
}

// ---- tests ------------------------------------------------------------------------------

const PEER: Ipv4Addr = Ipv4Addr::new(10, 250, 9, 2);
const NOBODY: Ipv4Addr = Ipv4Addr::new(10, 250, 9, 77);
const TIMEOUT: Duration = Duration::from_millis(400);

/// Probes PEER and NOBODY, one at a time and then four at once (concurrent probes must not
/// steal each other's replies), returning the socket kind used.
async fn probe_peer_and_nobody() -> Option<IcmpSocket> {
    let prober = Prober::new(ProbeMode::Icmp, TIMEOUT);

    let t = Instant::now();
    assert!(prober.in_use("pa0", PEER).await.expect("probe peer"));
    assert!(
        t.elapsed() < TIMEOUT,
        "peer answered only after {:?}",
        t.elapsed()
    );

    let t = Instant::now();
    assert!(!prober.in_use("pa0", NOBODY).await.expect("probe nobody"));
    let took = t.elapsed();
    assert!(
        took >= TIMEOUT && took < TIMEOUT + Duration::from_secs(1),
        "a free address must take the whole timeout and no more, took {took:?}"
    );

    let (a, b, c, d) = tokio::join!(
        prober.in_use("pa0", PEER),
        prober.in_use("pa0", NOBODY),
        prober.in_use("pa0", PEER),
        prober.in_use("pa0", NOBODY),
    );
    let got = [a, b, c, d].map(|r| r.expect("concurrent probe"));
    assert_eq!(got, [true, false, true, false]);
    prober.socket_kind()
}

#[test]
fn rfc2131_4_4_1_probe_detects_used_and_free_addresses() {
    let pair = Pair::new();
    let before = pair.b.echo_requests_received();
    let kind = pair.a.run(probe_peer_and_nobody);
    // A new namespace has net.ipv4.ping_group_range "1 0" (no group may open ICMP datagram
    // sockets, root included): the prober falls back to a raw socket.
    assert_eq!(kind, Some(IcmpSocket::Raw));
    assert!(pair.b.echo_requests_received() >= before + 3);
}

#[test]
fn rfc2131_4_4_1_probe_uses_datagram_socket_when_allowed() {
    let pair = Pair::new();
    // Namespace-local sysctl: lets every group open ICMP datagram ("ping") sockets in A.
    pair.a.exec(
        "sysctl",
        &["-q", "-w", "net.ipv4.ping_group_range=0 2147483647"],
    );
    let kind = pair.a.run(probe_peer_and_nobody);
    assert_eq!(kind, Some(IcmpSocket::Datagram));
}

#[test]
fn probe_off_sends_nothing() {
    let pair = Pair::new();
    let before = pair.b.echo_requests_received();
    let (peer, bad_iface, kind) = pair.a.run(|| async {
        let prober = Prober::new(ProbeMode::Off, TIMEOUT);
        let t = Instant::now();
        let peer = prober.in_use("pa0", PEER).await.expect("off never fails");
        let bad = prober
            .in_use("nosuch0", PEER)
            .await
            .expect("off never fails");
        assert!(t.elapsed() < Duration::from_millis(50));
        (peer, bad, prober.socket_kind())
    });
    assert!(!peer && !bad_iface);
    assert_eq!(kind, None, "no socket was opened");
    assert_eq!(pair.b.echo_requests_received(), before);
}

#[test]
fn probe_on_unknown_interface_names_it() {
    let pair = Pair::new();
    let err = pair.a.run(|| async {
        Prober::new(ProbeMode::Icmp, TIMEOUT)
            .in_use("nosuch0", PEER)
            .await
            .expect_err("no such interface")
    });
    assert!(matches!(err, ProbeError::Device { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("nosuch0") && msg.contains("10.250.9.2"),
        "{msg}"
    );
}

#[test]
fn rfc2131_4_1_arp_entry_lets_reply_be_unicast_to_yiaddr() {
    let pair = Pair::new();
    let ip = Ipv4Addr::new(10, 250, 9, 50);
    let mac: MacAddr = "02:00:00:00:00:50".parse().expect("mac");
    pair.a
        .run(move || async move { set_arp_entry("pa0", ip, mac) })
        .expect("SIOCSARP");
    let shown = pair.a.ip(&["neigh", "show", "10.250.9.50", "dev", "pa0"]);
    assert!(
        shown.contains("lladdr 02:00:00:00:00:50"),
        "neighbour table: {shown:?}"
    );

    // Setting it again (a retransmitted DISCOVER) overwrites rather than fails.
    let mac2: MacAddr = "02:00:00:00:00:51".parse().expect("mac");
    pair.a
        .run(move || async move { set_arp_entry("pa0", ip, mac2) })
        .expect("SIOCSARP again");
    let shown = pair.a.ip(&["neigh", "show", "10.250.9.50", "dev", "pa0"]);
    assert!(shown.contains("lladdr 02:00:00:00:00:51"), "{shown:?}");
}

#[test]
fn arp_entry_on_unknown_interface_names_it() {
    let pair = Pair::new();
    let ip = Ipv4Addr::new(10, 250, 9, 50);
    let mac: MacAddr = "02:00:00:00:00:50".parse().expect("mac");
    let err = pair
        .a
        .run(move || async move { set_arp_entry("nosuch0", ip, mac) })
        .expect_err("no such interface");
    let msg = err.to_string();
    assert!(
        msg.contains("nosuch0") && msg.contains("10.250.9.50") && msg.contains("02:00:00:00:00:50"),
        "{msg}"
    );
    assert_eq!(err.label(), "ioctl");
}
