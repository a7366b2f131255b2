//! Whether the store answers, as the daemon last found it: the switch between normal service
//! and degraded mode, and the heartbeat seam of a shared store. Any store call that fails
//! with `StoreError::Unavailable` marks the store down; only the address book's sync loop
//! marks it up again, after it has flushed the lease writes that degraded ACKs queued (so a
//! newer commit can never land before an older deferred one).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::StoreError;

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

/// The heartbeat seam: one row per gateway in the shared store, stamped with the store
/// server's clock (so the gateways' own clocks never matter).
#[async_trait]
pub trait Heartbeats: Send + Sync {
    /// Stamps `gateway`'s row with the server's now and returns how long ago `peer`'s row
    /// was stamped (None: the peer never beat).
    async fn beat(&self, gateway: &str, peer: &str) -> Result<Option<Duration>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

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
