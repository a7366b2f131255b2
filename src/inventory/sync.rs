//! Reconciles a validated inventory into the host store. `plan` is pure (current records +
//! inventory → changes); `reconcile` reads, plans and applies them in one store transaction.
//! Only the declaration is synced: a host's live state (provisioning, ready, …) is kept.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde::Serialize;

use super::{Host, Inventory};
use crate::model::{HostChange, HostRecord, HostSource, HostStore, StoreError};
use crate::types::HostState;

/// What a reconcile changed, for the `inventory-loaded` event and `bootgate reload`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl SyncReport {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// The store record an inventory host should have (state `registered` for a new host).
pub fn host_record(inv: &Inventory, host: &Host, now: Timestamp) -> HostRecord {
    HostRecord {
        name: host.name.clone(),
        state: HostState::Registered,
        source: HostSource::Inventory,
        macs: host.macs.clone(),
        ip: inv.provisioning_ip(host),
        rack: host.rack.clone(),
        role: Some(host.role),
        spec: serde_json::to_value(host).unwrap_or(serde_json::Value::Null),
        created: now,
        updated: now,
    }
}

/// The changes that bring `current` in line with `inv`. Order matters for MAC uniqueness:
/// removals first (a discovered host whose MAC is now declared, a host that left), then
/// updates, then additions.
pub fn plan(current: &[HostRecord], inv: &Inventory, now: Timestamp) -> Vec<HostChange> {
    let by_name: BTreeMap<&str, &HostRecord> =
        current.iter().map(|h| (h.name.as_str(), h)).collect();
    let declared: BTreeSet<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
    let declared_macs: BTreeSet<_> = inv.hosts.iter().flat_map(|h| h.macs.iter()).collect();

    let mut removes = Vec::new();
    let mut updates = Vec::new();
    let mut adds = Vec::new();
    for rec in current {
        let gone = match rec.source {
            HostSource::Inventory => !declared.contains(rec.name.as_str()),
            // A discovered host gives way when the operator declares its MAC or its name.
            HostSource::Discovered => {
                declared.contains(rec.name.as_str())
                    || rec.macs.iter().any(|m| declared_macs.contains(m))
            }
        };
        if gone {
            removes.push(HostChange::Remove {
                name: rec.name.clone(),
            });
        }
    }
    for host in &inv.hosts {
        let want = host_record(inv, host, now);
        match by_name.get(host.name.as_str()) {
            Some(cur) if cur.source == HostSource::Inventory => {
                let fields = changed_fields(cur, &want);
                if !fields.is_empty() {
                    updates.push(HostChange::Update { host: want, fields });
                }
            }
            _ => adds.push(HostChange::Add(want)),
        }
    }
    removes.into_iter().chain(updates).chain(adds).collect()
}

/// Names of the declared fields that differ (live state and timestamps are not compared).
fn changed_fields(cur: &HostRecord, want: &HostRecord) -> Vec<String> {
    let mut fields = Vec::new();
    if cur.macs != want.macs {
        fields.push("macs".to_string());
    }
    if cur.ip != want.ip {
        fields.push("ip".to_string());
    }
    if cur.rack != want.rack {
        fields.push("rack".to_string());
    }
    if cur.role != want.role {
        fields.push("role".to_string());
    }
    if cur.spec != want.spec {
        // Name the spec keys that changed so the event says what the operator edited.
        match (cur.spec.as_object(), want.spec.as_object()) {
            (Some(a), Some(b)) => {
                let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for k in keys {
                    if a.get(k) != b.get(k) && !fields.iter().any(|f| f == k) {
                        fields.push(k.clone());
                    }
                }
            }
            _ => fields.push("spec".to_string()),
        }
    }
    fields
}

/// Reads the hosts, plans and applies the changes (one transaction, one event per change).
pub async fn reconcile(
    store: &dyn HostStore,
    inv: &Inventory,
    actor: &str,
) -> Result<SyncReport, StoreError> {
    let current = store.list_hosts().await?;
    let changes = plan(&current, inv, Timestamp::now());
    let mut report = SyncReport::default();
    for c in &changes {
        match c {
            HostChange::Add(h) => report.added.push(h.name.clone()),
            HostChange::Update { host, .. } => report.changed.push(host.name.clone()),
            HostChange::Remove { name } => report.removed.push(name.clone()),
        }
    }
    if !changes.is_empty() {
        store.apply_host_changes(&changes, actor).await?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::inventory::{Hardware, Site};
    use crate::types::Role;

    fn host(name: &str, mac: &str) -> Host {
        Host {
            name: name.into(),
            role: Role::Gpu,
            rack: None,
            position: None,
            macs: vec![mac.parse().unwrap()],
            addresses: BTreeMap::new(),
            bmc: None,
            hardware: Hardware::default(),
            profile: None,
            labels: BTreeMap::new(),
            boot_file: None,
        }
    }

    fn inv(hosts: Vec<Host>) -> Inventory {
        Inventory {
            site: Site {
                name: "t".into(),
                description: None,
                location: None,
                gateways: vec![],
                settings: Default::default(),
                bmc_ca_file: None,
            },
            subnets: vec![],
            racks: vec![],
            profiles: vec![],
            hosts,
            files: vec![],
        }
    }

    fn names(changes: &[HostChange]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                HostChange::Add(h) => format!("add {}", h.name),
                HostChange::Update { host, fields } => {
                    format!("update {} {}", host.name, fields.join(","))
                }
                HostChange::Remove { name } => format!("remove {name}"),
            })
            .collect()
    }

    #[test]
    fn plan_adds_updates_and_removes_in_a_mac_safe_order() {
        let now = Timestamp::now();
        let old = inv(vec![
            host("a", "02:00:00:00:00:01"),
            host("b", "02:00:00:00:00:02"),
        ]);
        let mut current: Vec<HostRecord> = old
            .hosts
            .iter()
            .map(|h| host_record(&old, h, now))
            .collect();
        current[0].state = HostState::Ready;
        // A discovered stranger whose MAC the operator now declares as host c.
        let mut stranger = host_record(&old, &host("x", "02:00:00:00:00:03"), now);
        stranger.source = HostSource::Discovered;
        current.push(stranger);

        let mut a = host("a", "02:00:00:00:00:01");
        a.labels.insert("k".into(), "v".into());
        let new = inv(vec![a, host("c", "02:00:00:00:00:03")]);
        let changes = plan(&current, &new, now);
        assert_eq!(
            names(&changes),
            ["remove b", "remove x", "update a labels", "add c"]
        );
        // Nothing to do when the inventory is unchanged.
        assert!(plan(&current[..2], &old, now).is_empty());
    }

    #[test]
    fn plan_names_every_changed_field() {
        let now = Timestamp::now();
        let old = inv(vec![host("a", "02:00:00:00:00:01")]);
        let current: Vec<HostRecord> = old
            .hosts
            .iter()
            .map(|h| host_record(&old, h, now))
            .collect();
        let mut a = host("a", "02:00:00:00:00:09");
        a.role = Role::Storage;
        a.rack = Some("r1".into());
        let changes = plan(&current, &inv(vec![a]), now);
        assert_eq!(names(&changes), ["update a macs,rack,role"]);
    }
}
