//! Unknown MACs seen on the wire become `discovered` hosts: the DHCP path hands each
//! sighting to a [`DiscoverySink`] (never waiting), and one writer task records them in
//! batches through the [`HostStore`] seam, off the packet path and across store outages.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use crate::model::{DiscoveryRetention, HostRecord, HostSource, HostStore, Sighted, StoreError};
use crate::types::{HostState, MacAddr, hex};

/// Where the DHCP path drops sightings: bounded; overflow is dropped and counted.
#[derive(Clone)]
pub struct DiscoverySink {
    tx: tokio::sync::mpsc::Sender<Sighting>,
}

impl DiscoverySink {
    /// Starts the writer task on `store`, with the default `[discovery]` bounds.
    pub fn spawn(store: Arc<dyn HostStore>) -> DiscoverySink {
        DiscoverySink::spawn_with(store, DiscoveryRetention::default())
    }

    /// Starts the writer task on `store`: after every batch that added hosts it expires
    /// the oldest-seen beyond `retention.max_hosts`, and every [`EXPIRY_INTERVAL`] those
    /// not seen within `retention.retain`. The task ends when every sink handle is dropped.
    pub fn spawn_with(store: Arc<dyn HostStore>, retention: DiscoveryRetention) -> DiscoverySink {
        let (tx, rx) = tokio::sync::mpsc::channel(4 * MAX_SIGHTINGS);
        tokio::spawn(record_sightings(store, rx, retention));
        DiscoverySink { tx }
    }

    /// Queues a sighting; never waits (a full queue drops it and counts the drop).
    pub fn offer(&self, sighting: Sighting) {
        if self.tx.try_send(sighting).is_err() {
            metrics::counter!("bootgate_events_dropped_total", "kind" => "host-discovered")
                .increment(1);
        }
    }
}

/// An unknown MAC seen on the wire, waiting to be written as a discovered host.
pub struct Sighting {
    pub mac: MacAddr,
    /// The rack its relay's option 82 places it in, if any.
    pub rack: Option<String>,
    /// What the wire said about it (arch, vendor class, UUID, relay, first/last seen).
    pub spec: serde_json::Value,
    pub at: Timestamp,
}

/// Most sightings written in one store transaction.
const MAX_SIGHTINGS: usize = 256;
/// How long the discovery writer lets sightings gather after the first one: a burst of
/// new MACs (a rack powering on) then costs one transaction, not one each.
const SIGHTING_LINGER: Duration = Duration::from_millis(250);

/// Sightings kept while the store is unreachable (one per MAC, the newest); beyond, new
/// MACs are dropped and counted in `bootgate_events_dropped_total{kind="host-discovered"}`.
const MAX_PENDING_SIGHTINGS: usize = 10_000;

/// How often pending sightings are retried while the store is down.
const SIGHTING_RETRY: Duration = Duration::from_secs(1);

/// The discovered-host record a sighting stands for.
fn sighting_record(s: Sighting) -> HostRecord {
    HostRecord {
        name: discovered_name(s.mac),
        state: HostState::Discovered,
        source: HostSource::Discovered,
        macs: vec![s.mac],
        ip: None,
        rack: s.rack,
        role: None,
        spec: s.spec,
        created: s.at,
        updated: s.at,
    }
}

/// The discovery writer: records queued sightings as `discovered` hosts (or refreshes
/// their last-seen) in one transaction per batch, off the DHCP path. Both gateways see
/// every unknown MAC; the store's `record_discovered` makes that harmless. While the store
/// is unreachable the sightings wait here (bounded, one per MAC) and are written when it
/// answers again.
async fn record_sightings(
    store: Arc<dyn HostStore>,
    mut rx: tokio::sync::mpsc::Receiver<Sighting>,
    retention: DiscoveryRetention,
) {
    let mut pending: Vec<HostRecord> = Vec::new();
    let mut incoming = Vec::with_capacity(MAX_SIGHTINGS);
    let mut expiry = tokio::time::interval(EXPIRY_INTERVAL);
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if pending.is_empty() {
            let n = tokio::select! {
                n = rx.recv_many(&mut incoming, MAX_SIGHTINGS) => n,
                _ = expiry.tick() => {
                    expire(store.as_ref(), &retention).await;
                    continue;
                }
            };
            if n == 0 {
                return;
            }
            // Let a burst (a rack powering on) gather: one transaction, not one each.
            if incoming.len() < MAX_SIGHTINGS {
                tokio::time::sleep(SIGHTING_LINGER).await;
                while incoming.len() < MAX_SIGHTINGS
                    && let Ok(s) = rx.try_recv()
                {
                    incoming.push(s);
                }
            }
        } else {
            tokio::select! {
                n = rx.recv_many(&mut incoming, MAX_SIGHTINGS) => if n == 0 { return },
                _ = tokio::time::sleep(SIGHTING_RETRY) => {}
            }
        }
        for s in incoming.drain(..) {
            let record = sighting_record(s);
            // One record per MAC: a later sighting replaces the earlier one.
            if let Some(old) = pending.iter_mut().find(|h| h.name == record.name) {
                let first = old.created;
                *old = HostRecord {
                    created: first,
                    ..record
                };
            } else if pending.len() < MAX_PENDING_SIGHTINGS {
                pending.push(record);
            } else {
                metrics::counter!("bootgate_events_dropped_total", "kind" => "host-discovered")
                    .increment(1);
            }
        }
        metrics::gauge!("bootgate_sightings_pending").set(pending.len() as f64);
        while !pending.is_empty() {
            let n = pending.len().min(MAX_SIGHTINGS);
            match store.record_discovered(&pending[..n], "dhcp").await {
                Ok(results) => {
                    let mut added = false;
                    for (h, r) in pending.drain(..n).zip(results) {
                        if r == Sighted::Added {
                            added = true;
                            tracing::info!(host = %h.name, "discovered an unknown MAC");
                        }
                    }
                    // The cap holds after every batch: a flood of random MACs can push
                    // the count over it by one batch, for one store call.
                    if added {
                        expire(store.as_ref(), &retention).await;
                    }
                }
                Err(StoreError::Unavailable { .. }) => {
                    tracing::debug!(pending = pending.len(), "store unreachable: sightings wait");
                    break;
                }
                Err(e) => {
                    // Not the store being down: these records will not get better by
                    // waiting (a MAC declared in the inventory meanwhile): drop them.
                    tracing::warn!(error = %e, "recording discovered hosts failed");
                    metrics::counter!("bootgate_events_dropped_total", "kind" => "host-discovered")
                        .increment(n as u64);
                    pending.drain(..n);
                }
            }
        }
        metrics::gauge!("bootgate_sightings_pending").set(pending.len() as f64);
    }
}

/// How often discovered hosts not seen within `[discovery] retain` are looked for.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(60);

/// Hosts expired per store call (each call is one short transaction).
const EXPIRE_BATCH: u32 = 512;

/// Expires discovered hosts past `retention` (see `HostStore::expire_discovered`), in
/// batches, counting them in `bootgate_discovered_hosts_expired_total{reason}`.
pub async fn expire(store: &dyn HostStore, retention: &DiscoveryRetention) -> usize {
    let mut total = 0;
    loop {
        match store
            .expire_discovered(retention, Timestamp::now(), EXPIRE_BATCH, "discovery")
            .await
        {
            Ok(expired) => {
                for h in &expired {
                    metrics::counter!(
                        "bootgate_discovered_hosts_expired_total",
                        "reason" => h.reason.as_str()
                    )
                    .increment(1);
                }
                total += expired.len();
                if expired.len() < EXPIRE_BATCH as usize {
                    if total > 0 {
                        tracing::info!(expired = total, "expired discovered hosts");
                    }
                    return total;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "expiring discovered hosts failed");
                return total;
            }
        }
    }
}

/// The name a discovered MAC gets in the host list.
pub fn discovered_name(mac: MacAddr) -> String {
    format!("discovered-{}", hex(&mac.octets()))
}
