//! `bootgate rack onboard` against real peers.
//!
//! * End to end: rack lab-r2, planned into the inventory with `bootgate rack plan
//!   inventory/lab/manifests/lab-r2.csv --rack lab-r2 ... --write` (a vendor-style CSV
//!   sheet), is three QEMU VMs (TCG, SeaBIOS + iPXE) in a private libvirtd, with
//!   sushy-emulator's libvirt driver as their BMC and the daemon in the gateway namespace.
//!   A first run is interrupted (SIGINT) once a host is provisioning and records where each
//!   host stood; a second run finishes (every VM `provisioned`, exit 0); a third skips all.
//! * BMC trouble, cheaply: sushy's fake driver; a host whose Redfish system does not exist
//!   and one whose BMC port is dead are `bmc-unreachable`, a host that never boots fails at
//!   `dhcp` after its retry, and a scripted node (the store sees its DHCP and phone-home as
//!   the daemon would record them) ends `provisioned`.

#[path = "support/libvirt.rs"]
mod libvirt;
mod support;
#[allow(dead_code)]
#[path = "support/sushy.rs"]
mod sushy;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::*;

/// `bootgate --config SITE -o json rack onboard ARGS` as a command.
fn onboard_cmd(site: &Site, args: &[&str]) -> Command {
    let mut c = Command::new(bootgate_bin());
    c.args(["--config", path_str(&site.config()), "-o", "json"])
        .args(["rack", "onboard"])
        .args(args);
    c
}

/// Runs an onboarding to its end: (exit code, report, stderr).
fn onboard(site: &Site, args: &[&str]) -> (Option<i32>, Value, String) {
    let out = onboard_cmd(site, args).output().unwrap();
    let report = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&out), stderr(&out)));
    (out.status.code(), report, stderr(&out))
}

fn by_host(report: &Value) -> BTreeMap<String, Value> {
    report["hosts"]
        .as_array()
        .unwrap_or_else(|| panic!("no hosts in {report:#}"))
        .iter()
        .map(|h| (h["host"].as_str().unwrap().to_string(), h.clone()))
        .collect()
}

fn state(site: &Site, host: &str) -> String {
    site.cli_json(&["hosts", "show", host])["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `bootgate rack plan SHEET.csv ... --write`: the rack goes into the scratch inventory as
/// an operator would put it there.
fn plan_rack_from_the_csv_sheet(site: &Site) {
    let sheet = repo().join("inventory/lab/manifests/lab-r2.csv");
    let out = Command::new(bootgate_bin())
        .args(["--config", path_str(&site.config()), "--output", "json"])
        .args(["rack", "plan", path_str(&sheet), "--rack", "lab-r2"])
        .args([
            "--profile",
            "lab-debian",
            "--first",
            "provisioning=10.250.0.20",
        ])
        .args([
            "--bmc-vendor",
            "generic",
            "--bmc-credential",
            "lab",
            "--bmc-scheme",
            "http",
            "--bmc-port",
            "8000",
        ])
        .arg("--write")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let written = std::fs::read_to_string(site.inventory_file("rack-lab-r2.toml")).unwrap();
    for (vm, ip) in [
        ("vm4", "10.250.0.20"),
        ("vm5", "10.250.0.21"),
        ("vm6", "10.250.0.22"),
    ] {
        assert!(written.contains(&format!("name = \"{vm}\"")), "{written}");
        assert!(written.contains(ip), "{written}");
    }
}

#[test]
fn a_three_vm_rack_is_onboarded_interrupted_resumed_and_skipped() {
    let missing = qemu::missing_host_files();
    require_peer!(
        "QEMU host files",
        format!("{missing:?}"),
        missing.is_empty()
    );
    let image = qemu::test_image();
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    site.install_test_image(image);
    plan_rack_from_the_csv_sheet(&site);
    let lv = libvirt::Libvirt::start(&lab.rack);
    for vm in ["vm4", "vm5", "vm6"] {
        lv.define_vm(&lab.rack, "br0", vm);
    }
    let bmc = sushy::Sushy::start_libvirt(&lv.uri);
    site.use_bmc_port(bmc.port, sushy::PASSWORD);
    // iPXE waits for IPv6 router adverts on every boot without one
    lab.gw.background(
        lab.gw
            .cmd("python3")
            .arg(repo().join("tests/support/ra.py"))
            .arg("gw0"),
    );
    let _daemon = Daemon::start(&lab, &site);
    let args = ["lab-r2", "--wave", "2", "--no-handoff", "--timeout", "8m"];

    // 1. Interrupted once the first host is provisioning.
    let child = onboard_cmd(&site, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let provisioning = wait_for(Duration::from_secs(120), || {
        (state(&site, "vm4") == "provisioning").then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    sh(Command::new("kill").args(["-INT", &child.id().to_string()]));
    let out = child.wait_with_output().unwrap();
    assert!(
        provisioning.is_some(),
        "vm4 never went provisioning: {}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&out), stderr(&out)));
    assert_eq!(report["interrupted"], true, "{report:#}");
    assert_eq!(report["ok"], false);
    let r = by_host(&report);
    assert_eq!(r.len(), 3, "{report:#}");
    assert_eq!(r["vm4"]["outcome"], "interrupted", "{report:#}");
    assert_ne!(r["vm4"]["step"], "waiting", "{report:#}");
    // wave 2 never started
    assert_eq!(r["vm6"]["step"], "waiting", "{report:#}");
    assert_eq!(r["vm6"]["wave"], 2);
    let evs = site.cli_json(&["events", "--kind", "onboard-host"]);
    let stood: BTreeMap<String, Value> = evs
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["host"].as_str().unwrap().to_string(), e["detail"].clone()))
        .collect();
    for vm in ["vm4", "vm5", "vm6"] {
        assert_eq!(stood[vm]["outcome"], "interrupted", "{evs:#}");
        assert!(stood[vm]["step"].is_string(), "{evs:#}");
    }

    // 2. Resumed: every VM ends provisioned, the report says so, exit 0.
    let (code, report, err) = onboard(&site, &args);
    assert_eq!(code, Some(0), "{report:#}\n{err}\n{}", bmc.log());
    assert_eq!(report["ok"], true);
    assert_eq!(report["interrupted"], false);
    assert_eq!(report["target"], "provisioned");
    let r = by_host(&report);
    for vm in ["vm4", "vm5", "vm6"] {
        assert_eq!(r[vm]["outcome"], "provisioned", "{report:#}");
        assert_eq!(r[vm]["state"], "provisioned", "{report:#}");
        assert!(
            r[vm]["handoff"]
                .as_str()
                .unwrap()
                .contains("skipped: --no-handoff"),
            "{report:#}"
        );
        assert_eq!(state(&site, vm), "provisioned");
    }
    // every VM the run started went through DHCP and its boot script (its events say so)
    for vm in r.keys().filter(|vm| r[vm.as_str()]["skipped"] == false) {
        let evs = site.cli_json(&["events", "--host", vm]);
        let kinds: Vec<&str> = evs
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert!(kinds.contains(&"boot-script-served"), "{vm}: {kinds:?}");
        assert!(kinds.contains(&"phone-home"), "{vm}: {kinds:?}");
    }
    // the report is an event
    let reports = site.cli_json(&["events", "--kind", "rack-report"]);
    let last = reports.as_array().unwrap().last().unwrap();
    assert_eq!(last["detail"]["ok"], true, "{last:#}");
    assert_eq!(last["detail"]["rack"], "lab-r2");

    // 3. Again: nothing to do, every host skipped.
    let (code, report, err) = onboard(&site, &args);
    assert_eq!(code, Some(0), "{report:#}\n{err}");
    for (vm, h) in by_host(&report) {
        assert_eq!(h["skipped"], true, "{vm}: {report:#}");
        assert_eq!(h["outcome"], "provisioned", "{vm}: {report:#}");
    }
}

/// A scratch rack `lab-r3` on the fake-driver emulator at `port`: vm7 (scripted to boot),
/// vm8 (no such Redfish system), vm9 (a dead BMC port), vm10 (never boots).
fn rack_r3(site: &Site, port: u16, dead: u16) {
    let host = |name: &str, pos: u32, mac: &str, ip: &str, system: &str, port: u16| {
        format!(
            "[[host]]\nname = \"{name}\"\nrole = \"gpu\"\nrack = \"lab-r3\"\nposition = {pos}\nmacs = [\"{mac}\"]\nprofile = \"lab-debian\"\naddresses = {{ provisioning = \"{ip}\" }}\nbmc = {{ address = \"127.0.0.1\", port = {port}, scheme = \"http\", system = \"{system}\", vendor = \"generic\", protocol = \"redfish\", credential = \"lab\" }}\n\n"
        )
    };
    let text = [
        "[[rack]]\nname = \"lab-r3\"\nlocation = \"fake BMCs only\"\n\n".to_string(),
        host("vm7", 1, "52:54:00:00:03:07", "10.250.0.30", "vm7", port),
        host(
            "vm8",
            2,
            "52:54:00:00:03:08",
            "10.250.0.31",
            "no-such-system",
            port,
        ),
        host("vm9", 3, "52:54:00:00:03:09", "10.250.0.32", "vm9", dead),
        host("vm10", 4, "52:54:00:00:03:0a", "10.250.0.33", "vm10", port),
    ]
    .concat();
    std::fs::write(site.inventory_file("rack-lab-r3.toml"), text).unwrap();
}

/// Plays vm7: once its (fake) BMC reports power on, records in the store what the daemon
/// would for a node that DHCPs, fetches its script and phones home `installed`.
fn scripted_node(site: &Site, port: u16) -> std::thread::JoinHandle<bool> {
    let db = site.state_dir().join("bootgate.db");
    std::thread::spawn(move || {
        let url = format!(
            "http://127.0.0.1:{port}/redfish/v1/Systems/{}",
            sushy::uuid_of("vm7")
        );
        let on = wait_for(Duration::from_secs(60), || {
            let out = Command::new("curl")
                .args(["-s", "-m", "5", "-u", "admin:password", &url])
                .output()
                .ok()?;
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["PowerState"] == "On").then_some(())
        });
        if on.is_none() {
            return false;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use bootgate::store::EventLog;
            use bootgate::store::{EventKind, HostStore, NewEvent, sqlite::SqliteStore};
            use bootgate::types::HostState;
            let store = SqliteStore::open(&db).await.unwrap();
            let mac = "52:54:00:00:03:07".parse().unwrap();
            let ev = |k| NewEvent::new(k, "test-node").mac(mac).host("vm7");
            store
                .append(&ev(EventKind::LeaseCommitted).ip("10.250.0.30".parse().unwrap()))
                .await
                .unwrap();
            store
                .append(&ev(EventKind::BootScriptServed))
                .await
                .unwrap();
            store
                .append(&ev(EventKind::PhoneHome).detail(serde_json::json!({"event": "installed"})))
                .await
                .unwrap();
            store
                .set_host_state(
                    "vm7",
                    None,
                    HostState::Provisioned,
                    "phone-home",
                    Value::Null,
                )
                .await
                .unwrap();
        });
        true
    })
}

/// What the daemon does at start: the inventory's hosts into the store.
fn seed_store(site: &Site) {
    let inv = bootgate::inventory::load::load_dir(&site.dir.path().join("inventory"))
        .unwrap_or_else(|e| panic!("{e:?}"));
    let db = site.state_dir().join("bootgate.db");
    std::fs::create_dir_all(site.state_dir()).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let store = bootgate::store::sqlite::SqliteStore::open(&db)
                .await
                .unwrap();
            bootgate::inventory::sync::reconcile(&store, &inv, "test")
                .await
                .unwrap();
        });
}

#[test]
fn unreachable_bmcs_and_a_silent_host_are_reported_while_the_others_finish() {
    let bmc = sushy::Sushy::start(&["vm7", "vm9", "vm10"]);
    let site = Site::from_inventory("lab");
    site.write_config("127.0.0.1:0");
    let dead = sushy::free_port();
    rack_r3(&site, bmc.port, dead);
    site.use_bmc_port(bmc.port, sushy::PASSWORD);
    // before the daemon (here: the test) has put the rack's hosts in the store
    let out = onboard_cmd(&site, &["lab-r3", "--no-handoff"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not in the store"),
        "{}",
        stderr(&out)
    );
    seed_store(&site);
    let node = scripted_node(&site, bmc.port);
    let (code, report, err) = onboard(
        &site,
        &["lab-r3", "--wave", "4", "--no-handoff", "--timeout", "6s"],
    );
    assert!(
        node.join().unwrap(),
        "vm7's BMC never reported power on:\n{err}"
    );
    assert_eq!(code, Some(1), "{report:#}\n{err}");
    assert_eq!(report["ok"], false);
    let r = by_host(&report);
    let names: Vec<&str> = report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vm7", "vm8", "vm9", "vm10"], "position order");
    assert_eq!(r["vm7"]["outcome"], "provisioned", "{report:#}\n{err}");
    assert_eq!(r["vm7"]["attempts"], 1);
    for vm in ["vm8", "vm9"] {
        assert_eq!(r[vm]["outcome"], "bmc-unreachable", "{report:#}");
        assert_eq!(r[vm]["step"], "bmc");
        assert_eq!(r[vm]["attempts"], 1, "no retry against a dead BMC");
        assert!(
            r[vm]["reason"].as_str().unwrap().contains(vm),
            "the reason names the host: {report:#}"
        );
    }
    assert!(
        r["vm9"]["reason"]
            .as_str()
            .unwrap()
            .contains(&dead.to_string()),
        "{report:#}"
    );
    // vm10 powers on but never asks for an address: failed at dhcp after one retry
    assert_eq!(r["vm10"]["outcome"], "failed", "{report:#}");
    assert_eq!(r["vm10"]["step"], "dhcp");
    assert_eq!(r["vm10"]["attempts"], 2);
    assert!(
        r["vm10"]["reason"].as_str().unwrap().contains("DHCP"),
        "{report:#}"
    );
    let retries = site.cli_json(&["events", "--kind", "onboard-host", "--host", "vm10"]);
    let outcomes: Vec<&str> = retries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["detail"]["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["retrying", "failed"], "{retries:#}");
    // table output names each outcome
    let out = Command::new(bootgate_bin())
        .args(["--config", path_str(&site.config())])
        .args([
            "rack",
            "onboard",
            "lab-r3",
            "--no-handoff",
            "--timeout",
            "3s",
        ])
        .output()
        .unwrap();
    let table = stdout(&out);
    assert!(table.contains("bmc-unreachable"), "{table}");
    assert!(table.contains("provisioned (skipped)"), "{table}");
    assert!(table.contains("failed at dhcp"), "{table}");
    // an unknown rack is refused by name
    let out = onboard_cmd(&site, &["lab-r99"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("lab-r99"), "{}", stderr(&out));
}
