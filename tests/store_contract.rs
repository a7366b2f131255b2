//! The store contract battery (tests/support/store_contract.rs) run against each backend,
//! plus the checks only the SQLite backend can answer: the file on disk, raw SQL against
//! the event log's triggers, reopening after close, read-only access.

#[path = "support/store_contract.rs"]
#[macro_use]
mod contract;

use std::path::{Path, PathBuf};

use bootgate::store::sqlite::SqliteStore;
use bootgate::store::{
    EventKind, EventLog, EventQuery, HostStore, LeaseFilter, LeaseState, LeaseStore, NewEvent,
    StoreError,
};
use contract::{add, committed, host, ip, lease, mac, now, secs};
use serde_json::json;
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tempfile::TempDir;

/// A fresh store in its own temp dir (the guard: dropping it removes the files).
async fn fresh_sqlite() -> (SqliteStore, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&db_path(&dir))
        .await
        .expect("open sqlite store");
    (store, dir)
}

fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("bootgate.db")
}

store_contract_tests!(sqlite, fresh_sqlite());

/// A plain read-write connection to the same file, bypassing the store.
async fn raw(path: &Path) -> SqliteConnection {
    SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(path))
        .await
        .expect("raw connection")
}

#[tokio::test]
async fn sqlite_events_cannot_be_updated_or_deleted() {
    let (store, dir) = fresh_sqlite().await;
    let id = store
        .append(&NewEvent::new(EventKind::DaemonStarted, "daemon").detail(json!({ "pid": 1 })))
        .await
        .unwrap();
    let mut conn = raw(&db_path(&dir)).await;

    let update = sqlx::query("UPDATE events SET actor = 'mallory' WHERE id = ?")
        .bind(id)
        .execute(&mut conn)
        .await
        .expect_err("UPDATE must be refused");
    assert!(update.to_string().contains("append-only"), "{update}");
    let delete = sqlx::query("DELETE FROM events")
        .execute(&mut conn)
        .await
        .expect_err("DELETE must be refused");
    assert!(delete.to_string().contains("append-only"), "{delete}");
    conn.close().await.unwrap();

    let all = store.query(&EventQuery::default()).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].actor, "daemon");
}

#[tokio::test]
async fn sqlite_data_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let held = lease(ip(7), mac(7), LeaseState::Active, now() + secs(3600));
    {
        let store = SqliteStore::open(&path).await.unwrap();
        add(&store, &[host("gpu-a01", &[mac(1)], Some(ip(11)))]).await;
        store.commit_lease(&held, &committed(&held)).await.unwrap();
        store.close().await;
    }
    let store = SqliteStore::open(&path)
        .await
        .expect("reopen (migrations are idempotent)");
    assert_eq!(
        store.get_host("gpu-a01").await.unwrap().map(|h| h.macs),
        Some(vec![mac(1)])
    );
    assert_eq!(store.get_lease(ip(7)).await.unwrap(), Some(held.clone()));
    let evs = store.query(&EventQuery::default()).await.unwrap();
    assert_eq!(evs.len(), 2);
    // The reopened store still refuses another MAC on the held address.
    let steal = lease(ip(7), mac(8), LeaseState::Active, now() + secs(60));
    assert!(matches!(
        store.commit_lease(&steal, &committed(&steal)).await,
        Err(StoreError::Conflict { .. })
    ));
    store.close().await;
}

#[tokio::test]
async fn sqlite_commit_is_in_the_file_before_close() {
    // No close, no checkpoint: the state a `kill -9` leaves. Another connection finds the
    // committed row in the file and its WAL, not in some in-process buffer. (Power-loss
    // durability is `synchronous=FULL`, checked by a unit test in src/store/sqlite/writer.rs.)
    let (store, dir) = fresh_sqlite().await;
    let held = lease(ip(9), mac(9), LeaseState::Active, now() + secs(3600));
    store.commit_lease(&held, &committed(&held)).await.unwrap();
    let mut conn = raw(&db_path(&dir)).await;
    let mac_text: String = sqlx::query_scalar("SELECT mac FROM leases WHERE ip = '10.0.0.9'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mac_text, "52:54:00:00:00:09");
    conn.close().await.unwrap();
    drop(store);
}

#[tokio::test]
async fn sqlite_open_creates_missing_parent_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("var/lib/bootgate/bootgate.db");
    let store = SqliteStore::open(&path).await.unwrap();
    assert!(path.exists());
    store.close().await;
}

#[tokio::test]
async fn sqlite_open_read_only_missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nowhere.db");
    let err = SqliteStore::open_read_only(&path)
        .await
        .expect_err("missing file");
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(!path.exists(), "read-only open must not create the file");
}

#[tokio::test]
async fn sqlite_open_read_only_reads_a_live_store_and_refuses_writes() {
    let (store, dir) = fresh_sqlite().await;
    add(&store, &[host("gpu-a01", &[mac(1)], None)]).await;
    let ro = SqliteStore::open_read_only(&db_path(&dir)).await.unwrap();
    assert!(ro.get_host("gpu-a01").await.unwrap().is_some());

    // A write by the daemon after the CLI opened is visible to it.
    let held = lease(ip(3), mac(1), LeaseState::Active, now() + secs(60));
    store.commit_lease(&held, &committed(&held)).await.unwrap();
    assert_eq!(
        ro.list_leases(&LeaseFilter::default()).await.unwrap(),
        vec![held]
    );

    assert!(
        ro.append(&NewEvent::new(EventKind::DaemonStopped, "cli"))
            .await
            .is_err()
    );
    ro.close().await;
    store.close().await;

    // Also after the daemon closed the store cleanly (no WAL or shm files left).
    let ro = SqliteStore::open_read_only(&db_path(&dir)).await.unwrap();
    assert_eq!(ro.list_hosts().await.unwrap().len(), 1);
    ro.close().await;
}

#[tokio::test]
async fn sqlite_unparsable_stored_value_is_corrupt() {
    let (store, dir) = fresh_sqlite().await;
    let mut conn = raw(&db_path(&dir)).await;
    sqlx::query(
        "INSERT INTO leases (ip, mac, state, starts, ends, subnet) \
         VALUES ('10.0.0.5', 'not-a-mac', 'active', 0, 1, 'prov')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let err = store.get_lease(ip(5)).await.expect_err("corrupt MAC");
    match err {
        StoreError::Corrupt { column, value } => {
            assert_eq!(column, "mac");
            assert_eq!(value, "not-a-mac");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}
