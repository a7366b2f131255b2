//! What the DHCP server is configured with: the interfaces it answers on and its server-wide
//! settings. The daemon config fills these from `bootgate.toml`; they live here so the
//! server needs nothing from the config.

use std::time::Duration;

use ipnet::Ipv4Net;

use super::probe::ProbeMode;

/// A gateway interface bootgate serves (DHCP/TFTP/HTTP answer only on these).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Interface {
    pub name: String,
    /// The gateway's own address and prefix on that interface (server identifier, next-server).
    pub address: Ipv4Net,
}

/// Server-wide DHCP settings (`[dhcp]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DhcpSettings {
    /// How long an OFFERed address stays reserved for the client (RFC 2131 §4.3.1 lets
    /// the server reserve it; 30 s covers slow PXE ROMs).
    pub offer_hold: Duration,
    /// How long a DECLINEd address stays out of the pool (RFC 2131 §4.3.3).
    pub decline_quarantine: Duration,
    /// Requests processed concurrently.
    pub max_in_flight: usize,
    /// Ping a dynamic address before offering it (RFC 2131 §4.4.1 "SHOULD probe").
    pub conflict_probe: ProbeMode,
    pub probe_timeout: Duration,
    /// Client MACs whose rate-limit and discovery bookkeeping is kept; past it the least
    /// recently heard are forgotten (a flood of random MACs must not grow memory).
    pub max_tracked_clients: usize,
    /// ACKs per subnet and minute for an address the client was never offered (a
    /// SELECTING REQUEST without our OFFER, a RENEWING/REBINDING one we hold no record
    /// of); past it such REQUESTs get no answer, so a burst cannot drain a dynamic range.
    pub unoffered_acks_per_minute: u32,
}
