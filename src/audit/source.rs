//! Reads what the audit needs from the store, for the CLI and the HTTP API alike: the
//! leases holding an address now and when each inventory MAC / host last took one (two
//! indexed queries, instead of every lease and every lease-committed event); and the
//! events a history is told from.

use jiff::Timestamp;

use super::{AuditError, History, Options, Report, Subject, audit_live, history};
use crate::inventory::Inventory;
use crate::model::{Event, EventQuery, LastSeen, Lease, Store, StoreError};
use crate::types::MacAddr;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// The live leases at `now` and the last-seen times of `inv`'s MACs and hosts.
pub async fn read(
    store: &dyn Store,
    inv: &Inventory,
    now: Timestamp,
) -> Result<(Vec<Lease>, LastSeen), StoreError> {
    let macs: Vec<MacAddr> = inv
        .hosts
        .iter()
        .flat_map(|h| h.macs.iter().copied())
        .collect();
    let names: Vec<String> = inv.hosts.iter().map(|h| h.name.clone()).collect();
    tokio::try_join!(store.live_leases(now), store.last_seen(&macs, &names))
}

/// The audit of `inv` against `store` at `now` (no scan, no BMC check).
pub async fn report(
    store: &dyn Store,
    inv: &Inventory,
    opts: &Options,
    now: Timestamp,
) -> Result<Report, SourceError> {
    let (leases, last) = read(store, inv, now).await?;
    Ok(audit_live(inv, &leases, &last, now, opts)?)
}

/// The history of `subject`: its events, plus for a MAC its host's (power actions and
/// state changes carry the name), and for a host its MACs' (leases committed before it was
/// in the inventory carry no name).
pub async fn history_of(
    store: &dyn Store,
    inv: &Inventory,
    subject: &Subject,
) -> Result<History, StoreError> {
    let mut queries: Vec<EventQuery> = Vec::new();
    match subject {
        Subject::Ip(ip) => queries.push(EventQuery {
            ip: Some(*ip),
            ..Default::default()
        }),
        Subject::Mac(mac) => {
            queries.push(EventQuery {
                mac: Some(*mac),
                ..Default::default()
            });
            if let Some(h) = inv.host_by_boot_mac(&inv.mac_index(), *mac) {
                queries.push(EventQuery {
                    host: Some(h.name.clone()),
                    ..Default::default()
                });
            }
        }
        Subject::Host(name) => {
            queries.push(EventQuery {
                host: Some(name.clone()),
                ..Default::default()
            });
            if let Some(h) = inv.host(name) {
                for m in &h.macs {
                    queries.push(EventQuery {
                        mac: Some(*m),
                        ..Default::default()
                    });
                }
            }
        }
    }
    let mut events: Vec<Event> = Vec::new();
    for q in &queries {
        events.extend(store.query(q).await?);
    }
    let horizon = store.event_horizon().await?;
    Ok(History {
        events_since: horizon.oldest,
        pruned: horizon.below_id > 0,
        ..history(subject, &events)
    })
}
