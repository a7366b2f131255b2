//! `bootgate rack plan`, `hosts discovered` and `hosts adopt` through the real binary, on a
//! scratch copy of the lab site with a real SQLite store. Discovered machines are written
//! through the store API exactly as the DHCP server records them (relay circuit-id and
//! remote-id in the host's spec). No network traffic.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use bootgate::store::{
    EventKind, EventLog, HostChange, HostRecord, HostSource, HostStore, Lease, LeaseState,
    LeaseStore, NewEvent, RelayInfo, sqlite::SqliteStore,
};
use bootgate::types::HostState;
use serde_json::Value;
use support::*;

fn manifest(name: &str) -> PathBuf {
    repo().join("inventory/lab/manifests").join(name)
}

/// `bootgate --config SITE ARGS` without asserting success.
fn run(site: &Site, args: &[&str]) -> Output {
    let config = site.config();
    let mut all = vec!["--config", path_str(&config)];
    all.extend_from_slice(args);
    bootgate(&all)
}

fn hosts_by_name(plan: &Value) -> Vec<(String, String, String)> {
    plan["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap().to_string(),
                h["addresses"]["provisioning"].as_str().unwrap().to_string(),
                h["macs"][0].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect()
}

fn lab_r2_expected() -> Vec<(String, String, String)> {
    [
        ("vm4", "10.250.0.20", "52:54:00:08:34:dc"),
        ("vm5", "10.250.0.21", "52:54:00:5f:cc:d4"),
        ("vm6", "10.250.0.22", "52:54:00:9b:ef:95"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect()
}

#[test]
fn plan_from_the_toml_manifest_changes_nothing() {
    let site = Site::from_inventory("lab");
    let before: Vec<_> = std::fs::read_dir(site.dir.path().join("inventory"))
        .unwrap()
        .collect();
    let v = site.cli_json(&["rack", "plan", path_str(&manifest("lab-r2.toml"))]);
    assert_eq!(hosts_by_name(&v), lab_r2_expected(), "{v:#}");
    assert_eq!(v["rack"]["name"], "lab-r2");
    assert_eq!(v["written"], Value::Null);
    let h = &v["hosts"][2];
    assert_eq!(h["position"], 3);
    assert_eq!(h["serial"], "LAB-R2-0003");
    assert_eq!(h["profile"], "lab-debian");
    assert_eq!(h["role"], "gpu");
    assert_eq!(h["bmc"]["address"], "127.0.0.1");
    assert_eq!(h["bmc"]["port"], 8000);
    assert_eq!(h["bmc"]["system"], "vm6");
    assert_eq!(h["bmc"]["scheme"], "http");
    assert_eq!(h["bmc"]["credential"], "lab");
    assert_eq!(h["bmc"]["vendor"], "generic");
    let groups: Vec<&str> = h["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    assert!(
        groups.contains(&"rack_lab_r2") && groups.contains(&"site_lab"),
        "{groups:?}"
    );
    let after: Vec<_> = std::fs::read_dir(site.dir.path().join("inventory"))
        .unwrap()
        .collect();
    assert_eq!(
        before.len(),
        after.len(),
        "plan without --write wrote something"
    );

    // The table form names every host and says nothing was written.
    let out = run(&site, &["rack", "plan", path_str(&manifest("lab-r2.toml"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for name in ["vm4", "vm5", "vm6", "10.250.0.22", "127.0.0.1:8000 (vm5)"] {
        assert!(text.contains(name), "{name}: {text}");
    }
    assert!(text.contains("nothing written"), "{text}");
}

#[test]
fn plan_from_the_csv_sheet_with_flags() {
    let site = Site::from_inventory("lab");
    let v = site.cli_json(&[
        "rack",
        "plan",
        path_str(&manifest("lab-r2.csv")),
        "--rack",
        "lab-r2",
        "--profile",
        "lab-debian",
        "--bmc-vendor",
        "generic",
        "--bmc-credential",
        "lab",
        "--bmc-scheme",
        "http",
        "--first",
        "provisioning=10.250.0.20",
    ]);
    assert_eq!(hosts_by_name(&v), lab_r2_expected(), "{v:#}");
    assert_eq!(v["hosts"][0]["bmc"]["port"], 8000);
    assert_eq!(v["hosts"][0]["origin"]["line"], 2);
    // Without --first the addresses start at the subnet's first free one (.1 is the gateway).
    let v = site.cli_json(&[
        "rack",
        "plan",
        path_str(&manifest("lab-r2.csv")),
        "--rack",
        "lab-r2",
        "--bmc-vendor",
        "generic",
        "--bmc-credential",
        "lab",
    ]);
    assert_eq!(v["hosts"][0]["addresses"]["provisioning"], "10.250.0.2");
}

#[test]
fn write_adds_one_file_check_config_accepts_and_a_second_write_refuses() {
    let site = Site::from_inventory("lab");
    let v = site.cli_json(&[
        "rack",
        "plan",
        path_str(&manifest("lab-r2.toml")),
        "--write",
    ]);
    let file = site.inventory_file("rack-lab-r2.toml");
    assert_eq!(v["written"], path_str(&file));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("[[rack]]\nname = \"lab-r2\""), "{text}");
    assert!(text.contains("# position 1, serial LAB-R2-0001"), "{text}");
    let out = run(&site, &["check-config", "-o", "json"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let cfg: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(cfg["hosts"], 7);
    assert_eq!(cfg["racks"], 2);
    // The rack's hosts are ordinary inventory hosts with rack and position.
    let power_sel = run(&site, &["hosts", "list", "-o", "json"]);
    assert!(power_sel.status.success(), "{}", stderr(&power_sel));

    let again = run(
        &site,
        &[
            "rack",
            "plan",
            path_str(&manifest("lab-r2.toml")),
            "--write",
        ],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("refusing to overwrite"),
        "{}",
        stderr(&again)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    // Planning it again without --write now collides with itself, naming the file.
    let out = run(&site, &["rack", "plan", path_str(&manifest("lab-r2.toml"))]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("rack \"lab-r2\" (")
            && err.contains("rack-lab-r2.toml) is already in the inventory"),
        "{err}"
    );

    // The event log says who wrote what.
    let events = site.cli_json(&["events", "--kind", "rack-planned"]);
    assert_eq!(events.as_array().unwrap().len(), 1, "{events:#}");
}

/// A manifest in the scratch dir: the lab-r2 rack with its nodes given inline.
fn write_manifest(site: &Site, nodes: &str) -> PathBuf {
    let path = site.dir.path().join("bad-rack.toml");
    std::fs::write(
        &path,
        format!(
            "[rack]\nname = \"lab-r9\"\nprofile = \"lab-debian\"\n\n[rack.addressing]\nprovisioning = \"10.250.0.20\"\n\n{nodes}"
        ),
    )
    .unwrap();
    path
}

#[test]
fn reused_mac_address_and_name_are_refused_naming_both_sides() {
    let site = Site::from_inventory("lab");
    let m = write_manifest(
        &site,
        "[[node]]\nposition = 1\nboot_mac = \"52:54:00:d7:8e:1d\"\n\n\
         [[node]]\nposition = 2\nboot_mac = \"02:00:00:00:09:02\"\naddresses = { provisioning = \"10.250.0.11\" }\n\n\
         [[node]]\nposition = 3\nboot_mac = \"02:00:00:00:09:03\"\nname = \"vm2\"\n",
    );
    let out = run(&site, &["rack", "plan", path_str(&m), "--write"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    let hosts = site.inventory_file("hosts.toml");
    let mp = path_str(&m);
    let hp = path_str(&hosts);
    for want in [
        format!(
            "{mp}:8: position 1: boot_mac: MAC 52:54:00:d7:8e:1d is already the boot MAC of host \"vm0\" ({hp})"
        ),
        format!(
            "{mp}:12: position 2: addresses.provisioning: 10.250.0.11 is the address of host \"vm1\" ({hp})"
        ),
        format!("{mp}:17: position 3: name: host \"vm2\" ({hp}) is already in the inventory"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    assert!(err.contains("nothing written"), "{err}");
    assert!(!site.inventory_file("rack-lab-r9.toml").exists());

    // The same as JSON: each conflict as data.
    let out = run(&site, &["rack", "plan", path_str(&m), "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["ok"], false);
    let c = v["conflicts"].as_array().unwrap();
    assert_eq!(c.len(), 3, "{v:#}");
    assert_eq!(c[0]["origin"]["line"], 8);
    assert_eq!(c[0]["field"], "boot_mac");
}

#[test]
fn csv_errors_name_line_and_column() {
    let site = Site::from_inventory("lab");
    let csv = site.dir.path().join("sheet.csv");
    std::fs::write(
        &csv,
        "Serial,MAC,U\nSN1,52:54:00:aa:00:01,1\nSN2,52:54:00:aa:00:0g,2\nSN3,52:54:00:aa:00:03,two\nSN1,52:54:00:aa:00:01,1\n",
    )
    .unwrap();
    let out = run(&site, &["rack", "plan", path_str(&csv), "--rack", "lab-r9"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let f = path_str(&csv);
    for want in [
        format!("{f}: line 3: column 2 (MAC): \"52:54:00:aa:00:0g\": invalid MAC address"),
        format!("{f}: line 4: column 3 (U): \"two\""),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    // Fix the cells: the duplicate row is what remains.
    std::fs::write(
        &csv,
        "Serial,MAC,U\nSN1,52:54:00:aa:00:01,1\nSN1,52:54:00:aa:00:01,1\n",
    )
    .unwrap();
    let out = run(
        &site,
        &[
            "rack",
            "plan",
            path_str(&csv),
            "--rack",
            "lab-r9",
            "-o",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let p = v["problems"].as_array().unwrap();
    let fields: Vec<&str> = p.iter().map(|x| x["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["position", "boot_mac", "serial"], "{v:#}");
    assert!(p.iter().all(|x| x["line"] == 3), "{v:#}");
}

/// Records a discovered machine the way the DHCP server does (relay option 82 in the spec)
/// and, when given, its lease.
fn discover(
    db: &Path,
    mac: &str,
    circuit: Option<&str>,
    remote: Option<&str>,
    lease: Option<&str>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(db).await.unwrap();
        let now = jiff::Timestamp::now();
        let m: bootgate::types::MacAddr = mac.parse().unwrap();
        let rec = HostRecord {
            name: format!("discovered-{}", mac.replace(':', "")),
            state: HostState::Discovered,
            source: HostSource::Discovered,
            macs: vec![m],
            ip: None,
            rack: None,
            role: None,
            spec: serde_json::json!({
                "iface": "gw0",
                "giaddr": circuit.map(|_| "10.250.0.1"),
                "circuit_id": circuit,
                "remote_id": remote,
                "first_seen": now,
                "last_seen": now,
            }),
            created: now,
            updated: now,
        };
        store
            .apply_host_changes(&[HostChange::Add(rec)], "dhcp")
            .await
            .unwrap();
        if let Some(ip) = lease {
            let l = Lease {
                ip: ip.parse().unwrap(),
                mac: m,
                client_id: None,
                state: LeaseState::Active,
                starts: now,
                ends: now + jiff::SignedDuration::from_hours(1),
                host: None,
                subnet: "provisioning".into(),
                relay: RelayInfo {
                    giaddr: None,
                    circuit_id: circuit.map(String::from),
                    remote_id: remote.map(String::from),
                },
            };
            store
                .commit_lease(
                    &l,
                    &NewEvent::new(EventKind::LeaseCommitted, "dhcp")
                        .ip(l.ip)
                        .mac(m),
                )
                .await
                .unwrap();
        }
        let _ = store
            .append(&NewEvent::new(EventKind::HostDiscovered, "dhcp"))
            .await;
    });
}

/// A lab rack with a leaf switch (option 82) and one node declared without its MAC yet.
fn add_switched_rack(site: &Site) {
    std::fs::write(
        site.inventory_file("racks-r9.toml"),
        "[[rack]]\nname = \"lab-r9\"\n\n[rack.switch]\nname = \"leaf-r9\"\nremote_id = \"leaf-r9\"\n\n\
         [rack.switch.ports]\n\"swp1\" = 1\n\"swp2\" = 2\n\n\
         # arrived without a delivery sheet: adopt its MAC once it DHCPs\n\
         [[host]]\nname = \"r9-n01\"\nrole = \"gpu\"\nrack = \"lab-r9\"\nposition = 1\nprofile = \"lab-debian\"\n",
    )
    .unwrap();
}

#[test]
fn discovered_machines_are_matched_to_their_rack_position_and_adopted() {
    let site = Site::from_inventory("lab");
    add_switched_rack(&site);
    let db = site.state_dir().join("bootgate.db");
    std::fs::create_dir_all(site.state_dir()).unwrap();
    discover(
        &db,
        "02:00:00:00:09:01",
        Some("swp1"),
        Some("leaf-r9"),
        Some("10.250.0.101"),
    );
    discover(
        &db,
        "02:00:00:00:09:02",
        Some("swp2"),
        Some("leaf-r9"),
        None,
    );
    discover(&db, "02:00:00:00:09:03", None, None, Some("10.250.0.103"));

    let out = run(&site, &["hosts", "discovered", "-o", "json"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let list: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3, "{list:#?}");
    let s = &list[0]["suggestion"];
    assert_eq!(
        (s["rack"].as_str(), s["position"].as_u64()),
        (Some("lab-r9"), Some(1))
    );
    assert_eq!(s["host"], "r9-n01");
    assert_eq!(s["text"], "suggested: rack lab-r9 position 1 → name r9-n01");
    assert_eq!(
        s["command"],
        "bootgate hosts adopt 02:00:00:00:09:01 --as r9-n01"
    );
    assert_eq!(list[0]["ip"], "10.250.0.101");
    assert_eq!(list[1]["suggestion"]["position"], 2);
    assert_eq!(list[1]["suggestion"]["host"], Value::Null);
    assert_eq!(list[2]["suggestion"], Value::Null);
    let out = run(&site, &["hosts", "discovered"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("suggested: rack lab-r9 position 1 → name r9-n01"),
        "{}",
        stdout(&out)
    );

    // Adopt into the declared host: its file gains the MAC, comments intact.
    let v = site.cli_json(&["hosts", "adopt", "02:00:00:00:09:01", "--as", "r9-n01"]);
    assert_eq!(v["existing"], true);
    let text = std::fs::read_to_string(site.inventory_file("racks-r9.toml")).unwrap();
    assert!(text.contains("macs = [\"02:00:00:00:09:01\"]"), "{text}");
    assert!(
        text.contains("addresses = { provisioning = \"10.250.0.2\" }"),
        "{text}"
    );
    assert!(
        text.contains("# arrived without a delivery sheet"),
        "{text}"
    );

    // Adopt a stranger as a new host: next free address on the subnet it was seen on,
    // position from its switch port.
    let v = site.cli_json(&["hosts", "adopt", "02:00:00:00:09:02", "--as", "r9-n02"]);
    assert_eq!(v["existing"], false);
    assert_eq!(v["rack"], "lab-r9");
    assert_eq!(v["position"], 2);
    assert_eq!(v["ip"], "10.250.0.3");
    let v = site.cli_json(&[
        "hosts",
        "adopt",
        "02:00:00:00:09:03",
        "--as",
        "extra-1",
        "--role",
        "storage",
    ]);
    assert_eq!(v["ip"], "10.250.0.4");
    assert_eq!(
        v["file"],
        path_str(&site.inventory_file("hosts-adopted.toml"))
    );
    let out = run(&site, &["check-config"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let adopted = site.cli_json(&["events", "--kind", "host-adopted"]);
    let hosts: Vec<&str> = adopted
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["r9-n01", "r9-n02", "extra-1"]);

    // Refusals: a MAC the inventory has, a name taken, a MAC never seen.
    let out = run(
        &site,
        &["hosts", "adopt", "52:54:00:d7:8e:1d", "--as", "other"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("MAC 52:54:00:d7:8e:1d is already the boot MAC of host \"vm0\""),
        "{err}"
    );
    assert!(err.contains("hosts.toml"), "{err}");
    let out = run(
        &site,
        &["hosts", "adopt", "02:00:00:00:09:04", "--as", "vm1"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("host name \"vm1\" is already taken"),
        "{}",
        stderr(&out)
    );
    let out = run(
        &site,
        &["hosts", "adopt", "02:00:00:00:09:01", "--as", "again"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already the boot MAC of host \"r9-n01\""),
        "{}",
        stderr(&out)
    );
    let out = run(
        &site,
        &[
            "hosts",
            "adopt",
            "02:00:00:00:09:05",
            "--as",
            "ghost",
            "-o",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("never seen by DHCP"),
        "{v}"
    );
}

#[test]
fn plan_fills_a_missing_boot_mac_from_the_machine_on_its_switch_port() {
    let site = Site::from_inventory("lab");
    let db = site.state_dir().join("bootgate.db");
    std::fs::create_dir_all(site.state_dir()).unwrap();
    discover(
        &db,
        "02:00:00:00:0a:02",
        Some("swp2"),
        Some("leaf-ra"),
        Some("10.250.0.110"),
    );
    let m = site.dir.path().join("ra.toml");
    std::fs::write(
        &m,
        "[rack]\nname = \"lab-ra\"\nprofile = \"lab-debian\"\n\n[rack.switch]\nname = \"leaf-ra\"\nremote_id = \"leaf-ra\"\nports = { swp1 = 1, swp2 = 2 }\n\n\
         [rack.addressing]\nprovisioning = \"10.250.0.60\"\n\n\
         [[node]]\nposition = 1\nboot_mac = \"02:00:00:00:0a:01\"\n\n[[node]]\nposition = 2\nserial = \"SN-A2\"\n",
    )
    .unwrap();
    // `hosts discovered --manifest` shows the match before the rack is written.
    let list = site.cli_json(&["hosts", "discovered", "--manifest", path_str(&m)]);
    assert_eq!(
        list[0]["suggestion"]["text"].as_str().unwrap(),
        format!(
            "suggested: rack lab-ra position 2 → name lab-ra-n02 (`bootgate rack plan {}` takes its boot MAC)",
            path_str(&m)
        )
    );
    let v = site.cli_json(&["rack", "plan", path_str(&m), "--write"]);
    assert_eq!(v["hosts"][1]["name"], "lab-ra-n02");
    assert_eq!(v["hosts"][1]["macs"][0], "02:00:00:00:0a:02");
    assert_eq!(
        v["hosts"][1]["boot_mac_source"],
        "discovered host discovered-020000000a02 on switch port swp2"
    );
    assert!(
        v["notes"][0]
            .as_str()
            .unwrap()
            .contains("boot MAC 02:00:00:00:0a:02 taken from"),
        "{v:#}"
    );
    let out = run(&site, &["check-config"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
}
