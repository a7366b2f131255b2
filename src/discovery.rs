//! Unknown MACs seen on the wire become `discovered` hosts: the DHCP path hands each
//! sighting to a [`DiscoverySink`] (never waiting), and one writer task records them in
//! batches through the [`HostStore`] seam, off the packet path and across store outages.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use crate::model::{HostRecord, HostSource, HostStore, Sighted, StoreError};
use crate::types::{HostState, MacAddr, hex};

/// Where the DHCP path drops sightings: bounded; overflow is dropped and counted.
#[derive(Clone)]
pub struct DiscoverySink {
    tx: tokio::sync::mpsc::Sender<Sighting>,
}

impl DiscoverySink {
    /// Starts the writer task on `store`.
    pub fn spawn(store: Arc<dyn HostStore>) -> DiscoverySink {
        let (tx, rx) = tokio::sync::mpsc::channel(4 * MAX_SIGHTINGS);
        tokio::spawn(record_sightings(store, rx));
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
) {
    let mut pending: Vec<HostRecord> = Vec::new();
    let mut incoming = Vec::with_capacity(MAX_SIGHTINGS);
    loop {
        if pending.is_empty() {
            if rx.recv_many(&mut incoming, MAX_SIGHTINGS).await == 0 {
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
                    for (h, r) in pending.drain(..n).zip(results) {
                        if r == Sighted::Added {
                            tracing::info!(host = %h.name, "discovered an unknown MAC");
                        }
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

/// The name a discovered MAC gets in the host list.
pub fn discovered_name(mac: MacAddr) -> String {
    format!("discovered-{}", hex(&mac.octets()))
}
