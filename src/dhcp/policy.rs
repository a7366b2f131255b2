//! The DHCP server's decisions, as a pure function of the request and a read-only view of
//! the world (subnet, inventory host, address book). No I/O here: the server loop fetches
//! the view, calls [`decide`], commits what it says and sends the reply. Branches that an RFC
//! dictates quote it; the unit tests are named after those sections.

use std::net::Ipv4Addr;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use super::balance::{self, Share};
use super::{ClientMessage, Request};
use crate::inventory::Subnet;
// The address-book seam `decide` reads; defined by IPAM, named here for the policy tests.
pub use crate::ipam::{AddressBook, Binding, ClientKey, Holder};

/// The key a request's client is known by (see [`ClientKey`]: the MAC).
pub fn client_key(req: &Request) -> ClientKey {
    ClientKey::Mac(req.mac)
}

/// Everything `decide` may look at besides the request.
pub struct View<'a> {
    pub now: Timestamp,
    /// Our server identifier on the interface (or towards the relay) the request came in.
    pub server_id: Ipv4Addr,
    /// The subnet the client is on (by giaddr, link selection or interface); None when we
    /// serve no subnet there.
    pub subnet: Option<&'a Subnet>,
    /// The inventory host this MAC belongs to.
    pub host: Option<&'a str>,
    /// That host's reserved address on `subnet`.
    pub reservation: Option<Ipv4Addr>,
    pub book: &'a dyn AddressBook,
    /// Our share of the clients and the pool while a peer gateway is alive (RFC 3074).
    pub share: Share,
    /// How many more ACKs `subnet` may give this minute for an address the client was
    /// never offered and holds no record of (see [`unoffered`]).
    pub unoffered_left: u32,
}

/// Why a request gets no answer (each is a metric label and a log reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Silence {
    /// No subnet of ours on that interface / behind that relay.
    NoSubnet,
    /// The subnet is not served by DHCP (or only by proxyDHCP and this is no PXE client).
    NotServed,
    /// `known_hosts_only` and the MAC is not in the inventory.
    UnknownClient,
    /// Every dynamic address is taken.
    PoolExhausted,
    /// The client chose another server's offer (RFC 2131 §4.3.2, SELECTING).
    OtherServer,
    /// INIT-REBOOT or REBINDING of a client we have no record of (RFC 2131 §4.3.2).
    NoRecord,
    /// A malformed message for its type (e.g. REQUEST without address).
    Malformed,
    /// RELEASE / DECLINE of an address the client does not hold.
    NotHeld,
    /// An unknown client whose RFC 3074 hash bucket is the (alive) peer gateway's.
    PeerBucket,
    /// A REQUEST for an address we never offered the client (nor hold a record of), past
    /// the subnet's per-minute budget of such ACKs (pool drain).
    UnofferedBudget,
}

impl Silence {
    pub fn as_str(&self) -> &'static str {
        match self {
            Silence::NoSubnet => "no-subnet",
            Silence::NotServed => "not-served",
            Silence::UnknownClient => "unknown-client",
            Silence::PoolExhausted => "pool-exhausted",
            Silence::OtherServer => "other-server",
            Silence::NoRecord => "no-record",
            Silence::Malformed => "malformed",
            Silence::NotHeld => "not-held",
            Silence::PeerBucket => "peer-bucket",
            Silence::UnofferedBudget => "unoffered-budget",
        }
    }
}

/// Why a REQUEST is refused with a DHCPNAK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NakReason {
    /// The requested address is not on the client's subnet (it moved networks).
    WrongSubnet,
    /// Another client holds it, or it is another host's reservation.
    Taken,
    /// The client has a reservation and asks for another address (the reservation moved).
    ReservationMoved,
    /// The address is neither reserved for the client nor in a dynamic range it may use.
    NotAllocatable,
}

impl NakReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            NakReason::WrongSubnet => "wrong-subnet",
            NakReason::Taken => "taken",
            NakReason::ReservationMoved => "reservation-moved",
            NakReason::NotAllocatable => "not-allocatable",
        }
    }
}

/// Which REQUEST state led to an ACK (RFC 2131 §4.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestState {
    Selecting,
    InitReboot,
    Renewing,
    Rebinding,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// DHCPOFFER `ip`, held briefly for the client (no lease yet).
    Offer { ip: Ipv4Addr, lease_time: Duration },
    /// Commit a lease of `ip` durably, then DHCPACK.
    Ack {
        ip: Ipv4Addr,
        lease_time: Duration,
        state: RequestState,
    },
    /// DHCPACK to a DHCPINFORM: configuration only, no address, no lease (RFC 2131 §4.3.5).
    InformAck,
    /// DHCPNAK.
    Nak { reason: NakReason },
    /// The client gives `ip` back (RFC 2131 §4.3.4). No reply.
    Release { ip: Ipv4Addr },
    /// The client found `ip` in use (RFC 2131 §4.3.3): quarantine it. No reply.
    Decline { ip: Ipv4Addr },
    /// No reply.
    Ignore(Silence),
    /// The client chose another server: drop our offer hold. No reply.
    Withdraw,
    /// proxyDHCP: a DHCPOFFER carrying boot information only, no address (PXE 2.1 §2.2.2;
    /// another server assigns addresses on this subnet).
    ProxyOffer,
    /// proxyDHCP: the DHCPACK to a PXE client's REQUEST on port 4011, boot information only.
    ProxyAck,
}

/// The decision for `req` given `view`. Pure: same inputs, same answer.
pub fn decide(req: &Request, view: &View) -> Decision {
    let Some(subnet) = view.subnet else {
        return Decision::Ignore(Silence::NoSubnet);
    };
    let client = client_key(req);
    let known = view.host.is_some();
    // RFC 2131 §4.3.5: INFORM only asks for configuration; anyone on a served subnet may.
    if req.kind == ClientMessage::Inform {
        return Decision::InformAck;
    }
    if subnet.known_hosts_only && !known {
        return Decision::Ignore(Silence::UnknownClient);
    }
    if subnet.proxy_dhcp {
        return proxy(req);
    }
    if req.arrival.local_port == PXE_PORT {
        // Boot-server requests only make sense where we are the proxy.
        return Decision::Ignore(Silence::NotServed);
    }
    match req.kind {
        ClientMessage::Discover => discover(req, view, subnet, &client),
        ClientMessage::Request => request(req, view, subnet, &client),
        ClientMessage::Decline => decline(req, view, subnet, &client),
        ClientMessage::Release => release(req, view, subnet, &client),
        ClientMessage::Inform => Decision::InformAck,
    }
}

/// Whether `client` may be given `ip` on `subnet`: its own reservation, or a free dynamic
/// address when it has no reservation.
fn allocatable(
    view: &View,
    subnet: &Subnet,
    client: &ClientKey,
    ip: Ipv4Addr,
) -> Result<(), NakReason> {
    if !subnet.cidr.contains(&ip) {
        return Err(NakReason::WrongSubnet);
    }
    match view.reservation {
        Some(r) if r == ip => {}
        Some(_) => return Err(NakReason::ReservationMoved),
        None if subnet.in_dynamic_range(ip) => {}
        None => return Err(NakReason::NotAllocatable),
    }
    match view.book.holder(ip, client) {
        None => Ok(()),
        Some(_) => Err(NakReason::Taken),
    }
}

/// RFC 2131 §4.3.1: choose the address to offer, in this order: the client's reservation;
/// its current binding; the address it asks for (option 50) if valid and free; a free one.
fn discover(req: &Request, view: &View, subnet: &Subnet, client: &ClientKey) -> Decision {
    let lease_time = subnet.lease_time;
    if let Some(r) = view.reservation {
        return match view.book.holder(r, client) {
            None => Decision::Offer { ip: r, lease_time },
            // Someone squats our host's reserved address (it was dynamic before the
            // reservation was added): do not hand out a duplicate; the audit reports it.
            Some(_) => Decision::Ignore(Silence::PoolExhausted),
        };
    }
    if let Some(b) = view.book.binding_of(subnet, client)
        && allocatable(view, subnet, client, b.ip).is_ok()
    {
        return Decision::Offer {
            ip: b.ip,
            lease_time,
        };
    }
    // RFC 3074 §5: "the server ... MUST NOT respond" to a client whose hash bucket it is
    // not assigned. Only fresh allocations are split: a reservation or a binding is the
    // same address whichever gateway answers, so both do.
    if !view
        .share
        .answers(balance::bucket(req.client_id.as_deref(), &req.mac.octets()))
    {
        return Decision::Ignore(Silence::PeerBucket);
    }
    if let Some(ip) = req.requested_ip
        && allocatable(view, subnet, client, ip).is_ok()
    {
        return Decision::Offer { ip, lease_time };
    }
    match view.book.next_free(subnet, client, view.share.lane()) {
        Some(ip) => Decision::Offer { ip, lease_time },
        None => Decision::Ignore(Silence::PoolExhausted),
    }
}

/// RFC 2131 §4.3.2: the four REQUEST states, told apart by server identifier, requested
/// address and ciaddr.
fn request(req: &Request, view: &View, subnet: &Subnet, client: &ClientKey) -> Decision {
    let lease_time = subnet.lease_time;
    let ack = |ip, state| Decision::Ack {
        ip,
        lease_time,
        state,
    };
    // SELECTING: "Client inserts the address of the selected server in 'server
    // identifier', 'ciaddr' MUST be zero, 'requested IP address' MUST be filled in".
    if let Some(sid) = req.server_id {
        if sid != view.server_id {
            // "If the server identifier does not match, the server ... may release the
            // address it offered": the client chose another server.
            return Decision::Withdraw;
        }
        let Some(ip) = req.requested_ip.or(nonzero(req.ciaddr)) else {
            return Decision::Ignore(Silence::Malformed);
        };
        return match allocatable(view, subnet, client, ip) {
            Ok(()) if over_budget(view, subnet, client, ip) => {
                Decision::Ignore(Silence::UnofferedBudget)
            }
            Ok(()) => ack(ip, RequestState::Selecting),
            Err(reason) => Decision::Nak { reason },
        };
    }
    // INIT-REBOOT: "'server identifier' MUST NOT be filled in, 'requested IP address'
    // option MUST be filled in with client's notion of its previously assigned address.
    // 'ciaddr' MUST be zero."
    if let Some(ip) = req.requested_ip.filter(|_| req.ciaddr.is_unspecified()) {
        // "Server SHOULD send a DHCPNAK message to the client if the 'requested IP
        // address' is incorrect, or is on the wrong network."
        if !subnet.cidr.contains(&ip) {
            return Decision::Nak {
                reason: NakReason::WrongSubnet,
            };
        }
        let theirs = view.book.binding_of(subnet, client).map(|b| b.ip) == Some(ip);
        return match allocatable(view, subnet, client, ip) {
            Ok(()) if theirs || view.reservation == Some(ip) => ack(ip, RequestState::InitReboot),
            Err(reason) => Decision::Nak { reason },
            // "If the DHCP server has no record of this client, then it MUST remain silent"
            Ok(()) => Decision::Ignore(Silence::NoRecord),
        };
    }
    // RENEWING (unicast) / REBINDING (broadcast): "'server identifier' MUST NOT be filled
    // in, 'requested IP address' option MUST NOT be filled in, 'ciaddr' MUST be filled in".
    let Some(ip) = nonzero(req.ciaddr) else {
        return Decision::Ignore(Silence::Malformed);
    };
    let state = if req.arrival.peer.ip().is_unspecified() || req.broadcast {
        RequestState::Rebinding
    } else {
        RequestState::Renewing
    };
    // When our record is gone (expired and reclaimed, a new store) but the address is free
    // and fits the client, extend it rather than break a running host, as Kea does.
    match allocatable(view, subnet, client, ip) {
        Ok(()) if over_budget(view, subnet, client, ip) => {
            Decision::Ignore(Silence::UnofferedBudget)
        }
        Ok(()) => ack(ip, state),
        Err(reason) => Decision::Nak { reason },
    }
}

/// Whether ACKing `ip` to `client` would give it an address it was never offered and holds
/// no record of: not its reservation, not its binding (an offer hold or a lease). A
/// burst of such REQUESTs from new MACs could otherwise take a whole dynamic range at
/// once without a single DISCOVER; the server spends one of the subnet's budget per ACK.
pub fn unoffered(view: &View, subnet: &Subnet, client: &ClientKey, ip: Ipv4Addr) -> bool {
    view.reservation != Some(ip) && view.book.binding_of(subnet, client).map(|b| b.ip) != Some(ip)
}

/// RFC 2131 §4.3.2 leaves the server free to refuse a REQUEST it made no offer for (a
/// SELECTING client whose offer we do not hold; INIT-REBOOT without a record "MUST remain
/// silent" already). Past the budget we stay silent rather than NAK: a NAK to a client
/// with giaddr 0 is broadcast to the whole segment and recorded as an event (RFC 2131
/// §4.1), so a flood would be amplified; a genuine client retries and then starts over
/// with a DISCOVER, which is never limited.
fn over_budget(view: &View, subnet: &Subnet, client: &ClientKey, ip: Ipv4Addr) -> bool {
    view.unoffered_left == 0 && unoffered(view, subnet, client, ip)
}

/// RFC 2131 §4.3.3: "If the server receives a DHCPDECLINE message, the client has
/// discovered through some other means that the suggested network address is already in
/// use. The server MUST mark the network address as not available".
fn decline(req: &Request, view: &View, subnet: &Subnet, client: &ClientKey) -> Decision {
    if req.server_id.is_some_and(|s| s != view.server_id) {
        return Decision::Ignore(Silence::OtherServer);
    }
    let Some(ip) = req.requested_ip else {
        return Decision::Ignore(Silence::Malformed);
    };
    match view.book.binding_of(subnet, client) {
        Some(b) if b.ip == ip => Decision::Decline { ip },
        _ => Decision::Ignore(Silence::NotHeld),
    }
}

/// RFC 2131 §4.3.4: "Upon receipt of a DHCPRELEASE message, the server marks the network
/// address as not allocated. The server SHOULD retain a record of the client's
/// initialization parameters for possible reuse".
fn release(req: &Request, view: &View, subnet: &Subnet, client: &ClientKey) -> Decision {
    if req.server_id.is_some_and(|s| s != view.server_id) {
        return Decision::Ignore(Silence::OtherServer);
    }
    let Some(ip) = nonzero(req.ciaddr) else {
        return Decision::Ignore(Silence::Malformed);
    };
    match view.book.binding_of(subnet, client) {
        Some(b) if b.ip == ip && !b.offered => Decision::Release { ip },
        _ => Decision::Ignore(Silence::NotHeld),
    }
}

/// The PXE boot-server port a proxyDHCP client sends its REQUEST to (PXE 2.1 §2.2.3).
pub const PXE_PORT: u16 = 4011;

/// proxyDHCP (PXE 2.1 §2.2): answer only network-boot clients, never with an address. The
/// DISCOVER broadcast on port 67 gets a boot-only OFFER; the client's REQUEST to port 4011
/// gets the ACK. REQUESTs on port 67 belong to the server that assigns the addresses.
fn proxy(req: &Request) -> Decision {
    let netboot = req.pxe.pxe_client || req.pxe.http_client || req.pxe.ipxe;
    if !netboot {
        return Decision::Ignore(Silence::NotServed);
    }
    match (req.kind, req.arrival.local_port) {
        (ClientMessage::Discover, PXE_PORT) | (ClientMessage::Request, PXE_PORT) => {
            Decision::ProxyAck
        }
        (ClientMessage::Discover, _) => Decision::ProxyOffer,
        _ => Decision::Ignore(Silence::NotServed),
    }
}

fn nonzero(ip: Ipv4Addr) -> Option<Ipv4Addr> {
    (!ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use super::*;
    use crate::dhcp::{Arrival, PxeInfo};
    use crate::inventory::{IpRange, Purpose, Served};
    use crate::ipam::{Book, Claim, ClaimKind, Ipam};
    use crate::types::MacAddr;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
    const MAC_A: MacAddr = MacAddr([0x52, 0x54, 0, 0xd7, 0x8e, 0x1d]);
    const MAC_B: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb]);

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn subnet(known_only: bool) -> Subnet {
        Subnet {
            name: "prov".into(),
            cidr: "10.250.0.0/24".parse().unwrap(),
            purpose: Purpose::Provisioning,
            gateway: Some(SERVER),
            dns: vec![],
            domain: None,
            lease_time: Duration::from_secs(3600),
            dynamic_ranges: vec![IpRange {
                start: ip("10.250.0.100"),
                end: ip("10.250.0.102"),
            }],
            known_hosts_only: known_only,
            proxy_dhcp: false,
            served: Served::Interface("gw0".into()),
            mtu: None,
            trust_option82: false,
        }
    }

    fn req(kind: ClientMessage, mac: MacAddr) -> Request {
        Request {
            kind,
            xid: 1,
            mac,
            client_id: None,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            hops: 0,
            broadcast: false,
            requested_ip: None,
            server_id: None,
            hostname: None,
            vendor_class: None,
            params: vec![],
            max_message_size: None,
            relay: None,
            pxe: PxeInfo::default(),
            arrival: Arrival {
                iface: "gw0".into(),
                local_ip: SERVER,
                local_port: 67,
                peer: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
            },
        }
    }

    /// Runs `decide` with vm0 (MAC_A) reserved at .10 when `reserved`.
    fn run(r: &Request, s: &Subnet, book: &Book, reserved: bool) -> Decision {
        let view = View {
            now: Timestamp::now(),
            server_id: SERVER,
            subnet: Some(s),
            host: (reserved && r.mac == MAC_A).then_some("vm0"),
            reservation: (reserved && r.mac == MAC_A).then(|| ip("10.250.0.10")),
            book,
            share: Share::All,
            unoffered_left: 8,
        };
        decide(r, &view)
    }

    fn leased(book: &mut Book, addr: &str, mac: MacAddr) {
        book.put(
            ip(addr),
            Claim {
                client: ClientKey::Mac(mac),
                mac,
                kind: ClaimKind::Lease,
                until: Timestamp::now() + Duration::from_secs(600),
            },
        );
    }

    fn offer(ip: &str) -> Decision {
        Decision::Offer {
            ip: super::tests::ip(ip),
            lease_time: Duration::from_secs(3600),
        }
    }

    fn ack(addr: &str, state: RequestState) -> Decision {
        Decision::Ack {
            ip: ip(addr),
            lease_time: Duration::from_secs(3600),
            state,
        }
    }

    #[test]
    fn rfc2131_4_3_1_reservation_wins() {
        let s = subnet(false);
        let mut r = req(ClientMessage::Discover, MAC_A);
        r.requested_ip = Some(ip("10.250.0.101"));
        assert_eq!(run(&r, &s, &Book::new(), true), offer("10.250.0.10"));
    }

    #[test]
    fn rfc2131_4_3_1_offer_order_binding_then_requested_then_free() {
        let s = subnet(false);
        let mut book = Book::new();
        let mut r = req(ClientMessage::Discover, MAC_B);
        assert_eq!(run(&r, &s, &book, false), offer("10.250.0.100"));
        r.requested_ip = Some(ip("10.250.0.102"));
        assert_eq!(run(&r, &s, &book, false), offer("10.250.0.102"));
        // requested outside the pool is ignored, a free one is offered
        r.requested_ip = Some(ip("10.250.0.50"));
        assert_eq!(run(&r, &s, &book, false), offer("10.250.0.100"));
        // an existing binding wins over the requested address
        leased(&mut book, "10.250.0.101", MAC_B);
        r.requested_ip = Some(ip("10.250.0.102"));
        assert_eq!(run(&r, &s, &book, false), offer("10.250.0.101"));
    }

    #[test]
    fn rfc2131_4_3_1_never_offers_an_address_held_by_another_client() {
        let s = subnet(false);
        let mut book = Book::new();
        leased(&mut book, "10.250.0.100", MAC_A);
        let mut r = req(ClientMessage::Discover, MAC_B);
        r.requested_ip = Some(ip("10.250.0.100"));
        assert_eq!(run(&r, &s, &book, false), offer("10.250.0.101"));
        leased(&mut book, "10.250.0.101", MAC_A);
        leased(&mut book, "10.250.0.102", MAC_A);
        assert_eq!(
            run(&r, &s, &book, false),
            Decision::Ignore(Silence::PoolExhausted)
        );
    }

    #[test]
    fn known_hosts_only_ignores_strangers() {
        let s = subnet(true);
        let r = req(ClientMessage::Discover, MAC_B);
        assert_eq!(
            run(&r, &s, &Book::new(), false),
            Decision::Ignore(Silence::UnknownClient)
        );
        let r = req(ClientMessage::Discover, MAC_A);
        assert_eq!(run(&r, &s, &Book::new(), true), offer("10.250.0.10"));
    }

    #[test]
    fn rfc2131_4_3_2_selecting() {
        let s = subnet(false);
        let mut book = Book::new();
        let mut r = req(ClientMessage::Request, MAC_B);
        r.server_id = Some(SERVER);
        r.requested_ip = Some(ip("10.250.0.100"));
        Ipam::hold_offer(
            &mut book,
            &s,
            ip("10.250.0.100"),
            ClientKey::Mac(MAC_B),
            MAC_B,
            Duration::from_secs(30),
        );
        assert_eq!(
            run(&r, &s, &book, false),
            ack("10.250.0.100", RequestState::Selecting)
        );
        // another client's REQUEST for the same held address gets a NAK
        let mut other = r.clone();
        other.mac = MAC_A;
        assert_eq!(
            run(&other, &s, &book, false),
            Decision::Nak {
                reason: NakReason::Taken
            }
        );
    }

    #[test]
    fn rfc2131_4_3_2_selecting_another_server_withdraws() {
        let s = subnet(false);
        let mut r = req(ClientMessage::Request, MAC_B);
        r.server_id = Some(ip("10.250.0.2"));
        r.requested_ip = Some(ip("10.250.0.100"));
        assert_eq!(run(&r, &s, &Book::new(), false), Decision::Withdraw);
    }

    #[test]
    fn rfc2131_4_3_2_init_reboot() {
        let s = subnet(false);
        let mut book = Book::new();
        let mut r = req(ClientMessage::Request, MAC_B);
        r.requested_ip = Some(ip("10.250.0.101"));
        // no record: silent
        assert_eq!(
            run(&r, &s, &book, false),
            Decision::Ignore(Silence::NoRecord)
        );
        leased(&mut book, "10.250.0.101", MAC_B);
        assert_eq!(
            run(&r, &s, &book, false),
            ack("10.250.0.101", RequestState::InitReboot)
        );
        // wrong network
        r.requested_ip = Some(ip("192.168.1.5"));
        assert_eq!(
            run(&r, &s, &book, false),
            Decision::Nak {
                reason: NakReason::WrongSubnet
            }
        );
        // someone else's address
        leased(&mut book, "10.250.0.102", MAC_A);
        r.requested_ip = Some(ip("10.250.0.102"));
        assert_eq!(
            run(&r, &s, &book, false),
            Decision::Nak {
                reason: NakReason::Taken
            }
        );
    }

    #[test]
    fn rfc2131_4_3_2_init_reboot_of_a_moved_reservation_is_naked() {
        let s = subnet(false);
        let mut book = Book::new();
        leased(&mut book, "10.250.0.101", MAC_A);
        let mut r = req(ClientMessage::Request, MAC_A);
        r.requested_ip = Some(ip("10.250.0.101"));
        assert_eq!(
            run(&r, &s, &book, true),
            Decision::Nak {
                reason: NakReason::ReservationMoved
            }
        );
        r.requested_ip = Some(ip("10.250.0.10"));
        assert_eq!(
            run(&r, &s, &book, true),
            ack("10.250.0.10", RequestState::InitReboot)
        );
    }

    #[test]
    fn rfc2131_4_3_2_renewing_and_rebinding() {
        let s = subnet(false);
        let mut book = Book::new();
        leased(&mut book, "10.250.0.100", MAC_B);
        let mut r = req(ClientMessage::Request, MAC_B);
        r.ciaddr = ip("10.250.0.100");
        r.arrival.peer = SocketAddrV4::new(ip("10.250.0.100"), 68);
        assert_eq!(
            run(&r, &s, &book, false),
            ack("10.250.0.100", RequestState::Renewing)
        );
        r.broadcast = true;
        assert_eq!(
            run(&r, &s, &book, false),
            ack("10.250.0.100", RequestState::Rebinding)
        );
        // renewing an address another client holds
        let mut other = r.clone();
        other.mac = MAC_A;
        assert_eq!(
            run(&other, &s, &book, false),
            Decision::Nak {
                reason: NakReason::Taken
            }
        );
    }

    #[test]
    fn rfc2131_4_3_3_decline_quarantines_the_clients_address() {
        let s = subnet(false);
        let mut book = Book::new();
        leased(&mut book, "10.250.0.100", MAC_B);
        let mut r = req(ClientMessage::Decline, MAC_B);
        r.server_id = Some(SERVER);
        r.requested_ip = Some(ip("10.250.0.100"));
        assert_eq!(
            run(&r, &s, &book, false),
            Decision::Decline {
                ip: ip("10.250.0.100")
            }
        );
        // a stranger can't decline someone else's address
        r.mac = MAC_A;
        assert_eq!(
            run(&r, &s, &book, false),
            Decision::Ignore(Silence::NotHeld)
        );
    }

    #[test]
    fn rfc2131_4_3_4_release() {
        let s = subnet(false);
        let mut book = Book::new();
        leased(&mut book, "10.250.0.100", MAC_B);
        let mut r = req(ClientMessage::Release, MAC_B);
        r.server_id = Some(SERVER);
        r.ciaddr = ip("10.250.0.100");
        assert_eq!(
            run(&r, &s, &book, false),
            Decision::Release {
                ip: ip("10.250.0.100")
            }
        );
        r.mac = MAC_A;
        assert_eq!(
            run(&r, &s, &book, false),
            Decision::Ignore(Silence::NotHeld)
        );
    }

    #[test]
    fn rfc2131_4_3_5_inform_gets_configuration_only() {
        let s = subnet(true);
        let mut r = req(ClientMessage::Inform, MAC_B);
        r.ciaddr = ip("10.250.0.77");
        assert_eq!(run(&r, &s, &Book::new(), false), Decision::InformAck);
    }

    #[test]
    fn rfc2131_4_2_the_mac_names_the_client_whatever_its_option_61() {
        // The PXE firmware (no option 61) got .101; iPXE on the same NIC sends an id.
        let s = subnet(false);
        let mut book = Book::new();
        leased(&mut book, "10.250.0.101", MAC_B);
        let mut r = req(ClientMessage::Discover, MAC_B);
        r.client_id = Some(vec![0xff, 0, 0, 0, 1, 2]);
        assert_eq!(run(&r, &s, &book, false), offer("10.250.0.101"));
        // A reserved host keeps its reservation across the stages too.
        let mut book = Book::new();
        leased(&mut book, "10.250.0.10", MAC_A);
        let mut r = req(ClientMessage::Discover, MAC_A);
        r.client_id = Some(vec![1, 0x52, 0x54, 0, 0xd7, 0x8e, 0x1d]);
        assert_eq!(run(&r, &s, &book, true), offer("10.250.0.10"));
    }

    #[test]
    fn pxe_2_2_proxy_dhcp_answers_only_netboot_clients_without_an_address() {
        let mut s = subnet(false);
        s.proxy_dhcp = true;
        s.dynamic_ranges.clear();
        let book = Book::new();
        let mut r = req(ClientMessage::Discover, MAC_B);
        assert_eq!(
            run(&r, &s, &book, false),
            Decision::Ignore(Silence::NotServed)
        );
        r.pxe.pxe_client = true;
        assert_eq!(run(&r, &s, &book, false), Decision::ProxyOffer);
        // The REQUEST on port 67 is for the address server; the one to port 4011 is ours.
        r.kind = ClientMessage::Request;
        assert_eq!(
            run(&r, &s, &book, false),
            Decision::Ignore(Silence::NotServed)
        );
        r.arrival.local_port = PXE_PORT;
        assert_eq!(run(&r, &s, &book, false), Decision::ProxyAck);
        // A normal subnet ignores port 4011.
        let normal = subnet(false);
        assert_eq!(
            run(&r, &normal, &book, false),
            Decision::Ignore(Silence::NotServed)
        );
    }

    #[test]
    fn no_subnet_no_answer() {
        let r = req(ClientMessage::Discover, MAC_B);
        let book = Book::new();
        let view = View {
            now: Timestamp::now(),
            server_id: SERVER,
            subnet: None,
            host: None,
            reservation: None,
            book: &book,
            share: Share::All,
            unoffered_left: 8,
        };
        assert_eq!(decide(&r, &view), Decision::Ignore(Silence::NoSubnet));
    }

    /// Runs `decide` as `run` does, with `left` unoffered ACKs left in the subnet's budget.
    fn run_budget(r: &Request, s: &Subnet, book: &Book, reserved: bool, left: u32) -> Decision {
        let view = View {
            now: Timestamp::now(),
            server_id: SERVER,
            subnet: Some(s),
            host: (reserved && r.mac == MAC_A).then_some("vm0"),
            reservation: (reserved && r.mac == MAC_A).then(|| ip("10.250.0.10")),
            book,
            share: Share::All,
            unoffered_left: left,
        };
        decide(r, &view)
    }

    #[test]
    fn rfc2131_4_3_2_selecting_without_our_offer_spends_the_unoffered_budget() {
        let s = subnet(false);
        let mut book = Book::new();
        let mut r = req(ClientMessage::Request, MAC_B);
        r.server_id = Some(SERVER);
        r.requested_ip = Some(ip("10.250.0.101"));
        // No offer held: ACKed while the budget lasts, silent once it is spent.
        assert_eq!(
            run_budget(&r, &s, &book, false, 1),
            ack("10.250.0.101", RequestState::Selecting)
        );
        assert_eq!(
            run_budget(&r, &s, &book, false, 0),
            Decision::Ignore(Silence::UnofferedBudget)
        );
        // The normal flow (our OFFER held for the client) never needs the budget.
        Ipam::hold_offer(
            &mut book,
            &s,
            ip("10.250.0.101"),
            ClientKey::Mac(MAC_B),
            MAC_B,
            Duration::from_secs(30),
        );
        assert_eq!(
            run_budget(&r, &s, &book, false, 0),
            ack("10.250.0.101", RequestState::Selecting)
        );
        // Nor does a reserved host asking for its reservation.
        let mut a = req(ClientMessage::Request, MAC_A);
        a.server_id = Some(SERVER);
        a.requested_ip = Some(ip("10.250.0.10"));
        assert_eq!(
            run_budget(&a, &s, &Book::new(), true, 0),
            ack("10.250.0.10", RequestState::Selecting)
        );
    }

    #[test]
    fn renewing_an_address_we_hold_no_record_of_spends_the_unoffered_budget() {
        let s = subnet(false);
        let mut book = Book::new();
        let mut r = req(ClientMessage::Request, MAC_B);
        r.ciaddr = ip("10.250.0.100");
        r.arrival.peer = SocketAddrV4::new(ip("10.250.0.100"), 68);
        assert_eq!(
            run_budget(&r, &s, &book, false, 1),
            ack("10.250.0.100", RequestState::Renewing)
        );
        assert_eq!(
            run_budget(&r, &s, &book, false, 0),
            Decision::Ignore(Silence::UnofferedBudget)
        );
        leased(&mut book, "10.250.0.100", MAC_B);
        assert_eq!(
            run_budget(&r, &s, &book, false, 0),
            ack("10.250.0.100", RequestState::Renewing)
        );
        // INIT-REBOOT for an address never given: silent whatever the budget (RFC 2131
        // §4.3.2 "MUST remain silent").
        let mut ir = req(ClientMessage::Request, MAC_A);
        ir.requested_ip = Some(ip("10.250.0.102"));
        assert_eq!(
            run_budget(&ir, &s, &book, false, 8),
            Decision::Ignore(Silence::NoRecord)
        );
    }
}
