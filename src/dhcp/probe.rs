//! Conflict detection before a dynamic address is offered. RFC 2131 §4.4.1: "the server
//! SHOULD probe the reused address before allocating the address, e.g., with an ICMP echo
//! request". One echo request per call, on the offering interface, bounded by a timeout.
//!
//! Each probe opens its own ICMP socket, so concurrent probes cannot steal each other's
//! replies: a datagram ("ping") socket is demultiplexed by the kernel on its identifier, and
//! every raw ICMP socket gets its own copy of each ICMP packet. Either way a reply only
//! counts when it comes from the probed address and carries our sequence number and nonce.

use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::socket::SockaddrIn;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Whether dynamic addresses are probed before they are offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeMode {
    /// Never probe; `in_use` answers false without sending anything.
    Off,
    /// One ICMP echo request, "in use" when a matching echo reply arrives in time.
    Icmp,
}

/// The kind of ICMP socket a probe used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IcmpSocket {
    /// `SOCK_DGRAM`/`IPPROTO_ICMP`: unprivileged, allowed when our group is inside
    /// `net.ipv4.ping_group_range`; the kernel picks the identifier and strips the IP header.
    Datagram,
    /// `SOCK_RAW`/`IPPROTO_ICMP`: needs CAP_NET_RAW; sees every ICMP packet on the interface.
    Raw,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "cannot open an ICMP socket to probe {ip} on interface {iface} \
         (datagram socket: {datagram}; raw socket: {source})"
    )]
    Socket {
        iface: String,
        ip: Ipv4Addr,
        /// Why the unprivileged datagram socket was refused (usually ping_group_range).
        datagram: String,
        source: io::Error,
    },
    #[error("cannot bind the ICMP probe of {ip} to interface {iface}: {source}")]
    Device {
        iface: String,
        ip: Ipv4Addr,
        source: io::Error,
    },
    #[error("sending an ICMP echo request to {ip} on interface {iface} failed: {source}")]
    Send {
        iface: String,
        ip: Ipv4Addr,
        source: io::Error,
    },
    #[error("ARP sweep on interface {iface}: {what}: {source}")]
    Arp {
        iface: String,
        what: &'static str,
        source: io::Error,
    },
    #[error("receiving ICMP echo replies from {ip} on interface {iface} failed: {source}")]
    Receive {
        iface: String,
        ip: Ipv4Addr,
        source: io::Error,
    },
}

impl ProbeError {
    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ProbeError::Arp { .. } => "arp",
            ProbeError::Socket { .. } => "socket",
            ProbeError::Device { .. } => "device",
            ProbeError::Send { .. } => "send",
            ProbeError::Receive { .. } => "receive",
        }
    }
}

/// How errors name the interface of an unbound (routed) probe.
const ROUTED: &str = "(routed)";

/// Socket kinds remembered in [`Prober::kind`].
const KIND_UNKNOWN: u8 = 0;
const KIND_DATAGRAM: u8 = 1;
const KIND_RAW: u8 = 2;

/// Payload tag after the nonce: makes our probes recognisable in a packet capture.
const TAG: &[u8; 8] = b"bootgate";
/// Echo request: 8-byte ICMP header, 8-byte nonce, tag.
const ECHO_LEN: usize = 8 + 8 + TAG.len();
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;

/// Probes addresses for conflicts. Cheap to share (`Arc`); holds no socket between calls.
pub struct Prober {
    mode: ProbeMode,
    /// Upper bound on one `in_use` call, socket setup and send included.
    timeout: Duration,
    /// The socket kind the last probe used. Once the kernel refuses a datagram socket we go
    /// straight to a raw one, instead of paying a failing syscall (and a log line) per probe.
    kind: AtomicU8,
}

impl Prober {
    pub fn new(mode: ProbeMode, timeout: Duration) -> Self {
        Prober {
            mode,
            timeout,
            kind: AtomicU8::new(KIND_UNKNOWN),
        }
    }

    pub fn mode(&self) -> ProbeMode {
        self.mode
    }

    /// The ICMP socket kind the last probe used (`None` before the first probe).
    pub fn socket_kind(&self) -> Option<IcmpSocket> {
        match self.kind.load(Ordering::Relaxed) {
            KIND_DATAGRAM => Some(IcmpSocket::Datagram),
            KIND_RAW => Some(IcmpSocket::Raw),
            _ => None,
        }
    }

    /// True when something answered an ICMP echo request to `ip` sent out of `iface` (the
    /// address is in use). Bounded by the timeout: silence until then means free. An ICMP
    /// error (host unreachable) also means free. With [`ProbeMode::Off`] nothing is sent.
    pub async fn in_use(&self, iface: &str, ip: Ipv4Addr) -> Result<bool, ProbeError> {
        if self.mode == ProbeMode::Off {
            return Ok(false);
        }
        match tokio::time::timeout(self.timeout, self.probe(Some(iface), ip)).await {
            Ok(answer) => answer,
            Err(_elapsed) => {
                tracing::debug!(%iface, %ip, "no echo reply: address looks free");
                Ok(false)
            }
        }
    }

    /// One echo request out of `iface`, or wherever the routing table sends it (`None`).
    async fn probe(&self, iface: Option<&str>, ip: Ipv4Addr) -> Result<bool, ProbeError> {
        let (socket, kind) = self.open(iface, ip)?;
        let iface = iface.unwrap_or(ROUTED);
        let recv_err = |source| ProbeError::Receive {
            iface: iface.to_string(),
            ip,
            source,
        };
        // SAFETY: a `Socket` owns its descriptor: it stays open, and `as_raw_fd` returns the
        // same one, until the `AsyncFd` (which owns the `Socket`) is dropped.
        let fd = unsafe { AsyncFd::register(socket) }.map_err(|e| recv_err(io::Error::from(e)))?;
        let echo = Echo::random();
        let request = echo.request();
        let to = SockAddr::from(SocketAddrV4::new(ip, 0));
        fd.async_io(Interest::WRITABLE, |s| s.send_to(&request, &to))
            .await
            .map_err(|source| ProbeError::Send {
                iface: iface.to_string(),
                ip,
                source,
            })?;
        let mut buf = [0u8; 576];
        loop {
            let received = fd
                .async_io(Interest::READABLE, |s| {
                    nix::sys::socket::recvfrom::<SockaddrIn>(s.as_raw_fd(), &mut buf)
                        .map_err(io::Error::from)
                })
                .await;
            let (n, from) = match received {
                Ok(x) => x,
                // A pending ICMP error on the socket: nobody is there to answer.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable
                    ) =>
                {
                    tracing::debug!(%iface, %ip, error = %e, "unreachable: address looks free");
                    return Ok(false);
                }
                Err(e) => return Err(recv_err(e)),
            };
            let Some(from) = from else { continue };
            if from.ip() == ip && echo.matches(kind, &buf[..n]) {
                tracing::debug!(%iface, %ip, "echo reply: address in use");
                return Ok(true);
            }
        }
    }

    /// An ICMP socket bound to `iface`, non-blocking: a datagram socket when the kernel
    /// allows one, else a raw socket.
    fn open(&self, iface: Option<&str>, ip: Ipv4Addr) -> Result<(Socket, IcmpSocket), ProbeError> {
        let label = iface.unwrap_or(ROUTED);
        let datagram = if self.kind.load(Ordering::Relaxed) == KIND_RAW {
            Err("refused earlier".to_string())
        } else {
            Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)).map_err(|e| {
                tracing::debug!(error = %e, "ICMP datagram socket refused; using a raw socket");
                e.to_string()
            })
        };
        let (socket, kind) = match datagram {
            Ok(s) => (s, IcmpSocket::Datagram),
            Err(datagram) => {
                let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).map_err(
                    |source| ProbeError::Socket {
                        iface: label.to_string(),
                        ip,
                        datagram,
                        source,
                    },
                )?;
                (s, IcmpSocket::Raw)
            }
        };
        self.kind.store(
            match kind {
                IcmpSocket::Datagram => KIND_DATAGRAM,
                IcmpSocket::Raw => KIND_RAW,
            },
            Ordering::Relaxed,
        );
        let dev_err = |source| ProbeError::Device {
            iface: label.to_string(),
            ip,
            source,
        };
        if let Some(iface) = iface {
            socket
                .bind_device(Some(iface.as_bytes()))
                .map_err(dev_err)?;
        }
        socket.set_nonblocking(true).map_err(dev_err)?;
        Ok((socket, kind))
    }
}

// ---------------------------------------------------------------------------------------
// Sweeps: the same probes over many addresses, paced (`bootgate audit --scan`).

/// Sends at most `per_second` probes a second (at least one), evenly spaced: a sweep of a
/// /16 must not flood the provisioning network or the switches' ARP policers.
struct Pacer(tokio::time::Interval);

impl Pacer {
    fn new(per_second: u32) -> Pacer {
        let period = Duration::from_secs(1) / per_second.max(1);
        let mut i = tokio::time::interval(period);
        // After a stall, keep the spacing instead of bursting to catch up.
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Pacer(i)
    }
    async fn tick(&mut self) {
        self.0.tick().await;
    }
}

impl Prober {
    /// ICMP echo to every address in `targets`, at most `per_second` requests a second, out
    /// of `iface` or routed (`None`: subnets behind relays); the addresses that answered.
    /// Each probe is [`Prober::in_use`]'s (own socket, own timeout), so in flight at once are
    /// at most `per_second` × timeout. Works whatever [`ProbeMode`] the prober was built with.
    pub async fn icmp_sweep(
        &self,
        iface: Option<&str>,
        targets: &[Ipv4Addr],
        per_second: u32,
    ) -> Result<Vec<Ipv4Addr>, ProbeError> {
        let prober = std::sync::Arc::new(Prober {
            mode: ProbeMode::Icmp,
            timeout: self.timeout,
            kind: AtomicU8::new(self.kind.load(Ordering::Relaxed)),
        });
        let iface: Option<std::sync::Arc<str>> = iface.map(std::sync::Arc::from);
        let mut pacer = Pacer::new(per_second);
        let mut tasks = tokio::task::JoinSet::new();
        let mut answered = Vec::new();
        let mut first_err: Option<ProbeError> = None;
        let mut take = |r: Result<(Ipv4Addr, Result<bool, ProbeError>), tokio::task::JoinError>,
                        answered: &mut Vec<Ipv4Addr>| {
            match r {
                Ok((ip, Ok(true))) => answered.push(ip),
                Ok((_, Ok(false))) => {}
                // No socket at all: the sweep cannot work; report it once.
                Ok((_, Err(e @ (ProbeError::Socket { .. } | ProbeError::Device { .. })))) => {
                    first_err.get_or_insert(e);
                }
                Ok((ip, Err(e))) => tracing::debug!(%ip, error = %e, "probe failed: no answer"),
                Err(e) => tracing::warn!(error = %e, "probe task failed"),
            }
        };
        for ip in targets.iter().copied() {
            pacer.tick().await;
            let p = prober.clone();
            let iface = iface.clone();
            tasks.spawn(async move {
                let r = tokio::time::timeout(p.timeout, p.probe(iface.as_deref(), ip))
                    .await
                    .unwrap_or(Ok(false));
                (ip, r)
            });
            while let Some(r) = tasks.try_join_next() {
                take(r, &mut answered);
            }
        }
        while let Some(r) = tasks.join_next().await {
            take(r, &mut answered);
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        answered.sort_unstable();
        Ok(answered)
    }
}

/// One ARP reply: `mac` says it has `ip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ArpAnswer {
    pub ip: Ipv4Addr,
    pub mac: crate::types::MacAddr,
}

const ETH_P_ARP: u16 = 0x0806;
const ARP_LEN: usize = 28;

/// An ARP request (RFC 826, Ethernet/IPv4) from `sha`/`spa` asking who has `tpa`.
/// `spa` 0.0.0.0 makes it an RFC 5227 probe, which hosts answer as well.
fn arp_request(sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> [u8; ARP_LEN] {
    let mut p = [0u8; ARP_LEN];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // htype Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // ptype IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&1u16.to_be_bytes()); // op request
    p[8..14].copy_from_slice(&sha);
    p[14..18].copy_from_slice(&spa.octets());
    // tha stays zero
    p[24..28].copy_from_slice(&tpa.octets());
    p
}

/// The sender of an ARP reply (op 2, Ethernet/IPv4), or `None` for anything else.
fn arp_reply_sender(p: &[u8]) -> Option<ArpAnswer> {
    if p.len() < ARP_LEN
        || p[0..2] != [0, 1]
        || p[2..4] != [8, 0]
        || p[4] != 6
        || p[5] != 4
        || p[6..8] != [0, 2]
    {
        return None;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&p[8..14]);
    Some(ArpAnswer {
        ip: Ipv4Addr::new(p[14], p[15], p[16], p[17]),
        mac: crate::types::MacAddr(mac),
    })
}

/// `iface`'s index and hardware address, from getifaddrs (of this network namespace).
fn link_of(iface: &str) -> Result<(i32, [u8; 6]), ProbeError> {
    let err = |what, source| ProbeError::Arp {
        iface: iface.to_string(),
        what,
        source,
    };
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| err("listing interfaces", e.into()))?;
    for a in addrs {
        if a.interface_name != iface {
            continue;
        }
        if let Some(link) = a.address.as_ref().and_then(|s| s.as_link_addr())
            && let Some(mac) = link.addr()
        {
            return Ok((link.ifindex() as i32, mac));
        }
    }
    Err(err(
        "no such interface with a hardware address",
        io::Error::from(io::ErrorKind::NotFound),
    ))
}

/// ARP request for every address in `targets` out of `iface` (an Ethernet interface of
/// this network namespace), at most `per_second` a second, then `linger` for late replies.
/// Returns every distinct (address, MAC) that answered: two MACs answering for one
/// address both appear. Needs CAP_NET_RAW (an AF_PACKET socket). `source` is our address
/// on that link (0.0.0.0 sends RFC 5227 probes instead).
pub async fn arp_sweep(
    iface: &str,
    source: Ipv4Addr,
    targets: &[Ipv4Addr],
    per_second: u32,
    linger: Duration,
) -> Result<Vec<ArpAnswer>, ProbeError> {
    let err = |what, source| ProbeError::Arp {
        iface: iface.to_string(),
        what,
        source,
    };
    let (ifindex, our_mac) = link_of(iface)?;
    let sock = ArpSocket::open(ifindex).map_err(|(what, e)| err(what, e))?;
    let mut answers: std::collections::BTreeSet<ArpAnswer> = Default::default();
    let wanted: std::collections::HashSet<Ipv4Addr> = targets.iter().copied().collect();
    let mut pacer = Pacer::new(per_second);
    let mut next = targets.iter();
    let mut buf = [0u8; 256];
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut sent: usize = 0;
    loop {
        let linger_over = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = pacer.tick(), if deadline.is_none() => {
                let Some(ip) = next.next() else {
                    deadline = Some(tokio::time::Instant::now() + linger);
                    continue;
                };
                sock.send(&arp_request(our_mac, source, *ip))
                    .await
                    .map_err(|e| err("sending an ARP request", e))?;
                sent += 1;
            }
            r = sock.recv(&mut buf) => {
                let n = r.map_err(|e| err("receiving ARP replies", e))?;
                if let Some(a) = arp_reply_sender(&buf[..n])
                    && wanted.contains(&a.ip)
                    && a.mac.0 != our_mac
                {
                    answers.insert(a);
                }
            }
            _ = linger_over => break,
        }
    }
    tracing::debug!(%iface, sent, answered = answers.len(), "ARP sweep done");
    Ok(answers.into_iter().collect())
}

/// A non-blocking AF_PACKET datagram socket for ARP, bound to one interface.
struct ArpSocket {
    fd: AsyncFd<Socket>,
    /// The interface's link-layer broadcast address: where requests go.
    to: nix::libc::sockaddr_ll,
}

const SLL_LEN: nix::libc::socklen_t =
    std::mem::size_of::<nix::libc::sockaddr_ll>() as nix::libc::socklen_t;

impl ArpSocket {
    /// Opens and binds the socket to interface `ifindex`; on failure, what failed and why.
    fn open(ifindex: i32) -> Result<ArpSocket, (&'static str, io::Error)> {
        use nix::libc;
        let socket = Socket::new(
            Domain::PACKET,
            Type::DGRAM,
            Some(Protocol::from(i32::from(ETH_P_ARP.to_be()))),
        )
        .map_err(|e| ("opening an AF_PACKET socket (needs CAP_NET_RAW)", e))?;
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value we then fill in.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ARP.to_be();
        sll.sll_ifindex = ifindex;
        // SAFETY: `sll` is a valid sockaddr_ll of the length given, the fd is open.
        let rc = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                SLL_LEN,
            )
        };
        if rc != 0 {
            return Err(("binding to the interface", io::Error::last_os_error()));
        }
        socket
            .set_nonblocking(true)
            .map_err(|e| ("setting non-blocking", e))?;
        let mut to = sll;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: as in `probe`: the AsyncFd owns the Socket and so its descriptor.
        let fd = unsafe { AsyncFd::register(socket) }
            .map_err(|e| ("registering the socket", io::Error::from(e)))?;
        Ok(ArpSocket { fd, to })
    }

    /// Broadcasts one ARP packet.
    async fn send(&self, packet: &[u8]) -> io::Result<()> {
        self.fd
            .async_io(Interest::WRITABLE, |s| {
                // SAFETY: `packet` and `to` are valid for the lengths given.
                let n = unsafe {
                    nix::libc::sendto(
                        s.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        (&self.to as *const nix::libc::sockaddr_ll).cast(),
                        SLL_LEN,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            })
            .await
    }

    /// The next ARP packet's length, in `buf`.
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.fd
            .async_io(Interest::READABLE, |s| {
                nix::sys::socket::recv(s.as_raw_fd(), buf, nix::sys::socket::MsgFlags::empty())
                    .map_err(io::Error::from)
            })
            .await
    }
}

/// One echo request's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Echo {
    /// Ignored by datagram sockets: the kernel substitutes the socket's own identifier
    /// (and delivers only replies carrying it), so it is checked on raw sockets only.
    id: u16,
    seq: u16,
    nonce: [u8; 8],
}

impl Echo {
    fn random() -> Echo {
        let r = random_u64();
        Echo {
            id: (r >> 48) as u16,
            seq: (r >> 32) as u16,
            nonce: random_u64().to_be_bytes(),
        }
    }

    /// The ICMP echo request (RFC 792), checksum filled in.
    fn request(&self) -> [u8; ECHO_LEN] {
        let mut p = [0u8; ECHO_LEN];
        p[0] = ICMP_ECHO_REQUEST;
        p[4..6].copy_from_slice(&self.id.to_be_bytes());
        p[6..8].copy_from_slice(&self.seq.to_be_bytes());
        p[8..16].copy_from_slice(&self.nonce);
        p[16..].copy_from_slice(TAG);
        let sum = checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
        p
    }

    /// Whether `packet` (as read from a socket of `kind`) is the echo reply to this request.
    fn matches(&self, kind: IcmpSocket, packet: &[u8]) -> bool {
        let icmp = match kind {
            IcmpSocket::Datagram => packet,
            // Raw sockets deliver the IPv4 header too.
            IcmpSocket::Raw => {
                let Some(&first) = packet.first() else {
                    return false;
                };
                let header = usize::from(first & 0x0f) * 4;
                if first >> 4 != 4 || header < 20 || packet.get(9) != Some(&1) {
                    return false;
                }
                match packet.get(header..) {
                    Some(rest) => rest,
                    None => return false,
                }
            }
        };
        if icmp.len() < 16 || icmp[0] != ICMP_ECHO_REPLY || icmp[1] != 0 || checksum(icmp) != 0 {
            return false;
        }
        let id_ok = kind == IcmpSocket::Datagram || icmp[4..6] == self.id.to_be_bytes();
        id_ok && icmp[6..8] == self.seq.to_be_bytes() && icmp[8..16] == self.nonce
    }
}

/// The Internet checksum (RFC 1071): one's complement of the one's complement sum of
/// 16-bit words. Over a packet whose checksum field is filled in, it is 0.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// 64 unpredictable-enough bits for echo identifiers, without a `rand` dependency: std's
/// `RandomState` is keyed from the OS's randomness; a counter keeps calls distinct.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_to(echo: &Echo) -> Vec<u8> {
        let mut p = echo.request().to_vec();
        p[0] = ICMP_ECHO_REPLY;
        p[2..4].copy_from_slice(&[0, 0]);
        let sum = checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
        p
    }

    fn with_ip_header(icmp: &[u8]) -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 250, 9, 2, 10, 250, 9, 1,
        ];
        p.extend_from_slice(icmp);
        p
    }

    #[test]
    fn rfc1071_checksum_example() {
        // RFC 1071 §3's worked example: the sum of these words is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
        // Odd length pads with a zero byte.
        assert_eq!(checksum(&[0xff]), !0xff00);
    }

    #[test]
    fn request_checksums_to_zero() {
        let echo = Echo::random();
        let p = echo.request();
        assert_eq!(p[0], ICMP_ECHO_REQUEST);
        assert_eq!(checksum(&p), 0);
        assert_eq!(&p[16..], TAG);
    }

    #[test]
    fn matches_own_reply_on_both_socket_kinds() {
        let echo = Echo::random();
        let reply = reply_to(&echo);
        assert!(echo.matches(IcmpSocket::Datagram, &reply));
        assert!(echo.matches(IcmpSocket::Raw, &with_ip_header(&reply)));
        // A raw socket always sees the IP header; a bare ICMP message is not ours.
        assert!(!echo.matches(IcmpSocket::Raw, &reply));
    }

    #[test]
    fn ignores_other_probes_and_other_messages() {
        let echo = Echo {
            id: 7,
            seq: 9,
            nonce: *b"12345678",
        };
        let cases: [(&str, Echo); 3] = [
            ("other id", Echo { id: 8, ..echo }),
            ("other seq", Echo { seq: 10, ..echo }),
            (
                "other nonce",
                Echo {
                    nonce: *b"87654321",
                    ..echo
                },
            ),
        ];
        for (what, other) in cases {
            let reply = with_ip_header(&reply_to(&other));
            assert!(!echo.matches(IcmpSocket::Raw, &reply), "{what}");
        }
        // The kernel rewrites the identifier of datagram sockets: only seq and nonce count.
        let other_id = reply_to(&Echo { id: 8, ..echo });
        assert!(echo.matches(IcmpSocket::Datagram, &other_id));

        // Our own request (seen on a raw socket when probing a local address) is no answer.
        assert!(!echo.matches(IcmpSocket::Raw, &with_ip_header(&echo.request())));
        // A corrupted reply, and truncated ones, are ignored.
        let mut bad = reply_to(&echo);
        bad[20] ^= 0xff;
        assert!(!echo.matches(IcmpSocket::Datagram, &bad));
        assert!(!echo.matches(IcmpSocket::Datagram, &reply_to(&echo)[..12]));
        assert!(!echo.matches(IcmpSocket::Raw, &[0x45, 0, 0]));
        assert!(!echo.matches(IcmpSocket::Raw, &[]));
    }

    #[test]
    fn random_echoes_differ() {
        let a = Echo::random();
        let b = Echo::random();
        assert_ne!(a, b);
    }

    #[test]
    fn rfc826_arp_request_and_reply_parse() {
        let sha = [0x52, 0x54, 0, 1, 2, 3];
        let req = arp_request(
            sha,
            Ipv4Addr::new(10, 250, 0, 1),
            Ipv4Addr::new(10, 250, 0, 9),
        );
        // A request is not a reply.
        assert_eq!(arp_reply_sender(&req), None);
        let mut reply = req;
        reply[7] = 2;
        reply[8..14].copy_from_slice(&[0xaa, 0xbb, 0xcc, 0, 0, 1]);
        reply[14..18].copy_from_slice(&[10, 250, 0, 9]);
        assert_eq!(
            arp_reply_sender(&reply),
            Some(ArpAnswer {
                ip: Ipv4Addr::new(10, 250, 0, 9),
                mac: crate::types::MacAddr([0xaa, 0xbb, 0xcc, 0, 0, 1]),
            })
        );
        assert_eq!(arp_reply_sender(&reply[..20]), None);
        let mut ipv6 = reply;
        ipv6[2] = 0x86;
        assert_eq!(arp_reply_sender(&ipv6), None);
    }

    #[tokio::test]
    async fn pacer_spaces_sends() {
        let mut p = Pacer::new(100);
        let t = std::time::Instant::now();
        for _ in 0..11 {
            p.tick().await;
        }
        // 11 ticks at 100/s: the first is immediate, then 10 × 10 ms.
        assert!(
            t.elapsed() >= Duration::from_millis(95),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn off_sends_nothing() {
        // No such interface: any socket work would fail, so Ok(false) proves none was done.
        let p = Prober::new(ProbeMode::Off, Duration::from_millis(10));
        let free = p
            .in_use("bg-no-such-if", Ipv4Addr::new(10, 250, 9, 2))
            .await;
        assert!(matches!(free, Ok(false)));
        assert_eq!(p.socket_kind(), None);
    }
}
