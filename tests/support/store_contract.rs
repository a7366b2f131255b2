//! The store contract: what `src/store/mod.rs` promises, checked the same way against every
//! backend. Each item is a generic `async fn` here; `store_contract_tests!` turns the whole
//! list into one `#[tokio::test]` per item for a backend:
//!
//! ```ignore
//! #[path = "support/store_contract.rs"]
//! #[macro_use]
//! mod contract;
//! store_contract_tests!(sqlite, async { /* -> (impl Store + 'static, guard) */ });
//! ```
//!
//! The module must be mounted as `contract` at the test crate's root (the expansion calls
//! `crate::contract::<item>`). The factory runs once per test and must give a fresh, empty
//! store; the guard (a temp dir, a throwaway database) is dropped when the test ends. The
//! guard also implements [`Reopen`]: it opens a second, independent handle on the same
//! database, as a second daemon would (for SQLite, a `TempDir` holding `bootgate.db`).
//! Timestamps used here are whole milliseconds, the precision every backend keeps.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use bootgate::store::{
    Event, EventKind, EventQuery, HostChange, HostRecord, HostSource, Lease, LeaseFilter,
    LeaseState, NewEvent, RelayInfo, Store, StoreError,
};
use bootgate::types::{HostState, MacAddr, Role};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

/// Expands to one `#[tokio::test]` per contract item, in a module named after the backend.
/// `$make` is an async expression giving `(store, guard)`; `$require` (an optional block)
/// runs first in each test, e.g. `{ require_peer!(…); }` for the backend's server.
macro_rules! store_contract_tests {
    ($backend:ident, $make:expr) => {
        store_contract_tests!($backend, $make, {});
    };
    ($backend:ident, $make:expr, $require:block) => {
        store_contract_tests!(@items $backend, $make, $require,
            hosts_add_get_list_by_mac,
            host_update_keeps_state_and_created,
            host_remove_deletes_host_and_macs_keeps_events,
            host_mac_taken_rolls_back_whole_batch,
            host_missing_is_no_such_host_and_rolls_back,
            set_host_state_compare_and_set,
            host_by_mac_follows_every_host_write,
            lease_commit_get_list_filters,
            lease_conflict_refused_holder_intact,
            lease_batch_commits_each_item_on_its_own,
            lease_same_mac_renews,
            lease_freed_address_can_be_taken,
            lease_concurrent_commits_never_share_an_address,
            expire_leases_marks_and_logs,
            live_leases_and_last_seen_for_the_audit,
            events_append_and_query_filters,
            events_since_until_limit,
            events_append_many_in_order,
            every_write_produces_an_event,
            boot_token_issue_check_consume,
            boot_token_replaced_by_a_new_boot_and_expires,
            boot_token_reissued_within_a_boot_stays_used,
            events_page_after_a_cursor,
            events_prune_by_age_and_rows,
            discovered_hosts_expire_by_age_and_cap,
        );
    };
    (@items $backend:ident, $make:expr, $require:block, $($item:ident),+ $(,)?) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $item() {
                    $require
                    let (store, _guard) = $make.await;
                    crate::contract::$item(::std::sync::Arc::new(store)).await;
                }
            )+
            // Items that need a second handle on the same database (see `Reopen`).
            store_contract_tests!(@two_handles $make, $require,
                two_handles_race_for_one_address,
                boot_token_survives_a_restart_and_is_used_once,
                site_key_is_created_once_and_shared,
                two_handles_record_the_same_discovered_macs,
                host_by_mac_sees_the_other_handles_writes,
                two_handles_prune_once,
            );
        }
    };
    (@two_handles $make:expr, $require:block, $($item:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $item() {
                $require
                let (store, guard) = $make.await;
                let other = crate::contract::Reopen::reopen(&guard).await;
                crate::contract::$item(
                    ::std::sync::Arc::new(store),
                    ::std::sync::Arc::new(other),
                )
                .await;
            }
        )+
    };
}

/// Opens another handle (its own pool) on the database a factory's guard stands for.
pub trait Reopen {
    type Store: Store + 'static;
    fn reopen(&self) -> impl std::future::Future<Output = Self::Store>;
}

/// The file name the SQLite factories use inside their temp dir.
pub const SQLITE_FILE: &str = "bootgate.db";

impl Reopen for tempfile::TempDir {
    type Store = bootgate::store::sqlite::SqliteStore;
    async fn reopen(&self) -> Self::Store {
        let path = self.path().join(SQLITE_FILE);
        assert!(
            path.exists(),
            "the SQLite factory must create {}",
            path.display()
        );
        bootgate::store::sqlite::SqliteStore::open(&path)
            .await
            .expect("second handle on the SQLite store")
    }
}

// ---- fixtures ----------------------------------------------------------------------------

pub fn mac(n: u16) -> MacAddr {
    let [hi, lo] = n.to_be_bytes();
    MacAddr([0x52, 0x54, 0x00, 0x00, hi, lo])
}

pub fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, n)
}

pub fn at(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).expect("timestamp in range")
}

/// The wall clock, truncated to what the store keeps.
pub fn now() -> Timestamp {
    at(Timestamp::now().as_millisecond())
}

pub fn secs(n: i64) -> SignedDuration {
    SignedDuration::from_secs(n)
}

/// An inventory host in `registered`, created at a fixed instant in the past.
pub fn host(name: &str, macs: &[MacAddr], ip: Option<Ipv4Addr>) -> HostRecord {
    HostRecord {
        name: name.to_string(),
        state: HostState::Registered,
        source: HostSource::Inventory,
        macs: macs.to_vec(),
        ip,
        rack: Some("r01".into()),
        role: Some(Role::Gpu),
        spec: json!({ "name": name, "gpus": 8 }),
        created: at(1_700_000_000_000),
        updated: at(1_700_000_000_000),
    }
}

pub fn discovered(name: &str, mac: MacAddr) -> HostRecord {
    HostRecord {
        name: name.to_string(),
        state: HostState::Discovered,
        source: HostSource::Discovered,
        macs: vec![mac],
        ip: None,
        rack: None,
        role: None,
        spec: serde_json::Value::Null,
        created: at(1_700_000_100_000),
        updated: at(1_700_000_100_000),
    }
}

pub fn lease(ip: Ipv4Addr, mac: MacAddr, state: LeaseState, ends: Timestamp) -> Lease {
    Lease {
        ip,
        mac,
        client_id: None,
        state,
        starts: ends - secs(3600),
        ends,
        host: None,
        subnet: "prov".into(),
        relay: RelayInfo::default(),
    }
}

pub fn committed(lease: &Lease) -> NewEvent {
    NewEvent::new(EventKind::LeaseCommitted, "dhcp")
        .ip(lease.ip)
        .mac(lease.mac)
        .detail(json!({ "state": lease.state }))
}

pub async fn add<S: Store + ?Sized>(store: &S, hosts: &[HostRecord]) {
    let changes: Vec<HostChange> = hosts.iter().cloned().map(HostChange::Add).collect();
    store
        .apply_host_changes(&changes, "inventory")
        .await
        .expect("add hosts");
}

pub async fn events<S: Store + ?Sized>(store: &S, query: EventQuery) -> Vec<Event> {
    store.query(&query).await.expect("query events")
}

pub async fn all_events<S: Store + ?Sized>(store: &S) -> Vec<Event> {
    events(store, EventQuery::default()).await
}

pub fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

fn ips(leases: &[Lease]) -> BTreeSet<Ipv4Addr> {
    leases.iter().map(|l| l.ip).collect()
}

// ---- hosts -------------------------------------------------------------------------------

pub async fn hosts_add_get_list_by_mac<S: Store>(store: Arc<S>) {
    let a = host("gpu-a01", &[mac(1), mac(2)], Some(ip(11)));
    let b = discovered("unknown-525400000003", mac(3));
    add(&*store, &[a.clone(), b.clone()]).await;

    assert_eq!(store.get_host("gpu-a01").await.unwrap(), Some(a.clone()));
    assert_eq!(store.get_host(&b.name).await.unwrap(), Some(b.clone()));
    assert_eq!(store.get_host("nope").await.unwrap(), None);

    let mut listed = store.list_hosts().await.unwrap();
    listed.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(listed, vec![a.clone(), b.clone()]);

    // Either MAC finds the host; MAC order is kept.
    assert_eq!(store.host_by_mac(mac(2)).await.unwrap(), Some(a.clone()));
    assert_eq!(store.host_by_mac(mac(1)).await.unwrap(), Some(a.clone()));
    assert_eq!(store.host_by_mac(mac(3)).await.unwrap(), Some(b.clone()));
    assert_eq!(store.host_by_mac(mac(99)).await.unwrap(), None);

    let evs = all_events(&*store).await;
    assert_eq!(
        kinds(&evs),
        vec![EventKind::HostAdded, EventKind::HostAdded]
    );
    assert_eq!(evs[0].host.as_deref(), Some("gpu-a01"));
    assert_eq!(evs[0].mac, Some(mac(1)));
    assert_eq!(evs[0].ip, Some(ip(11)));
    assert_eq!(evs[0].actor, "inventory");
    assert_eq!(evs[1].host.as_deref(), Some(b.name.as_str()));
    assert_eq!(evs[1].mac, Some(mac(3)));
    assert_eq!(evs[1].ip, None);
}

/// `host_by_mac` (read once per iPXE script request, and cached by the SQLite backend)
/// answers every write of the same handle at once: add, state move, MAC change, removal.
pub async fn host_by_mac_follows_every_host_write<S: Store>(store: Arc<S>) {
    let state_of = |h: Option<HostRecord>| h.map(|h| h.state);
    assert_eq!(store.host_by_mac(mac(1)).await.unwrap(), None);
    let a = host("gpu-a01", &[mac(1)], None);
    add(&*store, std::slice::from_ref(&a)).await;
    assert_eq!(store.host_by_mac(mac(1)).await.unwrap(), Some(a.clone()));
    for to in [HostState::Provisioning, HostState::Provisioned] {
        store
            .set_host_state("gpu-a01", None, to, "test", serde_json::Value::Null)
            .await
            .unwrap();
        assert_eq!(state_of(store.host_by_mac(mac(1)).await.unwrap()), Some(to));
    }
    let mut moved = a.clone();
    moved.macs = vec![mac(2)];
    store
        .apply_host_changes(
            &[HostChange::Update {
                host: moved,
                fields: vec!["macs".into()],
            }],
            "inventory",
        )
        .await
        .unwrap();
    assert_eq!(store.host_by_mac(mac(1)).await.unwrap(), None);
    assert_eq!(
        state_of(store.host_by_mac(mac(2)).await.unwrap()),
        Some(HostState::Provisioned)
    );
    store
        .apply_host_changes(
            &[HostChange::Remove {
                name: "gpu-a01".into(),
            }],
            "inventory",
        )
        .await
        .unwrap();
    assert_eq!(store.host_by_mac(mac(2)).await.unwrap(), None);
}

/// A state moved through another handle (another process on the SQLite file: `bootgate
/// rack onboard`; the other gateway on PostgreSQL) reaches `host_by_mac` within a second,
/// well before a power-cycled machine asks for its script again.
pub async fn host_by_mac_sees_the_other_handles_writes<A: Store + 'static, B: Store + 'static>(
    a: Arc<A>,
    b: Arc<B>,
) {
    add(&*a, &[host("gpu-a01", &[mac(1)], None)]).await;
    assert_eq!(
        a.host_by_mac(mac(1)).await.unwrap().map(|h| h.state),
        Some(HostState::Registered)
    );
    b.set_host_state(
        "gpu-a01",
        None,
        HostState::Maintenance,
        "other",
        serde_json::Value::Null,
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let state = a.host_by_mac(mac(1)).await.unwrap().map(|h| h.state);
        if state == Some(HostState::Maintenance) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {state:?} a second after the other handle's write"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub async fn host_update_keeps_state_and_created<S: Store>(store: Arc<S>) {
    let a = host("gpu-a01", &[mac(1), mac(2)], Some(ip(11)));
    add(&*store, std::slice::from_ref(&a)).await;
    store
        .set_host_state(
            "gpu-a01",
            None,
            HostState::Provisioning,
            "lifecycle",
            serde_json::Value::Null,
        )
        .await
        .unwrap();

    let mut declared = a.clone();
    declared.state = HostState::Ready; // ignored: the live state is the store's
    declared.created = at(1_800_000_000_000); // ignored: created stays
    declared.macs = vec![mac(1), mac(9)];
    declared.ip = Some(ip(12));
    declared.rack = Some("r02".into());
    declared.role = Some(Role::Storage);
    declared.spec = json!({ "name": "gpu-a01", "gpus": 4 });
    let fields = vec![
        "macs".to_string(),
        "ip".into(),
        "rack".into(),
        "role".into(),
    ];
    let before = now();
    store
        .apply_host_changes(
            &[HostChange::Update {
                host: declared.clone(),
                fields: fields.clone(),
            }],
            "inventory",
        )
        .await
        .unwrap();

    let got = store.get_host("gpu-a01").await.unwrap().expect("host kept");
    assert_eq!(got.state, HostState::Provisioning);
    assert_eq!(got.created, a.created);
    assert!(got.updated >= before, "updated {} < {before}", got.updated);
    assert_eq!(got.macs, vec![mac(1), mac(9)]);
    assert_eq!(got.ip, Some(ip(12)));
    assert_eq!(got.rack.as_deref(), Some("r02"));
    assert_eq!(got.role, Some(Role::Storage));
    assert_eq!(got.spec, declared.spec);
    assert_eq!(got.source, HostSource::Inventory);
    // The dropped MAC is free again, the new one points here.
    assert_eq!(store.host_by_mac(mac(2)).await.unwrap(), None);
    assert_eq!(
        store.host_by_mac(mac(9)).await.unwrap().map(|h| h.name),
        Some("gpu-a01".into())
    );

    let changed = events(
        &*store,
        EventQuery {
            kind: Some(EventKind::HostChanged),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(changed.len(), 1);
    let ev = &changed[0];
    assert_eq!(ev.host.as_deref(), Some("gpu-a01"));
    assert_eq!(ev.mac, Some(mac(1)));
    assert_eq!(ev.ip, Some(ip(12)));
    assert_eq!(ev.actor, "inventory");
    assert_eq!(ev.detail["fields"], json!(fields));
}

pub async fn host_remove_deletes_host_and_macs_keeps_events<S: Store>(store: Arc<S>) {
    let a = host("gpu-a01", &[mac(1), mac(2)], Some(ip(11)));
    add(&*store, std::slice::from_ref(&a)).await;
    store
        .set_host_state(
            "gpu-a01",
            Some(HostState::Registered),
            HostState::Provisioning,
            "lifecycle",
            serde_json::Value::Null,
        )
        .await
        .unwrap();
    store
        .apply_host_changes(
            &[HostChange::Remove {
                name: "gpu-a01".into(),
            }],
            "inventory",
        )
        .await
        .unwrap();

    assert_eq!(store.get_host("gpu-a01").await.unwrap(), None);
    assert_eq!(store.host_by_mac(mac(1)).await.unwrap(), None);
    assert_eq!(store.host_by_mac(mac(2)).await.unwrap(), None);
    assert!(store.list_hosts().await.unwrap().is_empty());

    let history = events(
        &*store,
        EventQuery {
            host: Some("gpu-a01".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        kinds(&history),
        vec![
            EventKind::HostAdded,
            EventKind::HostStateChanged,
            EventKind::HostRemoved
        ]
    );
    assert_eq!(history[2].mac, Some(mac(1)));
    assert_eq!(history[2].ip, Some(ip(11)));

    // Its MACs are free for another host.
    add(&*store, &[host("gpu-a02", &[mac(2)], None)]).await;
    assert_eq!(
        store.host_by_mac(mac(2)).await.unwrap().map(|h| h.name),
        Some("gpu-a02".into())
    );
}

pub async fn host_mac_taken_rolls_back_whole_batch<S: Store>(store: Arc<S>) {
    let a = host("gpu-a01", &[mac(1)], Some(ip(11)));
    add(&*store, std::slice::from_ref(&a)).await;
    let events_before = all_events(&*store).await;

    let mut a_changed = a.clone();
    a_changed.rack = Some("r09".into());
    let err = store
        .apply_host_changes(
            &[
                HostChange::Add(host("gpu-b01", &[mac(2)], None)),
                HostChange::Update {
                    host: a_changed,
                    fields: vec!["rack".into()],
                },
                HostChange::Add(host("gpu-c01", &[mac(3), mac(1)], None)),
            ],
            "inventory",
        )
        .await
        .expect_err("mac(1) belongs to gpu-a01");
    match err {
        StoreError::MacTaken {
            mac: m,
            owner,
            host,
        } => {
            assert_eq!(m, mac(1));
            assert_eq!(owner, "gpu-a01");
            assert_eq!(host, "gpu-c01");
        }
        other => panic!("expected MacTaken, got {other:?}"),
    }
    // Nothing from the batch landed: no new host, no update, no MAC, no event.
    assert_eq!(store.get_host("gpu-b01").await.unwrap(), None);
    assert_eq!(store.get_host("gpu-c01").await.unwrap(), None);
    assert_eq!(store.get_host("gpu-a01").await.unwrap(), Some(a.clone()));
    assert_eq!(store.host_by_mac(mac(2)).await.unwrap(), None);
    assert_eq!(store.host_by_mac(mac(3)).await.unwrap(), None);
    assert_eq!(all_events(&*store).await, events_before);

    // Two hosts of one batch claiming the same MAC: the second is refused, the first too.
    let err = store
        .apply_host_changes(
            &[
                HostChange::Add(host("gpu-d01", &[mac(5)], None)),
                HostChange::Add(host("gpu-e01", &[mac(5)], None)),
            ],
            "inventory",
        )
        .await
        .expect_err("mac(5) claimed twice");
    assert!(
        matches!(&err, StoreError::MacTaken { owner, host, .. } if owner == "gpu-d01" && host == "gpu-e01"),
        "{err:?}"
    );
    assert_eq!(store.get_host("gpu-d01").await.unwrap(), None);
    assert_eq!(all_events(&*store).await, events_before);
}

pub async fn host_missing_is_no_such_host_and_rolls_back<S: Store>(store: Arc<S>) {
    let err = store
        .apply_host_changes(
            &[
                HostChange::Add(host("gpu-x01", &[mac(1)], None)),
                HostChange::Remove {
                    name: "ghost".into(),
                },
            ],
            "inventory",
        )
        .await
        .expect_err("ghost does not exist");
    assert!(
        matches!(&err, StoreError::NoSuchHost(n) if n == "ghost"),
        "{err:?}"
    );
    assert_eq!(store.get_host("gpu-x01").await.unwrap(), None);

    let err = store
        .apply_host_changes(
            &[HostChange::Update {
                host: host("ghost", &[mac(2)], None),
                fields: vec!["ip".into()],
            }],
            "inventory",
        )
        .await
        .expect_err("ghost does not exist");
    assert!(
        matches!(&err, StoreError::NoSuchHost(n) if n == "ghost"),
        "{err:?}"
    );
    assert_eq!(store.host_by_mac(mac(2)).await.unwrap(), None);
    assert!(all_events(&*store).await.is_empty());
}

pub async fn set_host_state_compare_and_set<S: Store>(store: Arc<S>) {
    add(&*store, &[host("gpu-a01", &[mac(1)], Some(ip(11)))]).await;

    let moved = store
        .set_host_state(
            "gpu-a01",
            Some(HostState::Registered),
            HostState::Provisioning,
            "lifecycle",
            json!({ "reason": "pxe boot seen" }),
        )
        .await
        .unwrap();
    assert_eq!(moved.state, HostState::Provisioning);
    assert_eq!(
        store.get_host("gpu-a01").await.unwrap(),
        Some(moved.clone())
    );

    let err = store
        .set_host_state(
            "gpu-a01",
            Some(HostState::Registered),
            HostState::Ready,
            "lifecycle",
            serde_json::Value::Null,
        )
        .await
        .expect_err("state is provisioning now");
    match err {
        StoreError::StateMismatch {
            host,
            expected,
            actual,
        } => {
            assert_eq!(host, "gpu-a01");
            assert_eq!(expected, HostState::Registered);
            assert_eq!(actual, HostState::Provisioning);
        }
        other => panic!("expected StateMismatch, got {other:?}"),
    }
    assert_eq!(store.get_host("gpu-a01").await.unwrap(), Some(moved));

    // Without `from` the move is unconditional.
    let failed = store
        .set_host_state(
            "gpu-a01",
            None,
            HostState::Failed,
            "cli",
            serde_json::Value::Null,
        )
        .await
        .unwrap();
    assert_eq!(failed.state, HostState::Failed);

    let err = store
        .set_host_state(
            "ghost",
            None,
            HostState::Ready,
            "cli",
            serde_json::Value::Null,
        )
        .await
        .expect_err("no such host");
    assert!(
        matches!(&err, StoreError::NoSuchHost(n) if n == "ghost"),
        "{err:?}"
    );

    let changes = events(
        &*store,
        EventQuery {
            kind: Some(EventKind::HostStateChanged),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(changes.len(), 2, "a refused move writes no event");
    assert_eq!(changes[0].host.as_deref(), Some("gpu-a01"));
    assert_eq!(changes[0].mac, Some(mac(1)));
    assert_eq!(changes[0].ip, Some(ip(11)));
    assert_eq!(changes[0].actor, "lifecycle");
    assert_eq!(changes[0].detail["from"], json!("registered"));
    assert_eq!(changes[0].detail["to"], json!("provisioning"));
    assert_eq!(changes[0].detail["reason"], json!("pxe boot seen"));
    assert_eq!(changes[1].detail["from"], json!("provisioning"));
    assert_eq!(changes[1].detail["to"], json!("failed"));
    assert_eq!(changes[1].actor, "cli");
}

// ---- leases ------------------------------------------------------------------------------

pub async fn lease_commit_get_list_filters<S: Store>(store: Arc<S>) {
    let ends = now() + secs(3600);
    let mut l1 = lease(ip(21), mac(1), LeaseState::Active, ends);
    l1.client_id = Some("01525400000001".into());
    l1.host = Some("gpu-a01".into());
    l1.relay = RelayInfo {
        giaddr: Some(Ipv4Addr::new(10, 0, 1, 1)),
        circuit_id: Some("Ethernet1/7".into()),
        remote_id: Some("leaf-07".into()),
    };
    let l2 = lease(ip(3), mac(2), LeaseState::Offered, ends);
    let mut l3 = lease(ip(200), mac(1), LeaseState::Active, ends);
    l3.subnet = "bmc".into();
    for l in [&l1, &l2, &l3] {
        store.commit_lease(l, &committed(l)).await.unwrap();
    }

    assert_eq!(store.get_lease(ip(21)).await.unwrap(), Some(l1.clone()));
    assert_eq!(store.get_lease(ip(3)).await.unwrap(), Some(l2.clone()));
    assert_eq!(store.get_lease(ip(99)).await.unwrap(), None);

    let list = |filter: LeaseFilter| {
        let store = store.clone();
        async move { store.list_leases(&filter).await.unwrap() }
    };
    let mut everything = list(LeaseFilter::default()).await;
    everything.sort_by_key(|l| l.ip);
    assert_eq!(everything, vec![l2.clone(), l1.clone(), l3.clone()]);
    let by_subnet = list(LeaseFilter {
        subnet: Some("prov".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(ips(&by_subnet), BTreeSet::from([ip(3), ip(21)]));
    let by_mac = list(LeaseFilter {
        mac: Some(mac(1)),
        ..Default::default()
    })
    .await;
    assert_eq!(ips(&by_mac), BTreeSet::from([ip(21), ip(200)]));
    let by_state = list(LeaseFilter {
        state: Some(LeaseState::Offered),
        ..Default::default()
    })
    .await;
    assert_eq!(by_state, vec![l2.clone()]);
    let combined = list(LeaseFilter {
        subnet: Some("prov".into()),
        mac: Some(mac(1)),
        state: Some(LeaseState::Active),
    })
    .await;
    assert_eq!(combined, vec![l1.clone()]);
    let none = list(LeaseFilter {
        subnet: Some("bmc".into()),
        state: Some(LeaseState::Offered),
        ..Default::default()
    })
    .await;
    assert!(none.is_empty());

    let evs = events(
        &*store,
        EventQuery {
            ip: Some(ip(21)),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(kinds(&evs), vec![EventKind::LeaseCommitted]);
    assert_eq!(evs[0].mac, Some(mac(1)));
    assert_eq!(evs[0].actor, "dhcp");
}

pub async fn events_append_many_in_order<S: Store>(store: Arc<S>) {
    let batch: Vec<NewEvent> = (0..50)
        .map(|i| {
            NewEvent::new(EventKind::BootFileServed, "http")
                .ip(ip(1))
                .detail(serde_json::json!({ "n": i }))
        })
        .collect();
    store.append_many(&batch).await.unwrap();
    store.append_many(&[]).await.unwrap();
    let evs = store
        .query(&EventQuery {
            ip: Some(ip(1)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(evs.len(), 50);
    assert!(evs.iter().enumerate().all(|(i, e)| e.detail["n"] == i));
}

pub async fn lease_batch_commits_each_item_on_its_own<S: Store>(store: Arc<S>) {
    let ends = now() + secs(3600);
    let held = lease(ip(20), mac(1), LeaseState::Active, ends);
    store.commit_lease(&held, &committed(&held)).await.unwrap();
    let a = lease(ip(21), mac(2), LeaseState::Active, ends);
    let intruder = lease(ip(20), mac(3), LeaseState::Active, ends);
    let b = lease(ip(22), mac(4), LeaseState::Active, ends);
    // Two items for one address in one batch: the first wins, the second conflicts.
    let c = lease(ip(23), mac(5), LeaseState::Active, ends);
    let c2 = lease(ip(23), mac(6), LeaseState::Active, ends);
    let batch: Vec<_> = [&a, &intruder, &b, &c, &c2]
        .into_iter()
        .map(|l| (l.clone(), committed(l)))
        .collect();
    let out = store.commit_leases(&batch).await.unwrap();
    assert!(
        out[0].is_ok() && out[2].is_ok() && out[3].is_ok(),
        "{out:?}"
    );
    assert!(matches!(out[1], Err(StoreError::Conflict { holder, .. }) if holder == mac(1)));
    assert!(matches!(out[4], Err(StoreError::Conflict { holder, .. }) if holder == mac(5)));
    assert_eq!(store.get_lease(ip(20)).await.unwrap(), Some(held));
    assert_eq!(store.get_lease(ip(21)).await.unwrap(), Some(a));
    assert_eq!(store.get_lease(ip(22)).await.unwrap(), Some(b));
    assert_eq!(store.get_lease(ip(23)).await.unwrap(), Some(c));
    // Only the committed items left events.
    for (n, want) in [(20, 1), (21, 1), (22, 1), (23, 1)] {
        let evs = store
            .query(&EventQuery {
                ip: Some(ip(n)),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(evs.len(), want, "events on {}", ip(n));
    }
    assert!(store.commit_leases(&[]).await.unwrap().is_empty());
}

pub async fn lease_conflict_refused_holder_intact<S: Store>(store: Arc<S>) {
    let ends = now() + secs(3600);
    // Every state that holds its address refuses another MAC until `ends`.
    for (n, state) in [
        (1, LeaseState::Active),
        (2, LeaseState::Offered),
        (3, LeaseState::Declined),
    ] {
        let held = lease(ip(n), mac(1), state, ends);
        store.commit_lease(&held, &committed(&held)).await.unwrap();

        let intruder = lease(ip(n), mac(2), LeaseState::Active, ends + secs(60));
        let err = store
            .commit_lease(&intruder, &committed(&intruder))
            .await
            .expect_err("address is held");
        match err {
            StoreError::Conflict {
                ip: i,
                holder,
                until,
                requester,
            } => {
                assert_eq!(i, ip(n));
                assert_eq!(holder, mac(1));
                assert_eq!(until, ends);
                assert_eq!(requester, mac(2));
            }
            other => panic!("expected Conflict for {state}, got {other:?}"),
        }
        assert_eq!(store.get_lease(ip(n)).await.unwrap(), Some(held));
    }
    let intruder_events = events(
        &*store,
        EventQuery {
            mac: Some(mac(2)),
            ..Default::default()
        },
    )
    .await;
    assert!(
        intruder_events.is_empty(),
        "a refused commit writes no event"
    );
}

pub async fn lease_same_mac_renews<S: Store>(store: Arc<S>) {
    let first = lease(ip(1), mac(1), LeaseState::Offered, now() + secs(60));
    store
        .commit_lease(&first, &committed(&first))
        .await
        .unwrap();
    let mut renewed = lease(ip(1), mac(1), LeaseState::Active, now() + secs(7200));
    renewed.host = Some("gpu-a01".into());
    store
        .commit_lease(&renewed, &committed(&renewed))
        .await
        .unwrap();
    assert_eq!(store.get_lease(ip(1)).await.unwrap(), Some(renewed));
    let evs = events(
        &*store,
        EventQuery {
            ip: Some(ip(1)),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(evs.len(), 2);
}

pub async fn lease_freed_address_can_be_taken<S: Store>(store: Arc<S>) {
    let past = now() - secs(60);
    let future = now() + secs(3600);
    for (n, state, ends) in [
        (1, LeaseState::Active, past),  // ran out, not yet swept
        (2, LeaseState::Offered, past), // offer never taken up
        (3, LeaseState::Released, future),
        (4, LeaseState::Expired, future),
        (5, LeaseState::Declined, past), // quarantine over
    ] {
        let old = lease(ip(n), mac(1), state, ends);
        store.commit_lease(&old, &committed(&old)).await.unwrap();
        let new = lease(ip(n), mac(2), LeaseState::Active, future);
        store
            .commit_lease(&new, &committed(&new))
            .await
            .unwrap_or_else(|e| panic!("{state} lease ending {ends} should free {}: {e}", ip(n)));
        assert_eq!(store.get_lease(ip(n)).await.unwrap(), Some(new));
    }
}

/// 50 tasks race for 10 addresses; each address is wanted by two MACs (and each MAC tries
/// its address several times). Exactly one MAC wins each address, all its attempts succeed,
/// every attempt of the other MAC is a `Conflict`, and the store shows the winner.
pub async fn lease_concurrent_commits_never_share_an_address<S: Store + 'static>(store: Arc<S>) {
    let ends = now() + secs(3600);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50_u16 {
        let store = store.clone();
        let want = lease(
            ip((i % 10) as u8 + 1),
            mac(i % 20),
            LeaseState::Active,
            ends,
        );
        tasks.spawn(async move {
            let result = store.commit_lease(&want, &committed(&want)).await;
            (want, result)
        });
    }
    // ip -> mac -> (successes, conflicts)
    let mut tally: BTreeMap<Ipv4Addr, BTreeMap<MacAddr, (u32, u32)>> = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (want, result) = joined.expect("task panicked");
        let entry = tally
            .entry(want.ip)
            .or_default()
            .entry(want.mac)
            .or_default();
        match result {
            Ok(()) => entry.0 += 1,
            Err(StoreError::Conflict { holder, .. }) => {
                assert_ne!(holder, want.mac, "refused for its own lease");
                entry.1 += 1;
            }
            Err(other) => panic!("unexpected error for {}: {other}", want.ip),
        }
    }
    assert_eq!(tally.len(), 10);
    for (addr, by_mac) in &tally {
        let winners: Vec<MacAddr> = by_mac
            .iter()
            .filter(|(_, (ok, _))| *ok > 0)
            .map(|(m, _)| *m)
            .collect();
        assert_eq!(winners.len(), 1, "{addr} given to {winners:?}");
        let winner = winners[0];
        for (m, (ok, refused)) in by_mac {
            if *m == winner {
                assert_eq!(*refused, 0, "{addr}: the holder's renewal was refused");
            } else {
                assert_eq!(*ok, 0);
            }
        }
        let stored = store
            .get_lease(*addr)
            .await
            .unwrap()
            .expect("winner stored");
        assert_eq!(stored.mac, winner);
        let logged = events(
            &*store,
            EventQuery {
                ip: Some(*addr),
                kind: Some(EventKind::LeaseCommitted),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(
            logged.len() as u32,
            by_mac[&winner].0,
            "every success is logged"
        );
        assert!(logged.iter().all(|e| e.mac == Some(winner)));
    }
}

/// Two handles on one database (two daemons: two pools, or two opens of one SQLite file)
/// race for the same new address from different MACs, 200 rounds. Each round exactly one
/// wins, the other gets a `Conflict` naming the winner, the store holds the winner's
/// lease, and no address ever has committed events from two MACs. Odd rounds use the
/// group commit on the second handle, so both write paths are raced.
pub async fn two_handles_race_for_one_address<A: Store + 'static, B: Store + 'static>(
    a: Arc<A>,
    b: Arc<B>,
) {
    const ROUNDS: u16 = 200;
    let ends = now() + secs(3600);
    let addr = |r: u16| Ipv4Addr::new(10, 1, (r / 200) as u8, (r % 200) as u8 + 1);
    for r in 0..ROUNDS {
        let la = lease(addr(r), mac(2 * r), LeaseState::Active, ends);
        let lb = lease(addr(r), mac(2 * r + 1), LeaseState::Offered, ends);
        let (ta, tb) = (a.clone(), b.clone());
        let (wa, wb) = (la.clone(), lb.clone());
        let ja = tokio::spawn(async move { ta.commit_lease(&wa, &committed(&wa)).await });
        let jb = tokio::spawn(async move {
            if r % 2 == 0 {
                tb.commit_lease(&wb, &committed(&wb)).await
            } else {
                let mut out = tb
                    .commit_leases(&[(wb.clone(), committed(&wb))])
                    .await
                    .expect("group commit");
                out.pop().expect("one result per item")
            }
        });
        let (ra, rb) = (ja.await.expect("task a"), jb.await.expect("task b"));
        let (winner, loser_result) = match (&ra, &rb) {
            (Ok(()), Err(_)) => (la.mac, rb),
            (Err(_), Ok(())) => (lb.mac, ra),
            _ => panic!(
                "round {r} on {}: exactly one must win: {ra:?} / {rb:?}",
                la.ip
            ),
        };
        match loser_result {
            Err(StoreError::Conflict { holder, ip: i, .. }) => {
                assert_eq!(holder, winner, "round {r}: conflict names the winner");
                assert_eq!(i, la.ip);
            }
            other => panic!("round {r}: the loser must get a Conflict, got {other:?}"),
        }
        for store in [&*a as &dyn Store, &*b as &dyn Store] {
            let held = store
                .get_lease(la.ip)
                .await
                .unwrap()
                .expect("winner stored");
            assert_eq!(held.mac, winner, "round {r}: both handles see the winner");
        }
    }
    let leases = a.list_leases(&LeaseFilter::default()).await.unwrap();
    assert_eq!(leases.len(), usize::from(ROUNDS));
    let committed_events = events(
        &*b,
        EventQuery {
            kind: Some(EventKind::LeaseCommitted),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        committed_events.len(),
        usize::from(ROUNDS),
        "one event per win"
    );
    let mut macs_by_ip: BTreeMap<Ipv4Addr, BTreeSet<MacAddr>> = BTreeMap::new();
    for e in &committed_events {
        macs_by_ip
            .entry(e.ip.expect("event ip"))
            .or_default()
            .insert(e.mac.expect("event mac"));
    }
    for l in &leases {
        assert_eq!(
            macs_by_ip.get(&l.ip),
            Some(&BTreeSet::from([l.mac])),
            "{} committed for one MAC only",
            l.ip
        );
    }
}

/// Two handles on one database (two gateways) record the same unknown MACs at once, as
/// both see every DISCOVER: 50 rounds, each a batch of the same 5 MACs on both sides plus a
/// MAC of an inventory host. No error; one host per MAC, added once (one `host-added`
/// event each), its first sighting kept; the inventory host untouched.
pub async fn two_handles_record_the_same_discovered_macs<A: Store + 'static, B: Store + 'static>(
    a: Arc<A>,
    b: Arc<B>,
) {
    use bootgate::store::Sighted;
    add(&*a, &[host("gpu-a01", &[mac(900)], Some(ip(10)))]).await;
    let sighting = |n: u16, round: i64| {
        let mut h = discovered(&format!("discovered-{n}"), mac(n));
        h.spec = json!({ "first_seen": round, "last_seen": round });
        h.created = at(1_700_000_100_000 + round);
        h.updated = h.created;
        h
    };
    for round in 0..50_i64 {
        let mut batch: Vec<HostRecord> = (0..5).map(|n| sighting(n, round)).collect();
        let mut known = discovered("discovered-900", mac(900));
        known.spec = json!({});
        batch.push(known);
        let (ta, tb) = (a.clone(), b.clone());
        let (ba, bb) = (batch.clone(), batch);
        let ja = tokio::spawn(async move { ta.record_discovered(&ba, "dhcp").await });
        let jb = tokio::spawn(async move { tb.record_discovered(&bb, "dhcp").await });
        let ra = ja
            .await
            .expect("task a")
            .expect("gateway a records its sightings");
        let rb = jb
            .await
            .expect("task b")
            .expect("gateway b records its sightings");
        assert_eq!(ra.len(), 6);
        assert_eq!(rb.len(), 6);
        assert_eq!(ra[5], Sighted::Known, "an inventory MAC is not discovered");
        assert_eq!(rb[5], Sighted::Known);
        for n in 0..5 {
            let added = [ra[n], rb[n]]
                .iter()
                .filter(|s| **s == Sighted::Added)
                .count();
            assert_eq!(
                added,
                usize::from(round == 0),
                "round {round}: MAC {n} added once"
            );
        }
    }
    let hosts = a.list_hosts().await.unwrap();
    let discovered_hosts: Vec<&HostRecord> = hosts
        .iter()
        .filter(|h| h.source == HostSource::Discovered)
        .collect();
    assert_eq!(discovered_hosts.len(), 5, "{hosts:?}");
    for h in &discovered_hosts {
        assert_eq!(h.state, HostState::Discovered);
        assert_eq!(
            h.spec["first_seen"],
            json!(0),
            "{}: first sighting kept",
            h.name
        );
        assert_eq!(h.spec["last_seen"], json!(49), "{}: last sighting", h.name);
    }
    let inv = a.get_host("gpu-a01").await.unwrap().unwrap();
    assert_eq!(inv.source, HostSource::Inventory);
    assert_eq!(inv.macs, vec![mac(900)]);
    let added = events(
        &*b,
        EventQuery {
            kind: Some(EventKind::HostAdded),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        added.len(),
        6,
        "gpu-a01 plus five discovered hosts, once each"
    );
}

pub async fn expire_leases_marks_and_logs<S: Store>(store: Arc<S>) {
    let t = now();
    let mut gone = lease(ip(1), mac(1), LeaseState::Active, t - secs(1));
    gone.host = Some("gpu-a01".into());
    let offer_lapsed = lease(ip(2), mac(2), LeaseState::Offered, t); // ends <= now
    let live = lease(ip(3), mac(3), LeaseState::Active, t + secs(3600));
    let released = lease(ip(4), mac(4), LeaseState::Released, t - secs(3600));
    let declined = lease(ip(5), mac(5), LeaseState::Declined, t - secs(3600));
    for l in [&gone, &offer_lapsed, &live, &released, &declined] {
        store.commit_lease(l, &committed(l)).await.unwrap();
    }

    let expired = store.expire_leases(t).await.unwrap();
    assert_eq!(ips(&expired), BTreeSet::from([ip(1), ip(2)]));
    assert!(expired.iter().all(|l| l.state == LeaseState::Expired));
    let state_of = |n: u8| {
        let store = store.clone();
        async move { store.get_lease(ip(n)).await.unwrap().expect("lease").state }
    };
    assert_eq!(state_of(1).await, LeaseState::Expired);
    assert_eq!(state_of(2).await, LeaseState::Expired);
    assert_eq!(state_of(3).await, LeaseState::Active);
    assert_eq!(state_of(4).await, LeaseState::Released);
    assert_eq!(state_of(5).await, LeaseState::Declined);
    let mut kept = store.get_lease(ip(1)).await.unwrap().expect("lease");
    kept.state = LeaseState::Active;
    assert_eq!(kept, gone, "only the state changes");

    let logged = events(
        &*store,
        EventQuery {
            kind: Some(EventKind::LeaseExpired),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(logged.len(), 2);
    let gone_event = logged
        .iter()
        .find(|e| e.ip == Some(ip(1)))
        .expect("event for ip 1");
    assert_eq!(gone_event.mac, Some(mac(1)));
    assert_eq!(gone_event.host.as_deref(), Some("gpu-a01"));

    // Idempotent: nothing left to expire, nothing logged.
    assert!(store.expire_leases(t).await.unwrap().is_empty());
    let again = events(
        &*store,
        EventQuery {
            kind: Some(EventKind::LeaseExpired),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(again.len(), 2);
}

/// What `bootgate audit` reads instead of every lease and event: the leases holding an
/// address now, and per asked-for MAC / host name the newest commit or lease start.
pub async fn live_leases_and_last_seen_for_the_audit<S: Store>(store: Arc<S>) {
    let t = now();
    let active = lease(ip(1), mac(1), LeaseState::Active, t + secs(3600));
    let offered = lease(ip(2), mac(2), LeaseState::Offered, t + secs(60));
    let declined = lease(ip(3), mac(3), LeaseState::Declined, t + secs(600));
    let lapsed = lease(ip(4), mac(4), LeaseState::Active, t - secs(1));
    let released = lease(ip(5), mac(5), LeaseState::Released, t + secs(3600));
    let expired = lease(ip(6), mac(6), LeaseState::Expired, t - secs(3600));
    for l in [&active, &offered, &declined, &lapsed, &released, &expired] {
        let mut ev = committed(l);
        ev.time = Some(l.starts);
        store.commit_lease(l, &ev).await.unwrap();
    }
    let live = store.live_leases(t).await.unwrap();
    assert_eq!(
        live.iter().map(|l| l.ip).collect::<Vec<_>>(),
        vec![ip(1), ip(2), ip(3)],
        "offered, active and declined leases ending after now, by address"
    );
    assert_eq!(live[0], active);

    // An older commit of mac 7 on another address (its lease since replaced), a newer
    // commit naming host gpu-b01 without a MAC we ask about, and noise of other kinds.
    let old = t - secs(86_400 * 40);
    let mut ev = NewEvent::new(EventKind::LeaseCommitted, "dhcp")
        .ip(ip(9))
        .mac(mac(7))
        .host("gpu-a07");
    ev.time = Some(old);
    store.append(&ev).await.unwrap();
    let mut ev = NewEvent::new(EventKind::LeaseCommitted, "dhcp")
        .ip(ip(10))
        .mac(mac(8))
        .host("gpu-b01");
    ev.time = Some(t - secs(120));
    store.append(&ev).await.unwrap();
    let mut noise = NewEvent::new(EventKind::LeaseReleased, "dhcp")
        .ip(ip(9))
        .mac(mac(7))
        .host("gpu-a07");
    noise.time = Some(t);
    store.append(&noise).await.unwrap();

    let seen = store
        .last_seen(
            &[mac(1), mac(6), mac(7), mac(99)],
            &[
                "gpu-a07".to_string(),
                "gpu-b01".to_string(),
                "nobody".to_string(),
            ],
        )
        .await
        .unwrap();
    // mac 1: its commit and its lease start are the same instant; mac 6: expired lease
    // still tells when it was seen; mac 7: only the old commit; mac 99: never.
    assert_eq!(
        seen.macs,
        vec![
            (mac(1), active.starts),
            (mac(6), expired.starts),
            (mac(7), old)
        ]
    );
    assert_eq!(
        seen.hosts,
        vec![
            ("gpu-a07".to_string(), old),
            ("gpu-b01".to_string(), t - secs(120))
        ]
    );
    // Nothing asked, nothing answered.
    let none = store.last_seen(&[], &[]).await.unwrap();
    assert!(none.macs.is_empty() && none.hosts.is_empty());
}

// ---- events ------------------------------------------------------------------------------

pub async fn events_append_and_query_filters<S: Store>(store: Arc<S>) {
    let before = now();
    let id1 = store
        .append(
            &NewEvent::new(EventKind::HostDiscovered, "dhcp")
                .mac(mac(1))
                .detail(json!({ "vendor_class": "PXEClient:Arch:00007" })),
        )
        .await
        .unwrap();
    let after = now();
    let id2 = store
        .append(
            &NewEvent::new(EventKind::LeaseOffered, "dhcp")
                .ip(ip(1))
                .mac(mac(1))
                .host("gpu-a01"),
        )
        .await
        .unwrap();
    let id3 = store
        .append(
            &NewEvent::new(EventKind::LeaseOffered, "dhcp")
                .ip(ip(2))
                .mac(mac(2))
                .host("gpu-a02"),
        )
        .await
        .unwrap();
    let mut explicit = NewEvent::new(EventKind::InventoryLoaded, "inventory")
        .host("gpu-a01")
        .detail(json!({ "hosts": 2 }));
    explicit.time = Some(at(1_700_000_000_123));
    let id4 = store.append(&explicit).await.unwrap();
    assert!(id1 < id2 && id2 < id3 && id3 < id4, "ids grow with appends");

    let all = all_events(&*store).await;
    assert_eq!(
        all.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![id1, id2, id3, id4]
    );
    let first = &all[0];
    assert_eq!(first.kind, EventKind::HostDiscovered);
    assert!(
        before <= first.time && first.time <= after,
        "time set by the store"
    );
    assert_eq!(first.mac, Some(mac(1)));
    assert_eq!(first.ip, None);
    assert_eq!(first.host, None);
    assert_eq!(first.actor, "dhcp");
    assert_eq!(
        first.detail,
        json!({ "vendor_class": "PXEClient:Arch:00007" })
    );
    assert_eq!(all[1].detail, serde_json::Value::Null);
    assert_eq!(all[3].time, at(1_700_000_000_123));
    assert_eq!(all[3].detail, json!({ "hosts": 2 }));

    let ids = |q: EventQuery| {
        let store = store.clone();
        async move {
            events(&*store, q)
                .await
                .iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        ids(EventQuery {
            ip: Some(ip(1)),
            ..Default::default()
        })
        .await,
        vec![id2]
    );
    assert_eq!(
        ids(EventQuery {
            mac: Some(mac(1)),
            ..Default::default()
        })
        .await,
        vec![id1, id2]
    );
    assert_eq!(
        ids(EventQuery {
            host: Some("gpu-a01".into()),
            ..Default::default()
        })
        .await,
        vec![id2, id4]
    );
    assert_eq!(
        ids(EventQuery {
            kind: Some(EventKind::LeaseOffered),
            ..Default::default()
        })
        .await,
        vec![id2, id3]
    );
    assert_eq!(
        ids(EventQuery {
            kind: Some(EventKind::LeaseOffered),
            mac: Some(mac(2)),
            ..Default::default()
        })
        .await,
        vec![id3]
    );
    assert_eq!(
        ids(EventQuery {
            kind: Some(EventKind::LeaseOffered),
            host: Some("gpu-a01".into()),
            ip: Some(ip(2)),
            ..Default::default()
        })
        .await,
        Vec::<i64>::new()
    );
}

pub async fn events_since_until_limit<S: Store>(store: Arc<S>) {
    let mut ids = Vec::new();
    for (n, ms) in [1_000_i64, 2_000, 2_000, 3_000, 4_000]
        .into_iter()
        .enumerate()
    {
        let mut ev = NewEvent::new(EventKind::DaemonStarted, "daemon").detail(json!({ "n": n }));
        ev.time = Some(at(ms));
        ids.push(store.append(&ev).await.unwrap());
    }
    let got = |q: EventQuery| {
        let store = store.clone();
        async move {
            events(&*store, q)
                .await
                .iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        }
    };
    let q = |since: Option<i64>, until: Option<i64>, limit: Option<u32>| EventQuery {
        since: since.map(at),
        until: until.map(at),
        limit,
        ..Default::default()
    };
    assert_eq!(
        got(q(Some(2_000), None, None)).await,
        ids[1..].to_vec(),
        "since is inclusive"
    );
    assert_eq!(
        got(q(None, Some(3_000), None)).await,
        ids[..3].to_vec(),
        "until is exclusive"
    );
    assert_eq!(
        got(q(Some(2_000), Some(4_000), None)).await,
        ids[1..4].to_vec()
    );
    assert_eq!(
        got(q(Some(2_001), Some(2_999), None)).await,
        Vec::<i64>::new()
    );
    // limit: the newest N, still oldest first
    assert_eq!(got(q(None, None, Some(2))).await, ids[3..].to_vec());
    assert_eq!(got(q(None, Some(4_000), Some(2))).await, ids[2..4].to_vec());
    assert_eq!(got(q(None, None, Some(10))).await, ids.clone());
    assert_eq!(got(q(None, None, Some(0))).await, Vec::<i64>::new());
}

/// Every successful write leaves exactly one event per change, in order; refused writes
/// leave none.
pub async fn every_write_produces_an_event<S: Store>(store: Arc<S>) {
    let t = now();
    add(
        &*store,
        &[
            host("gpu-a01", &[mac(1)], Some(ip(11))),
            host("gpu-b01", &[mac(2)], None),
        ],
    )
    .await;
    let mut a = host("gpu-a01", &[mac(1)], Some(ip(11)));
    a.rack = Some("r02".into());
    store
        .apply_host_changes(
            &[
                HostChange::Update {
                    host: a,
                    fields: vec!["rack".into()],
                },
                HostChange::Remove {
                    name: "gpu-b01".into(),
                },
            ],
            "inventory",
        )
        .await
        .unwrap();
    store
        .set_host_state(
            "gpu-a01",
            None,
            HostState::Provisioning,
            "lifecycle",
            serde_json::Value::Null,
        )
        .await
        .unwrap();
    let offer = lease(ip(11), mac(1), LeaseState::Offered, t - secs(1));
    store
        .commit_lease(
            &offer,
            &NewEvent::new(EventKind::LeaseOffered, "dhcp")
                .ip(offer.ip)
                .mac(offer.mac),
        )
        .await
        .unwrap();
    let ack = lease(ip(12), mac(1), LeaseState::Active, t + secs(60));
    store.commit_lease(&ack, &committed(&ack)).await.unwrap();
    // refused: nothing logged
    let steal = lease(ip(12), mac(2), LeaseState::Active, t + secs(60));
    assert!(
        store
            .commit_lease(&steal, &committed(&steal))
            .await
            .is_err()
    );
    assert!(
        store
            .set_host_state(
                "gpu-a01",
                Some(HostState::Ready),
                HostState::Failed,
                "cli",
                serde_json::Value::Null
            )
            .await
            .is_err()
    );
    assert_eq!(store.expire_leases(t).await.unwrap().len(), 1);

    let all = all_events(&*store).await;
    assert_eq!(
        kinds(&all),
        vec![
            EventKind::HostAdded,
            EventKind::HostAdded,
            EventKind::HostChanged,
            EventKind::HostRemoved,
            EventKind::HostStateChanged,
            EventKind::LeaseOffered,
            EventKind::LeaseCommitted,
            EventKind::LeaseExpired,
        ]
    );
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
}

// ---- boot tokens -------------------------------------------------------------------------

fn boot_token(
    m: MacAddr,
    host: &str,
    token: &str,
    purpose: bootgate::store::BootPurpose,
    issued: Timestamp,
) -> bootgate::store::BootToken {
    bootgate::store::BootToken {
        mac: m,
        host: host.into(),
        token: token.into(),
        purpose,
        issued,
        expires: issued + secs(3600),
    }
}

/// A token is accepted for its MAC only, kept by `Keep`, used up by `Consume` (a replay
/// is `Used`); a wrong or foreign token is refused without using up the real one.
pub async fn boot_token_issue_check_consume<S: Store>(store: Arc<S>) {
    use bootgate::store::{BootPurpose, TokenCheck, TokenUse};
    let t = now();
    let tok = "0123456789abcdef0123456789abcdef";
    assert_eq!(
        store
            .check_boot_token(mac(1), tok, t, TokenUse::Keep)
            .await
            .unwrap(),
        TokenCheck::NoBoot
    );
    store
        .issue_boot_token(&boot_token(mac(1), "gpu-a01", tok, BootPurpose::Install, t))
        .await
        .unwrap();
    let accepted = TokenCheck::Accepted {
        host: "gpu-a01".into(),
        purpose: BootPurpose::Install,
    };
    for _ in 0..2 {
        assert_eq!(
            store
                .check_boot_token(mac(1), tok, t, TokenUse::Keep)
                .await
                .unwrap(),
            accepted
        );
    }
    assert_eq!(
        store
            .check_boot_token(
                mac(1),
                "ffffffffffffffffffffffffffffffff",
                t,
                TokenUse::Consume
            )
            .await
            .unwrap(),
        TokenCheck::Wrong
    );
    // Another MAC never matches this token.
    assert_eq!(
        store
            .check_boot_token(mac(2), tok, t, TokenUse::Keep)
            .await
            .unwrap(),
        TokenCheck::NoBoot
    );
    assert_eq!(
        store
            .check_boot_token(mac(1), tok, t, TokenUse::Consume)
            .await
            .unwrap(),
        accepted
    );
    assert_eq!(
        store
            .check_boot_token(mac(1), tok, t, TokenUse::Consume)
            .await
            .unwrap(),
        TokenCheck::Used { at: t }
    );
}

/// Issuing the token a MAC already has (a re-fetch of its script within the same boot)
/// changes nothing: a used token stays used, a live one keeps its expiry. A different
/// token (a new boot) replaces it and is live.
pub async fn boot_token_reissued_within_a_boot_stays_used<S: Store>(store: Arc<S>) {
    use bootgate::store::{BootPurpose, TokenCheck, TokenUse};
    let t = now();
    let tok = "33333333333333333333333333333333";
    let issue = |tok: &'static str, at| {
        let store = store.clone();
        async move {
            store
                .issue_boot_token(&boot_token(
                    mac(3),
                    "gpu-a03",
                    tok,
                    BootPurpose::Install,
                    at,
                ))
                .await
                .unwrap()
        }
    };
    issue(tok, t).await;
    // Re-issued later: the expiry stays the first one's.
    issue(tok, t + secs(600)).await;
    assert_eq!(
        store
            .check_boot_token(mac(3), tok, t + secs(3600), TokenUse::Keep)
            .await
            .unwrap(),
        TokenCheck::Expired { at: t + secs(3600) }
    );
    assert!(matches!(
        store
            .check_boot_token(mac(3), tok, t, TokenUse::Consume)
            .await
            .unwrap(),
        TokenCheck::Accepted { .. }
    ));
    issue(tok, t).await;
    assert_eq!(
        store
            .check_boot_token(mac(3), tok, t, TokenUse::Keep)
            .await
            .unwrap(),
        TokenCheck::Used { at: t }
    );
    let next = "44444444444444444444444444444444";
    issue(next, t).await;
    assert!(matches!(
        store
            .check_boot_token(mac(3), next, t, TokenUse::Keep)
            .await
            .unwrap(),
        TokenCheck::Accepted { .. }
    ));
    assert_eq!(
        store
            .check_boot_token(mac(3), tok, t, TokenUse::Keep)
            .await
            .unwrap(),
        TokenCheck::Wrong
    );
}

/// The boot-token key: the first offer wins, every later caller (another handle: the
/// other gateway, or the daemon after a restart) reads the same key back.
pub async fn site_key_is_created_once_and_shared<A: Store + 'static, B: Store + 'static>(
    store: Arc<A>,
    other: Arc<B>,
) {
    let first = vec![1u8; 32];
    let second = vec![2u8; 32];
    let (a, b) = tokio::join!(
        store.site_key("boot-token", &first),
        other.site_key("boot-token", &second),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b, "two gateways got different keys");
    assert!(a == first || a == second);
    assert_eq!(store.site_key("boot-token", &[3u8; 32]).await.unwrap(), a);
    assert_eq!(other.site_key("another", &second).await.unwrap(), second);
}

/// A new boot's token replaces the old one (with its purpose); a token past its expiry is
/// refused as expired, and pruned when another token is issued.
pub async fn boot_token_replaced_by_a_new_boot_and_expires<S: Store>(store: Arc<S>) {
    use bootgate::store::{BootPurpose, TokenCheck, TokenUse};
    let t = now();
    let (old, new) = (
        "11111111111111111111111111111111",
        "22222222222222222222222222222222",
    );
    store
        .issue_boot_token(&boot_token(mac(1), "gpu-a01", old, BootPurpose::Install, t))
        .await
        .unwrap();
    store
        .issue_boot_token(&boot_token(mac(1), "gpu-a01", new, BootPurpose::Rescue, t))
        .await
        .unwrap();
    assert_eq!(
        store
            .check_boot_token(mac(1), old, t, TokenUse::Keep)
            .await
            .unwrap(),
        TokenCheck::Wrong
    );
    assert_eq!(
        store
            .check_boot_token(mac(1), new, t, TokenUse::Keep)
            .await
            .unwrap(),
        TokenCheck::Accepted {
            host: "gpu-a01".into(),
            purpose: BootPurpose::Rescue
        }
    );
    let later = t + secs(3600);
    assert_eq!(
        store
            .check_boot_token(mac(1), new, later, TokenUse::Consume)
            .await
            .unwrap(),
        TokenCheck::Expired { at: later }
    );
    // Issuing any token prunes the expired ones.
    store
        .issue_boot_token(&boot_token(
            mac(2),
            "gpu-a02",
            old,
            BootPurpose::Install,
            later,
        ))
        .await
        .unwrap();
    assert_eq!(
        store
            .check_boot_token(mac(1), new, later, TokenUse::Keep)
            .await
            .unwrap(),
        TokenCheck::NoBoot
    );
}

/// What a daemon restart (or the other gateway) sees: a token issued through one handle is
/// accepted through another, and consumed exactly once when both try at the same time.
pub async fn boot_token_survives_a_restart_and_is_used_once<
    A: Store + 'static,
    B: Store + 'static,
>(
    store: Arc<A>,
    other: Arc<B>,
) {
    use bootgate::store::{BootPurpose, TokenCheck, TokenUse};
    let t = now();
    let tok = "0123456789abcdef0123456789abcdef";
    store
        .issue_boot_token(&boot_token(mac(7), "gpu-a07", tok, BootPurpose::Install, t))
        .await
        .unwrap();
    assert!(matches!(
        other
            .check_boot_token(mac(7), tok, t, TokenUse::Keep)
            .await
            .unwrap(),
        TokenCheck::Accepted { .. }
    ));
    let (a, b) = tokio::join!(
        store.check_boot_token(mac(7), tok, t, TokenUse::Consume),
        other.check_boot_token(mac(7), tok, t, TokenUse::Consume),
    );
    let accepted = [a.unwrap(), b.unwrap()]
        .iter()
        .filter(|c| matches!(c, TokenCheck::Accepted { .. }))
        .count();
    assert_eq!(accepted, 1, "a consumed token was accepted twice");
}

// ---- retention and pages ------------------------------------------------------------------

/// `after` reads forward from a cursor, `limit` at a time, with every filter still applied.
pub async fn events_page_after_a_cursor<S: Store>(store: Arc<S>) {
    let mut ids = Vec::new();
    for n in 0..7 {
        let kind = if n % 2 == 0 {
            EventKind::DaemonStarted
        } else {
            EventKind::DaemonStopped
        };
        ids.push(store.append(&NewEvent::new(kind, "daemon")).await.unwrap());
    }
    let page = |after: i64, limit: u32, kind: Option<EventKind>| {
        let store = store.clone();
        async move {
            events(
                &*store,
                EventQuery {
                    after: Some(after),
                    limit: Some(limit),
                    kind,
                    ..Default::default()
                },
            )
            .await
            .iter()
            .map(|e| e.id)
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(page(0, 3, None).await, ids[..3].to_vec(), "the first page");
    assert_eq!(page(ids[2], 3, None).await, ids[3..6].to_vec());
    assert_eq!(
        page(ids[5], 3, None).await,
        ids[6..].to_vec(),
        "a short last page"
    );
    assert_eq!(page(ids[6], 3, None).await, Vec::<i64>::new());
    assert_eq!(
        page(ids[0], 2, Some(EventKind::DaemonStarted)).await,
        vec![ids[2], ids[4]],
        "filters apply after the cursor"
    );
    // Without a cursor a limit still means the newest N.
    let newest = events(
        &*store,
        EventQuery {
            limit: Some(2),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        newest.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids[5..].to_vec()
    );
}

/// Retention deletes, in batches, the events older than `retain` and all but the newest
/// `max_rows`; it moves the horizon, writes one `events-pruned` summary per run that
/// deleted anything, and a second run finds nothing to do.
pub async fn events_prune_by_age_and_rows<S: Store>(store: Arc<S>) {
    use bootgate::model::EventRetention;
    let day = 86_400_000_i64;
    let t_now = now();
    let mut ids = Vec::new();
    for n in 0..10 {
        let mut ev = NewEvent::new(EventKind::DaemonStarted, "old").detail(json!({ "n": n }));
        ev.time = Some(at(t_now.as_millisecond() - 100 * day + n));
        ids.push(store.append(&ev).await.unwrap());
    }
    for n in 0..20 {
        let mut ev = NewEvent::new(EventKind::DaemonStopped, "new").detail(json!({ "n": n }));
        ev.time = Some(at(t_now.as_millisecond() - day + n));
        ids.push(store.append(&ev).await.unwrap());
    }
    let before = store.event_horizon().await.unwrap();
    assert_eq!(
        (before.below_id, before.pruned_total),
        (0, 0),
        "never pruned"
    );
    assert_eq!(before.oldest, Some(at(t_now.as_millisecond() - 100 * day)));

    let by_age = EventRetention {
        retain: std::time::Duration::from_secs(90 * 86_400),
        max_rows: 1_000_000,
        batch: 4,
    };
    let pruned = store.prune_events(&by_age, t_now).await.unwrap();
    assert_eq!(pruned.deleted, 10);
    assert_eq!(pruned.batches, 3, "4 + 4 + 2 rows");
    assert_eq!(pruned.horizon.below_id, ids[10]);
    assert_eq!(pruned.horizon.pruned_total, 10);
    assert_eq!(
        pruned.horizon.oldest,
        Some(at(t_now.as_millisecond() - day))
    );
    let left = all_events(&*store).await;
    assert_eq!(left.len(), 21, "20 recent + the summary");
    assert!(left.iter().all(|e| e.id >= ids[10]));
    let summary = left.last().unwrap();
    assert_eq!(summary.kind, EventKind::EventsPruned);
    assert_eq!(summary.detail["deleted"], 10);
    assert_eq!(summary.detail["below_id"], ids[10]);
    assert_eq!(
        summary.detail["oldest_kept"],
        json!(at(t_now.as_millisecond() - day).to_string())
    );

    // Idempotent: nothing more to delete, no second summary.
    let again = store.prune_events(&by_age, t_now).await.unwrap();
    assert_eq!(again.deleted, 0);
    assert_eq!(all_events(&*store).await.len(), 21);

    // By rows: the newest max_rows stay, the summary among them.
    let by_rows = EventRetention {
        retain: std::time::Duration::from_secs(365 * 86_400),
        max_rows: 5,
        batch: 3,
    };
    let pruned = store.prune_events(&by_rows, t_now).await.unwrap();
    assert_eq!(pruned.deleted, 17);
    let left = all_events(&*store).await;
    assert_eq!(left.len(), 5, "{:?}", kinds(&left));
    assert_eq!(left.last().unwrap().kind, EventKind::EventsPruned);
    assert_eq!(
        store.event_horizon().await.unwrap().pruned_total,
        27,
        "the horizon counts every pruned row"
    );
    // The log still refuses to lose anything above the horizon: a new append is kept.
    let id = store
        .append(&NewEvent::new(EventKind::DaemonStarted, "daemon"))
        .await
        .unwrap();
    assert!(id > pruned.horizon.below_id);
}

/// Two stores on one database (two gateways) prune at once: the rows go once, the counts
/// add up, and the log ends the same as after one prune.
pub async fn two_handles_prune_once<A: Store + 'static, B: Store + 'static>(a: Arc<A>, b: Arc<B>) {
    use bootgate::model::EventRetention;
    let evs: Vec<NewEvent> = (0..200)
        .map(|n| NewEvent::new(EventKind::DaemonStarted, "daemon").detail(json!({ "n": n })))
        .collect();
    a.append_many(&evs).await.unwrap();
    let keep = EventRetention {
        retain: std::time::Duration::from_secs(86_400),
        max_rows: 50,
        batch: 10,
    };
    let t = now();
    let (ra, rb) = tokio::join!(a.prune_events(&keep, t), b.prune_events(&keep, t));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    // Both cut at 152 (or the second finds the log within bounds): the rows go once.
    let total = ra.deleted + rb.deleted;
    assert_eq!(total, 151, "{ra:?} {rb:?}");
    let left = all_events(&*a).await;
    let summaries = left
        .iter()
        .filter(|e| e.kind == EventKind::EventsPruned)
        .count();
    assert!((1..=2).contains(&summaries), "{summaries} summaries");
    assert_eq!(left.len() as u64, 200 + summaries as u64 - total);
    // max_rows, plus the second gateway's summary when both deleted a share.
    assert!(
        left.len() < 50 + summaries,
        "within max_rows: {}",
        left.len()
    );
    assert_eq!(a.event_horizon().await.unwrap().pruned_total, total);
}

/// Discovered hosts not seen within `retain` expire, then the oldest-seen beyond
/// `max_hosts`; inventory hosts never do, however old; each expiry is an event.
pub async fn discovered_hosts_expire_by_age_and_cap<S: Store>(store: Arc<S>) {
    use bootgate::model::{DiscoveryRetention, ExpiryReason};
    let day = 86_400_000_i64;
    let t_now = now();
    let seen = |name: &str, n: u16, days_ago: i64| {
        let mut h = discovered(name, mac(n));
        h.updated = at(t_now.as_millisecond() - days_ago * day);
        h.created = h.updated;
        h
    };
    let old_inventory = host("gpu-old", &[mac(100)], None);
    add(
        &*store,
        &[
            old_inventory.clone(),
            seen("d-stale", 1, 40),
            seen("d-2", 2, 5),
            seen("d-3", 3, 4),
            seen("d-4", 4, 3),
            seen("d-5", 5, 2),
            seen("d-6", 6, 1),
        ],
    )
    .await;
    let keep = DiscoveryRetention {
        retain: std::time::Duration::from_secs(30 * 86_400),
        max_hosts: 3,
    };
    let expired = store
        .expire_discovered(&keep, t_now, 100, "discovery")
        .await
        .unwrap();
    let got: Vec<(&str, ExpiryReason)> = expired
        .iter()
        .map(|h| (h.name.as_str(), h.reason))
        .collect();
    assert_eq!(
        got,
        [
            ("d-stale", ExpiryReason::NotSeen),
            ("d-2", ExpiryReason::OverCap),
            ("d-3", ExpiryReason::OverCap),
        ]
    );
    assert_eq!(expired[0].mac, Some(mac(1)));
    let names: Vec<String> = store
        .list_hosts()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.name)
        .collect();
    assert_eq!(names, ["d-4", "d-5", "d-6", "gpu-old"]);
    assert!(
        store.host_by_mac(mac(1)).await.unwrap().is_none(),
        "its MAC is free again"
    );
    let evs = events(
        &*store,
        EventQuery {
            kind: Some(EventKind::HostExpired),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(evs.len(), 3);
    assert_eq!(evs[0].host.as_deref(), Some("d-stale"));
    assert_eq!(evs[0].mac, Some(mac(1)));
    assert_eq!(evs[0].detail["reason"], "not-seen");
    assert_eq!(evs[1].detail["reason"], "over-cap");
    // Nothing more to do; `at_most` bounds one call.
    assert!(
        store
            .expire_discovered(&keep, t_now, 100, "discovery")
            .await
            .unwrap()
            .is_empty()
    );
    let tight = DiscoveryRetention {
        max_hosts: 1,
        ..keep
    };
    let one = store
        .expire_discovered(&tight, t_now, 1, "discovery")
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].name, "d-4");
}
