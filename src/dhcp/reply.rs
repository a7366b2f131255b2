//! [`Decision`] → the reply message (RFC 2131 §4.3, table 3), where to send it (RFC 2131
//! §4.1) and its bytes (padded to the BOOTP minimum). Pure: the server loop does the
//! sending. Every header field and option that table 3 or a later RFC dictates quotes it.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use dhcproto::Encodable;
use dhcproto::v4::{
    DhcpOption, EncodeError, Flags, HType, Message, MessageType, Opcode, OptionCode, UnknownOption,
};

use super::Request;
use super::policy::{Decision, NakReason};
use crate::inventory::Subnet;
use crate::types::MacAddr;

/// "DHCP messages from a client to a server are sent to the 'DHCP server' port (67), and
/// DHCP messages from a server to a client are sent to the 'DHCP client' port (68)"
/// (RFC 2131 §4.1).
pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// PXE boot server discovery / proxyDHCP (PXE 2.1 spec §2.2.2): requests arrive unicast
/// on 4011 and are answered to the sender's address and port.
pub const PXE_PORT: u16 = 4011;
/// RFC 1542 §3.3: "the BOOTP server ... MUST pad ... such that the total BOOTP message
/// length is at least 300 octets"; RFC 951's 64-byte vend field gives the same minimum.
/// Some PXE ROMs drop shorter replies.
pub const BOOTP_MIN_LEN: usize = 300;

/// The `file` field is 128 bytes and NUL-terminated (RFC 2131 §2).
const FILE_FIELD_MAX: usize = 127;
/// RFC 2132 §5.1: "The minimum legal value for the MTU is 68."
const MIN_MTU: u16 = 68;
/// RFC 2131 §3.3: 0xffffffff is an infinite lease; it has no renewal times.
const INFINITE_LEASE: u32 = u32::MAX;
/// PXE spec §2.4.1.2 (option 43 sub-option 6, PXE_DISCOVERY_CONTROL), bit 3: "If set, and
/// a boot file name is present in the initial DHCP or ProxyDHCP offer packet, download the
/// boot file (do not prompt/menu/discover)".
const PXE_DISCOVERY_CONTROL: u8 = 6;
const PXE_BOOT_FILE_DIRECTLY: u8 = 8;

/// How a client should boot, as decided by the PXE module for this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInfo {
    /// `siaddr`: the TFTP/HTTP server to fetch the boot file from (RFC 2131 §2).
    pub next_server: Ipv4Addr,
    /// `file` (when it fits) and option 67: a TFTP path or, for UEFI HTTP boot and iPXE, a URL.
    pub filename: String,
    /// Option 60 echoed to the client: `PXEClient` or `HTTPClient`. UEFI firmware ignores an
    /// offer without it (UEFI 2.x §24.7.3, PXE spec §2.2.1).
    pub vendor_class: Option<&'static str>,
    /// Option 43 sub-option 6 = 8 (boot from `file` without boot-server discovery): what BIOS
    /// PXE ROMs need to skip the menu/discovery dance when we are also the DHCP server.
    pub pxe_discovery_control: bool,
    /// Option 66, for clients that ignore `siaddr` (some UEFI builds prefer it).
    pub tftp_server_name: Option<String>,
}

/// What a reply needs besides the request and the decision.
#[derive(Debug, Clone, Copy)]
pub struct ReplyParams<'a> {
    /// Option 54: our address on the interface (or towards the relay) the request came in.
    pub server_id: Ipv4Addr,
    /// The client's subnet: source of options 1, 3, 6, 15, 26, 28. None sends none of them.
    pub subnet: Option<&'a Subnet>,
    /// Boot information for PXE/iPXE/HTTP clients; None for hosts that just want an address.
    pub boot: Option<&'a BootInfo>,
}

/// Why a reply could not be turned into bytes.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("encoding the DHCP reply for xid {xid:#010x}: {source}")]
    Encode {
        xid: u32,
        #[source]
        source: EncodeError,
    },
}

impl ReplyError {
    /// A bounded metric label per variant.
    pub fn label(&self) -> &'static str {
        match self {
            ReplyError::Encode { .. } => "encode",
        }
    }
}

/// The reply to `req` for `decision`, or None when the decision sends nothing.
pub fn build(req: &Request, decision: &Decision, p: &ReplyParams) -> Option<Message> {
    // RFC 2131 table 3: yiaddr is "IP address offered to client" / "IP address assigned to
    // client" / 0 (DHCPACK to DHCPINFORM, DHCPNAK); ciaddr is 0 in an OFFER, "'ciaddr' from
    // DHCPREQUEST or 0" in an ACK, and the INFORM's ciaddr in the ACK to it.
    let (yiaddr, ciaddr, lease) = match decision {
        Decision::Offer { ip, lease_time } => (*ip, Ipv4Addr::UNSPECIFIED, Some(*lease_time)),
        Decision::Ack { ip, lease_time, .. } => (*ip, req.ciaddr, Some(*lease_time)),
        // RFC 2131 §4.3.5: "The server responds to a DHCPINFORM message by sending a DHCPACK
        // message directly to the address given in the 'ciaddr' field of the DHCPINFORM
        // message. The server MUST NOT send a lease expiration time to the client and
        // SHOULD NOT fill in 'yiaddr'."
        Decision::InformAck => (Ipv4Addr::UNSPECIFIED, req.ciaddr, None),
        // proxyDHCP (PXE 2.1 §2.2.2): boot information only; another server assigns the
        // address, so yiaddr stays 0 and no lease or subnet options are sent.
        Decision::ProxyOffer | Decision::ProxyAck if p.boot.is_none() => return None,
        Decision::ProxyOffer => (Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, None),
        Decision::ProxyAck => (Ipv4Addr::UNSPECIFIED, req.ciaddr, None),
        Decision::Nak { reason } => return Some(nak(req, *reason, p)),
        Decision::Release { .. }
        | Decision::Decline { .. }
        | Decision::Ignore(_)
        | Decision::Withdraw => {
            return None;
        }
    };
    let kind = match decision {
        Decision::Offer { .. } | Decision::ProxyOffer => MessageType::Offer,
        _ => MessageType::Ack,
    };
    let proxy = matches!(decision, Decision::ProxyOffer | Decision::ProxyAck);
    let mut m = header(req);
    m.set_yiaddr(yiaddr).set_ciaddr(ciaddr);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ServerIdentifier(p.server_id));
    if let Some(lease) = lease {
        lease_options(&mut m, lease);
    }
    if let Some(subnet) = p.subnet.filter(|_| !proxy) {
        subnet_options(&mut m, subnet);
    }
    if let Some(boot) = p.boot {
        boot_fields(&mut m, boot);
    }
    echo_client_options(&mut m, req);
    Some(m)
}

/// RFC 2131 table 3, DHCPNAK: yiaddr, ciaddr, siaddr 0, sname and file unused; options
/// 53, 54 (MUST), 56 (SHOULD), "all others MUST NOT" — except 61 (RFC 6842 §3 turned its
/// MAY into MUST) and 82 (RFC 3046 §2.2, "in all replies").
fn nak(req: &Request, reason: NakReason, p: &ReplyParams) -> Message {
    let mut m = header(req);
    // RFC 2131 §4.3.2: "If 'giaddr' is set in the DHCPREQUEST message, the client is on a
    // different subnet. The server MUST set the broadcast bit in the DHCPNAK, so that the
    // relay agent will broadcast the DHCPNAK to the client, because the client may not
    // have a correct network address or subnet mask, and the client may not be answering
    // ARP requests."
    if req.relayed() {
        m.set_flags(Flags::default().set_broadcast());
    }
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(MessageType::Nak));
    o.insert(DhcpOption::ServerIdentifier(p.server_id));
    o.insert(DhcpOption::Message(nak_message(reason).to_string()));
    echo_client_options(&mut m, req);
    m
}

/// Option 56 text: what an operator reading a client's console or a packet capture needs.
fn nak_message(reason: NakReason) -> &'static str {
    match reason {
        NakReason::WrongSubnet => "requested address is not on this network",
        NakReason::Taken => "requested address is in use by another client",
        NakReason::ReservationMoved => "this client's reserved address has changed",
        NakReason::NotAllocatable => "requested address is not available to this client",
    }
}

/// The header fields every reply copies from the request (RFC 2131 table 3): op
/// BOOTREPLY, htype/hlen/chaddr, xid, flags, giaddr from the client's message; hops and
/// secs 0.
fn header(req: &Request) -> Message {
    let flags = if req.broadcast {
        Flags::default().set_broadcast()
    } else {
        Flags::default()
    };
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_chaddr(&req.mac.octets())
        .set_hops(0)
        .set_xid(req.xid)
        .set_secs(0)
        .set_flags(flags)
        .set_giaddr(req.giaddr);
    m
}

/// Options 51, 58, 59. RFC 2131 §4.4.5: "T1 defaults to (0.5 * duration_of_lease). T2
/// defaults to (0.875 * duration_of_lease)."
fn lease_options(m: &mut Message, lease: Duration) {
    let secs = u32::try_from(lease.as_secs()).unwrap_or(INFINITE_LEASE);
    let o = m.opts_mut();
    o.insert(DhcpOption::AddressLeaseTime(secs));
    if secs != INFINITE_LEASE {
        let t1 = u64::from(secs) / 2;
        let t2 = u64::from(secs) * 7 / 8;
        // Both are below `secs`, so they fit.
        o.insert(DhcpOption::Renewal(u32::try_from(t1).unwrap_or(secs)));
        o.insert(DhcpOption::Rebinding(u32::try_from(t2).unwrap_or(secs)));
    }
}

/// Options 1, 3, 6, 15, 26, 28 from the subnet. Sent whether or not option 55 asked for
/// them: many PXE ROMs send no option 55 yet need a mask and router, and dnsmasq and Kea
/// send these basics unasked too.
fn subnet_options(m: &mut Message, s: &Subnet) {
    let o = m.opts_mut();
    o.insert(DhcpOption::SubnetMask(s.cidr.netmask()));
    if let Some(gw) = s.gateway {
        o.insert(DhcpOption::Router(vec![gw]));
    }
    if !s.dns.is_empty() {
        o.insert(DhcpOption::DomainNameServer(s.dns.clone()));
    }
    if let Some(domain) = s.domain.as_ref().filter(|d| !d.is_empty()) {
        o.insert(DhcpOption::DomainName(domain.clone()));
    }
    if let Some(mtu) = s.mtu.filter(|&m| m >= MIN_MTU) {
        o.insert(DhcpOption::InterfaceMtu(mtu));
    }
    o.insert(DhcpOption::BroadcastAddr(s.cidr.broadcast()));
}

/// siaddr, file and options 43, 60, 66, 67.
fn boot_fields(m: &mut Message, b: &BootInfo) {
    m.set_siaddr(b.next_server);
    let file = b.filename.as_bytes();
    // dhcproto's setter panics beyond 128 bytes; a NUL-terminated name needs ≤ 127. A
    // longer name (an iPXE URL with a query string) rides in option 67 alone, which every
    // UEFI and iPXE client reads; BIOS ROMs get short TFTP paths.
    if !file.is_empty() && file.len() <= FILE_FIELD_MAX {
        m.set_fname(file);
    }
    let o = m.opts_mut();
    if !file.is_empty() {
        // RFC 2132 §9.5; no trailing NUL (RFC 2132 §2: "Options containing NVT ASCII data
        // SHOULD NOT include a trailing NULL").
        o.insert(DhcpOption::BootfileName(file.to_vec()));
    }
    if let Some(name) = b.tftp_server_name.as_ref().filter(|n| !n.is_empty()) {
        o.insert(DhcpOption::TFTPServerName(name.as_bytes().to_vec()));
    }
    if let Some(class) = b.vendor_class {
        o.insert(DhcpOption::ClassIdentifier(class.as_bytes().to_vec()));
    }
    if b.pxe_discovery_control {
        o.insert(DhcpOption::VendorExtensions(vec![
            PXE_DISCOVERY_CONTROL,
            1,
            PXE_BOOT_FILE_DIRECTLY,
            255,
        ]));
    }
}

/// Options the client (or its relay) sent that every reply carries back.
fn echo_client_options(m: &mut Message, req: &Request) {
    let o = m.opts_mut();
    // RFC 6842 §3: "If the 'client identifier' option is present in a message received
    // from a client, the server MUST return the 'client identifier' option, unaltered, in
    // its response message."
    if let Some(id) = &req.client_id {
        o.insert(DhcpOption::ClientIdentifier(id.clone()));
    }
    // RFC 3046 §2.2: "DHCP servers claiming to support the Relay Agent Information option
    // SHALL echo the entire contents of the Relay Agent Information option in all
    // replies." So the bytes go back as received, sub-options we don't interpret (151 VSS,
    // 11 server-id override, vendor ones) included. dhcproto writes option 82 last, as
    // RFC 3046 §2.1 wants.
    if let Some(relay) = &req.relay
        && !relay.raw.is_empty()
    {
        o.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::RelayAgentInformation,
            relay.raw.clone(),
        )));
    }
}

/// Where a reply goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// To the relay agent's server port (giaddr:67).
    Relay(SocketAddrV4),
    /// To a client that has an address (ciaddr:68, or a PXE port-4011 sender).
    Unicast(SocketAddrV4),
    /// To 255.255.255.255:68 on the interface the request arrived on.
    Broadcast,
    /// To `ip`:68 at link-layer address `mac`, before the client can answer ARP (needs an
    /// ARP entry inserted first, as dnsmasq does, or a raw frame).
    UnicastHw { ip: Ipv4Addr, mac: MacAddr },
}

/// RFC 2131 §4.1: where to send `reply` to `req`.
pub fn destination(req: &Request, reply: &Message) -> Destination {
    // PXE boot-server requests on 4011 come unicast from a client that already has an
    // address; it listens on the port it sent from (PXE spec §2.2.5).
    if req.arrival.local_port == PXE_PORT && !req.arrival.peer.ip().is_unspecified() {
        return Destination::Unicast(req.arrival.peer);
    }
    // "If the 'giaddr' field in a DHCP message from a client is non-zero, the server sends
    // any return messages to the 'DHCP server' port on the BOOTP relay agent whose address
    // appears in 'giaddr'."
    if req.relayed() {
        return Destination::Relay(SocketAddrV4::new(req.giaddr, SERVER_PORT));
    }
    // "In all cases, when 'giaddr' is zero, the server broadcasts any DHCPNAK messages to
    // 0xffffffff."
    if matches!(
        reply.opts().get(OptionCode::MessageType),
        Some(DhcpOption::MessageType(MessageType::Nak))
    ) {
        return Destination::Broadcast;
    }
    // "If the 'giaddr' field is zero and the 'ciaddr' field is nonzero, then the server
    // unicasts DHCPOFFER and DHCPACK messages to the address in 'ciaddr'."
    if !req.ciaddr.is_unspecified() {
        return Destination::Unicast(SocketAddrV4::new(req.ciaddr, CLIENT_PORT));
    }
    // "If 'giaddr' is zero and 'ciaddr' is zero, and the broadcast bit is set, then the
    // server broadcasts DHCPOFFER and DHCPACK messages to 0xffffffff."
    if req.broadcast {
        return Destination::Broadcast;
    }
    // "If the broadcast bit is not set and 'giaddr' is zero and 'ciaddr' is zero, then the
    // server unicasts DHCPOFFER and DHCPACK messages to the client's hardware address and
    // 'yiaddr' address." With no yiaddr (an INFORM that left ciaddr empty) there is no
    // address to unicast to: broadcast.
    let ip = reply.yiaddr();
    if ip.is_unspecified() {
        return Destination::Broadcast;
    }
    Destination::UnicastHw { ip, mac: req.mac }
}

/// The reply's bytes, zero-padded (pad options after End) to [`BOOTP_MIN_LEN`].
///
/// The size is not checked against the client's option 57: a reply is a few hundred bytes,
/// well inside the 576 every client must accept (RFC 2131 §2), unless an operator
/// configures a very long boot file name or DNS list.
pub fn encode(msg: &Message) -> Result<Vec<u8>, ReplyError> {
    let mut buf = msg.to_vec().map_err(|source| ReplyError::Encode {
        xid: msg.xid(),
        source,
    })?;
    if buf.len() < BOOTP_MIN_LEN {
        buf.resize(BOOTP_MIN_LEN, 0);
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use dhcproto::v4::relay::{RelayCode, RelayInfo};
    use dhcproto::{Decodable, Decoder};

    use super::*;
    use crate::dhcp::policy::{RequestState, Silence};
    use crate::dhcp::{Arrival, ClientMessage, PxeInfo, RelayAgent};
    use crate::inventory::{IpRange, Purpose, Served};

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);
    const HOUR: Duration = Duration::from_secs(3600);

    fn req(kind: ClientMessage) -> Request {
        Request {
            kind,
            xid: 0x0bad_cafe,
            mac: MAC,
            client_id: None,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            hops: 0,
            broadcast: false,
            requested_ip: None,
            server_id: None,
            hostname: None,
            vendor_class: None,
            params: Vec::new(),
            max_message_size: None,
            relay: None,
            pxe: PxeInfo::default(),
            arrival: Arrival {
                iface: "gw0".to_string(),
                local_ip: SERVER,
                local_port: SERVER_PORT,
                peer: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT),
            },
        }
    }

    fn subnet() -> Subnet {
        Subnet {
            name: "prov".to_string(),
            cidr: "10.0.0.0/24".parse().unwrap(),
            purpose: Purpose::Provisioning,
            gateway: Some(Ipv4Addr::new(10, 0, 0, 254)),
            dns: vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)],
            domain: Some("lab.example".to_string()),
            lease_time: HOUR,
            dynamic_ranges: vec![IpRange {
                start: Ipv4Addr::new(10, 0, 0, 100),
                end: Ipv4Addr::new(10, 0, 0, 199),
            }],
            known_hosts_only: false,
            proxy_dhcp: false,
            served: Served::Interface("gw0".to_string()),
            mtu: Some(9000),
            trust_option82: false,
        }
    }

    fn offer() -> Decision {
        Decision::Offer {
            ip: IP,
            lease_time: HOUR,
        }
    }

    fn ack() -> Decision {
        Decision::Ack {
            ip: IP,
            lease_time: HOUR,
            state: RequestState::Selecting,
        }
    }

    fn nak() -> Decision {
        Decision::Nak {
            reason: NakReason::WrongSubnet,
        }
    }

    fn build_with(
        r: &Request,
        d: &Decision,
        subnet: Option<&Subnet>,
        boot: Option<&BootInfo>,
    ) -> Message {
        let p = ReplyParams {
            server_id: SERVER,
            subnet,
            boot,
        };
        build(r, d, &p).unwrap()
    }

    fn build_plain(r: &Request, d: &Decision) -> Message {
        build_with(r, d, Some(&subnet()), None)
    }

    fn opt(m: &Message, code: OptionCode) -> Option<&DhcpOption> {
        m.opts().get(code)
    }

    fn codes(m: &Message) -> Vec<u8> {
        m.opts().iter().map(|(c, _)| u8::from(*c)).collect()
    }

    /// Encodes and decodes again: what the client will actually see.
    fn wire(m: &Message) -> Message {
        Message::decode(&mut Decoder::new(&encode(m).unwrap())).unwrap()
    }

    #[test]
    fn no_reply_for_silent_decisions() {
        let p = ReplyParams {
            server_id: SERVER,
            subnet: Some(&subnet()),
            boot: None,
        };
        let r = req(ClientMessage::Request);
        for d in [
            Decision::Release { ip: IP },
            Decision::Decline { ip: IP },
            Decision::Ignore(Silence::NoSubnet),
            Decision::Withdraw,
        ] {
            assert_eq!(build(&r, &d, &p), None, "{d:?}");
        }
    }

    #[test]
    fn rfc2131_table3_offer_header() {
        let mut r = req(ClientMessage::Discover);
        r.hops = 2;
        r.ciaddr = Ipv4Addr::new(10, 0, 0, 9);
        let m = wire(&build_plain(&r, &offer()));
        assert_eq!(m.opcode(), Opcode::BootReply);
        assert_eq!(m.htype(), HType::Eth);
        assert_eq!(m.hlen(), 6);
        assert_eq!(m.chaddr(), MAC.octets());
        assert_eq!(m.xid(), 0x0bad_cafe);
        assert_eq!(m.hops(), 0);
        assert_eq!(m.secs(), 0);
        assert_eq!(m.yiaddr(), IP);
        // "'ciaddr': 0" in a DHCPOFFER.
        assert_eq!(m.ciaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(m.siaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(
            opt(&m, OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
    }

    #[test]
    fn rfc2131_table3_ack_copies_ciaddr_of_renewal() {
        let mut r = req(ClientMessage::Request);
        r.ciaddr = IP;
        let d = Decision::Ack {
            ip: IP,
            lease_time: HOUR,
            state: RequestState::Renewing,
        };
        let m = wire(&build_plain(&r, &d));
        assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(m.ciaddr(), IP);
        assert_eq!(m.yiaddr(), IP);
    }

    #[test]
    fn rfc2131_table3_flags_and_giaddr_copied() {
        let mut r = req(ClientMessage::Discover);
        r.broadcast = true;
        r.giaddr = Ipv4Addr::new(10, 1, 0, 1);
        let m = wire(&build_plain(&r, &offer()));
        assert!(m.flags().broadcast());
        assert_eq!(m.giaddr(), Ipv4Addr::new(10, 1, 0, 1));
        let m = wire(&build_plain(&req(ClientMessage::Discover), &offer()));
        assert!(!m.flags().broadcast());
    }

    #[test]
    fn subnet_options_sent_without_option_55() {
        let m = wire(&build_plain(&req(ClientMessage::Discover), &offer()));
        assert_eq!(
            opt(&m, OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
        );
        assert_eq!(
            opt(&m, OptionCode::Router),
            Some(&DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 0, 254)]))
        );
        assert_eq!(
            opt(&m, OptionCode::DomainNameServer),
            Some(&DhcpOption::DomainNameServer(subnet().dns))
        );
        assert_eq!(
            opt(&m, OptionCode::DomainName),
            Some(&DhcpOption::DomainName("lab.example".to_string()))
        );
        assert_eq!(
            opt(&m, OptionCode::InterfaceMtu),
            Some(&DhcpOption::InterfaceMtu(9000))
        );
        assert_eq!(
            opt(&m, OptionCode::BroadcastAddr),
            Some(&DhcpOption::BroadcastAddr(Ipv4Addr::new(10, 0, 0, 255)))
        );
    }

    #[test]
    fn optional_subnet_options_left_out_when_unset() {
        let mut s = subnet();
        s.gateway = None;
        s.dns.clear();
        s.domain = None;
        s.mtu = None;
        let m = build_with(&req(ClientMessage::Discover), &offer(), Some(&s), None);
        assert_eq!(codes(&m), vec![1, 28, 51, 53, 54, 58, 59]);
    }

    #[test]
    fn rfc2131_4_4_5_t1_t2() {
        let m = wire(&build_plain(&req(ClientMessage::Request), &ack()));
        assert_eq!(
            opt(&m, OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(3600))
        );
        assert_eq!(
            opt(&m, OptionCode::Renewal),
            Some(&DhcpOption::Renewal(1800))
        );
        assert_eq!(
            opt(&m, OptionCode::Rebinding),
            Some(&DhcpOption::Rebinding(3150))
        );
    }

    #[test]
    fn rfc2131_3_3_infinite_lease_has_no_renewal_times() {
        let d = Decision::Ack {
            ip: IP,
            lease_time: Duration::from_secs(u64::MAX),
            state: RequestState::Selecting,
        };
        let m = build_plain(&req(ClientMessage::Request), &d);
        assert_eq!(
            opt(&m, OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(u32::MAX))
        );
        assert_eq!(opt(&m, OptionCode::Renewal), None);
        assert_eq!(opt(&m, OptionCode::Rebinding), None);
    }

    #[test]
    fn rfc2131_4_3_5_inform_ack_has_no_lease() {
        let mut r = req(ClientMessage::Inform);
        r.ciaddr = Ipv4Addr::new(10, 0, 0, 77);
        let m = wire(&build_plain(&r, &Decision::InformAck));
        assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(m.ciaddr(), Ipv4Addr::new(10, 0, 0, 77));
        for code in [
            OptionCode::AddressLeaseTime,
            OptionCode::Renewal,
            OptionCode::Rebinding,
        ] {
            assert_eq!(opt(&m, code), None, "{code:?}");
        }
        assert!(opt(&m, OptionCode::SubnetMask).is_some());
        // §4.3.5: "directly to the address given in the 'ciaddr' field".
        assert_eq!(
            destination(&r, &m),
            Destination::Unicast(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 77), CLIENT_PORT))
        );
    }

    #[test]
    fn rfc2131_table3_nak() {
        let mut r = req(ClientMessage::Request);
        r.ciaddr = IP;
        r.requested_ip = Some(IP);
        let boot = pxe_boot();
        let m = wire(&build_with(&r, &nak(), Some(&subnet()), Some(&boot)));
        assert_eq!(m.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(m.ciaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(m.siaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(m.fname(), None);
        assert_eq!(codes(&m), vec![53, 54, 56]);
        assert_eq!(
            opt(&m, OptionCode::Message),
            Some(&DhcpOption::Message(
                "requested address is not on this network".to_string()
            ))
        );
    }

    #[test]
    fn nak_message_per_reason() {
        let r = req(ClientMessage::Request);
        let mut seen = std::collections::BTreeSet::new();
        for reason in [
            NakReason::WrongSubnet,
            NakReason::Taken,
            NakReason::ReservationMoved,
            NakReason::NotAllocatable,
        ] {
            let m = build_plain(&r, &Decision::Nak { reason });
            let Some(DhcpOption::Message(text)) = opt(&m, OptionCode::Message) else {
                panic!("no option 56 for {reason:?}");
            };
            assert!(seen.insert(text.clone()));
        }
    }

    #[test]
    fn rfc2131_4_3_2_nak_via_relay_sets_broadcast_bit() {
        let mut r = req(ClientMessage::Request);
        r.giaddr = Ipv4Addr::new(10, 1, 0, 1);
        assert!(wire(&build_plain(&r, &nak())).flags().broadcast());
    }

    #[test]
    fn rfc6842_client_id_echoed() {
        let mut r = req(ClientMessage::Discover);
        r.client_id = Some(vec![0xff, 0, 0, 0, 1, 0, 1, 0x2a]);
        for d in [offer(), ack(), Decision::InformAck, nak()] {
            let m = wire(&build_plain(&r, &d));
            assert_eq!(
                opt(&m, OptionCode::ClientIdentifier),
                Some(&DhcpOption::ClientIdentifier(vec![
                    0xff, 0, 0, 0, 1, 0, 1, 0x2a
                ])),
                "{d:?}"
            );
        }
        let m = build_plain(&req(ClientMessage::Discover), &offer());
        assert_eq!(opt(&m, OptionCode::ClientIdentifier), None);
    }

    #[test]
    fn rfc3046_2_2_option82_echoed_entire() {
        // Circuit-id, remote-id, a vendor-specific sub-option 9 and RFC 6607's VSS (151)
        // in the relay's own order: every byte goes back, in that order.
        let raw: Vec<u8> = [
            &b"\x01\x0cEthernet1/12"[..],
            b"\x09\x06\x00\x00\x0d\xe9\x01\x07",
            b"\x02\x06\x00\x01\x02\x03\x04\x05",
            b"\x97\x04\x01red",
        ]
        .concat();
        let mut r = req(ClientMessage::Discover);
        r.giaddr = Ipv4Addr::new(10, 1, 0, 1);
        r.relay = Some(RelayAgent {
            circuit_id: Some(b"Ethernet1/12".to_vec()),
            remote_id: Some(vec![0, 1, 2, 3, 4, 5]),
            link_selection: None,
            raw: raw.clone(),
        });
        for d in [offer(), ack(), nak()] {
            let bytes = encode(&build_plain(&r, &d)).unwrap();
            let m = Message::decode(&mut Decoder::new(&bytes)).unwrap();
            let Some(DhcpOption::RelayAgentInformation(info)) =
                opt(&m, OptionCode::RelayAgentInformation)
            else {
                panic!("no option 82 in {d:?}");
            };
            assert_eq!(
                info.get(RelayCode::AgentCircuitId),
                Some(&RelayInfo::AgentCircuitId(b"Ethernet1/12".to_vec()))
            );
            // RFC 3046 §2.1: the relay agent option is the last one before End.
            let at = bytes.iter().rposition(|&b| b == 255).unwrap();
            let start = at - raw.len() - 2;
            assert_eq!(&bytes[start..start + 2], &[82, raw.len() as u8]);
            assert_eq!(&bytes[start + 2..at], &raw[..]);
        }
    }

    #[test]
    fn no_option82_without_a_relay_agent() {
        let r = req(ClientMessage::Discover);
        let bytes = encode(&build_plain(&r, &offer())).unwrap();
        let m = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert!(opt(&m, OptionCode::RelayAgentInformation).is_none());
    }

    fn pxe_boot() -> BootInfo {
        BootInfo {
            next_server: Ipv4Addr::new(10, 0, 0, 1),
            filename: "undionly.kpxe".to_string(),
            vendor_class: Some("PXEClient"),
            pxe_discovery_control: true,
            tftp_server_name: Some("10.0.0.1".to_string()),
        }
    }

    #[test]
    fn pxe_boot_fields() {
        let boot = pxe_boot();
        let m = wire(&build_with(
            &req(ClientMessage::Discover),
            &offer(),
            Some(&subnet()),
            Some(&boot),
        ));
        assert_eq!(m.siaddr(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(
            m.fname(),
            Some(&b"undionly.kpxe\0"[..]),
            "dhcproto keeps the NUL it reads"
        );
        assert_eq!(
            opt(&m, OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(b"undionly.kpxe".to_vec()))
        );
        assert_eq!(
            opt(&m, OptionCode::TFTPServerName),
            Some(&DhcpOption::TFTPServerName(b"10.0.0.1".to_vec()))
        );
        assert_eq!(
            opt(&m, OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
        );
        assert_eq!(
            opt(&m, OptionCode::VendorExtensions),
            Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255]))
        );
    }

    #[test]
    fn http_boot_without_pxe_extras() {
        let boot = BootInfo {
            next_server: Ipv4Addr::new(10, 0, 0, 1),
            filename: "http://10.0.0.1:8080/boot/ipxe.efi".to_string(),
            vendor_class: Some("HTTPClient"),
            pxe_discovery_control: false,
            tftp_server_name: None,
        };
        let m = build_with(
            &req(ClientMessage::Discover),
            &offer(),
            Some(&subnet()),
            Some(&boot),
        );
        assert_eq!(opt(&m, OptionCode::VendorExtensions), None);
        assert_eq!(opt(&m, OptionCode::TFTPServerName), None);
        assert_eq!(
            opt(&m, OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
        );
    }

    #[test]
    fn long_boot_file_only_in_option_67() {
        for (len, in_file) in [(127, true), (128, false), (300, false)] {
            let boot = BootInfo {
                filename: format!("http://10.0.0.1/{}", "a".repeat(len - 16)),
                ..pxe_boot()
            };
            let m = build_with(&req(ClientMessage::Discover), &offer(), None, Some(&boot));
            assert_eq!(m.fname().is_some(), in_file, "{len}");
            let m = wire(&m);
            assert_eq!(
                opt(&m, OptionCode::BootfileName),
                Some(&DhcpOption::BootfileName(boot.filename.into_bytes())),
                "{len}: RFC 3396 split and rejoined"
            );
        }
    }

    #[test]
    fn without_boot_info_no_boot_fields() {
        let m = build_plain(&req(ClientMessage::Discover), &offer());
        assert_eq!(m.siaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(m.fname(), None);
        for code in [66u8, 67, 60, 43] {
            assert_eq!(opt(&m, OptionCode::from(code)), None, "{code}");
        }
    }

    #[test]
    fn rfc1542_reply_padded_to_300_bytes() {
        let p = ReplyParams {
            server_id: SERVER,
            subnet: None,
            boot: None,
        };
        let m = build(&req(ClientMessage::Request), &nak(), &p).unwrap();
        let unpadded = m.to_vec().unwrap();
        assert!(unpadded.len() < BOOTP_MIN_LEN);
        let bytes = encode(&m).unwrap();
        assert_eq!(bytes.len(), BOOTP_MIN_LEN);
        assert_eq!(bytes[..unpadded.len()], unpadded[..]);
        assert!(bytes[unpadded.len()..].iter().all(|&b| b == 0));
        // Longer replies are left as they are.
        let boot = BootInfo {
            filename: "x".repeat(200),
            ..pxe_boot()
        };
        let m = build_with(
            &req(ClientMessage::Discover),
            &offer(),
            Some(&subnet()),
            Some(&boot),
        );
        assert_eq!(encode(&m).unwrap().len(), m.to_vec().unwrap().len());
    }

    #[test]
    fn rfc2131_4_1_reply_to_relay() {
        let mut r = req(ClientMessage::Discover);
        r.giaddr = Ipv4Addr::new(10, 1, 0, 1);
        r.ciaddr = Ipv4Addr::new(10, 1, 0, 50);
        r.broadcast = true;
        let m = build_plain(&r, &offer());
        assert_eq!(
            destination(&r, &m),
            Destination::Relay(SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 1), 67))
        );
    }

    #[test]
    fn rfc2131_4_1_unicast_to_ciaddr() {
        let mut r = req(ClientMessage::Request);
        r.ciaddr = IP;
        r.broadcast = true;
        let m = build_plain(&r, &ack());
        assert_eq!(
            destination(&r, &m),
            Destination::Unicast(SocketAddrV4::new(IP, 68))
        );
    }

    #[test]
    fn rfc2131_4_1_broadcast_flag() {
        let mut r = req(ClientMessage::Discover);
        r.broadcast = true;
        let m = build_plain(&r, &offer());
        assert_eq!(destination(&r, &m), Destination::Broadcast);
    }

    #[test]
    fn rfc2131_4_1_unicast_to_yiaddr_without_broadcast_flag() {
        let r = req(ClientMessage::Discover);
        let m = build_plain(&r, &offer());
        assert_eq!(
            destination(&r, &m),
            Destination::UnicastHw { ip: IP, mac: MAC }
        );
    }

    #[test]
    fn rfc2131_4_1_no_yiaddr_is_broadcast() {
        let r = req(ClientMessage::Inform);
        let m = build_plain(&r, &Decision::InformAck);
        assert_eq!(destination(&r, &m), Destination::Broadcast);
    }

    #[test]
    fn rfc2131_4_1_nak_is_broadcast() {
        let mut r = req(ClientMessage::Request);
        r.ciaddr = IP;
        let m = build_plain(&r, &nak());
        assert_eq!(destination(&r, &m), Destination::Broadcast);
    }

    #[test]
    fn rfc2131_4_1_nak_via_relay() {
        let mut r = req(ClientMessage::Request);
        r.giaddr = Ipv4Addr::new(10, 1, 0, 1);
        r.ciaddr = IP;
        let m = build_plain(&r, &nak());
        assert_eq!(
            destination(&r, &m),
            Destination::Relay(SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 1), 67))
        );
    }

    #[test]
    fn pxe_4011_reply_to_sender() {
        let mut r = req(ClientMessage::Request);
        r.arrival.local_port = PXE_PORT;
        r.arrival.peer = SocketAddrV4::new(IP, 4011);
        r.broadcast = true;
        let m = build_plain(&r, &ack());
        assert_eq!(
            destination(&r, &m),
            Destination::Unicast(SocketAddrV4::new(IP, 4011))
        );
    }
}
