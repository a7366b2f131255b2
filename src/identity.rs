//! Boot identity: how a machine on the provisioning network proves which MAC it is before
//! it gets a per-boot token or may report for that MAC (docs/threat-model.md).
//!
//! The proof is the DHCP lease: the gateway bound the address to the MAC in a DHCP
//! exchange it answered, so a request from that address speaks for that MAC, and a request
//! from any other address does not. A boot script that carries a token is served only to
//! the address holding the MAC's lease, and a phone-home is accepted only from it. The
//! token itself is derived (HMAC-SHA256 under the site's boot key, shared by both gateways
//! through the store) from the MAC, the host, the purpose and the lease's binding: a
//! re-fetch within the same boot returns the same token, and only a new DHCP exchange
//! (which moves the binding) brings a new one.
//!
//! Refusals are counted, and recorded as events within a budget per source and per site
//! ([`RefusalBudget`]), so a flood of forged requests cannot fill the event log.
//!
//! Pure apart from the clock and the budget's lock; the seams (who holds an address, the
//! store's key) are the callers'.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::model::BootPurpose;
use crate::types::MacAddr;

/// The store's name of the boot-token key ([`crate::model::BootTokenStore::site_key`]).
pub const BOOT_KEY_NAME: &str = "boot-token";

/// The site's boot-token key.
pub struct BootKey(ring::hmac::Key);

impl BootKey {
    pub fn new(secret: &[u8]) -> BootKey {
        BootKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
    }

    /// 32 random bytes for a new site's key (the first daemon to need one offers it).
    pub fn candidate() -> Vec<u8> {
        let mut b = vec![0u8; 32];
        if getrandom::fill(&mut b).is_err() {
            tracing::error!("no OS randomness: the boot-token key is predictable");
        }
        b
    }

    /// The token of one boot: 128 bits (32 hex digits) of HMAC-SHA256 over the MAC, the
    /// host, the purpose and the binding of the lease the script was fetched under. Pure.
    pub fn token(
        &self,
        mac: MacAddr,
        host: &str,
        purpose: BootPurpose,
        binding: Timestamp,
    ) -> String {
        let message = format!(
            "bootgate-boot-token/1\n{mac}\n{host}\n{}\n{}",
            purpose.as_str(),
            binding.as_millisecond()
        );
        let tag = ring::hmac::sign(&self.0, message.as_bytes());
        tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Whether a request's source address speaks for a MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// The source holds the MAC's lease, bound (by the last DHCP exchange) until `binding`.
    Holder { binding: Timestamp },
    /// The source holds no lease of ours, or another MAC's.
    NotHolder { holder: Option<MacAddr> },
}

impl Proof {
    /// What a refusal says about it (in the event and the answer).
    pub fn reason(&self) -> &'static str {
        match self {
            Proof::Holder { .. } => "holds the lease",
            Proof::NotHolder { holder: Some(_) } => {
                "the request came from an address leased to another MAC"
            }
            Proof::NotHolder { holder: None } => {
                "the request came from an address that holds no lease of this MAC"
            }
        }
    }
}

/// The proof a source has for `mac`, from who holds `source`: the MAC and lease end of the
/// committed lease on that address, if any. Pure.
pub fn proof(mac: MacAddr, holder: Option<(MacAddr, Timestamp)>) -> Proof {
    match holder {
        Some((m, ends)) if m == mac => Proof::Holder { binding: ends },
        Some((m, _)) => Proof::NotHolder { holder: Some(m) },
        None => Proof::NotHolder { holder: None },
    }
}

/// Events a refusal may write: at most `per_source` per source address and `total` over
/// all sources within each `window`; the map of sources is bounded by `max_sources`.
#[derive(Debug, Clone, Copy)]
pub struct BudgetLimits {
    pub window: Duration,
    pub per_source: u32,
    pub total: u32,
    pub max_sources: usize,
}

impl Default for BudgetLimits {
    fn default() -> Self {
        BudgetLimits {
            window: Duration::from_secs(60),
            per_source: 5,
            total: 100,
            max_sources: 4096,
        }
    }
}

/// Decides whether a refusal is also written to the event log (it is always counted in
/// `bootgate_refused_total` and logged at most once per window per source).
pub struct RefusalBudget {
    limits: BudgetLimits,
    state: Mutex<BudgetState>,
}

#[derive(Default)]
struct BudgetState {
    window_start: Option<Instant>,
    total: u32,
    per_source: HashMap<Ipv4Addr, u32>,
}

impl RefusalBudget {
    pub fn new(limits: BudgetLimits) -> RefusalBudget {
        RefusalBudget {
            limits,
            state: Mutex::new(BudgetState::default()),
        }
    }

    /// Whether a refusal from `source` at `now` may write an event (and counts it).
    pub fn admit(&self, source: Ipv4Addr, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let expired = s
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.limits.window);
        if expired {
            s.window_start = Some(now);
            s.total = 0;
            s.per_source.clear();
        }
        if s.total >= self.limits.total {
            return false;
        }
        let tracked = s.per_source.len();
        let count = match s.per_source.get_mut(&source) {
            Some(c) => c,
            // A new source past the bound of the map: not recorded (the map never grows
            // past `max_sources` within a window, and is emptied at the next).
            None if tracked >= self.limits.max_sources => return false,
            None => s.per_source.entry(source).or_insert(0),
        };
        if *count >= self.limits.per_source {
            return false;
        }
        *count += 1;
        s.total += 1;
        true
    }
}

impl Default for RefusalBudget {
    fn default() -> Self {
        RefusalBudget::new(BudgetLimits::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    #[test]
    fn a_token_depends_on_key_mac_host_purpose_and_binding() {
        let key = BootKey::new(&[7u8; 32]);
        let t = Timestamp::from_second(1_800_000_000).unwrap();
        let a = key.token(mac(1), "gpu-a01", BootPurpose::Install, t);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        // The same boot: the same token.
        assert_eq!(a, key.token(mac(1), "gpu-a01", BootPurpose::Install, t));
        // Anything else: another one.
        let later = Timestamp::from_second(1_800_000_600).unwrap();
        for other in [
            key.token(mac(2), "gpu-a01", BootPurpose::Install, t),
            key.token(mac(1), "gpu-a02", BootPurpose::Install, t),
            key.token(mac(1), "gpu-a01", BootPurpose::Rescue, t),
            key.token(mac(1), "gpu-a01", BootPurpose::Install, later),
            BootKey::new(&[8u8; 32]).token(mac(1), "gpu-a01", BootPurpose::Install, t),
        ] {
            assert_ne!(a, other);
        }
    }

    #[test]
    fn only_the_lease_holder_has_a_proof() {
        let t = Timestamp::from_second(1_800_000_000).unwrap();
        assert_eq!(
            proof(mac(1), Some((mac(1), t))),
            Proof::Holder { binding: t }
        );
        assert_eq!(
            proof(mac(1), Some((mac(2), t))),
            Proof::NotHolder {
                holder: Some(mac(2))
            }
        );
        assert_eq!(proof(mac(1), None), Proof::NotHolder { holder: None });
    }

    #[test]
    fn the_budget_bounds_events_per_source_overall_and_the_map() {
        let b = RefusalBudget::new(BudgetLimits {
            window: Duration::from_secs(60),
            per_source: 3,
            total: 10,
            max_sources: 4,
        });
        let t0 = Instant::now();
        let ip = |n: u8| Ipv4Addr::new(10, 250, 0, n);
        // Per source.
        assert_eq!((0..5).filter(|_| b.admit(ip(1), t0)).count(), 3);
        // The map: 4 sources tracked, a fifth is not recorded.
        for n in 2..=4 {
            assert!(b.admit(ip(n), t0));
        }
        assert!(!b.admit(ip(5), t0));
        // Overall: 3 + 3 so far; the tracked sources fill it up to 10.
        let more = (0..20)
            .filter(|i| b.admit(ip(2 + (i % 3) as u8), t0))
            .count();
        assert_eq!(more, 4);
        assert!(!b.admit(ip(2), t0));
        // A new window starts over.
        let t1 = t0 + Duration::from_secs(61);
        assert!(b.admit(ip(5), t1));
        assert!(b.admit(ip(1), t1));
    }
}
