//! The store contract battery (tests/support/store_contract.rs) on PostgreSQL, plus what
//! only this backend must answer: the server-side append-only rule, the schema's CHECKs,
//! data surviving a pool close, two pools (two daemons) writing at once, and a server
//! restart under an open store. PostgreSQL is Debian's package, started by the tests
//! (tests/support/postgres.rs): one shared cluster, one database per test.

#[path = "support/store_contract.rs"]
#[macro_use]
mod contract;
#[path = "support/postgres.rs"]
mod pg;
mod support;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bootgate::store::postgres::{PgOptions, PostgresStore};
use bootgate::store::{
    EventKind, EventLog, EventQuery, HostSource, HostStore, LeaseFilter, LeaseState, LeaseStore,
    NewEvent, StoreError, StoreUrl,
};
use bootgate::types::{HostState, Role};
use contract::{add, committed, host, ip, lease, mac, now, secs};
use pg::PgCluster;
use serde_json::json;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// A throwaway database on the shared cluster; the guard a contract factory returns.
struct PgDb {
    url: String,
}

impl contract::Reopen for PgDb {
    type Store = PostgresStore;
    async fn reopen(&self) -> PostgresStore {
        open(&self.url).await
    }
}

async fn open(url: &str) -> PostgresStore {
    PostgresStore::open(url, &PgOptions::default())
        .await
        .expect("open postgres store")
}

async fn fresh_pg() -> (PostgresStore, PgDb) {
    let url = PgCluster::shared().fresh_db().await;
    (open(&url).await, PgDb { url })
}

/// Returns from the test unless PostgreSQL's server binaries are installed (under CI:
/// fails instead).
macro_rules! require_pg {
    () => {
        $crate::support::require_peer!(
            "PostgreSQL server binaries (/usr/lib/postgresql/*/bin)",
            $crate::pg::INSTALL,
            $crate::pg::pg_bin_dir().is_some()
        )
    };
}

store_contract_tests!(postgres, fresh_pg(), {
    require_pg!();
});

/// A plain connection to the same database, bypassing the store.
async fn raw(url: &str) -> PgConnection {
    PgConnection::connect(url).await.expect("raw connection")
}

#[tokio::test]
async fn pg_events_cannot_be_updated_deleted_or_truncated() {
    require_pg!();
    let (store, db) = fresh_pg().await;
    let id = store
        .append(&NewEvent::new(EventKind::DaemonStarted, "daemon").detail(json!({ "pid": 1 })))
        .await
        .unwrap();
    let mut conn = raw(&db.url).await;
    for sql in [
        "UPDATE events SET actor = 'mallory'",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let err = sqlx::query(sql)
            .execute(&mut conn)
            .await
            .expect_err("the event log must refuse it");
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    conn.close().await.unwrap();
    let all = store.query(&EventQuery::default()).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!((all[0].id, all[0].actor.as_str()), (id, "daemon"));
}

/// The CHECK lists in the migration must name exactly the Rust enums' values.
#[tokio::test]
async fn pg_check_constraints_match_the_enums() {
    require_pg!();
    let (_store, db) = fresh_pg().await;
    let mut c = raw(&db.url).await;
    async fn insert_host(
        c: &mut PgConnection,
        name: String,
        state: &str,
        source: &str,
        role: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO hosts (name, state, source, role, spec, created, updated) \
             VALUES ($1, $2, $3, $4, 'null', 0, 0)",
        )
        .bind(name)
        .bind(state)
        .bind(source)
        .bind(role)
        .execute(c)
        .await
        .map(|_| ())
    }
    for s in HostState::ALL {
        insert_host(&mut c, format!("s-{s}"), s.as_str(), "inventory", None)
            .await
            .unwrap();
    }
    for s in HostSource::ALL {
        insert_host(&mut c, format!("src-{s}"), "registered", s.as_str(), None)
            .await
            .unwrap();
    }
    for r in Role::ALL {
        insert_host(
            &mut c,
            format!("r-{r}"),
            "registered",
            "inventory",
            Some(r.as_str()),
        )
        .await
        .unwrap();
    }
    assert!(
        insert_host(&mut c, "x1".into(), "bogus", "inventory", None)
            .await
            .is_err()
    );
    assert!(
        insert_host(&mut c, "x2".into(), "ready", "bogus", None)
            .await
            .is_err()
    );
    assert!(
        insert_host(&mut c, "x3".into(), "ready", "inventory", Some("bogus"))
            .await
            .is_err()
    );
    for (n, s) in LeaseState::ALL.iter().enumerate() {
        sqlx::query(
            "INSERT INTO leases (ip, mac, state, starts, ends, subnet) \
             VALUES ($1, '52:54:00:00:00:01', $2, 0, 0, 'prov')",
        )
        .bind(format!("10.0.0.{n}"))
        .bind(s.as_str())
        .execute(&mut c)
        .await
        .unwrap();
    }
    assert!(
        sqlx::query(
            "INSERT INTO leases (ip, mac, state, starts, ends, subnet) \
             VALUES ('10.0.1.1', '52:54:00:00:00:01', 'bogus', 0, 0, 'prov')"
        )
        .execute(&mut c)
        .await
        .is_err()
    );
    for k in EventKind::ALL {
        sqlx::query(
            "INSERT INTO events (time, kind, actor, detail) VALUES (0, $1, 'test', 'null')",
        )
        .bind(k.as_str())
        .execute(&mut c)
        .await
        .unwrap();
    }
    assert!(
        sqlx::query(
            "INSERT INTO events (time, kind, actor, detail) \
             VALUES (0, 'Not A Kind', 'test', 'null')"
        )
        .execute(&mut c)
        .await
        .is_err()
    );
    c.close().await.unwrap();
}

#[tokio::test]
async fn pg_unparsable_stored_value_is_corrupt() {
    require_pg!();
    let (store, db) = fresh_pg().await;
    let mut conn = raw(&db.url).await;
    sqlx::query(
        "INSERT INTO leases (ip, mac, state, starts, ends, subnet) \
         VALUES ('10.0.0.5', 'not-a-mac', 'active', 0, 1, 'prov')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    match store.get_lease(ip(5)).await.expect_err("corrupt MAC") {
        StoreError::Corrupt { column, value } => {
            assert_eq!((column, value.as_str()), ("mac", "not-a-mac"));
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn pg_data_survives_close_and_reopen() {
    require_pg!();
    let url = PgCluster::shared().fresh_db().await;
    let held = lease(ip(7), mac(7), LeaseState::Active, now() + secs(3600));
    {
        let store = open(&url).await;
        add(&store, &[host("gpu-a01", &[mac(1)], Some(ip(11)))]).await;
        store.commit_lease(&held, &committed(&held)).await.unwrap();
        store.close().await;
    }
    let store = open(&url).await; // migrations are idempotent
    assert_eq!(
        store.get_host("gpu-a01").await.unwrap().map(|h| h.macs),
        Some(vec![mac(1)])
    );
    assert_eq!(store.get_lease(ip(7)).await.unwrap(), Some(held));
    assert_eq!(store.query(&EventQuery::default()).await.unwrap().len(), 2);
    let steal = lease(ip(7), mac(8), LeaseState::Active, now() + secs(60));
    assert!(matches!(
        store.commit_lease(&steal, &committed(&steal)).await,
        Err(StoreError::Conflict { .. })
    ));
    store.close().await;
}

/// `store::open` dispatches a `postgres://` URL to this backend, and two daemons starting
/// at once on an empty database both migrate without tripping over each other.
#[tokio::test]
async fn pg_open_from_url_and_concurrent_first_start() {
    require_pg!();
    let url = PgCluster::shared().fresh_db().await;
    let parsed: StoreUrl = url.parse().unwrap();
    let (a, b) = tokio::join!(
        bootgate::store::open(&parsed),
        bootgate::store::open(&parsed)
    );
    let (a, b) = (a.expect("first daemon"), b.expect("second daemon"));
    add(&*a, &[host("gpu-a01", &[mac(1)], None)]).await;
    assert!(b.get_host("gpu-a01").await.unwrap().is_some());
}

/// Opening an unreachable server fails within the acquire timeout, with an error naming
/// host and port but never the password; so does a wrong password.
#[tokio::test]
async fn pg_open_errors_are_bounded_and_hide_the_password() {
    require_pg!();
    let cluster = PgCluster::shared();
    let opts = PgOptions {
        acquire_timeout: Duration::from_secs(1),
        ..PgOptions::default()
    };
    // A port nobody listens on (bound and released).
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://bootgate:s3cr3t-pw@127.0.0.1:{dead_port}/x");
    let t = Instant::now();
    let err = PostgresStore::open(&url, &opts)
        .await
        .expect_err("nobody listens");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(msg.contains(&format!("127.0.0.1:{dead_port}")), "{msg}");
    assert!(
        !msg.contains("s3cr3t-pw") && !format!("{err:?}").contains("s3cr3t-pw"),
        "{msg}"
    );

    let wrong = cluster
        .url("postgres")
        .replace(cluster.password(), "wrong-pw-123");
    let err = PostgresStore::open(&wrong, &opts)
        .await
        .expect_err("bad password");
    let msg = format!("{err} {err:?}");
    assert!(msg.contains("password authentication failed"), "{msg}");
    assert!(!msg.contains("wrong-pw-123"), "{msg}");
}

/// Two pools commit overlapping batches in opposite address orders, many times: the
/// batches lock rows in crossing orders, so PostgreSQL may abort one to break a deadlock;
/// the store replays it. No batch fails as a whole, every address goes to one MAC, and the
/// results each handle got agree with the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_crossing_group_commits_from_two_pools() {
    require_pg!();
    let (a, db) = fresh_pg().await;
    let b = open(&db.url).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let ends = now() + secs(3600);
    for round in 0..10_u8 {
        let addrs: Vec<Ipv4Addr> = (1..=40).map(|n| Ipv4Addr::new(10, 2, round, n)).collect();
        let batch = |m: u16, rev: bool| {
            let mut v: Vec<_> = addrs
                .iter()
                .map(|&i| {
                    let l = lease(i, mac(m), LeaseState::Active, ends);
                    let e = committed(&l);
                    (l, e)
                })
                .collect();
            if rev {
                v.reverse();
            }
            v
        };
        let (ba, bb) = (batch(1, false), batch(2, true));
        let (sa, sb) = (a.clone(), b.clone());
        let ja = tokio::spawn(async move { (sa.commit_leases(&ba).await, ba) });
        let jb = tokio::spawn(async move { (sb.commit_leases(&bb).await, bb) });
        let (ra, ba) = ja.await.unwrap();
        let (rb, bb) = jb.await.unwrap();
        let (ra, rb) = (ra.expect("batch a"), rb.expect("batch b"));
        let mut won = BTreeSet::new();
        for (results, batch) in [(&ra, &ba), (&rb, &bb)] {
            for (r, (l, _)) in results.iter().zip(batch) {
                match r {
                    Ok(()) => assert!(won.insert(l.ip), "{} won twice", l.ip),
                    Err(StoreError::Conflict { .. }) => {}
                    Err(e) => panic!("{}: {e}", l.ip),
                }
                let stored = a.get_lease(l.ip).await.unwrap().expect("stored");
                assert_eq!(stored.mac == l.mac, r.is_ok(), "{}", l.ip);
            }
        }
        assert_eq!(
            won.len(),
            addrs.len(),
            "round {round}: every address won once"
        );
    }
}

/// Two daemons sweeping expiry at once: each lapsed lease is expired and logged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_concurrent_expiry_logs_each_lease_once() {
    require_pg!();
    let (a, db) = fresh_pg().await;
    let b = open(&db.url).await;
    let past = now() - secs(10);
    let batch: Vec<_> = (0..200_u16)
        .map(|n| {
            let l = lease(
                Ipv4Addr::new(10, 3, (n / 200) as u8, (n % 200) as u8 + 1),
                mac(n),
                LeaseState::Active,
                past,
            );
            let e = committed(&l);
            (l, e)
        })
        .collect();
    assert!(
        a.commit_leases(&batch)
            .await
            .unwrap()
            .iter()
            .all(|r| r.is_ok())
    );
    let t = now();
    let (ea, eb) = tokio::join!(a.expire_leases(t), b.expire_leases(t));
    let (ea, eb) = (ea.unwrap(), eb.unwrap());
    assert_eq!(ea.len() + eb.len(), 200);
    let logged = a
        .query(&EventQuery {
            kind: Some(EventKind::LeaseExpired),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(logged.len(), 200);
    assert_eq!(
        logged.iter().map(|e| e.ip).collect::<BTreeSet<_>>().len(),
        200
    );
}

/// PostgreSQL stops under an open store: calls fail with `Unavailable` within the acquire
/// timeout (no hang, no password in the message); once the server is back the same store
/// works again, without reopening, and what was committed before is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_store_reconnects_after_server_restart() {
    require_pg!();
    let cluster = Arc::new(tokio::task::spawn_blocking(PgCluster::start).await.unwrap());
    let url = cluster.fresh_db().await;
    let acquire = Duration::from_secs(2);
    let store = PostgresStore::open(
        &url,
        &PgOptions {
            acquire_timeout: acquire,
            max_connections: 4,
            ..PgOptions::default()
        },
    )
    .await
    .unwrap();
    let before = lease(ip(1), mac(1), LeaseState::Active, now() + secs(3600));
    store
        .commit_lease(&before, &committed(&before))
        .await
        .unwrap();
    // The pool now holds an idle connection the restart will kill: the first call after
    // the restart must replace it, not fail on it.
    assert_eq!(store.get_lease(ip(1)).await.unwrap(), Some(before.clone()));

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop()).await.unwrap();

    let during = lease(ip(2), mac(2), LeaseState::Active, now() + secs(3600));
    for attempt in 0..3 {
        let t = Instant::now();
        let err = store
            .commit_lease(&during, &committed(&during))
            .await
            .expect_err("server is down");
        let took = t.elapsed();
        assert!(
            took < acquire + Duration::from_secs(3),
            "attempt {attempt} took {took:?}"
        );
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(!msg.contains(cluster.password()), "{msg}");
        assert!(
            msg.contains(&format!("127.0.0.1:{}", cluster.port())),
            "{msg}"
        );
        let read = store.get_lease(ip(1)).await.expect_err("reads fail too");
        assert!(matches!(read, StoreError::Unavailable { .. }), "{read:?}");
    }

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start_again())
        .await
        .unwrap();

    // The same store, not reopened: dead pooled connections are replaced on acquire.
    store
        .commit_lease(&during, &committed(&during))
        .await
        .expect("commit after the server came back");
    assert_eq!(store.get_lease(ip(1)).await.unwrap(), Some(before));
    assert_eq!(store.get_lease(ip(2)).await.unwrap(), Some(during));
    assert_eq!(
        store
            .list_leases(&LeaseFilter::default())
            .await
            .unwrap()
            .len(),
        2
    );
    store.close().await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || drop(c)).await.unwrap();
}

/// PostgreSQL stops answering on open connections (every server process SIGSTOPped: a
/// partition or a hung host, where TCP stays up): calls fail with `Unavailable` within the
/// call timeout instead of hanging, and work again once the server answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_store_calls_are_bounded_when_the_server_hangs() {
    require_pg!();
    let cluster = Arc::new(tokio::task::spawn_blocking(PgCluster::start).await.unwrap());
    let url = cluster.fresh_db().await;
    let call_timeout = Duration::from_secs(2);
    let store = PostgresStore::open(
        &url,
        &PgOptions {
            acquire_timeout: Duration::from_secs(1),
            call_timeout,
            max_connections: 2,
            ..PgOptions::default()
        },
    )
    .await
    .unwrap();
    let before = lease(ip(1), mac(1), LeaseState::Active, now() + secs(3600));
    store
        .commit_lease(&before, &committed(&before))
        .await
        .unwrap();

    cluster.freeze();
    let during = lease(ip(2), mac(2), LeaseState::Active, now() + secs(3600));
    let t = Instant::now();
    let err = store
        .commit_lease(&during, &committed(&during))
        .await
        .expect_err("server hangs");
    let took = t.elapsed();
    let read = store.get_lease(ip(1)).await.expect_err("reads fail too");
    cluster.thaw();
    assert!(
        took < call_timeout + Duration::from_secs(2),
        "took {took:?}"
    );
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(matches!(read, StoreError::Unavailable { .. }), "{read:?}");
    assert!(!err.to_string().contains(cluster.password()), "{err}");

    // The lease cut off mid-call may or may not have landed; either way the store works
    // again and stays consistent: the same MAC can commit it (a retry by the daemon).
    let t = Instant::now();
    loop {
        match store.commit_lease(&during, &committed(&during)).await {
            Ok(()) => break,
            Err(e) => assert!(
                t.elapsed() < Duration::from_secs(10),
                "store did not recover after thaw: {e}"
            ),
        }
    }
    assert_eq!(store.get_lease(ip(1)).await.unwrap(), Some(before));
    assert_eq!(store.get_lease(ip(2)).await.unwrap(), Some(during));
    store.close().await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || drop(c)).await.unwrap();
}

/// The server is SIGKILLed right after commits returned Ok (single and group commits):
/// after crash recovery every one of them is there. (`synchronous_commit=on`: an ACKed
/// lease is in the server's WAL on disk before the commit returns.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_committed_leases_survive_a_server_crash() {
    require_pg!();
    let cluster = Arc::new(tokio::task::spawn_blocking(PgCluster::start).await.unwrap());
    let url = cluster.fresh_db().await;
    let store = open(&url).await;
    let ends = now() + secs(3600);
    let singles: Vec<_> = (1..=50_u8)
        .map(|n| lease(ip(n), mac(u16::from(n)), LeaseState::Active, ends))
        .collect();
    for l in &singles {
        store.commit_lease(l, &committed(l)).await.unwrap();
    }
    let batch: Vec<_> = (51..=150_u8)
        .map(|n| {
            let l = lease(ip(n), mac(u16::from(n)), LeaseState::Active, ends);
            let e = committed(&l);
            (l, e)
        })
        .collect();
    assert!(
        store
            .commit_leases(&batch)
            .await
            .unwrap()
            .iter()
            .all(|r| r.is_ok())
    );

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || {
        c.crash();
        c.start_again();
    })
    .await
    .unwrap();

    let t = Instant::now();
    let leases = loop {
        match store.list_leases(&LeaseFilter::default()).await {
            Ok(l) => break l,
            Err(e) => assert!(t.elapsed() < Duration::from_secs(10), "{e}"),
        }
    };
    let want: Vec<_> = singles
        .iter()
        .cloned()
        .chain(batch.into_iter().map(|(l, _)| l))
        .collect();
    assert_eq!(leases, want, "every committed lease survived the crash");
    assert_eq!(
        store.query(&EventQuery::default()).await.unwrap().len(),
        150
    );
    store.close().await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || drop(c)).await.unwrap();
}

// ---- TLS and the password from the secrets file (issue 15, item 6) ---------------------

/// A CA (`<name>-ca.crt`) and a server certificate it signed for 127.0.0.1 and localhost
/// (`<name>-server.crt`/`.key`), made with the openssl CLI (EC P-256).
fn make_pki(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let s = |p: std::path::PathBuf| p.to_str().unwrap().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509", "-days", "2", "-subj"];
    let subj = format!("/CN=bootgate test CA {name}");
    args.push(subj.as_str());
    args.extend(ec);
    let (ca_key, ca_crt) = (s(p("ca.key")), s(p("ca.crt")));
    args.extend(["-keyout", ca_key.as_str(), "-out", ca_crt.as_str()]);
    openssl(&args);
    let (key, csr, crt, ext) = (
        s(p("server.key")),
        s(p("server.csr")),
        s(p("server.crt")),
        s(p("ext.cnf")),
    );
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    let mut args = vec![
        "req",
        "-subj",
        "/CN=localhost",
        "-keyout",
        key.as_str(),
        "-out",
        csr.as_str(),
    ];
    args.extend(ec);
    openssl(&args);
    openssl(&[
        "x509",
        "-req",
        "-in",
        csr.as_str(),
        "-CA",
        ca_crt.as_str(),
        "-CAkey",
        ca_key.as_str(),
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        crt.as_str(),
        "-extfile",
        ext.as_str(),
    ]);
    (p("ca.crt"), p("server.crt"), p("server.key"))
}

/// A server with `ssl = on`, a certificate from a local CA and `hostssl` logins only:
/// `sslmode=verify-full` with that CA connects (and the store works over it), a plain
/// connection is refused by the server, the wrong CA fails with an error that says TLS and
/// certificate, and the password comes from the secrets file's `[postgres]` (the URL has
/// none; without the secret the login fails). The CLI opens the same store the same way,
/// and check-config warns about a password written inline in the URL.
#[tokio::test]
async fn pg_tls_verify_full_with_the_password_from_the_secrets_file() {
    require_pg!();
    support::require_peer!("openssl", "apt-get install -y openssl");
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_pki(pki.path(), "right");
    let (wrong_ca, _, _) = make_pki(pki.path(), "wrong");
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    cluster.enable_tls(&cert, &key);
    let with_password = cluster.fresh_db().await;
    let db = with_password.rsplit('/').next().unwrap().to_string();
    let base = cluster.url_without_password(&db);

    let secrets_file = pki.path().join("secrets.toml");
    std::fs::write(
        &secrets_file,
        format!("[postgres]\npassword = \"{}\"\n", cluster.password()),
    )
    .unwrap();
    std::fs::set_permissions(
        &secrets_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let secrets = bootgate::secrets::Secrets::load(&secrets_file).unwrap();
    let opts = PgOptions {
        password: secrets.postgres_password().cloned(),
        acquire_timeout: Duration::from_secs(5),
        ..PgOptions::default()
    };

    // verify-full with the right CA: connects, and the store works over it.
    let url = format!("{base}?sslmode=verify-full&sslrootcert={}", ca.display());
    let store = PostgresStore::open(&url, &opts)
        .await
        .unwrap_or_else(|e| panic!("verify-full with the right CA: {e}\n{}", cluster.log_tail()));
    add(&store, &[host("tls0", &[mac(91)], None)]).await;
    assert_eq!(store.list_hosts().await.unwrap().len(), 1);
    drop(store);
    // verify-ca and require also connect (require: encrypted, not verified).
    for mode in ["verify-ca", "require"] {
        let u = format!("{base}?sslmode={mode}&sslrootcert={}", ca.display());
        PostgresStore::open(&u, &opts)
            .await
            .unwrap_or_else(|e| panic!("sslmode={mode}: {e}"));
    }

    // The server takes TLS logins only: a plain connection finds no pg_hba entry.
    let e = PostgresStore::open(&format!("{base}?sslmode=disable"), &opts)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no encryption") || e.contains("pg_hba"), "{e}");

    // The wrong CA: refused, saying so, naming the URL without any password.
    let wrong = format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        wrong_ca.display()
    );
    let e = PostgresStore::open(&wrong, &opts)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("TLS with the server failed: invalid peer certificate")
            && e.contains("sslrootcert must be the CA")
            && e.contains("wrong-ca.crt"),
        "{e}"
    );
    assert!(e.contains(&format!("127.0.0.1:{}", cluster.port())), "{e}");
    assert!(!e.contains(cluster.password()), "{e}");

    // The URL carries no password: without the secret the login fails.
    let bare = PgOptions {
        password: None,
        ..opts.clone()
    };
    let e = PostgresStore::open(&url, &bare)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("password"), "{e}");

    // The CLI reads the same config: store URL without a password, secrets file with it.
    let site = support::Site::from_inventory("lab");
    let cfg = std::fs::read_to_string(site.config()).unwrap();
    std::fs::write(
        site.config(),
        format!(
            "store = \"{url}\"\nsecrets = \"{}\"\n{cfg}",
            secrets_file.display()
        ),
    )
    .unwrap();
    let hosts = tokio::task::spawn_blocking(move || {
        let v = site.cli_json(&["hosts", "list"]);
        let check = support::bootgate(&[
            "--config",
            support::path_str(&site.config()),
            "check-config",
        ]);
        (v, check, site)
    })
    .await
    .unwrap();
    let (v, check, site) = hosts;
    assert!(
        v.as_array().unwrap().iter().any(|h| h["name"] == "tls0"),
        "the CLI read the store over TLS with the secret password: {v}"
    );
    assert!(check.status.success(), "{}", support::stderr(&check));
    assert!(
        !support::stderr(&check).contains("carries a password"),
        "{}",
        support::stderr(&check)
    );

    // An inline password still works but check-config warns about it.
    let cfg = std::fs::read_to_string(site.config()).unwrap();
    std::fs::write(
        site.config(),
        cfg.replace(
            &url,
            &format!(
                "{with_password}?sslmode=verify-full&sslrootcert={}",
                ca.display()
            ),
        ),
    )
    .unwrap();
    let check = support::bootgate(&[
        "--config",
        support::path_str(&site.config()),
        "check-config",
    ]);
    assert!(check.status.success(), "{}", support::stderr(&check));
    let err = support::stderr(&check);
    assert!(
        err.contains("warning:")
            && err.contains("carries a password")
            && err.contains("[postgres]"),
        "{err}"
    );
    assert!(!err.contains(cluster.password()), "{err}");
}
