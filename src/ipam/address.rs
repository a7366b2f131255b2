//! The address-book seam between IPAM and the DHCP policy: who a client is, who holds an
//! address, and the read-only book `decide` looks at (the IPAM service's in-memory book
//! implements it; tests use fixtures).

use std::net::Ipv4Addr;

use serde::Serialize;

use crate::inventory::Subnet;
use crate::types::MacAddr;

/// Who a client is for lease purposes: the NIC's MAC (chaddr).
///
/// RFC 2131 §4.2 lets a client name itself with option 61 instead, but one NIC on a PXE
/// network presents several identities in one boot: the firmware's PXE client sends none,
/// iPXE sends its own, the installed OS another. Keyed by option 61, each stage would be a
/// new client, and a host with a reservation would find its own address "taken" by its
/// previous stage (seen with OVMF PXE → iPXE). So, like Kea with `match-client-id: false`
/// and MAAS, bootgate keys by MAC; option 61 is still stored with the lease and echoed
/// (RFC 6842).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum ClientKey {
    Mac(MacAddr),
}

/// Who stands in the way of giving an address to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Another client holds a lease or an offer on it.
    Client { mac: MacAddr },
    /// A client declined it (RFC 2131 §4.3.3): quarantined until it expires.
    Quarantined,
}

/// The address a client holds now (an unexpired lease or an offer hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    pub ip: Ipv4Addr,
    /// An offer hold, not yet a lease.
    pub offered: bool,
}

/// Read-only access to the address state (implemented by the IPAM service's in-memory book
/// and by test fixtures).
pub trait AddressBook {
    /// The binding `client` holds in `subnet`, if any.
    fn binding_of(&self, subnet: &Subnet, client: &ClientKey) -> Option<Binding>;
    /// Who holds `ip` against `client` (None when it is free for them or theirs).
    fn holder(&self, ip: Ipv4Addr, client: &ClientKey) -> Option<Holder>;
    /// A free address of `subnet`'s dynamic ranges for `client`, from `lane` first.
    fn next_free(&self, subnet: &Subnet, client: &ClientKey, lane: Lane) -> Option<Ipv4Addr>;
}

/// Which part of the dynamic pool a gateway takes fresh addresses from first: positions
/// `p` with `p % of == index` (then, when those are exhausted, any other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lane {
    pub index: u64,
    pub of: u64,
}

impl Lane {
    /// The whole pool: no preference.
    pub const ALL: Lane = Lane { index: 0, of: 1 };

    pub fn contains(self, position: u64) -> bool {
        self.of <= 1 || position % self.of == self.index
    }
}
