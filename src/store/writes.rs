//! What the host writes check, store and log, written once for every backend: adding,
//! updating and removing hosts (inventory sync, discovery), a host's compare-and-set state
//! move and a discovery sighting, plus the events of those and of lease expiry. A backend
//! runs them inside its own write transaction and supplies only the statements, in its
//! dialect, through [`WriteTx`].

use serde_json::json;

use super::rows::{HostRow, millis, now};
use super::{
    DiscoveryRetention, EventKind, ExpiredHost, ExpiryReason, HostChange, HostRecord, HostSource,
    Lease, LeaseState, NewEvent, Sighted, StoreError,
};
use crate::types::{HostState, MacAddr};

/// The `actor` of the `lease-expired` events `expire_leases` writes.
pub(crate) const EXPIRY_ACTOR: &str = "expiry";

/// The statements a host write needs, on one open write transaction of a backend.
///
/// The methods are `async` because PostgreSQL's are; SQLite's run on the writer thread as
/// plain blocking rusqlite calls that are finished when they return, so the writer drives
/// these functions to their end with a single poll (see `sqlite/writer.rs`).
pub(crate) trait WriteTx {
    async fn host(&mut self, name: &str) -> Result<Option<HostRecord>, StoreError>;
    async fn host_exists(&mut self, name: &str) -> Result<bool, StoreError>;
    /// The host a MAC belongs to, if any.
    async fn mac_owner(&mut self, mac: MacAddr) -> Result<Option<String>, StoreError>;
    async fn insert_host(&mut self, host: &HostRow<'_>) -> Result<(), StoreError>;
    /// Writes the declaration's columns (`source, ip, rack, role, spec, updated`); the
    /// stored `state` and `created` stay.
    async fn update_host(&mut self, host: &HostRow<'_>) -> Result<(), StoreError>;
    async fn set_state(
        &mut self,
        name: &str,
        state: HostState,
        updated: i64,
    ) -> Result<(), StoreError>;
    /// Deletes the host row; its `host_macs` rows go with it (ON DELETE CASCADE).
    async fn delete_host(&mut self, name: &str) -> Result<(), StoreError>;
    /// Inserts `macs` as the host's, `position` 0, 1, … in order.
    async fn insert_macs(&mut self, host: &str, macs: &[MacAddr]) -> Result<(), StoreError>;
    async fn delete_macs(&mut self, host: &str) -> Result<(), StoreError>;
    /// Appends an event (the backend's one event insert); returns its id.
    async fn insert_event(&mut self, event: &NewEvent) -> Result<i64, StoreError>;
    /// How many `discovered` hosts are stored.
    async fn discovered_count(&mut self) -> Result<u64, StoreError>;
    /// Names of `discovered` hosts, oldest `updated` first (then by name): those updated
    /// before `seen_before` (ms) and the `over` oldest, `limit` at most.
    async fn expiry_candidates(
        &mut self,
        seen_before: i64,
        over: u64,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;
    /// Deletes `name` if it is still a `discovered` host; whether it did.
    async fn delete_discovered(&mut self, name: &str) -> Result<bool, StoreError>;
}

/// `expire_discovered`: removes up to `at_most` discovered hosts not seen since
/// `now - retain` or beyond the cap, oldest-seen first, each with a `host-expired` event.
/// Inventory hosts are never candidates (`source = 'discovered'` in every statement).
pub(crate) async fn expire_discovered(
    tx: &mut impl WriteTx,
    retention: &DiscoveryRetention,
    now: jiff::Timestamp,
    at_most: u32,
    actor: &str,
) -> Result<Vec<ExpiredHost>, StoreError> {
    let cutoff = cutoff_ms(retention.retain, now);
    let over = tx
        .discovered_count()
        .await?
        .saturating_sub(retention.max_hosts);
    let mut out = Vec::new();
    for name in tx.expiry_candidates(cutoff, over, at_most).await? {
        let Some(host) = tx.host(&name).await? else {
            continue;
        };
        if host.source != HostSource::Discovered || !tx.delete_discovered(&name).await? {
            continue;
        }
        let reason = if millis(host.updated) < cutoff {
            ExpiryReason::NotSeen
        } else {
            ExpiryReason::OverCap
        };
        let event = host_event(EventKind::HostExpired, &host, actor).detail(json!({
            "reason": reason.as_str(),
            "last_seen": host.updated.to_string(),
            "retain_s": retention.retain.as_secs(),
            "max_hosts": retention.max_hosts,
        }));
        tx.insert_event(&event).await?;
        out.push(ExpiredHost {
            mac: host.macs.first().copied(),
            name,
            last_seen: host.updated,
            reason,
        });
    }
    Ok(out)
}

/// The `events-pruned` summary of a prune that deleted `deleted` rows below `below_id`.
pub(crate) fn pruned_event(
    deleted: u64,
    below_id: i64,
    oldest_kept: Option<jiff::Timestamp>,
    retention: &super::EventRetention,
) -> NewEvent {
    NewEvent::new(EventKind::EventsPruned, PRUNE_ACTOR).detail(json!({
        "deleted": deleted,
        "below_id": below_id,
        "oldest_kept": oldest_kept.map(|t| t.to_string()),
        "retain_s": retention.retain.as_secs(),
        "max_rows": retention.max_rows,
    }))
}

/// The `actor` of retention's events.
pub(crate) const PRUNE_ACTOR: &str = "retention";

/// The id below which `retention` lets events go, given the ids stored (`min_id` ..=
/// `max_id`), the newest id of an event older than the retention (`old_max`) and the
/// current horizon. Over `max_rows`, the cut leaves `max_rows - 1` rows, so with the
/// `events-pruned` summary the log holds `max_rows` and the next run finds nothing to do
/// (ids are the measure: a gap left by a rolled-back append only keeps fewer rows).
pub(crate) fn prune_cut(
    retention: &super::EventRetention,
    ids: (Option<i64>, Option<i64>),
    old_max: Option<i64>,
    horizon: i64,
) -> i64 {
    let max_rows = i64::try_from(retention.max_rows).unwrap_or(i64::MAX);
    let by_rows = match ids {
        (Some(min), Some(max)) if max.saturating_sub(min).saturating_add(1) > max_rows => {
            max.saturating_sub(max_rows).saturating_add(2)
        }
        _ => 0,
    };
    let by_time = old_max.map_or(0, |m| m.saturating_add(1));
    by_rows.max(by_time).max(horizon)
}

/// `now - retain` in unix milliseconds: rows stamped before it are past retention.
pub(crate) fn cutoff_ms(retain: std::time::Duration, now: jiff::Timestamp) -> i64 {
    jiff::SignedDuration::try_from(retain)
        .ok()
        .and_then(|d| now.checked_sub(d).ok())
        .map_or(i64::MIN, millis)
}

/// `apply_host_changes`: every change and its event, in order. The caller's transaction
/// makes the batch all or nothing (an error returns before anything else is written).
pub(crate) async fn apply_changes(
    tx: &mut impl WriteTx,
    changes: &[HostChange],
    actor: &str,
) -> Result<(), StoreError> {
    for change in changes {
        match change {
            HostChange::Add(host) => add_host(tx, host, actor).await?,
            HostChange::Update { host, fields } => update_host(tx, host, fields, actor).await?,
            HostChange::Remove { name } => remove_host(tx, name, actor).await?,
        }
    }
    Ok(())
}

async fn add_host(tx: &mut impl WriteTx, host: &HostRecord, actor: &str) -> Result<(), StoreError> {
    let macs = unique_macs(&host.macs);
    check_macs_free(tx, &host.name, &macs).await?;
    tx.insert_host(&HostRow::new(host)).await?;
    tx.insert_macs(&host.name, &macs).await?;
    let event = host_event(EventKind::HostAdded, host, actor)
        .detail(json!({ "state": host.state, "source": host.source }));
    tx.insert_event(&event).await?;
    Ok(())
}

async fn update_host(
    tx: &mut impl WriteTx,
    host: &HostRecord,
    fields: &[String],
    actor: &str,
) -> Result<(), StoreError> {
    if !tx.host_exists(&host.name).await? {
        return Err(StoreError::NoSuchHost(host.name.clone()));
    }
    let macs = unique_macs(&host.macs);
    check_macs_free(tx, &host.name, &macs).await?;
    let mut row = HostRow::new(host);
    row.updated = millis(now());
    tx.update_host(&row).await?;
    tx.delete_macs(&host.name).await?;
    tx.insert_macs(&host.name, &macs).await?;
    let event = host_event(EventKind::HostChanged, host, actor).detail(json!({ "fields": fields }));
    tx.insert_event(&event).await?;
    Ok(())
}

async fn remove_host(tx: &mut impl WriteTx, name: &str, actor: &str) -> Result<(), StoreError> {
    let Some(host) = tx.host(name).await? else {
        return Err(StoreError::NoSuchHost(name.to_string()));
    };
    // Events have no foreign key on hosts: the host's history stays.
    tx.delete_host(name).await?;
    let event =
        host_event(EventKind::HostRemoved, &host, actor).detail(json!({ "state": host.state }));
    tx.insert_event(&event).await?;
    Ok(())
}

/// Refuses any MAC that already belongs to a host other than `host`.
async fn check_macs_free(
    tx: &mut impl WriteTx,
    host: &str,
    macs: &[MacAddr],
) -> Result<(), StoreError> {
    for mac in macs {
        if let Some(owner) = tx.mac_owner(*mac).await?
            && owner != host
        {
            return Err(StoreError::MacTaken {
                mac: *mac,
                owner,
                host: host.to_string(),
            });
        }
    }
    Ok(())
}

/// `set_host_state`: moves `name` to `to` (when `from` is given, only from that state),
/// with its `host-state-changed` event; returns the host as now stored.
pub(crate) async fn set_state(
    tx: &mut impl WriteTx,
    name: &str,
    from: Option<HostState>,
    to: HostState,
    actor: &str,
    detail: serde_json::Value,
) -> Result<HostRecord, StoreError> {
    let Some(mut host) = tx.host(name).await? else {
        return Err(StoreError::NoSuchHost(name.to_string()));
    };
    if let Some(expected) = from
        && expected != host.state
    {
        return Err(StoreError::StateMismatch {
            host: name.to_string(),
            expected,
            actual: host.state,
        });
    }
    let previous = host.state;
    host.state = to;
    host.updated = now();
    tx.set_state(name, to, millis(host.updated)).await?;
    let event = host_event(EventKind::HostStateChanged, &host, actor)
        .detail(state_change_detail(previous, to, detail));
    tx.insert_event(&event).await?;
    Ok(host)
}

/// One sighting of an unknown MAC, reading the store inside the caller's transaction (the
/// decision of `HostStore::record_discovered`'s default): a new host is added, a discovered
/// one refreshed, a MAC of an inventory host left alone.
pub(crate) async fn record_sighting(
    tx: &mut impl WriteTx,
    seen: &HostRecord,
    actor: &str,
) -> Result<Sighted, StoreError> {
    let by_name = tx.host(&seen.name).await?;
    let owner = match (&by_name, seen.macs.first()) {
        (None, Some(mac)) => tx.mac_owner(*mac).await?,
        _ => None,
    };
    // The same decision as the trait's default `record_discovered` (model::discovery_change).
    let (sighted, change) = crate::model::discovery_change(seen, by_name, owner.is_some());
    match change {
        Some(HostChange::Update { host, fields }) => update_host(tx, &host, &fields, actor).await?,
        Some(HostChange::Add(host)) => add_host(tx, &host, actor).await?,
        Some(HostChange::Remove { .. }) | None => {}
    }
    Ok(sighted)
}

/// The `lease-expired` event of `lease`, which was `was` until the sweep.
pub(crate) fn expired_event(lease: &Lease, was: LeaseState) -> NewEvent {
    let mut event = NewEvent::new(EventKind::LeaseExpired, EXPIRY_ACTOR)
        .ip(lease.ip)
        .mac(lease.mac)
        .detail(json!({
            "was": was,
            "ends": lease.ends.to_string(),
            "subnet": lease.subnet,
        }));
    event.host = lease.host.clone();
    event
}

/// The MACs of a record in order, each once.
pub(crate) fn unique_macs(macs: &[MacAddr]) -> Vec<MacAddr> {
    let mut out: Vec<MacAddr> = Vec::with_capacity(macs.len());
    for mac in macs {
        if !out.contains(mac) {
            out.push(*mac);
        }
    }
    out
}

/// An event about `host`, naming its first MAC and its address when it has them.
pub(crate) fn host_event(kind: EventKind, host: &HostRecord, actor: &str) -> NewEvent {
    let mut event = NewEvent::new(kind, actor).host(host.name.clone());
    event.mac = host.macs.first().copied();
    event.ip = host.ip;
    event
}

/// `{"from": .., "to": ..}` plus the caller's detail: an object's keys are merged in (the
/// transition itself wins a clash), any other non-null value is kept under `"detail"`.
pub(crate) fn state_change_detail(
    from: HostState,
    to: HostState,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut out = match extra {
        serde_json::Value::Object(map) => map,
        serde_json::Value::Null => serde_json::Map::new(),
        other => {
            let mut map = serde_json::Map::new();
            map.insert("detail".into(), other);
            map
        }
    };
    out.insert("from".into(), json!(from));
    out.insert("to".into(), json!(to));
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_change_detail_merges_the_callers_detail() {
        let d = state_change_detail(
            HostState::Registered,
            HostState::Ready,
            json!({ "reason": "phone-home", "to": "forged" }),
        );
        assert_eq!(
            d,
            json!({ "reason": "phone-home", "from": "registered", "to": "ready" })
        );
        let d = state_change_detail(HostState::Ready, HostState::Failed, serde_json::Value::Null);
        assert_eq!(d, json!({ "from": "ready", "to": "failed" }));
        let d = state_change_detail(HostState::Ready, HostState::Failed, json!("bmc timeout"));
        assert_eq!(
            d,
            json!({ "detail": "bmc timeout", "from": "ready", "to": "failed" })
        );
    }

    #[test]
    fn unique_macs_keeps_first_occurrence_order() {
        let m = |n: u8| MacAddr([0, 0, 0, 0, 0, n]);
        assert_eq!(
            unique_macs(&[m(2), m(1), m(2), m(3)]),
            vec![m(2), m(1), m(3)]
        );
    }
}
