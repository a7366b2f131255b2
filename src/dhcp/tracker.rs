//! What the DHCP server remembers per client MAC between packets (the per-MAC rate limit and
//! when its discovery record was last refreshed), bounded: a flood of random MACs must not
//! grow it without limit. Plus the per-subnet budget of ACKs for addresses a client was
//! never offered (pool drain), and a limiter for log lines an attacker can trigger at will.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::types::MacAddr;

/// Per-MAC rate limit: at most this many requests per second are processed per client
/// (PXE ROMs retry fast; a flapping NIC must not starve the others).
pub const PER_MAC_PER_SECOND: u32 = 20;

/// One client's bookkeeping.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// Start of the current one-second rate-limit window (≈ when it was last heard).
    pub window: Instant,
    /// Requests in that window.
    pub count: u32,
    /// When its discovery record was last handed to the writer.
    pub discovered_at: Option<Instant>,
}

/// The per-MAC table, at most `cap` entries. When a new MAC finds it full, the least
/// recently heard eighth is evicted in one pass (amortised O(1) per insert, where evicting
/// one at a time would scan the whole table on every packet of a flood).
#[derive(Debug)]
pub struct ClientTracker {
    map: HashMap<MacAddr, Seen>,
    cap: usize,
}

impl ClientTracker {
    pub fn new(cap: usize) -> ClientTracker {
        ClientTracker {
            map: HashMap::new(),
            cap: cap.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Counts one request of `mac` at `now`; true when it is over its rate limit.
    pub fn rate_limited(&mut self, mac: MacAddr, now: Instant) -> bool {
        if !self.map.contains_key(&mac) && self.map.len() >= self.cap {
            self.evict_oldest();
        }
        let e = self.map.entry(mac).or_insert(Seen {
            window: now,
            count: 0,
            discovered_at: None,
        });
        if now.saturating_duration_since(e.window) >= Duration::from_secs(1) {
            e.window = now;
            e.count = 0;
        }
        e.count += 1;
        e.count > PER_MAC_PER_SECOND
    }

    /// Whether `mac`'s discovery record is due (not refreshed within `every`); marks it
    /// refreshed when it is. A MAC the table forgot is due.
    pub fn discovery_due(&mut self, mac: MacAddr, now: Instant, every: Duration) -> bool {
        match self.map.get_mut(&mac) {
            Some(s)
                if s.discovered_at
                    .is_some_and(|t| now.saturating_duration_since(t) < every) =>
            {
                false
            }
            Some(s) => {
                s.discovered_at = Some(now);
                true
            }
            None => true,
        }
    }

    /// Forgets MACs not heard for `idle`.
    pub fn forget_idle(&mut self, now: Instant, idle: Duration) {
        self.map
            .retain(|_, s| now.saturating_duration_since(s.window) < idle);
    }

    /// Drops the least recently heard eighth of the table (at least one entry).
    fn evict_oldest(&mut self) {
        let n = (self.cap / 8).max(1).min(self.map.len());
        if n == 0 {
            return;
        }
        let mut heard: Vec<Instant> = self.map.values().map(|s| s.window).collect();
        let (_, cutoff, _) = heard.select_nth_unstable(n - 1);
        let cutoff = *cutoff;
        let before = self.map.len();
        self.map.retain(|_, s| s.window > cutoff);
        let evicted = before - self.map.len();
        metrics::counter!("bootgate_dhcp_clients_evicted_total").increment(evicted as u64);
        tracing::debug!(
            evicted,
            cap = self.cap,
            "per-MAC table full: forgot the least recently heard clients"
        );
    }
}

/// ACKs of an address its client was never offered (a SELECTING REQUEST without our offer,
/// a RENEWING/REBINDING one we have no record of), per subnet and fixed one-minute window:
/// the state `policy::decide` is handed as `View::unoffered_left`.
#[derive(Debug)]
pub struct UnofferedBudget {
    per_minute: u32,
    used: HashMap<String, (Instant, u32)>,
}

const BUDGET_WINDOW: Duration = Duration::from_secs(60);

impl UnofferedBudget {
    pub fn new(per_minute: u32) -> UnofferedBudget {
        UnofferedBudget {
            per_minute,
            used: HashMap::new(),
        }
    }

    /// How many such ACKs `subnet` may still give in the current window.
    pub fn left(&mut self, subnet: &str, now: Instant) -> u32 {
        match self.used.get(subnet) {
            Some((start, used)) if now.saturating_duration_since(*start) < BUDGET_WINDOW => {
                self.per_minute.saturating_sub(*used)
            }
            _ => self.per_minute,
        }
    }

    /// Spends one of `subnet`'s.
    pub fn spend(&mut self, subnet: &str, now: Instant) {
        let e = self.used.entry(subnet.to_string()).or_insert((now, 0));
        if now.saturating_duration_since(e.0) >= BUDGET_WINDOW {
            *e = (now, 0);
        }
        e.1 += 1;
    }
}

/// At most one log line per `every` for something a sender can trigger at will (a forged
/// relay); the lines suppressed meanwhile are counted into the next one.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(every: Duration) -> LogLimiter {
        LogLimiter {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last line)` when a line may be written now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u32) -> MacAddr {
        let b = n.to_be_bytes();
        MacAddr([2, 0, b[0], b[1], b[2], b[3]])
    }

    #[test]
    fn a_flood_of_random_macs_stays_within_the_cap() {
        let mut t = ClientTracker::new(1000);
        let start = Instant::now();
        for i in 0..100_000u32 {
            let now = start + Duration::from_micros(u64::from(i));
            t.rate_limited(mac(i.wrapping_mul(2_654_435_761)), now);
            assert!(t.len() <= 1000, "{} entries after {i} MACs", t.len());
        }
        assert!(t.len() > 800, "evicts only what it must: {}", t.len());
    }

    #[test]
    fn the_least_recently_heard_are_evicted_first() {
        let mut t = ClientTracker::new(16);
        let start = Instant::now();
        // MAC 0 is heard last of all, the others in order.
        for i in 1..16u32 {
            t.rate_limited(mac(i), start + Duration::from_millis(u64::from(i)));
        }
        t.rate_limited(mac(0), start + Duration::from_secs(5));
        t.rate_limited(mac(100), start + Duration::from_secs(6));
        assert!(t.map.contains_key(&mac(0)));
        assert!(t.map.contains_key(&mac(100)));
        assert!(!t.map.contains_key(&mac(1)), "the oldest stays");
        assert!(t.len() <= 16);
    }

    #[test]
    fn rate_limit_per_mac_per_second() {
        let mut t = ClientTracker::new(10);
        let now = Instant::now();
        for _ in 0..PER_MAC_PER_SECOND {
            assert!(!t.rate_limited(mac(1), now));
        }
        assert!(t.rate_limited(mac(1), now));
        assert!(!t.rate_limited(mac(2), now), "another MAC is not limited");
        assert!(!t.rate_limited(mac(1), now + Duration::from_secs(1)));
    }

    #[test]
    fn discovery_is_due_once_per_period() {
        let mut t = ClientTracker::new(10);
        let now = Instant::now();
        t.rate_limited(mac(1), now);
        let every = Duration::from_secs(60);
        assert!(t.discovery_due(mac(1), now, every));
        assert!(!t.discovery_due(mac(1), now + Duration::from_secs(59), every));
        assert!(t.discovery_due(mac(1), now + Duration::from_secs(60), every));
    }

    #[test]
    fn unoffered_budget_refills_each_minute_per_subnet() {
        let mut b = UnofferedBudget::new(2);
        let now = Instant::now();
        assert_eq!(b.left("a", now), 2);
        b.spend("a", now);
        b.spend("a", now);
        assert_eq!(b.left("a", now + Duration::from_secs(59)), 0);
        assert_eq!(b.left("b", now), 2, "another subnet has its own");
        assert_eq!(b.left("a", now + Duration::from_secs(60)), 2);
        b.spend("a", now + Duration::from_secs(60));
        assert_eq!(b.left("a", now + Duration::from_secs(61)), 1);
    }

    #[test]
    fn log_limiter_counts_what_it_suppressed() {
        let mut l = LogLimiter::new(Duration::from_secs(10));
        let now = Instant::now();
        assert_eq!(l.allow(now), Some(0));
        assert_eq!(l.allow(now + Duration::from_secs(1)), None);
        assert_eq!(l.allow(now + Duration::from_secs(2)), None);
        assert_eq!(l.allow(now + Duration::from_secs(10)), Some(2));
    }
}
