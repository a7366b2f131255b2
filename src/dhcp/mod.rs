//! DHCPv4 (RFC 2131/2132) with PXE. The packet path is kept straight:
//! datagram → [`request::decode`] (drop + count on error) → typed [`Request`] →
//! pure [`policy::decide`] over a [`policy::View`] → the IPAM service commits (durably,
//! before the ACK leaves) → [`reply::build`] → [`reply::destination`] → send → event.
//! Protocol code never touches the store; policy never touches a socket.

use std::net::Ipv4Addr;

use serde::Serialize;

pub use crate::pxe::PxeInfo;
use crate::types::MacAddr;

pub mod arp;
pub mod balance;
pub mod policy;
pub mod probe;
pub mod reply;
pub mod request;
pub mod server;
mod settings;
pub mod tracker;

pub use settings::{DhcpSettings, Interface};

/// DHCP message types a server receives (option 53). Server-sent types live in `reply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientMessage {
    Discover,
    Request,
    Decline,
    Release,
    Inform,
}

impl ClientMessage {
    pub fn as_str(&self) -> &'static str {
        match self {
            ClientMessage::Discover => "discover",
            ClientMessage::Request => "request",
            ClientMessage::Decline => "decline",
            ClientMessage::Release => "release",
            ClientMessage::Inform => "inform",
        }
    }
}

/// What the relay agent told us (giaddr, RFC 3046 option 82, RFC 3527 link selection).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RelayAgent {
    /// Sub-option 1, raw bytes (switch port name on most switches).
    pub circuit_id: Option<Vec<u8>>,
    /// Sub-option 2, raw bytes (switch name or MAC).
    pub remote_id: Option<Vec<u8>>,
    /// Sub-option 5 (RFC 3527): the subnet to allocate from, overriding giaddr.
    pub link_selection: Option<Ipv4Addr>,
    /// The whole option as received, every sub-option (e.g. 151 VSS, 11 server-id
    /// override, vendor sub-options) included: RFC 3046 §2.2 wants it echoed entire.
    #[serde(skip)]
    pub raw: Vec<u8>,
}

/// Where a datagram arrived: the interface (from IP_PKTINFO) and the local port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Arrival {
    /// Interface name as configured (`gw0`).
    pub iface: String,
    /// Our address on that interface (the server identifier we answer with).
    pub local_ip: Ipv4Addr,
    /// 67, or 4011 for PXE boot-server requests (proxyDHCP).
    pub local_port: u16,
    /// Where the datagram came from (a relay's address, a client's ciaddr, or 0.0.0.0).
    pub peer: std::net::SocketAddrV4,
}

/// A decoded client message: everything policy needs, typed, nothing it doesn't.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    pub kind: ClientMessage,
    pub xid: u32,
    /// chaddr (only Ethernet, htype 1 / hlen 6, is accepted).
    pub mac: MacAddr,
    /// Option 61; when present it identifies the client instead of chaddr (RFC 2131 §4.2).
    pub client_id: Option<Vec<u8>>,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub hops: u8,
    /// The broadcast bit of `flags`.
    pub broadcast: bool,
    /// Option 50.
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// Option 12.
    pub hostname: Option<String>,
    /// Option 60, lossy UTF-8.
    pub vendor_class: Option<String>,
    /// Option 55, in the client's order.
    pub params: Vec<u8>,
    /// Option 57.
    pub max_message_size: Option<u16>,
    /// Option 82.
    pub relay: Option<RelayAgent>,
    pub pxe: PxeInfo,
    pub arrival: Arrival,
}

impl Request {
    /// Whether the request came through a relay (giaddr set, RFC 2131 §4.1).
    pub fn relayed(&self) -> bool {
        !self.giaddr.is_unspecified()
    }

    /// The client identity leases are keyed by: option 61 if sent, else the MAC.
    pub fn client_key(&self) -> String {
        match &self.client_id {
            Some(id) => hex(id),
            None => self.mac.to_string(),
        }
    }
}

/// Lower-case hex of raw bytes (client ids, circuit ids that aren't printable).
pub use crate::types::hex;

/// Printable ASCII as text, anything else as hex (how relays' circuit ids are stored).
pub fn printable(bytes: &[u8]) -> String {
    if !bytes.is_empty() && bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        String::from_utf8_lossy(bytes).into_owned()
    } else {
        hex(bytes)
    }
}
