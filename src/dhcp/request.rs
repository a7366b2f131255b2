//! Datagram → typed [`Request`]. Everything a client can put on the wire is untrusted: every
//! length is checked, nothing here can panic, and each way a datagram can be refused is a
//! [`DecodeError`] variant with a bounded metric label.
//!
//! The fixed header and the option area are parsed here rather than by `dhcproto`'s
//! decoder: that one stops at the first option it cannot type (a non-UTF-8 host name, a
//! short option 94) and silently drops every option after it, including the option 82 a
//! relay appends last; it ignores the magic cookie, option overload (52) and all but the
//! first architecture of option 93. `dhcproto` stays the reply encoder (see `reply.rs`) and
//! the test-side client.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::{Arrival, ClientMessage, PxeInfo, RelayAgent, Request};
use crate::types::MacAddr;

/// The fixed BOOTP header (RFC 2131 §2, figure 1) up to and including `file`.
const HEADER_LEN: usize = 236;
/// RFC 2131 §3: "the first four octets of the 'options' field of the DHCP message contain
/// the (decimal) values 99, 130, 83 and 99".
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Header plus magic cookie: the shortest datagram that can be a DHCP message.
pub const MIN_LEN: usize = HEADER_LEN + MAGIC.len();

const SNAME: std::ops::Range<usize> = 44..108;
const FILE: std::ops::Range<usize> = 108..236;

// Option codes read here (RFC 2132 unless noted).
const OPT_HOSTNAME: u8 = 12;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_OVERLOAD: u8 = 52;
const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_PARAMS: u8 = 55;
const OPT_MAX_SIZE: u8 = 57;
const OPT_VENDOR_CLASS: u8 = 60;
const OPT_CLIENT_ID: u8 = 61;
/// RFC 3004.
const OPT_USER_CLASS: u8 = 77;
/// RFC 3046.
const OPT_RELAY_AGENT: u8 = 82;
/// RFC 4578 §2.1.
const OPT_CLIENT_ARCH: u8 = 93;
/// RFC 4578 §2.3.
const OPT_CLIENT_UUID: u8 = 97;
/// iPXE's encapsulated options; only an iPXE build sends it.
const OPT_IPXE: u8 = 175;

// Option 82 sub-options.
const SUB_CIRCUIT_ID: u8 = 1;
const SUB_REMOTE_ID: u8 = 2;
/// RFC 3527.
const SUB_LINK_SELECTION: u8 = 5;

/// Why a datagram on the DHCP port is not a request we answer. Each is dropped and counted
/// under [`DecodeError::label`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("datagram of {len} bytes is shorter than a DHCP message ({MIN_LEN} bytes)")]
    Truncated { len: usize },
    /// op 2 (BOOTREPLY) is another server's answer seen on a shared segment.
    #[error("op {op} is not BOOTREQUEST (1)")]
    NotBootRequest { op: u8 },
    /// We key leases and reservations by 6-byte MACs; InfiniBand (htype 32) and others are
    /// refused rather than truncated into a wrong MAC.
    #[error("xid {xid:#010x}: hardware type {htype} / length {hlen} is not Ethernet (1 / 6)")]
    NotEthernet { xid: u32, htype: u8, hlen: u8 },
    /// A plain BOOTP request (RFC 951) or garbage.
    #[error("xid {xid:#010x} from {mac}: no DHCP magic cookie")]
    BadMagic { xid: u32, mac: MacAddr },
    #[error("xid {xid:#010x} from {mac}: option {code} runs past the end of the datagram")]
    OptionOverrun { xid: u32, mac: MacAddr, code: u8 },
    #[error("xid {xid:#010x} from {mac}: no message type (option 53)")]
    NoMessageType { xid: u32, mac: MacAddr },
    #[error("xid {xid:#010x} from {mac}: option 53 has length {len}, expected 1")]
    MalformedMessageType { xid: u32, mac: MacAddr, len: usize },
    /// A server-side type (OFFER 2, ACK 5, NAK 6), a lease query, or an unassigned number.
    #[error(
        "xid {xid:#010x} from {mac}: message type {kind} is not one a client sends to a server"
    )]
    UnsupportedMessageType { xid: u32, mac: MacAddr, kind: u8 },
}

impl DecodeError {
    /// A bounded metric label per variant.
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::NotBootRequest { .. } => "not-boot-request",
            DecodeError::NotEthernet { .. } => "not-ethernet",
            DecodeError::BadMagic { .. } => "bad-magic",
            DecodeError::OptionOverrun { .. } => "option-overrun",
            DecodeError::NoMessageType { .. } => "no-message-type",
            DecodeError::MalformedMessageType { .. } => "malformed-message-type",
            DecodeError::UnsupportedMessageType { .. } => "unsupported-message-type",
        }
    }
}

/// Decodes one datagram that arrived as `arrival` into a [`Request`].
///
/// Options with a wrong length for their type (a 3-byte option 50, say) are treated as
/// absent rather than failing the whole message: policy then sees what a well-behaved
/// client would have meant or stays silent. Only a broken option *framing* (a length that
/// runs past the datagram) or a missing/invalid message type refuses the datagram.
pub fn decode(buf: &[u8], arrival: Arrival) -> Result<Request, DecodeError> {
    let Some(h) = buf.first_chunk::<MIN_LEN>() else {
        return Err(DecodeError::Truncated { len: buf.len() });
    };
    let head = Header::parse(h)?;
    let (xid, mac) = (head.xid, head.mac);
    let opts = Options::of_message(buf, h).map_err(|code| DecodeError::OptionOverrun {
        xid,
        mac,
        code,
    })?;
    let kind = message_type(&opts, xid, mac)?;
    let vendor_class = opts.get(OPT_VENDOR_CLASS);
    Ok(Request {
        kind,
        xid,
        mac,
        // RFC 2132 §9.14: type byte plus at least one byte; an empty one identifies nobody.
        client_id: opts
            .get(OPT_CLIENT_ID)
            .filter(|id| !id.is_empty())
            .map(<[u8]>::to_vec),
        ciaddr: head.ciaddr,
        giaddr: head.giaddr,
        hops: head.hops,
        broadcast: head.broadcast,
        requested_ip: opts.get(OPT_REQUESTED_IP).and_then(ipv4),
        server_id: opts.get(OPT_SERVER_ID).and_then(ipv4),
        hostname: opts.get(OPT_HOSTNAME).and_then(text),
        vendor_class: vendor_class.and_then(text),
        params: opts.get(OPT_PARAMS).map(<[u8]>::to_vec).unwrap_or_default(),
        max_message_size: opts
            .get(OPT_MAX_SIZE)
            .and_then(|v| <[u8; 2]>::try_from(v).ok())
            .map(u16::from_be_bytes),
        relay: opts.get(OPT_RELAY_AGENT).map(relay_agent),
        pxe: pxe_info(&opts),
        arrival,
    })
}

/// The fixed header fields a request is judged by.
struct Header {
    xid: u32,
    mac: MacAddr,
    hops: u8,
    broadcast: bool,
    ciaddr: Ipv4Addr,
    giaddr: Ipv4Addr,
}

impl Header {
    /// A BOOTREQUEST from an Ethernet client with the DHCP magic cookie, or why not.
    fn parse(h: &[u8; MIN_LEN]) -> Result<Header, DecodeError> {
        let (op, htype, hlen, hops) = (h[0], h[1], h[2], h[3]);
        if op != 1 {
            return Err(DecodeError::NotBootRequest { op });
        }
        let xid = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        if htype != 1 || hlen != 6 {
            return Err(DecodeError::NotEthernet { xid, htype, hlen });
        }
        let mac = MacAddr([h[28], h[29], h[30], h[31], h[32], h[33]]);
        if h[236..240] != MAGIC {
            return Err(DecodeError::BadMagic { xid, mac });
        }
        Ok(Header {
            xid,
            mac,
            hops,
            // RFC 2131 §2: the leftmost bit of 'flags' is the BROADCAST flag.
            broadcast: h[10] & 0x80 != 0,
            ciaddr: Ipv4Addr::new(h[12], h[13], h[14], h[15]),
            giaddr: Ipv4Addr::new(h[24], h[25], h[26], h[27]),
        })
    }
}

/// Option 53, or why the message has none a client sends to a server.
fn message_type(opts: &Options, xid: u32, mac: MacAddr) -> Result<ClientMessage, DecodeError> {
    match opts.get(OPT_MESSAGE_TYPE) {
        None => Err(DecodeError::NoMessageType { xid, mac }),
        Some(&[kind]) => match kind {
            1 => Ok(ClientMessage::Discover),
            3 => Ok(ClientMessage::Request),
            4 => Ok(ClientMessage::Decline),
            7 => Ok(ClientMessage::Release),
            8 => Ok(ClientMessage::Inform),
            kind => Err(DecodeError::UnsupportedMessageType { xid, mac, kind }),
        },
        Some(other) => Err(DecodeError::MalformedMessageType {
            xid,
            mac,
            len: other.len(),
        }),
    }
}

/// What the options say about the client's network boot firmware.
fn pxe_info(opts: &Options) -> PxeInfo {
    let vendor_class = opts.get(OPT_VENDOR_CLASS);
    PxeInfo {
        arch: opts.get(OPT_CLIENT_ARCH).and_then(first_arch),
        // RFC 4578 §2.1 / UEFI 2.x §24.7: "PXEClient:Arch:00007:UNDI:003016",
        // "HTTPClient:Arch:00016:UNDI:003001".
        pxe_client: vendor_class.is_some_and(|v| v.starts_with(b"PXEClient")),
        http_client: vendor_class.is_some_and(|v| v.starts_with(b"HTTPClient")),
        ipxe: opts.get(OPT_USER_CLASS).is_some_and(user_class_is_ipxe)
            || opts.get(OPT_IPXE).is_some(),
        uuid: opts.get(OPT_CLIENT_UUID).and_then(machine_uuid),
    }
}

/// The options of one message by code, with split options concatenated (RFC 3396).
#[derive(Default)]
struct Options(BTreeMap<u8, Vec<u8>>);

impl Options {
    /// The options of datagram `buf` (header `h`): the options field, then the 'file' and
    /// 'sname' fields when option 52 says they hold options too. Err(code) as for `scan`.
    fn of_message(buf: &[u8], h: &[u8; MIN_LEN]) -> Result<Options, u8> {
        let mut opts = Options::default();
        opts.scan(buf.get(MIN_LEN..).unwrap_or_default())?;
        // RFC 2131 §4.1 / RFC 2132 §9.3 option overload: 1 = 'file' holds options,
        // 2 = 'sname', 3 = both. RFC 3396 §7 fixes the order: options, then file, then sname.
        if let Some(&[overload]) = opts.get(OPT_OVERLOAD) {
            if overload & 1 != 0 {
                opts.scan(&h[FILE])?;
            }
            if overload & 2 != 0 {
                opts.scan(&h[SNAME])?;
            }
        }
        Ok(opts)
    }

    fn get(&self, code: u8) -> Option<&[u8]> {
        self.0.get(&code).map(Vec::as_slice)
    }

    /// Adds the options in `area` (the options field, or an overloaded sname/file).
    /// Err(code) when an option's length runs past the area.
    fn scan(&mut self, area: &[u8]) -> Result<(), u8> {
        let mut rest = area;
        while let Some((&code, tail)) = rest.split_first() {
            match code {
                // Pad.
                0 => rest = tail,
                // End: anything after it is padding up to the BOOTP minimum.
                255 => return Ok(()),
                _ => {
                    let Some((&len, tail)) = tail.split_first() else {
                        return Err(code);
                    };
                    let Some((data, tail)) = tail.split_at_checked(usize::from(len)) else {
                        return Err(code);
                    };
                    // RFC 3396 §7: "the contents of all instances of the option are
                    // concatenated together", in the order they appear.
                    self.0.entry(code).or_default().extend_from_slice(data);
                    rest = tail;
                }
            }
        }
        // Some firmware omits the End option; the datagram's end ends the options.
        Ok(())
    }
}

fn ipv4(v: &[u8]) -> Option<Ipv4Addr> {
    let b: [u8; 4] = v.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

/// Lossy UTF-8 without the trailing NULs some clients count into option lengths.
fn text(v: &[u8]) -> Option<String> {
    let end = v.iter().rposition(|&b| b != 0)? + 1;
    Some(String::from_utf8_lossy(v.get(..end)?).into_owned())
}

/// RFC 4578 §2.1: option 93 is a list of 16-bit architecture types; a client lists the
/// one it runs first (dhcproto decodes only that one too, but fails on an odd length).
fn first_arch(v: &[u8]) -> Option<u16> {
    v.first_chunk::<2>().map(|b| u16::from_be_bytes(*b))
}

/// RFC 4578 §2.3: option 97 is a type byte (0 = GUID/UUID) and 16 bytes of UUID.
///
/// The bytes are printed in wire order as 8-4-4-4-12 lower-case hex. Firmware copies the
/// SMBIOS UUID into this option as stored, and SMBIOS ≥ 2.6 stores the first three fields
/// little-endian, so for most machines the first three groups appear byte-swapped compared
/// to `dmidecode -s system-uuid`; whoever matches this against an inventory UUID has to
/// try both orders.
fn machine_uuid(v: &[u8]) -> Option<String> {
    let (&kind, uuid) = v.split_first()?;
    let uuid: &[u8; 16] = uuid.try_into().ok()?;
    if kind != 0 {
        return None;
    }
    let mut s = String::with_capacity(36);
    for (i, b) in uuid.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    Some(s)
}

/// Option 77 names iPXE. iPXE sends the bare string `iPXE` (not RFC 3004's format); an
/// RFC 3004 client sends length-prefixed instances, any of which may be `iPXE`.
fn user_class_is_ipxe(v: &[u8]) -> bool {
    if v == b"iPXE" {
        return true;
    }
    let mut rest = v;
    while let Some((&len, tail)) = rest.split_first() {
        let Some((class, tail)) = tail.split_at_checked(usize::from(len)) else {
            return false;
        };
        if class == b"iPXE" {
            return true;
        }
        rest = tail;
    }
    false
}

/// RFC 3046 §2.0: option 82 is a sequence of (code, length, value) sub-options. A broken
/// sub-option ends the walk; what was read before it is kept (the relay still vouches for
/// it). The first instance of each sub-option wins.
fn relay_agent(v: &[u8]) -> RelayAgent {
    let mut agent = RelayAgent {
        raw: v.to_vec(),
        ..RelayAgent::default()
    };
    let mut rest = v;
    while let Some((&code, tail)) = rest.split_first() {
        let Some((&len, tail)) = tail.split_first() else {
            break;
        };
        let Some((data, tail)) = tail.split_at_checked(usize::from(len)) else {
            break;
        };
        match code {
            SUB_CIRCUIT_ID if agent.circuit_id.is_none() => agent.circuit_id = Some(data.to_vec()),
            SUB_REMOTE_ID if agent.remote_id.is_none() => agent.remote_id = Some(data.to_vec()),
            SUB_LINK_SELECTION if agent.link_selection.is_none() => {
                agent.link_selection = ipv4(data);
            }
            _ => {}
        }
        rest = tail;
    }
    agent
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use dhcproto::v4::relay::{RelayAgentInformation, RelayInfo};
    use dhcproto::v4::{
        Architecture, DhcpOption, Flags, HType, Message, MessageType, OptionCode, UnknownOption,
    };
    use dhcproto::{Encodable, v4};
    use proptest::prelude::*;

    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];

    fn arrival() -> Arrival {
        Arrival {
            iface: "gw0".to_string(),
            local_ip: Ipv4Addr::new(10, 0, 0, 1),
            local_port: 67,
            peer: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        }
    }

    /// A client message as a PXE ROM would build it.
    fn client(kind: MessageType) -> Message {
        let mut m = Message::default();
        m.set_xid(0x1234_5678).set_chaddr(&MAC);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m
    }

    fn bytes(m: &Message) -> Vec<u8> {
        m.to_vec().unwrap()
    }

    fn decode_msg(m: &Message) -> Result<Request, DecodeError> {
        decode(&bytes(m), arrival())
    }

    /// A minimal valid DISCOVER, by hand: header, cookie, option 53, end.
    fn raw_discover() -> Vec<u8> {
        let mut b = vec![0u8; MIN_LEN];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
        b[28..34].copy_from_slice(&MAC);
        b[236..240].copy_from_slice(&MAGIC);
        b.extend_from_slice(&[53, 1, 1, 255]);
        b
    }

    #[test]
    fn decodes_minimal_discover() {
        let req = decode(&raw_discover(), arrival()).unwrap();
        assert_eq!(req.kind, ClientMessage::Discover);
        assert_eq!(req.xid, 0xdead_beef);
        assert_eq!(req.mac, MacAddr(MAC));
        assert_eq!(req.client_id, None);
        assert_eq!(req.relay, None);
        assert_eq!(req.pxe, PxeInfo::default());
        assert!(!req.broadcast);
        assert_eq!(req.arrival, arrival());
    }

    #[test]
    fn decodes_every_client_message_type() {
        for (t, kind) in [
            (MessageType::Discover, ClientMessage::Discover),
            (MessageType::Request, ClientMessage::Request),
            (MessageType::Decline, ClientMessage::Decline),
            (MessageType::Release, ClientMessage::Release),
            (MessageType::Inform, ClientMessage::Inform),
        ] {
            assert_eq!(decode_msg(&client(t)).unwrap().kind, kind);
        }
    }

    #[test]
    fn decodes_pxe_rom_discover() {
        let mut m = client(MessageType::Discover);
        m.set_flags(Flags::default().set_broadcast());
        let mut uuid = vec![0u8];
        uuid.extend(0x00..0x10u8);
        let o = m.opts_mut();
        o.insert(DhcpOption::ClientIdentifier(vec![
            1, 0x52, 0x54, 0, 0xab, 0xcd, 0xef,
        ]));
        o.insert(DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
        ));
        o.insert(DhcpOption::ClientSystemArchitecture(Architecture::X64));
        o.insert(DhcpOption::ClientMachineIdentifier(uuid));
        o.insert(DhcpOption::MaxMessageSize(1472));
        o.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::TFTPServerName,
            OptionCode::BootfileName,
        ]));
        let req = decode_msg(&m).unwrap();
        assert!(req.broadcast);
        assert_eq!(
            req.client_id.as_deref(),
            Some(&[1, 0x52, 0x54, 0, 0xab, 0xcd, 0xef][..])
        );
        assert_eq!(
            req.vendor_class.as_deref(),
            Some("PXEClient:Arch:00007:UNDI:003016")
        );
        assert_eq!(req.params, vec![1, 3, 66, 67]);
        assert_eq!(req.max_message_size, Some(1472));
        assert_eq!(
            req.pxe,
            PxeInfo {
                arch: Some(7),
                pxe_client: true,
                http_client: false,
                ipxe: false,
                uuid: Some("00010203-0405-0607-0809-0a0b0c0d0e0f".to_string()),
            }
        );
    }

    #[test]
    fn decodes_uefi_http_client() {
        let mut m = client(MessageType::Discover);
        let o = m.opts_mut();
        o.insert(DhcpOption::ClassIdentifier(
            b"HTTPClient:Arch:00016:UNDI:003001".to_vec(),
        ));
        o.insert(DhcpOption::ClientSystemArchitecture(Architecture::X64_Http));
        let req = decode_msg(&m).unwrap();
        assert!(req.pxe.http_client);
        assert!(!req.pxe.pxe_client);
        assert_eq!(req.pxe.arch, Some(16));
    }

    #[test]
    fn rfc4578_2_1_first_of_several_architectures() {
        let mut b = raw_discover();
        b.truncate(b.len() - 1);
        b.extend_from_slice(&[93, 4, 0, 11, 0, 7, 255]);
        assert_eq!(decode(&b, arrival()).unwrap().pxe.arch, Some(11));
    }

    #[test]
    fn rfc4578_2_3_uuid_needs_type_0_and_16_bytes() {
        for bad in [vec![1u8; 17], vec![0u8; 16], vec![0u8; 18], vec![]] {
            let mut m = client(MessageType::Discover);
            m.opts_mut()
                .insert(DhcpOption::ClientMachineIdentifier(bad));
            assert_eq!(decode_msg(&m).unwrap().pxe.uuid, None);
        }
    }

    #[test]
    fn ipxe_user_class_raw_string() {
        let mut m = client(MessageType::Discover);
        m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        assert!(decode_msg(&m).unwrap().pxe.ipxe);
    }

    #[test]
    fn rfc3004_user_class_instances() {
        let mut m = client(MessageType::Discover);
        m.opts_mut()
            .insert(DhcpOption::UserClass(b"\x03foo\x04iPXE".to_vec()));
        assert!(decode_msg(&m).unwrap().pxe.ipxe);
        let mut m = client(MessageType::Discover);
        m.opts_mut()
            .insert(DhcpOption::UserClass(b"\x03foo\x09iPXE".to_vec()));
        assert!(!decode_msg(&m).unwrap().pxe.ipxe);
    }

    #[test]
    fn ipxe_option_175_present() {
        let mut m = client(MessageType::Discover);
        m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            vec![0xb1, 1, 1],
        )));
        assert!(decode_msg(&m).unwrap().pxe.ipxe);
    }

    #[test]
    fn rfc3046_relay_agent_sub_options() {
        let mut m = client(MessageType::Discover);
        m.set_giaddr(Ipv4Addr::new(10, 1, 0, 1)).set_hops(1);
        let mut info = RelayAgentInformation::default();
        info.insert(RelayInfo::AgentCircuitId(b"Ethernet1/12".to_vec()));
        info.insert(RelayInfo::AgentRemoteId(vec![0, 1, 2, 3, 4, 5]));
        info.insert(RelayInfo::LinkSelection(Ipv4Addr::new(10, 2, 0, 0)));
        info.insert(RelayInfo::SubscriberId(b"ignored".to_vec()));
        let raw = info.to_vec().unwrap();
        m.opts_mut().insert(DhcpOption::RelayAgentInformation(info));
        let req = decode_msg(&m).unwrap();
        assert!(req.relayed());
        assert_eq!(req.hops, 1);
        assert_eq!(
            req.relay,
            Some(RelayAgent {
                circuit_id: Some(b"Ethernet1/12".to_vec()),
                remote_id: Some(vec![0, 1, 2, 3, 4, 5]),
                link_selection: Some(Ipv4Addr::new(10, 2, 0, 0)),
                // Sub-option 6 (subscriber id) is not interpreted but kept for the echo.
                raw,
            })
        );
    }

    #[test]
    fn rfc3046_broken_sub_option_keeps_earlier_ones() {
        let mut b = raw_discover();
        b.truncate(b.len() - 1);
        // circuit-id "p1", then a sub-option 2 claiming 9 bytes with 1 left.
        b.extend_from_slice(&[82, 7, 1, 2, b'p', b'1', 2, 9, 0, 255]);
        let relay = decode(&b, arrival()).unwrap().relay.unwrap();
        assert_eq!(relay.circuit_id, Some(b"p1".to_vec()));
        assert_eq!(relay.remote_id, None);
    }

    #[test]
    fn request_fields() {
        let mut m = client(MessageType::Request);
        m.set_ciaddr(Ipv4Addr::new(10, 0, 0, 9));
        let o = m.opts_mut();
        o.insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 50)));
        o.insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 1)));
        o.insert(DhcpOption::Hostname("gpu-a01".to_string()));
        let req = decode_msg(&m).unwrap();
        assert_eq!(req.ciaddr, Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(req.requested_ip, Some(Ipv4Addr::new(10, 0, 0, 50)));
        assert_eq!(req.server_id, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(req.hostname.as_deref(), Some("gpu-a01"));
    }

    #[test]
    fn non_utf8_hostname_does_not_hide_later_options() {
        let mut b = raw_discover();
        b.truncate(b.len() - 1);
        b.extend_from_slice(&[12, 4, b'h', 0xff, b'x', 0, 50, 4, 10, 0, 0, 7, 255]);
        let req = decode(&b, arrival()).unwrap();
        assert_eq!(req.hostname.as_deref(), Some("h\u{fffd}x"));
        assert_eq!(req.requested_ip, Some(Ipv4Addr::new(10, 0, 0, 7)));
    }

    #[test]
    fn wrong_length_options_are_absent() {
        let mut b = raw_discover();
        b.truncate(b.len() - 1);
        b.extend_from_slice(&[50, 3, 10, 0, 0, 54, 5, 1, 2, 3, 4, 5, 57, 1, 9, 61, 0, 255]);
        let req = decode(&b, arrival()).unwrap();
        assert_eq!(req.requested_ip, None);
        assert_eq!(req.server_id, None);
        assert_eq!(req.max_message_size, None);
        assert_eq!(req.client_id, None);
    }

    #[test]
    fn rfc3396_split_option_is_concatenated() {
        let mut b = raw_discover();
        b.truncate(b.len() - 1);
        b.extend_from_slice(&[
            60, 3, b'P', b'X', b'E', 0, 60, 6, b'C', b'l', b'i', b'e', b'n', b't', 255,
        ]);
        let req = decode(&b, arrival()).unwrap();
        assert_eq!(req.vendor_class.as_deref(), Some("PXEClient"));
        assert!(req.pxe.pxe_client);
    }

    #[test]
    fn rfc2131_4_1_option_overload_file_and_sname() {
        let mut b = raw_discover();
        // Message type moves into 'file', the host name into 'sname'.
        b.truncate(MIN_LEN);
        b.extend_from_slice(&[52, 1, 3, 255]);
        b[FILE][..4].copy_from_slice(&[53, 1, 3, 255]);
        b[SNAME][..5].copy_from_slice(&[12, 2, b'h', b'1', 255]);
        let req = decode(&b, arrival()).unwrap();
        assert_eq!(req.kind, ClientMessage::Request);
        assert_eq!(req.hostname.as_deref(), Some("h1"));
    }

    #[test]
    fn missing_end_option_is_tolerated() {
        let mut b = raw_discover();
        b.pop();
        assert_eq!(decode(&b, arrival()).unwrap().kind, ClientMessage::Discover);
    }

    #[test]
    fn rejects_truncated() {
        for len in [0, 1, 100, MIN_LEN - 1] {
            let b = &raw_discover()[..len];
            assert_eq!(decode(b, arrival()), Err(DecodeError::Truncated { len }));
        }
    }

    #[test]
    fn rejects_boot_reply() {
        let mut b = raw_discover();
        b[0] = 2;
        assert_eq!(
            decode(&b, arrival()),
            Err(DecodeError::NotBootRequest { op: 2 })
        );
    }

    #[test]
    fn rejects_non_ethernet() {
        let mut b = raw_discover();
        b[2] = 20;
        assert_eq!(
            decode(&b, arrival()),
            Err(DecodeError::NotEthernet {
                xid: 0xdead_beef,
                htype: 1,
                hlen: 20
            })
        );
        let mut b = raw_discover();
        b[1] = 32;
        assert!(matches!(
            decode(&b, arrival()),
            Err(DecodeError::NotEthernet { htype: 32, .. })
        ));
    }

    #[test]
    fn rejects_bootp_without_cookie() {
        let mut b = raw_discover();
        b[236] = 0;
        assert!(matches!(
            decode(&b, arrival()),
            Err(DecodeError::BadMagic { .. })
        ));
    }

    #[test]
    fn rejects_option_overrunning_the_buffer() {
        for tail in [&[12u8, 40, b'a', b'b'][..], &[12], &[0, 0, 60]] {
            let mut b = raw_discover();
            b.truncate(b.len() - 1);
            b.extend_from_slice(tail);
            let err = decode(&b, arrival()).unwrap_err();
            assert!(
                matches!(err, DecodeError::OptionOverrun { .. }),
                "{tail:?}: {err:?}"
            );
            assert_eq!(err.label(), "option-overrun");
        }
    }

    #[test]
    fn rejects_missing_message_type() {
        let mut b = raw_discover();
        b.truncate(MIN_LEN);
        b.extend_from_slice(&[12, 1, b'x', 255]);
        assert!(matches!(
            decode(&b, arrival()),
            Err(DecodeError::NoMessageType { .. })
        ));
    }

    #[test]
    fn rejects_malformed_message_type() {
        let mut b = raw_discover();
        b.truncate(MIN_LEN);
        b.extend_from_slice(&[53, 2, 1, 1, 255]);
        assert!(matches!(
            decode(&b, arrival()),
            Err(DecodeError::MalformedMessageType { len: 2, .. })
        ));
    }

    #[test]
    fn rejects_server_message_types() {
        for (t, n) in [
            (MessageType::Offer, 2),
            (MessageType::Ack, 5),
            (MessageType::Nak, 6),
            (MessageType::LeaseQuery, 10),
            (MessageType::Unknown(200), 200),
        ] {
            let err = decode_msg(&client(t)).unwrap_err();
            assert!(matches!(err, DecodeError::UnsupportedMessageType { kind, .. } if kind == n));
            assert_eq!(err.label(), "unsupported-message-type");
        }
    }

    #[test]
    fn labels_are_distinct() {
        let mac = MacAddr(MAC);
        let all = [
            DecodeError::Truncated { len: 0 },
            DecodeError::NotBootRequest { op: 2 },
            DecodeError::NotEthernet {
                xid: 0,
                htype: 1,
                hlen: 20,
            },
            DecodeError::BadMagic { xid: 0, mac },
            DecodeError::OptionOverrun {
                xid: 0,
                mac,
                code: 1,
            },
            DecodeError::NoMessageType { xid: 0, mac },
            DecodeError::MalformedMessageType {
                xid: 0,
                mac,
                len: 0,
            },
            DecodeError::UnsupportedMessageType {
                xid: 0,
                mac,
                kind: 2,
            },
        ];
        let labels: std::collections::BTreeSet<_> = all.iter().map(DecodeError::label).collect();
        assert_eq!(labels.len(), all.len());
    }

    /// Generated client messages: every field the decoder fills, with the expected result.
    fn client_message() -> impl Strategy<Value = (Message, Request)> {
        let kinds = prop::sample::select(vec![
            (MessageType::Discover, ClientMessage::Discover),
            (MessageType::Request, ClientMessage::Request),
            (MessageType::Decline, ClientMessage::Decline),
            (MessageType::Release, ClientMessage::Release),
            (MessageType::Inform, ClientMessage::Inform),
        ]);
        let header = (
            kinds,
            any::<u32>(),
            any::<[u8; 6]>(),
            any::<u32>(),
            any::<u32>(),
            any::<u8>(),
            any::<bool>(),
        );
        let opts = (
            prop::option::of(prop::collection::vec(any::<u8>(), 1..40)),
            prop::option::of(any::<u32>()),
            prop::option::of(any::<u32>()),
            prop::option::of("[a-z0-9-]{1,40}"),
            prop::option::of(prop::sample::select(vec![
                "PXEClient:Arch:00000:UNDI:002001",
                "HTTPClient:Arch:00016:UNDI:003001",
                "MSFT 5.0",
            ])),
            prop::collection::vec(1u8..=254, 0..30),
            prop::option::of(576u16..=1500),
        );
        let pxe = (
            prop::option::of(any::<u16>()),
            prop::option::of(any::<[u8; 16]>()),
            any::<bool>(),
            prop::option::of((
                prop::option::of(prop::collection::vec(any::<u8>(), 0..32)),
                prop::option::of(prop::collection::vec(any::<u8>(), 0..32)),
                prop::option::of(any::<u32>()),
            )),
        );
        (header, opts, pxe).prop_map(|(h, o, p)| {
            let ((mt, kind), xid, mac, ciaddr, giaddr, hops, broadcast) = h;
            let (client_id, requested, server, hostname, vendor, params, max_size) = o;
            let (arch, uuid, ipxe, relay) = p;
            let mut m = Message::default();
            m.set_xid(xid)
                .set_chaddr(&mac)
                .set_htype(HType::Eth)
                .set_ciaddr(ciaddr)
                .set_giaddr(giaddr)
                .set_hops(hops);
            if broadcast {
                m.set_flags(Flags::default().set_broadcast());
            }
            let opts = m.opts_mut();
            opts.insert(DhcpOption::MessageType(mt));
            if let Some(id) = &client_id {
                opts.insert(DhcpOption::ClientIdentifier(id.clone()));
            }
            if let Some(ip) = requested {
                opts.insert(DhcpOption::RequestedIpAddress(ip.into()));
            }
            if let Some(ip) = server {
                opts.insert(DhcpOption::ServerIdentifier(ip.into()));
            }
            if let Some(h) = &hostname {
                opts.insert(DhcpOption::Hostname(h.clone()));
            }
            if let Some(v) = vendor {
                opts.insert(DhcpOption::ClassIdentifier(v.as_bytes().to_vec()));
            }
            if !params.is_empty() {
                opts.insert(DhcpOption::ParameterRequestList(
                    params.iter().map(|&c| OptionCode::from(c)).collect(),
                ));
            }
            if let Some(s) = max_size {
                opts.insert(DhcpOption::MaxMessageSize(s));
            }
            if let Some(a) = arch {
                opts.insert(DhcpOption::ClientSystemArchitecture(Architecture(a)));
            }
            if let Some(u) = uuid {
                let mut v = vec![0];
                v.extend(u);
                opts.insert(DhcpOption::ClientMachineIdentifier(v));
            }
            if ipxe {
                opts.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
            }
            let mut agent = None;
            if let Some((circuit, remote, link)) = &relay {
                let mut info = RelayAgentInformation::default();
                if let Some(c) = circuit {
                    info.insert(RelayInfo::AgentCircuitId(c.clone()));
                }
                if let Some(r) = remote {
                    info.insert(RelayInfo::AgentRemoteId(r.clone()));
                }
                if let Some(l) = link {
                    info.insert(RelayInfo::LinkSelection((*l).into()));
                }
                // An empty option 82 encodes to nothing at all.
                if !info.is_empty() {
                    let raw = info.to_vec().unwrap();
                    opts.insert(DhcpOption::RelayAgentInformation(info));
                    agent = Some(RelayAgent {
                        circuit_id: circuit.clone(),
                        remote_id: remote.clone(),
                        link_selection: link.map(Ipv4Addr::from),
                        raw,
                    });
                }
            }
            let expected = Request {
                kind,
                xid,
                mac: MacAddr(mac),
                client_id,
                ciaddr: ciaddr.into(),
                giaddr: giaddr.into(),
                hops,
                broadcast,
                requested_ip: requested.map(Ipv4Addr::from),
                server_id: server.map(Ipv4Addr::from),
                hostname,
                vendor_class: vendor.map(str::to_string),
                params,
                max_message_size: max_size,
                relay: agent,
                pxe: PxeInfo {
                    arch,
                    pxe_client: vendor.is_some_and(|v| v.starts_with("PXEClient")),
                    http_client: vendor.is_some_and(|v| v.starts_with("HTTPClient")),
                    ipxe,
                    uuid: uuid.map(|u| {
                        let h = crate::dhcp::hex(&u);
                        format!(
                            "{}-{}-{}-{}-{}",
                            &h[0..8],
                            &h[8..12],
                            &h[12..16],
                            &h[16..20],
                            &h[20..]
                        )
                    }),
                },
                arrival: arrival(),
            };
            (m, expected)
        })
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..700)) {
            let _ = decode(&b, arrival());
        }

        /// Arbitrary bytes rarely get past the header checks; mutate a valid message so the
        /// option walk sees hostile lengths too.
        #[test]
        fn decode_never_panics_on_mutated_messages(
            tail in prop::collection::vec(any::<u8>(), 0..400),
            flips in prop::collection::vec((0usize..MIN_LEN, any::<u8>()), 0..8),
        ) {
            let mut b = raw_discover();
            b.truncate(MIN_LEN);
            b.extend_from_slice(&[53, 1, 1]);
            b.extend_from_slice(&tail);
            for (i, v) in flips {
                // Keep op/htype/hlen/cookie intact half of the time.
                if !(i < 3 || (236..240).contains(&i)) || v % 2 == 0 {
                    b[i] = v;
                }
            }
            let _ = decode(&b, arrival());
        }

        #[test]
        fn decode_round_trips_client_messages((m, expected) in client_message()) {
            // Through the reply encoder too: padding to 300 bytes must not change anything.
            let padded = crate::dhcp::reply::encode(&m).unwrap();
            prop_assert_eq!(decode(&bytes(&m), arrival()), Ok(expected.clone()));
            prop_assert_eq!(decode(&padded, arrival()), Ok(expected));
        }
    }

    #[test]
    fn encoded_client_message_has_v4_magic() {
        assert_eq!(bytes(&client(MessageType::Discover))[236..240], v4::MAGIC);
    }
}
