//! Two gateways on one store (see README "Two gateways"): the `[ha]` settings, and the
//! heartbeat loop that tells whether the peer is alive. While the peer's heartbeat row in the
//! shared store is fresh, each gateway answers the DISCOVERs of unknown clients in its half
//! of the RFC 3074 hash buckets and takes fresh addresses from its half of the pool first
//! ([`Share`], see `crate::dhcp::balance`); when the peer goes quiet, it answers everybody.
//! The store's own health lives in `crate::model::StoreHealth`.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dhcp::balance::{Share, ShareSource};
use crate::model::{Heartbeats, StoreError};

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

impl ShareSource for PeerWatch {
    fn share(&self) -> Share {
        PeerWatch::share(self)
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
}
