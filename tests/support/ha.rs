//! Two gateways on one segment: namespaces `gwa` (gw0 = 10.250.0.1/24) and `gwb`
//! (gw0 = 10.250.0.2/24), each with a veth into the bridge `br0` of a client namespace
//! `rack` (client NIC `eth0`), and a bootgate daemon per gateway on one shared PostgreSQL
//! database. The daemons reach PostgreSQL over its unix socket (a file path, not the
//! network): the test cluster listens on the host's loopback only, no route or veth to the
//! host is needed, and the network rule holds. Client-side, a tcpdump capture of the DHCP
//! replies tells which (MAC, address) pairs were ACKed, by whom.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Netns, Site, bootgate_bin, kill_pid, path_str};

pub const GWA_IP: &str = "10.250.0.1";
pub const GWB_IP: &str = "10.250.0.2";
/// perfdhcp's own address on the client segment (outside the dynamic range).
pub const CLIENT_IP: &str = "10.250.0.3";

/// The namespaces: two gateways and the client segment.
pub struct HaLab {
    pub gwa: Netns,
    pub gwb: Netns,
    pub rack: Netns,
}

impl HaLab {
    pub fn new() -> HaLab {
        let gwa = Netns::new("gwa");
        let gwb = Netns::new("gwb");
        let rack = Netns::new("rack");
        rack.ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ]);
        rack.ip(&["link", "set", "br0", "up"]);
        for (gw, uplink, addr) in [(&gwa, "rka", GWA_IP), (&gwb, "rkb", GWB_IP)] {
            rack.ip(&[
                "link", "add", uplink, "type", "veth", "peer", "name", "gw0", "netns", &gw.name,
            ]);
            rack.ip(&["link", "set", uplink, "master", "br0", "up"]);
            gw.ip(&["addr", "add", &format!("{addr}/24"), "dev", "gw0"]);
            gw.ip(&["link", "set", "gw0", "up"]);
        }
        rack.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-br",
        ]);
        rack.ip(&["link", "set", "eth0-br", "master", "br0", "up"]);
        rack.ip(&["link", "set", "eth0", "up"]);
        HaLab { gwa, gwb, rack }
    }
}

/// The unix-socket form of a test cluster URL (`postgres://user:pw@127.0.0.1:PORT/DB`):
/// same database, reached through the socket in `socket_dir` (trust auth, no password).
pub fn socket_url(tcp_url: &str, socket_dir: &Path, port: u16) -> String {
    let db = tcp_url.rsplit('/').next().expect("database in URL");
    format!(
        "postgres://bootgate@localhost/{db}?host={}&port={port}",
        socket_dir.display()
    )
}

/// The lab site (inventory `lab`) configured for gateway `addr` on a shared store.
pub fn gateway_site(addr: &str, store_url: &str) -> Site {
    let site = Site::from_inventory("lab");
    let cfg = format!(
        "state_dir = \"{state}\"\nstore = \"{store_url}\"\ninventory = \"inventory\"\nboot_images = \"{images}\"\n\n\
         [http]\nlisten = \"{addr}:8080\"\n\n[dhcp]\nconflict_probe = \"off\"\n\n\
         [postgres]\nacquire_timeout_ms = 1000\ncall_timeout_ms = 3000\nstatement_timeout_ms = 3000\nsync_interval_ms = 1000\n\n\
         [[interface]]\nname = \"gw0\"\naddress = \"{addr}/24\"\n",
        state = site.state_dir().display(),
        images = site.boot_images().display(),
    );
    std::fs::write(site.config(), cfg).unwrap();
    site
}

/// As [`gateway_site`], plus `[ha]`: this gateway is `id`, its peer `peer` (RFC 3074 load
/// balancing, heartbeats every 300 ms, the peer counted down after 1.5 s of silence).
pub fn gateway_site_ha(addr: &str, store_url: &str, id: &str, peer: &str) -> Site {
    let site = gateway_site(addr, store_url);
    let mut cfg = std::fs::read_to_string(site.config()).unwrap();
    cfg.push_str(&format!(
        "\n[ha]\ngateway_id = \"{id}\"\npeer = \"{peer}\"\nheartbeat_interval_ms = 300\npeer_timeout_ms = 1500\n"
    ));
    std::fs::write(site.config(), cfg).unwrap();
    site
}

/// The sum of a Prometheus counter's samples (all label sets) in a /metrics text.
pub fn metric_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A daemon in a gateway namespace; SIGKILLed on drop.
pub struct GwDaemon {
    pub child: Child,
    notify: UnixDatagram,
    _notify_dir: tempfile::TempDir,
}

impl GwDaemon {
    /// Starts `bootgate serve` in `ns` and waits for READY=1.
    pub fn start(ns: &Netns, site: &Site) -> GwDaemon {
        let notify_dir = tempfile::tempdir().unwrap();
        let sock = notify_dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&sock).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(site.dir.path().join("daemon.log"))
            .unwrap();
        let child = ns.spawn(
            ns.cmd(bootgate_bin())
                .args(["--config", path_str(&site.config()), "serve"])
                .env("NOTIFY_SOCKET", &sock)
                .env("RUST_LOG", "info")
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        let d = GwDaemon {
            child,
            notify,
            _notify_dir: notify_dir,
        };
        let mut buf = [0u8; 4096];
        // A signal to the test process (a child of another test exiting) interrupts the
        // wait; that is not the daemon failing.
        let n = loop {
            match d.notify.recv(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => {
                    break r.unwrap_or_else(|e| {
                        panic!("daemon in {} not ready: {e}\n{}", ns.name, daemon_log(site))
                    });
                }
            }
        };
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(msg.contains("READY=1"), "expected READY=1, got {msg:?}");
        d
    }

    /// `kill -9`, and reap.
    pub fn kill9(&mut self) {
        kill_pid(self.child.id());
        let _ = self.child.wait();
    }
}

impl Drop for GwDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn daemon_log(site: &Site) -> String {
    let log = std::fs::read_to_string(site.dir.path().join("daemon.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A tcpdump in `ns` capturing DHCP/BOOTP traffic on `iface` into a pcap file. Capture on
/// the bridge: on perfdhcp's own `eth0` the replies did not show up in the capture.
pub struct Capture {
    pid: u32,
    child: Child,
    pub file: PathBuf,
}

impl Capture {
    pub fn start(ns: &Netns, iface: &str, dir: &Path) -> Capture {
        let file = dir.join("dhcp.pcap");
        let child = ns
            .cmd("tcpdump")
            .args(["-i", iface, "-n", "-U", "-s", "0", "-w"])
            .arg(&file)
            .args(["udp and (port 67 or port 68)"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpdump");
        let pid = child.id();
        // Wait until it listens ("listening on …" on stderr) so no early packet is missed.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !file.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        Capture { pid, child, file }
    }

    /// Stops the capture (SIGINT: tcpdump flushes and exits) and returns every DHCPACK.
    pub fn stop(mut self) -> Vec<Ack> {
        let _ = Command::new("kill")
            .args(["-INT", &self.pid.to_string()])
            .status();
        let _ = self.child.wait();
        acks(&std::fs::read(&self.file).expect("read pcap"))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DHCPACK seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub server: Option<Ipv4Addr>,
}

impl Ack {
    pub fn mac_text(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// Every DHCPACK with an address (yiaddr ≠ 0) in a pcap file (Ethernet link type).
pub fn acks(pcap: &[u8]) -> Vec<Ack> {
    let mut out = Vec::new();
    if pcap.len() < 24 {
        return out;
    }
    let le = pcap[0..4] == [0xd4, 0xc3, 0xb2, 0xa1] || pcap[0..4] == [0x4d, 0x3c, 0xb2, 0xa1];
    let u32_at = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let caplen = u32_at(&pcap[at + 8..]) as usize;
        let start = at + 16;
        let end = (start + caplen).min(pcap.len());
        if let Some(a) = dhcp_ack(&pcap[start..end]) {
            out.push(a);
        }
        at = start + caplen;
    }
    out
}

fn dhcp_ack(frame: &[u8]) -> Option<Ack> {
    if frame.len() < 14 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if ip.get(9) != Some(&17) {
        return None;
    }
    let udp = ip.get(ihl..)?;
    let bootp = udp.get(8..)?;
    if bootp.len() < 240 || bootp[0] != 2 || bootp[236..240] != [99, 130, 83, 99] {
        return None;
    }
    let yiaddr = Ipv4Addr::new(bootp[16], bootp[17], bootp[18], bootp[19]);
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&bootp[28..34]);
    let (mut kind, mut server) = (None, None);
    let mut i = 240;
    while i < bootp.len() {
        let code = bootp[i];
        if code == 255 {
            break;
        }
        if code == 0 {
            i += 1;
            continue;
        }
        let len = usize::from(*bootp.get(i + 1)?);
        let val = bootp.get(i + 2..i + 2 + len)?;
        match code {
            53 => kind = val.first().copied(),
            54 if len == 4 => server = Some(Ipv4Addr::new(val[0], val[1], val[2], val[3])),
            _ => {}
        }
        i += 2 + len;
    }
    (kind == Some(5) && !yiaddr.is_unspecified()).then_some(Ack {
        mac,
        ip: yiaddr,
        server,
    })
}

/// perfdhcp in the client namespace, in the background: `rate` exchanges/s from `clients`
/// distinct MACs for `secs` seconds. Returns the child (killed on the namespace's drop).
pub fn perfdhcp(ns: &Netns, rate: u32, clients: u32, secs: u32) -> Child {
    ns.spawn(
        ns.cmd("timeout")
            .arg((secs + 20).to_string())
            .args([
                "perfdhcp",
                "-4",
                "-l",
                "eth0",
                "-r",
                &rate.to_string(),
                "-R",
                &clients.to_string(),
                "-p",
                &secs.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
}

/// `GET url` from inside `ns`: (status, body).
pub fn get(ns: &Netns, url: &str) -> Option<(u16, String)> {
    crate::support::curl(ns, url)
}
