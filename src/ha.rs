//! Two gateways on one store (see README "Two gateways"). Two jobs live here:
//!
//! * [`StoreHealth`]: whether the store answers, as the daemon last found it: the switch
//!   between normal service and degraded mode. Any store call that fails with
//!   `StoreError::Unavailable` marks the store down; only the address book's sync loop marks
//!   it up again, after it has flushed the lease writes that degraded ACKs queued (so a
//!   newer commit can never land before an older deferred one).
//! * RFC 3074 load balancing: while the peer's heartbeat row in the shared store is fresh,
//!   each gateway answers the DISCOVERs of unknown clients in its half of the hash buckets
//!   and takes fresh addresses from its half of the pool first ([`Share`], pure data for
//!   `decide`); when the peer goes quiet, it answers everybody.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::store::StoreError;

/// Why and since when the daemon runs degraded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Degraded {
    pub since: Timestamp,
    /// The store error that started it (URL shown without its password).
    pub reason: String,
}

#[derive(Debug, Default)]
struct State {
    /// `Some` while degraded; the `Instant` measures the time spent degraded.
    down: Option<(Instant, Degraded)>,
    /// Time spent degraded in earlier episodes.
    total: Duration,
}

/// The store's health, shared by the DHCP path, the lease writer, the event writer and
/// /healthz. Starts up (the daemon does not start without its store).
#[derive(Debug, Default)]
pub struct StoreHealth {
    state: Mutex<State>,
}

impl StoreHealth {
    pub fn new() -> StoreHealth {
        metrics::gauge!("bootgate_store_up").set(1.0);
        StoreHealth::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_up(&self) -> bool {
        self.state().down.is_none()
    }

    /// Records that a store call found the server unreachable. The first call of an
    /// episode logs it; later ones only keep the first reason.
    pub fn mark_down(&self, reason: &str) {
        let mut s = self.state();
        if s.down.is_none() {
            tracing::error!(
                reason,
                "store unreachable: degraded mode (known hosts and renewals only, dynamic allocation paused)"
            );
            metrics::gauge!("bootgate_store_up").set(0.0);
            metrics::counter!("bootgate_degraded_episodes_total").increment(1);
            s.down = Some((
                Instant::now(),
                Degraded {
                    since: Timestamp::now(),
                    reason: reason.to_string(),
                },
            ));
        }
    }

    /// Ends a degraded episode (called once queued lease writes are in the store).
    pub fn mark_up(&self) {
        let mut s = self.state();
        if let Some((at, d)) = s.down.take() {
            s.total += at.elapsed();
            tracing::warn!(since = %d.since, degraded_for = ?at.elapsed(), "store reachable again: normal service");
            metrics::gauge!("bootgate_store_up").set(1.0);
        }
        metrics::counter!("bootgate_degraded_seconds_total").absolute(s.total.as_secs());
    }

    /// The current episode, if degraded.
    pub fn degraded(&self) -> Option<Degraded> {
        self.state().down.as_ref().map(|(_, d)| d.clone())
    }

    /// Seconds spent degraded since the daemon started (including the current episode);
    /// also refreshes the `bootgate_degraded_seconds_total` counter.
    pub fn degraded_seconds(&self) -> f64 {
        let s = self.state();
        let total = s.total
            + s.down
                .as_ref()
                .map_or(Duration::ZERO, |(at, _)| at.elapsed());
        metrics::counter!("bootgate_degraded_seconds_total").absolute(total.as_secs());
        total.as_secs_f64()
    }
}

// ---- RFC 3074 load balancing -------------------------------------------------------------

/// RFC 3074 §6, "the loadb_mx_tbl": a permutation of 0..=255 for the Pearson hash.
const LOADB_MX_TBL: [u8; 256] = [
    251, 175, 119, 215, 81, 14, 79, 191, 103, 49, 181, 143, 186, 157, 0, 232, 31, 32, 55, 60, 152,
    58, 17, 237, 174, 70, 160, 144, 220, 90, 57, 223, 59, 3, 18, 140, 111, 166, 203, 196, 134, 243,
    124, 95, 222, 179, 197, 65, 180, 48, 36, 15, 107, 46, 233, 130, 165, 30, 123, 161, 209, 23, 97,
    16, 40, 91, 219, 61, 100, 10, 210, 109, 250, 127, 22, 138, 29, 108, 244, 67, 207, 9, 178, 204,
    74, 98, 126, 249, 167, 116, 34, 77, 193, 200, 121, 5, 20, 113, 71, 35, 128, 13, 182, 94, 25,
    226, 227, 199, 75, 27, 41, 245, 230, 224, 43, 225, 177, 26, 155, 150, 212, 142, 218, 115, 241,
    73, 88, 105, 39, 114, 62, 255, 192, 201, 145, 214, 168, 158, 221, 148, 154, 122, 12, 84, 82,
    163, 44, 139, 228, 236, 205, 242, 217, 11, 187, 146, 159, 64, 86, 239, 195, 42, 106, 198, 118,
    112, 184, 172, 87, 2, 173, 117, 176, 229, 247, 253, 137, 185, 99, 164, 102, 147, 45, 66, 231,
    52, 141, 211, 194, 206, 246, 238, 56, 110, 78, 248, 63, 240, 189, 93, 92, 51, 53, 183, 19, 171,
    72, 50, 33, 104, 101, 69, 8, 252, 83, 120, 76, 135, 85, 54, 202, 125, 188, 213, 96, 235, 136,
    208, 162, 129, 190, 132, 156, 38, 47, 1, 7, 254, 24, 4, 216, 131, 89, 21, 28, 133, 37, 153,
    149, 80, 170, 68, 6, 169, 234, 151,
];

/// RFC 3074 §6 `loadb_p_hash`: the hash starts at the key's length and takes the key's
/// bytes from the last to the first.
pub fn pearson_hash(key: &[u8]) -> u8 {
    key.iter()
        .rev()
        .fold(key.len() as u8, |h, b| LOADB_MX_TBL[usize::from(h ^ b)])
}

/// RFC 3074 §5: a client's hash bucket is the hash of its client identifier (option 61)
/// when it sent one, else of its hardware address (chaddr, `hlen` bytes).
pub fn bucket(client_id: Option<&[u8]>, chaddr: &[u8]) -> u8 {
    pearson_hash(client_id.filter(|c| !c.is_empty()).unwrap_or(chaddr))
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

/// This gateway's share of the work, as `decide` sees it (pure data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case", tag = "share")]
pub enum Share {
    /// Answer every client and take addresses from the whole pool: no peer configured, or
    /// its heartbeat is stale (it is down, or cut off from the store).
    #[default]
    All,
    /// The peer is alive: unknown clients in the other half of the hash buckets are the
    /// peer's (RFC 3074 §5 "hash bucket assignment"; the first gateway by name takes
    /// buckets 0..=127, as an ISC split of 128 does), and fresh addresses come from our lane
    /// of the pool first, so the two never pick the same free address.
    Half { first: bool },
}

impl Share {
    /// Whether an unknown client in `bucket` is ours to answer.
    pub fn answers(self, bucket: u8) -> bool {
        match self {
            Share::All => true,
            Share::Half { first } => (bucket < 128) == first,
        }
    }

    /// The pool positions to try first.
    pub fn lane(self) -> Lane {
        match self {
            Share::All => Lane::ALL,
            Share::Half { first } => Lane {
                index: u64::from(!first),
                of: 2,
            },
        }
    }
}

/// `[ha]`: which gateway this is and which is its peer (both on one `postgres://` store).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaWire {
    gateway_id: Option<String>,
    peer: Option<String>,
    heartbeat_interval_ms: Option<u64>,
    peer_timeout_ms: Option<u64>,
}

/// The validated `[ha]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HaSettings {
    /// This gateway's name in the heartbeat table (unique per gateway).
    pub gateway_id: String,
    /// The other gateway's `gateway_id`.
    pub peer: String,
    /// How often this gateway writes its heartbeat and reads the peer's.
    pub heartbeat_interval: Duration,
    /// The peer counts as down (we answer everybody) once its heartbeat is this old.
    pub peer_timeout: Duration,
}

impl HaSettings {
    /// Whether we are the "first" gateway (buckets 0..=127, even pool positions).
    pub fn first(&self) -> bool {
        self.gateway_id < self.peer
    }
}

/// Validates `[ha]`; `problem(field, reason)` collects what is wrong. `None` when the
/// section is absent (or invalid).
pub fn ha_settings(
    w: &HaWire,
    shared_store: bool,
    mut problem: impl FnMut(&str, String),
) -> Option<HaSettings> {
    let (gateway_id, peer) = match (&w.gateway_id, &w.peer) {
        (None, None) if w.heartbeat_interval_ms.is_none() && w.peer_timeout_ms.is_none() => {
            return None;
        }
        (Some(g), Some(p)) => (g.trim().to_string(), p.trim().to_string()),
        (None, _) => {
            problem("gateway_id", "missing (required with [ha])".into());
            return None;
        }
        (_, None) => {
            problem("peer", "missing (required with [ha])".into());
            return None;
        }
    };
    let mut ok = true;
    for (field, v) in [("gateway_id", &gateway_id), ("peer", &peer)] {
        if v.is_empty() || v.len() > 64 {
            problem(field, format!("{v:?} must be 1 to 64 characters"));
            ok = false;
        }
    }
    if gateway_id == peer {
        problem("peer", format!("{peer:?} is this gateway's own gateway_id"));
        ok = false;
    }
    if !shared_store {
        problem(
            "gateway_id",
            "[ha] needs a shared postgres:// store (the heartbeat lives there)".into(),
        );
        ok = false;
    }
    let interval = Duration::from_millis(w.heartbeat_interval_ms.unwrap_or(1000));
    let timeout = Duration::from_millis(w.peer_timeout_ms.unwrap_or(5000));
    if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&interval) {
        problem(
            "heartbeat_interval_ms",
            format!(
                "{} ms is out of range (100 ..= 60000 ms)",
                interval.as_millis()
            ),
        );
        ok = false;
    }
    if timeout < 2 * interval || timeout > Duration::from_secs(600) {
        problem(
            "peer_timeout_ms",
            format!(
                "{} ms is out of range (2 × heartbeat_interval_ms ..= 600000 ms)",
                timeout.as_millis()
            ),
        );
        ok = false;
    }
    ok.then_some(HaSettings {
        gateway_id,
        peer,
        heartbeat_interval: interval,
        peer_timeout: timeout,
    })
}

/// The heartbeat seam: one row per gateway in the shared store, stamped with the store
/// server's clock (so the gateways' own clocks never matter).
#[async_trait]
pub trait Heartbeats: Send + Sync {
    /// Stamps `gateway`'s row with the server's now and returns how long ago `peer`'s row
    /// was stamped (None: the peer never beat).
    async fn beat(&self, gateway: &str, peer: &str) -> Result<Option<Duration>, StoreError>;
}

/// What this gateway knows of its peer: updated by the heartbeat loop, read per DISCOVER.
#[derive(Debug)]
pub struct PeerWatch {
    /// `None` without `[ha]`: always [`Share::All`].
    settings: Option<HaSettings>,
    /// 0 unknown (start), 1 alive, 2 down.
    state: AtomicU8,
}

const PEER_UNKNOWN: u8 = 0;
const PEER_ALIVE: u8 = 1;
const PEER_DOWN: u8 = 2;

impl PeerWatch {
    pub fn new(settings: Option<HaSettings>) -> PeerWatch {
        PeerWatch {
            settings,
            state: AtomicU8::new(PEER_UNKNOWN),
        }
    }

    pub fn settings(&self) -> Option<&HaSettings> {
        self.settings.as_ref()
    }

    /// The share `decide` gets now.
    pub fn share(&self) -> Share {
        match (&self.settings, self.state.load(Ordering::Relaxed)) {
            (Some(s), PEER_ALIVE) => Share::Half { first: s.first() },
            _ => Share::All,
        }
    }

    /// Whether the peer counts as alive.
    pub fn peer_alive(&self) -> bool {
        self.state.load(Ordering::Relaxed) == PEER_ALIVE
    }

    /// Records one heartbeat round's answer: the age of the peer's row, or an error (our
    /// store is unreachable: we cannot tell, so we answer everybody; dynamic allocation
    /// is paused while degraded anyway).
    pub fn observe(&self, peer_age: Result<Option<Duration>, &StoreError>) {
        let Some(s) = &self.settings else { return };
        let alive = matches!(peer_age, Ok(Some(age)) if age < s.peer_timeout);
        let new = if alive { PEER_ALIVE } else { PEER_DOWN };
        let old = self.state.swap(new, Ordering::Relaxed);
        if old != new {
            metrics::gauge!("bootgate_ha_peer_up").set(if alive { 1.0 } else { 0.0 });
            if alive {
                tracing::info!(peer = %s.peer, "peer gateway alive: answering our half of the clients (RFC 3074)");
            } else {
                tracing::warn!(peer = %s.peer, "peer gateway silent: answering every client");
            }
        }
    }
}

/// Beats every `heartbeat_interval` until `cancel`; the `PeerWatch` follows the answers.
pub async fn heartbeat_loop(
    store: std::sync::Arc<dyn Heartbeats>,
    watch: std::sync::Arc<PeerWatch>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let Some(s) = watch.settings().cloned() else {
        return;
    };
    loop {
        let r = store.beat(&s.gateway_id, &s.peer).await;
        if let Err(e) = &r {
            tracing::debug!(error = %e, "heartbeat failed");
        }
        watch.observe(r.as_ref().map(|a| *a));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(s.heartbeat_interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3074_table_is_a_permutation() {
        let mut seen = [false; 256];
        for v in LOADB_MX_TBL {
            assert!(!seen[usize::from(v)], "{v} twice");
            seen[usize::from(v)] = true;
        }
    }

    /// RFC 3074 §6's hash by hand: len, then the key backwards through the table.
    #[test]
    fn rfc3074_6_pearson_hash() {
        assert_eq!(pearson_hash(&[]), 0);
        // One byte 0x00: h = T[1 ^ 0] = T[1] = 175.
        assert_eq!(pearson_hash(&[0]), 175);
        // [0x01, 0x02]: h0 = 2; h1 = T[2 ^ 0x02] = T[0] = 251; h2 = T[251 ^ 0x01] = T[250].
        assert_eq!(pearson_hash(&[1, 2]), LOADB_MX_TBL[250]);
        // The key's order matters (the last byte goes in first).
        assert_ne!(pearson_hash(&[1, 2]), pearson_hash(&[2, 1]));
    }

    #[test]
    fn rfc3074_5_bucket_uses_client_id_else_chaddr() {
        let chaddr = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let cid = [0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x57];
        assert_eq!(bucket(None, &chaddr), pearson_hash(&chaddr));
        assert_eq!(bucket(Some(&cid), &chaddr), pearson_hash(&cid));
        assert_eq!(bucket(Some(&[]), &chaddr), pearson_hash(&chaddr));
    }

    /// The two halves split the buckets exactly, and sequential MACs (perfdhcp's) spread
    /// over both about evenly.
    #[test]
    fn rfc3074_5_two_gateways_split_every_bucket_once() {
        let a = Share::Half { first: true };
        let b = Share::Half { first: false };
        for bucket in 0..=255u8 {
            assert!(a.answers(bucket) ^ b.answers(bucket), "bucket {bucket}");
            assert!(Share::All.answers(bucket));
        }
        let ours = (0..10_000u32)
            .filter(|n| {
                let m = n.to_be_bytes();
                a.answers(super::bucket(None, &[0x02, 0x00, m[0], m[1], m[2], m[3]]))
            })
            .count();
        assert!((4000..6000).contains(&ours), "{ours} of 10000");
        for p in 0..100 {
            assert!(a.lane().contains(p) ^ b.lane().contains(p));
            assert!(Share::All.lane().contains(p));
        }
    }

    #[test]
    fn peer_watch_shares_only_while_the_peer_beats() {
        let s = HaSettings {
            gateway_id: "gw-a".into(),
            peer: "gw-b".into(),
            heartbeat_interval: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(5),
        };
        let w = PeerWatch::new(Some(s));
        assert_eq!(w.share(), Share::All, "unknown at start: answer everybody");
        w.observe(Ok(Some(Duration::from_secs(1))));
        assert_eq!(w.share(), Share::Half { first: true });
        w.observe(Ok(Some(Duration::from_secs(6))));
        assert_eq!(w.share(), Share::All);
        w.observe(Ok(None));
        assert_eq!(w.share(), Share::All);
        w.observe(Ok(Some(Duration::ZERO)));
        let err = StoreError::NoSuchHost("x".into());
        w.observe(Err(&err));
        assert_eq!(w.share(), Share::All);
        assert_eq!(PeerWatch::new(None).share(), Share::All);
    }

    #[test]
    fn ha_section_validates() {
        let wire = |g: Option<&str>, p: Option<&str>| HaWire {
            gateway_id: g.map(Into::into),
            peer: p.map(Into::into),
            heartbeat_interval_ms: None,
            peer_timeout_ms: None,
        };
        let mut problems = Vec::new();
        let ok = ha_settings(&wire(Some("gw-b"), Some("gw-a")), true, |f, r| {
            problems.push((f.to_string(), r))
        })
        .unwrap();
        assert!(problems.is_empty());
        assert!(!ok.first());
        assert_eq!(ha_settings(&wire(None, None), true, |_, _| panic!()), None);
        let mut problems = Vec::new();
        assert!(
            ha_settings(&wire(Some("gw-a"), Some("gw-a")), false, |f, r| problems
                .push((f.to_string(), r)))
            .is_none()
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        let mut problems = Vec::new();
        assert!(
            ha_settings(&wire(Some("gw-a"), None), true, |f, r| problems
                .push((f.to_string(), r)))
            .is_none()
        );
        assert_eq!(problems[0].0, "peer");
    }

    #[test]
    fn an_episode_keeps_its_first_reason_and_adds_up() {
        let h = StoreHealth::new();
        assert!(h.is_up() && h.degraded().is_none());
        h.mark_down("first");
        h.mark_down("second");
        assert!(!h.is_up());
        assert_eq!(h.degraded().unwrap().reason, "first");
        std::thread::sleep(Duration::from_millis(20));
        h.mark_up();
        assert!(h.is_up());
        assert!(h.degraded_seconds() >= 0.02);
    }
}
