//! `bootgate audit` end to end: a copy of the lab site whose store is seeded through the
//! library's LeaseStore API (the real SQLite store the daemon writes), then the real binary
//! reads it. No network: the audit reads only the inventory and the store.

mod support;
#[path = "support/sushy.rs"]
#[allow(dead_code)]
mod sushy;

use std::net::Ipv4Addr;

use bootgate::store::{
    EventKind, EventLog, Lease, LeaseState, LeaseStore, NewEvent, RelayInfo, sqlite::SqliteStore,
};
use bootgate::types::MacAddr;
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use support::*;

const VM0: &str = "52:54:00:d7:8e:1d";
const VM1: &str = "52:54:00:a8:28:2f";
const VM2: &str = "52:54:00:e0:a7:44";
const VM3: &str = "52:54:00:12:72:62";
const STRANGER: &str = "aa:bb:cc:00:00:01";
const OTHER: &str = "aa:bb:cc:00:00:02";

fn ago(hours: i64) -> Timestamp {
    Timestamp::now() - SignedDuration::from_hours(hours)
}

/// One lease-store write the way the DHCP server makes it: the lease plus its event.
struct Put<'a> {
    ip: &'a str,
    mac: &'a str,
    host: Option<&'a str>,
    state: LeaseState,
    /// Hours ago the lease started; it ends `hours` later (negative: in the past).
    start_h: i64,
    len_h: i64,
    kind: EventKind,
}

async fn put(store: &SqliteStore, p: Put<'_>) {
    let ip: Ipv4Addr = p.ip.parse().unwrap();
    let mac: MacAddr = p.mac.parse().unwrap();
    let starts = ago(p.start_h);
    let ends = starts + SignedDuration::from_hours(p.len_h);
    let lease = Lease {
        ip,
        mac,
        client_id: None,
        state: p.state,
        starts,
        ends,
        host: p.host.map(String::from),
        subnet: "provisioning".into(),
        relay: RelayInfo {
            giaddr: Some("10.250.0.2".parse().unwrap()),
            circuit_id: Some("Ethernet1/7".into()),
            remote_id: None,
        },
    };
    let mut ev = NewEvent::new(p.kind, "dhcp")
        .ip(ip)
        .mac(mac)
        .detail(serde_json::json!({
            "subnet": "provisioning", "ends": ends,
            "giaddr": "10.250.0.2", "circuit_id": "Ethernet1/7",
        }));
    ev.time = Some(
        if matches!(p.kind, EventKind::LeaseCommitted | EventKind::LeaseDeclined) {
            starts
        } else {
            ends
        },
    );
    if let Some(h) = p.host {
        ev = ev.host(h);
    }
    store.commit_lease(&lease, &ev).await.expect("commit_lease");
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn open(site: &Site) -> SqliteStore {
    std::fs::create_dir_all(site.state_dir()).unwrap();
    rt().block_on(SqliteStore::open(&site.state_dir().join("bootgate.db")))
        .expect("open store")
}

fn audit(site: &Site, args: &[&str]) -> (i32, String, String) {
    let config = site.config();
    let mut all = vec!["--config", path_str(&config), "audit"];
    all.extend_from_slice(args);
    let out = bootgate(&all);
    (out.status.code().unwrap_or(-1), stdout(&out), stderr(&out))
}

fn healthy(site: &Site, store: &SqliteStore) {
    let _ = site;
    rt().block_on(async {
        for (ip, mac, host) in [
            ("10.250.0.10", VM0, "vm0"),
            ("10.250.0.11", VM1, "vm1"),
            ("10.250.0.12", VM2, "vm2"),
            ("10.250.0.13", VM3, "vm3"),
        ] {
            put(
                store,
                Put {
                    ip,
                    mac,
                    host: Some(host),
                    state: LeaseState::Active,
                    start_h: 1,
                    len_h: 12,
                    kind: EventKind::LeaseCommitted,
                },
            )
            .await;
        }
    });
}

#[test]
fn clean_site_exits_zero() {
    let site = Site::from_inventory("lab");
    let store = open(&site);
    healthy(&site, &store);
    drop(store);
    let (code, out, err) = audit(&site, &["-o", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["findings"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["worst"], Value::Null);
    let s = &v["subnets"][0];
    assert_eq!(s["name"], "provisioning");
    assert_eq!(s["size"], 254);
    assert_eq!(s["reserved"], 4);
    assert_eq!(s["leased"], 4);
    assert_eq!(s["free"], 250);
    // The table says so too, and --subnet by CIDR selects it.
    let (code, out, _) = audit(&site, &["--subnet", "10.250.0.0/24"]);
    assert_eq!(code, 0);
    assert!(out.contains("no findings"), "{out}");
    let (code, _, err) = audit(&site, &["--subnet", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn fixture_site_names_every_finding() {
    let site = Site::from_inventory("lab");
    let subnets = site.inventory_file("subnets.toml");
    let text = std::fs::read_to_string(&subnets).unwrap();
    assert!(text.contains("known_hosts_only = false"));
    std::fs::write(
        &subnets,
        text.replace("known_hosts_only = false", "known_hosts_only = true"),
    )
    .unwrap();
    let store = open(&site);
    rt().block_on(async {
        // A stranger on vm0's reserved address (vm0 has no lease of its own now).
        put(
            &store,
            Put {
                ip: "10.250.0.10",
                mac: STRANGER,
                host: None,
                state: LeaseState::Active,
                start_h: 1,
                len_h: 12,
                kind: EventKind::LeaseCommitted,
            },
        )
        .await;
        // vm1 still on a pool address its old reservation pointed to.
        put(
            &store,
            Put {
                ip: "10.250.0.150",
                mac: VM1,
                host: Some("vm1"),
                state: LeaseState::Active,
                start_h: 2,
                len_h: 12,
                kind: EventKind::LeaseCommitted,
            },
        )
        .await;
        // Another stranger in the pool of a known-hosts-only subnet.
        put(
            &store,
            Put {
                ip: "10.250.0.151",
                mac: OTHER,
                host: None,
                state: LeaseState::Active,
                start_h: 1,
                len_h: 12,
                kind: EventKind::LeaseCommitted,
            },
        )
        .await;
        // vm2: last lease 60 days ago, long expired.
        put(
            &store,
            Put {
                ip: "10.250.0.12",
                mac: VM2,
                host: Some("vm2"),
                state: LeaseState::Active,
                start_h: 60 * 24,
                len_h: 12,
                kind: EventKind::LeaseCommitted,
            },
        )
        .await;
        put(
            &store,
            Put {
                ip: "10.250.0.12",
                mac: VM2,
                host: Some("vm2"),
                state: LeaseState::Expired,
                start_h: 60 * 24,
                len_h: 12,
                kind: EventKind::LeaseExpired,
            },
        )
        .await;
        // A declined address in quarantine.
        put(
            &store,
            Put {
                ip: "10.250.0.160",
                mac: OTHER,
                host: None,
                state: LeaseState::Declined,
                start_h: 1,
                len_h: 24,
                kind: EventKind::LeaseDeclined,
            },
        )
        .await;
        // vm3: never seen (nor vm0, whose address the stranger holds).
    });
    drop(store);

    let (code, out, err) = audit(&site, &["-o", "json"]);
    assert_eq!(code, 1, "warnings fail the run: {out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let codes: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        vec![
            "address-two-macs",
            "unknown-mac-on-known-only-subnet",
            "unknown-mac-on-known-only-subnet",
            "reservation-moved",
            "host-not-seen-recently",
            "host-never-seen",
            "host-never-seen",
        ],
        "{v:#}"
    );
    let find = |code: &str| {
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["code"] == code)
            .unwrap()
            .clone()
    };
    let two = find("address-two-macs");
    assert_eq!(two["severity"], "critical");
    assert_eq!(two["addresses"], serde_json::json!(["10.250.0.10"]));
    assert_eq!(two["macs"], serde_json::json!([STRANGER, VM0]));
    assert_eq!(two["hosts"], serde_json::json!(["vm0"]));
    assert!(
        two["action"]
            .as_str()
            .unwrap()
            .contains("leases release 10.250.0.10")
    );
    let moved = find("reservation-moved");
    assert_eq!(moved["hosts"], serde_json::json!(["vm1"]));
    assert_eq!(
        moved["addresses"],
        serde_json::json!(["10.250.0.150", "10.250.0.11"])
    );
    assert_eq!(
        find("host-not-seen-recently")["hosts"],
        serde_json::json!(["vm2"])
    );
    // vm0 lost its address to the stranger before it ever booted; vm3 never booted.
    let never: Vec<&Value> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["code"] == "host-never-seen")
        .map(|f| &f["hosts"][0])
        .collect();
    assert_eq!(never, vec!["vm0", "vm3"]);
    assert_eq!(find("host-never-seen")["severity"], "info");
    assert_eq!(v["worst"], "critical");
    let s = &v["subnets"][0];
    assert_eq!(s["known_hosts_only"], true);
    assert_eq!(
        (
            s["leased"].as_u64(),
            s["quarantined"].as_u64(),
            s["conflicts"].as_u64()
        ),
        (Some(3), Some(1), Some(1))
    );
    // reserved .10-.13 plus held .150 .151 .160
    assert_eq!(s["free"], 254 - 7);

    // A longer window forgives vm2.
    let (_, out, _) = audit(&site, &["-o", "json", "--stale-days", "90"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(!out.contains("host-not-seen-recently"), "{v:#}");

    // CSV (-o csv, and the old --csv): one table, per-subnet counts then findings, every
    // row the same width; parsed with the csv crate as a spreadsheet would.
    for flags in [&["-o", "csv"][..], &["--csv"][..]] {
        let (code, out, _) = audit(&site, flags);
        assert_eq!(code, 1);
        let mut r = csv::Reader::from_reader(out.as_bytes());
        let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(header[0], "record");
        let col = |name: &str| header.iter().position(|h| h == name).unwrap();
        let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
        let subnets: Vec<&csv::StringRecord> = rows.iter().filter(|x| &x[0] == "subnet").collect();
        let findings: Vec<&csv::StringRecord> =
            rows.iter().filter(|x| &x[0] == "finding").collect();
        assert_eq!(subnets.len(), 1, "{out}");
        let sub = subnets[0];
        assert_eq!(&sub[col("subnet")], "provisioning");
        assert_eq!(&sub[col("cidr")], "10.250.0.0/24");
        assert_eq!(&sub[col("size")], "254");
        assert_eq!(&sub[col("free")], (254 - 7).to_string());
        assert_eq!(&sub[col("conflicts")], "1");
        assert_eq!(findings.len(), 7, "{out}");
        assert_eq!(&findings[0][col("severity")], "critical");
        assert_eq!(&findings[0][col("code")], "address-two-macs");
        assert_eq!(&findings[0][col("addresses")], "10.250.0.10");
    }

    // Table: the codes appear, worst first.
    let (_, out, _) = audit(&site, &[]);
    assert!(out.contains("CRITICAL address-two-macs"), "{out}");
    assert!(out.contains("7 finding(s)"), "{out}");
}

/// Duplicate reservations, reservations outside their subnet or inside a pool never reach a
/// loaded inventory: the loader refuses them (so the audit reports them only for inventories
/// built another way; see the unit tests in src/audit/tests.rs).
#[test]
fn reservation_errors_are_refused_before_the_audit() {
    let site = Site::from_inventory("lab");
    let hosts = site.inventory_file("hosts.toml");
    let text = std::fs::read_to_string(&hosts).unwrap();
    std::fs::write(
        &hosts,
        text.replace("10.250.0.11", "10.250.0.10")
            .replace("10.250.0.12", "10.250.0.120")
            .replace("10.250.0.13", "10.99.0.13"),
    )
    .unwrap();
    let (code, _, err) = audit(&site, &[]);
    assert_eq!(code, 1);
    for want in [
        "duplicate reserved address 10.250.0.10",
        "dynamic range",
        "10.99.0.13",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
}

#[test]
fn history_of_an_address_that_moved_between_two_macs() {
    let site = Site::from_inventory("lab");
    let store = open(&site);
    let ip = "10.250.0.120";
    rt().block_on(async {
        // STRANGER takes .120, renews it, releases it; then vm1 takes it and holds it.
        put(
            &store,
            Put {
                ip,
                mac: STRANGER,
                host: None,
                state: LeaseState::Active,
                start_h: 50,
                len_h: 12,
                kind: EventKind::LeaseCommitted,
            },
        )
        .await;
        put(
            &store,
            Put {
                ip,
                mac: STRANGER,
                host: None,
                state: LeaseState::Active,
                start_h: 45,
                len_h: 12,
                kind: EventKind::LeaseCommitted,
            },
        )
        .await;
        put(
            &store,
            Put {
                ip,
                mac: STRANGER,
                host: None,
                state: LeaseState::Released,
                start_h: 40,
                len_h: 0,
                kind: EventKind::LeaseReleased,
            },
        )
        .await;
        put(
            &store,
            Put {
                ip,
                mac: VM1,
                host: Some("vm1"),
                state: LeaseState::Active,
                start_h: 30,
                len_h: 48,
                kind: EventKind::LeaseCommitted,
            },
        )
        .await;
        // vm1's power action and state change (no IP on them): part of vm1's history.
        store
            .append(
                &NewEvent::new(EventKind::PowerAction, "cli")
                    .host("vm1")
                    .detail(serde_json::json!({"action": "pxe-once", "result": "ok"})),
            )
            .await
            .unwrap();
    });
    drop(store);

    let v = site.cli_json(&["audit", "ip", ip]);
    let holdings = v["holdings"].as_array().unwrap();
    assert_eq!(holdings.len(), 2, "{v:#}");
    assert_eq!(holdings[0]["mac"], STRANGER);
    assert_eq!(holdings[0]["renewals"], 1);
    assert_eq!(holdings[0]["ended_by"], "lease-released");
    assert_eq!(holdings[0]["circuit_id"], "Ethernet1/7");
    assert_eq!(holdings[0]["giaddr"], "10.250.0.2");
    assert_eq!(holdings[1]["mac"], VM1);
    assert_eq!(holdings[1]["host"], "vm1");
    assert_eq!(holdings[1]["until"], Value::Null);
    let from0: Timestamp = holdings[0]["from"].as_str().unwrap().parse().unwrap();
    let until0: Timestamp = holdings[0]["until"].as_str().unwrap().parse().unwrap();
    let from1: Timestamp = holdings[1]["from"].as_str().unwrap().parse().unwrap();
    assert!(from0 < until0 && until0 < from1);
    let kinds: Vec<&str> = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "lease-committed",
            "lease-committed",
            "lease-released",
            "lease-committed"
        ]
    );
    let times: Vec<Timestamp> = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["time"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    // By MAC: the stranger's one holding; by host: vm1's lease and its power action.
    let v = site.cli_json(&["audit", "mac", STRANGER]);
    assert_eq!(v["holdings"].as_array().unwrap().len(), 1, "{v:#}");
    let v = site.cli_json(&["audit", "host", "vm1"]);
    let kinds: Vec<&str> = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["lease-committed", "power-action"], "{v:#}");
    assert_eq!(v["holdings"][0]["ip"], ip);

    // The table names both holders.
    let (code, out, _) = audit(&site, &["ip", ip]);
    assert_eq!(code, 0);
    assert!(
        out.contains(STRANGER) && out.contains(VM1) && out.contains("lease-released"),
        "{out}"
    );
}

fn findings_with<'a>(v: &'a Value, code: &str) -> Vec<&'a Value> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["code"] == code)
        .collect()
}

/// `--scan` against the lab bridge: the rack namespace's eth0 answers ARP for .77 (given
/// to nobody) and for .10 (leased to vm0's MAC): one unassigned-address warning with
/// eth0's MAC, one two-MAC finding; vm1..vm3's leased addresses are silent (fine). At
/// 100 packets/s the 253 addresses of the /24 take at least 2.5 s.
#[test]
fn scan_finds_an_unassigned_address_and_a_second_mac() {
    require_root!();
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    let store = open(&site);
    healthy(&site, &store);
    drop(store);
    lab.rack
        .ip(&["addr", "add", "10.250.0.77/24", "dev", "eth0"]);
    lab.rack
        .ip(&["addr", "add", "10.250.0.10/24", "dev", "eth0"]);
    let link = lab.rack.ip(&["-j", "link", "show", "eth0"]);
    let link: Value = serde_json::from_str(&link).unwrap();
    let eth0_mac = link[0]["address"].as_str().unwrap().to_string();

    let start = std::time::Instant::now();
    let out = lab
        .gw
        .cmd(bootgate_bin())
        .args([
            "--config",
            path_str(&site.config()),
            "audit",
            "--scan",
            "--scan-rate",
            "100",
            "--scan-wait",
            "500ms",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    let took = start.elapsed();
    let (code, out, err) = (out.status.code(), stdout(&out), stderr(&out));
    assert_eq!(code, Some(1), "{out}\n{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));

    let links = lab.rack.ip(&["-br", "link"]);
    // The rack namespace also holds the bridge, whose own interface may answer ARP for
    // the namespace's addresses too (Linux ARP flux): eth0's MAC must be among the
    // answers; a second MAC for the same address is then itself reported (two MACs).
    let unassigned = findings_with(&v, "address-answers-unassigned");
    assert_eq!(unassigned.len(), 1, "{v:#}\n{links}");
    assert_eq!(unassigned[0]["severity"], "warning");
    assert_eq!(
        unassigned[0]["addresses"],
        serde_json::json!(["10.250.0.77"])
    );
    let macs = unassigned[0]["macs"].as_array().unwrap();
    assert!(
        macs.contains(&Value::from(eth0_mac.clone())),
        "{v:#}\n{links}"
    );

    let two = findings_with(&v, "address-two-macs");
    let ten: Vec<&&Value> = two
        .iter()
        .filter(|f| f["addresses"] == serde_json::json!(["10.250.0.10"]))
        .collect();
    assert_eq!(ten.len(), 1, "{v:#}");
    let macs = ten[0]["macs"].as_array().unwrap();
    assert!(macs.contains(&Value::from(eth0_mac.clone())), "{v:#}");
    assert!(macs.contains(&Value::from(VM0)), "{v:#}");
    assert_eq!(ten[0]["hosts"], serde_json::json!(["vm0"]));
    assert_eq!(ten[0]["severity"], "critical");
    // Only the two addresses eth0 holds are findings: the gateway's own address is never.
    for f in v["findings"].as_array().unwrap() {
        let a = &f["addresses"];
        assert!(
            *a == serde_json::json!(["10.250.0.77"]) || *a == serde_json::json!(["10.250.0.10"]),
            "{v:#}"
        );
    }

    // Rate-bounded: 253 requests at 100/s cannot finish in under ~2.5 s.
    assert!(took >= std::time::Duration::from_millis(2400), "{took:?}");

    // Without the extra addresses the scan is clean and exits 0.
    lab.rack.ip(&["addr", "flush", "dev", "eth0"]);
    let _ = lab
        .gw
        .cmd("ip")
        .args(["neigh", "flush", "dev", "gw0"])
        .status();
    let out = lab
        .gw
        .cmd(bootgate_bin())
        .args([
            "--config",
            path_str(&site.config()),
            "audit",
            "--scan",
            "--scan-rate",
            "2000",
            "--scan-wait",
            "300ms",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// `--bmc` with sushy-emulator (fake driver) as vm0..vm2's BMC and a closed port as
/// vm3's: exactly one warning, naming vm3, its address and the refusal.
#[test]
fn bmc_check_names_only_the_dead_bmc() {
    let bmc = sushy::Sushy::start(&["vm0", "vm1", "vm2", "vm3"]);
    let dead = sushy::free_port();
    let site = Site::from_inventory("lab");
    let hosts = site.inventory_file("hosts.toml");
    let text = std::fs::read_to_string(&hosts).unwrap();
    let vm3 = "port = 8000, scheme = \"http\", system = \"vm3\"";
    assert!(text.contains(vm3), "lab BMCs moved? {text}");
    let text = text
        .replace(
            vm3,
            &format!("port = {dead}, scheme = \"http\", system = \"vm3\""),
        )
        .replace("port = 8000", &format!("port = {}", bmc.port));
    std::fs::write(&hosts, text).unwrap();
    let store = open(&site);
    healthy(&site, &store);
    drop(store);

    let (code, out, err) = audit(&site, &["--bmc", "-o", "json"]);
    assert_eq!(code, 1, "{out}\n{err}\n{}", bmc.log());
    let v: Value = serde_json::from_str(&out).unwrap();
    let found = findings_with(&v, "bmc-unreachable");
    assert_eq!(found.len(), 1, "{v:#}");
    assert_eq!(v["findings"].as_array().unwrap().len(), 1, "{v:#}");
    let f = found[0];
    assert_eq!(f["severity"], "warning");
    assert_eq!(f["hosts"], serde_json::json!(["vm3"]));
    assert_eq!(f["addresses"], serde_json::json!(["127.0.0.1"]));
    let msg = f["message"].as_str().unwrap();
    assert!(msg.contains(&format!("127.0.0.1:{dead}")), "{msg}");
    assert!(msg.contains("connect"), "{msg}");
    // Without --bmc nothing is probed: clean.
    let (code, _, _) = audit(&site, &[]);
    assert_eq!(code, 0);
}

/// `GET /api/v1/audit` is the CLI's report; `bootgate --api URL audit` prints it; the
/// history endpoint matches `audit ip`; without a token (reads closed) → 401.
#[test]
fn api_form_returns_the_cli_report_and_needs_a_token() {
    require_root!();
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    // A read token, reads closed to anonymous callers.
    let out = sh(std::process::Command::new(bootgate_bin()).args([
        "token", "new", "auditor", "--scope", "read", "--output", "json",
    ]));
    let t: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let tokens = site.dir.path().join("tokens.toml");
    std::fs::write(&tokens, t["entry"].as_str().unwrap()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let token_file = site.dir.path().join("token");
    std::fs::write(&token_file, t["token"].as_str().unwrap()).unwrap();
    let cfg = std::fs::read_to_string(site.config()).unwrap().replace(
        "[http]\n",
        &format!(
            "[http]\ntokens = \"{}\"\nopen_reads = false\n",
            tokens.display()
        ),
    );
    std::fs::write(site.config(), cfg).unwrap();
    let store = open(&site);
    healthy(&site, &store);
    rt().block_on(put(
        &store,
        Put {
            ip: "10.250.0.150",
            mac: STRANGER,
            host: None,
            state: LeaseState::Active,
            start_h: 1,
            len_h: 12,
            kind: EventKind::LeaseCommitted,
        },
    ));
    drop(store);
    let _daemon = Daemon::start(&lab, &site);

    let (code, direct, err) = audit(&site, &["-o", "json"]);
    assert_eq!(code, 0, "{direct}{err}");
    let direct: Value = serde_json::from_str(&direct).unwrap();
    let out = lab
        .gw
        .cmd(bootgate_bin())
        .args([
            "--api",
            &format!("http://{GW_IP}:{HTTP_PORT}"),
            "--token-file",
            path_str(&token_file),
            "audit",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let api: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(api["subnets"], direct["subnets"]);
    assert_eq!(api["findings"], direct["findings"]);
    assert_eq!(api["worst"], direct["worst"]);

    // History: the same holdings either way.
    let (_, direct_h, _) = audit(&site, &["ip", "10.250.0.150", "-o", "json"]);
    let out = lab
        .gw
        .cmd(bootgate_bin())
        .args([
            "--api",
            &format!("http://{GW_IP}:{HTTP_PORT}"),
            "--token-file",
            path_str(&token_file),
            "-o",
            "json",
            "audit",
            "ip",
            "10.250.0.150",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let api_h: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let direct_h: Value = serde_json::from_str(&direct_h).unwrap();
    assert_eq!(api_h["holdings"], direct_h["holdings"]);
    assert_eq!(api_h["holdings"][0]["mac"], STRANGER);

    // No token: 401, for the report and the history alike.
    for path in ["/api/v1/audit", "/api/v1/audit/ip/10.250.0.150"] {
        let (status, _) = curl(&lab.gw, &format!("http://{GW_IP}:{HTTP_PORT}{path}")).unwrap();
        assert_eq!(status, 401, "{path}");
    }
    let out = lab
        .gw
        .cmd(bootgate_bin())
        .args(["--api", &format!("http://{GW_IP}:{HTTP_PORT}"), "audit"])
        .env_remove("BOOTGATE_TOKEN")
        .env_remove("BOOTGATE_TOKEN_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
}
