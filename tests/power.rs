//! `bootgate power` and `bootgate reset` against real Redfish BMCs: sushy-emulator's fake
//! driver for the fleet commands, and its libvirt driver in front of a QEMU VM that
//! PXE-boots through a real daemon for `reset --reprovision` with its proof.

#[path = "support/libvirt.rs"]
mod libvirt;
mod support;
#[allow(dead_code)]
#[path = "support/sushy.rs"]
mod sushy;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use serde_json::Value;
use support::qemu;
use support::*;

/// Points the lab site's BMCs at `port` and installs the lab secrets (mode 0600).
fn bmc_site(site: &Site, port: u16, password: &str) {
    let hosts = site.inventory_file("hosts.toml");
    let text = std::fs::read_to_string(&hosts).unwrap();
    assert!(text.contains("port = 8000"), "lab BMCs moved? {text}");
    std::fs::write(
        &hosts,
        text.replace("port = 8000", &format!("port = {port}")),
    )
    .unwrap();
    let secrets = site.dir.path().join("secrets.toml");
    std::fs::write(
        &secrets,
        format!("[bmc.lab]\nusername = \"admin\"\npassword = \"{password}\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = std::fs::read_to_string(site.config()).unwrap();
    std::fs::write(
        site.config(),
        format!("secrets = \"{}\"\n{cfg}", secrets.display()),
    )
    .unwrap();
}

fn power(site: &Site, args: &[&str]) -> (Option<i32>, Value, String) {
    let out = Command::new(bootgate_bin())
        .args([
            "--config",
            path_str(&site.config()),
            "--output",
            "json",
            "power",
        ])
        .args(args)
        .output()
        .unwrap();
    let json = serde_json::from_str(&stdout(&out)).unwrap_or(Value::Null);
    (out.status.code(), json, stderr(&out))
}

fn by_host(v: &Value) -> std::collections::BTreeMap<String, Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|r| (r["host"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

#[test]
fn power_commands_drive_a_fleet_of_redfish_systems() {
    let bmc = sushy::Sushy::start(&["vm0", "vm1", "vm2", "vm3"]);
    let site = Site::from_inventory("lab");
    site.write_config("127.0.0.1:0");
    bmc_site(&site, bmc.port, sushy::PASSWORD);

    let (code, v, err) = power(&site, &["status", "--rack", "lab-r1"]);
    assert_eq!(code, Some(0), "{err}\n{}", bmc.log());
    let r = by_host(&v);
    assert_eq!(r.len(), 4);
    for h in ["vm0", "vm1", "vm2", "vm3"] {
        assert_eq!(r[h]["state"], "off", "{v}");
        assert_eq!(r[h]["ok"], true);
        assert_eq!(r[h]["bmc"], format!("http://127.0.0.1:{}", bmc.port));
    }

    // on: the emulator applies power changes after a delay; the command waits for them
    let (code, v, err) = power(&site, &["on", "vm0", "vm1", "--concurrency", "2"]);
    assert_eq!(code, Some(0), "{err}");
    let r = by_host(&v);
    assert_eq!(r["vm0"]["state"], "on", "{v}");
    assert_eq!(r["vm0"]["applied"], "On");
    // already on: nothing sent
    let (_, v, _) = power(&site, &["on", "vm0"]);
    assert_eq!(v[0]["applied"], Value::Null, "{v}");

    let (code, v, _) = power(&site, &["cycle", "vm1"]);
    assert_eq!(code, Some(0), "{v}");
    let applied = v[0]["applied"].as_str().unwrap();
    assert!(
        ["PowerCycle", "ForceRestart", "ForceOff+On"].contains(&applied),
        "{v}"
    );

    let (code, v, _) = power(&site, &["pxe-once", "vm2"]);
    assert_eq!(code, Some(0), "{v}");
    assert!(
        ["Once", "Continuous"].contains(&v[0]["applied"].as_str().unwrap()),
        "{v}"
    );

    // --role selects from the inventory: vm3 is the only storage host
    let (code, v, _) = power(&site, &["off", "--role", "storage"]);
    assert_eq!(code, Some(0));
    assert_eq!(by_host(&v).keys().collect::<Vec<_>>(), ["vm3"]);
    let (_, v, _) = power(&site, &["off", "vm0"]);
    assert_eq!(v[0]["state"], "off", "{v}");

    // every action is an event naming the host
    let out = Command::new(bootgate_bin())
        .args(["--config", path_str(&site.config()), "--output", "json"])
        .args(["events", "--kind", "power-action", "--host", "vm2"])
        .output()
        .unwrap();
    let evs: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let actions: Vec<&str> = evs
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["detail"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["status", "pxe-once"], "{evs}");

    // selection errors name what is wrong
    let (code, _, err) = power(&site, &["status", "vm9"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("\"vm9\""), "{err}");
    let (code, _, err) = power(&site, &["status"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--rack"), "{err}");
    let (code, _, err) = power(&site, &["status", "--rack", "r99"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("r99"), "{err}");
}

#[test]
fn a_concurrency_above_the_configured_bmc_bound_is_named_not_silently_capped() {
    let site = Site::from_inventory("lab");
    // Nothing listens there: the BMCs fail at once, the note is what matters.
    bmc_site(&site, sushy::free_port(), "password");
    let (code, json, err) = power(&site, &["status", "vm0", "--concurrency", "5000"]);
    assert_eq!(code, Some(1), "{json} {err}");
    assert!(
        err.contains("--concurrency 5000 is above `[bmc] concurrency = 32`"),
        "{err}"
    );
    let (_, _, err) = power(&site, &["status", "vm0", "--concurrency", "4"]);
    assert!(!err.contains("note: --concurrency"), "{err}");
}

#[test]
fn wrong_bmc_password_fails_each_host_clearly_and_never_prints_it() {
    let bmc = sushy::Sushy::start(&["vm0", "vm1", "vm2", "vm3"]);
    let site = Site::from_inventory("lab");
    site.write_config("127.0.0.1:0");
    let wrong = "hunter2-not-it";
    bmc_site(&site, bmc.port, wrong);
    let (code, v, err) = power(&site, &["status", "vm0", "vm1"]);
    assert_eq!(code, Some(1), "{err}");
    for r in v.as_array().unwrap() {
        assert_eq!(r["ok"], false);
        let e = r["error"].as_str().unwrap();
        assert!(e.contains("401") && e.contains("\"admin\""), "{e}");
        assert!(e.starts_with(r["host"].as_str().unwrap()), "{e}");
    }
    assert!(!v.to_string().contains(wrong) && !err.contains(wrong));
    // the secrets file must be private
    let secrets = site.dir.path().join("secrets.toml");
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (code, _, err) = power(&site, &["status", "vm0"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("secrets.toml") && err.contains("0640"),
        "{err}"
    );
}

/// The boot e2e topology plus a private libvirtd whose domain `vm0` (vm0's MAC and UUID)
/// is the node; sushy-emulator's libvirt driver is its BMC. `bootgate reset vm0
/// --reprovision` powers it on with PXE once; it boots through the daemon, phones home,
/// and the command reports the proof.
#[test]
fn reset_reprovision_brings_a_vm_back_and_proves_it() {
    let missing = qemu::missing_host_files();
    require_peer!(
        "QEMU host files",
        format!("{missing:?}"),
        missing.is_empty()
    );
    let image = qemu::test_image();
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    let images = site.boot_images();
    std::fs::create_dir_all(images.join("test")).unwrap();
    std::fs::copy(&image.vmlinuz, images.join("test/vmlinuz")).unwrap();
    std::fs::copy(&image.initrd, images.join("test/initrd.gz")).unwrap();
    for f in [&image.undionly, &image.ipxe_efi, &image.snponly] {
        std::fs::copy(f, images.join(f.file_name().unwrap())).unwrap();
    }
    let lv = libvirt::Libvirt::start(&lab.rack);
    lv.define_vm(&lab.rack, "br0", "vm0");
    let bmc = sushy::Sushy::start_libvirt(&lv.uri);
    bmc_site(&site, bmc.port, sushy::PASSWORD);
    // iPXE waits for IPv6 router adverts on every boot without one
    let ra = lab.gw.background(
        lab.gw
            .cmd("python3")
            .arg(repo().join("tests/support/ra.py"))
            .arg("gw0"),
    );
    let _daemon = Daemon::start(&lab, &site);

    let out = Command::new(bootgate_bin())
        .args(["--config", path_str(&site.config()), "--output", "json"])
        .args([
            "reset",
            "vm0",
            "--reprovision",
            "--timeout",
            "6m",
            "--step-wait",
            "3m",
        ])
        .output()
        .unwrap();
    kill_pid(ra);
    let report: Value = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("{e}: {}\n{}\n{}", stdout(&out), stderr(&out), bmc.log()));
    assert_eq!(out.status.code(), Some(0), "{report:#}\n{}", stderr(&out));
    assert_eq!(report["came_back"], true, "{report:#}");
    let whats: Vec<&str> = report["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["what"].as_str().unwrap())
        .collect();
    let pos = |needle: &str| {
        whats
            .iter()
            .position(|w| w.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not in the timeline {whats:#?}"))
    };
    assert!(pos("power state off") < pos("boot override Pxe"));
    assert!(pos("boot override Pxe") < pos("On sent"));
    assert!(pos("On sent") < pos("phone-home"));
    assert!(
        whats
            .iter()
            .any(|w| w.starts_with("lease-") || w.starts_with("boot-script-served")),
        "{whats:#?}"
    );

    // the event log tells the same story
    let evs = site.cli_json(&["events", "--host", "vm0"]);
    let kinds: Vec<&str> = evs
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    let at = |k: &str| kinds.iter().position(|x| *x == k).unwrap_or(usize::MAX);
    assert!(at("reset-started") < at("phone-home"), "{kinds:?}");
    assert!(at("phone-home") < at("reset-finished"), "{kinds:?}");
    assert!(kinds.contains(&"reset-step"), "{kinds:?}");
}

/// The escalation, against a scripted BMC: a hung node ignores GracefulRestart; the
/// ForceRestart "reboots" it (the scripted BMC records the DHCP request the node would
/// make), then it phones home. The report and events show each step in order, and a BMC
/// that advertises no usable step is refused up front.
mod escalation {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bootgate::bmc::{
        BmcError, BmcTarget, BootSource, OverrideMode, PowerControl, PowerState, ResetType,
    };
    use bootgate::power::{Fleet, ResetOptions, reset};
    use bootgate::secrets::Secrets;
    use bootgate::store::{EventKind, NewEvent, Store, sqlite::SqliteStore};

    /// A node that stays hung until `reboots_on` is sent, then DHCPs and phones home.
    struct Scripted {
        store: Arc<dyn Store>,
        advertised: Vec<ResetType>,
        reboots_on: ResetType,
        sent: Mutex<Vec<ResetType>>,
    }

    #[async_trait::async_trait]
    impl PowerControl for Scripted {
        async fn power_state(&self, _: &BmcTarget) -> Result<PowerState, BmcError> {
            Ok(PowerState::On)
        }
        async fn reset_types(&self, _: &BmcTarget) -> Result<Vec<ResetType>, BmcError> {
            Ok(self.advertised.clone())
        }
        async fn reset(&self, t: &BmcTarget, kind: ResetType) -> Result<(), BmcError> {
            self.sent.lock().unwrap().push(kind);
            if kind == self.reboots_on {
                let mac = "52:54:00:d7:8e:1d".parse().unwrap();
                let ip = "10.250.0.10".parse().unwrap();
                let ev = |k| {
                    NewEvent::new(k, "test")
                        .mac(mac)
                        .ip(ip)
                        .host(t.host.clone())
                };
                self.store
                    .append(&ev(EventKind::LeaseCommitted))
                    .await
                    .unwrap();
                self.store.append(&ev(EventKind::PhoneHome)).await.unwrap();
            }
            Ok(())
        }
        async fn set_boot_override(
            &self,
            _: &BmcTarget,
            _: BootSource,
        ) -> Result<OverrideMode, BmcError> {
            Ok(OverrideMode::Once)
        }
        async fn clear_boot_override(&self, _: &BmcTarget) -> Result<(), BmcError> {
            Ok(())
        }
    }

    async fn run(advertised: Vec<ResetType>) -> (bootgate::power::ResetReport, Vec<ResetType>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("s.db")).await.unwrap());
        let inv = bootgate::inventory::load::load_dir(&super::repo().join("inventory/lab"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let secrets = Secrets::default().with_bmc("lab", "admin", "password");
        let pc = Arc::new(Scripted {
            store: store.clone(),
            advertised,
            reboots_on: ResetType::ForceRestart,
            sent: Mutex::new(vec![]),
        });
        let fleet = Fleet {
            pc: pc.clone(),
            store: store.clone(),
            inventory: &inv,
            secrets: &secrets,
        };
        let opts = ResetOptions {
            timeout: Duration::from_secs(5),
            step_wait: Duration::from_millis(300),
            poll: Duration::from_millis(50),
            ..Default::default()
        };
        let report = reset(&fleet, "vm0", &opts, "test").await.unwrap();
        let sent = pc.sent.lock().unwrap().clone();
        (report, sent)
    }

    #[tokio::test]
    async fn a_hung_node_gets_escalated_until_it_reboots() {
        let (report, sent) = run(vec![
            ResetType::On,
            ResetType::ForceOff,
            ResetType::GracefulRestart,
            ResetType::ForceRestart,
        ])
        .await;
        assert!(report.came_back, "{report:#?}");
        assert_eq!(sent, [ResetType::GracefulRestart, ResetType::ForceRestart]);
        let whats: Vec<&str> = report.timeline.iter().map(|m| m.what.as_str()).collect();
        let pos = |n: &str| {
            whats
                .iter()
                .position(|w| w.contains(n))
                .unwrap_or(usize::MAX)
        };
        assert!(
            pos("GracefulRestart sent") < pos("escalating"),
            "{whats:#?}"
        );
        assert!(pos("escalating") < pos("ForceRestart sent"), "{whats:#?}");
        assert!(
            pos("ForceRestart sent") < pos("lease-committed"),
            "{whats:#?}"
        );
        assert!(pos("lease-committed") < pos("phone-home"), "{whats:#?}");
    }

    #[tokio::test]
    async fn steps_the_bmc_does_not_advertise_are_skipped() {
        // no GracefulRestart: ForceRestart is the first step
        let (report, sent) = run(vec![ResetType::ForceRestart]).await;
        assert!(report.came_back, "{report:#?}");
        assert_eq!(sent, [ResetType::ForceRestart]);
    }

    #[tokio::test]
    async fn a_bmc_with_no_usable_step_is_refused() {
        let (report, sent) = run(vec![ResetType::Nmi]).await;
        assert!(!report.came_back);
        assert!(sent.is_empty());
        assert!(report.outcome.contains("Nmi"), "{}", report.outcome);
    }
}

/// VirtualBMC (pip `virtualbmc`, the IPMI BMC OpenStack uses) in front of a libvirt VM,
/// driven through bootgate's ipmitool edge: status, on, pxe-once, off.
#[test]
fn ipmi_power_through_virtualbmc_drives_a_libvirt_vm() {
    let bin = std::path::Path::new(sushy::VENV).join("bin");
    require_peer!(
        path_str(&bin.join("vbmcd")),
        "pip install -r scripts/requirements-test.txt"
    );
    let lab = Lab::new();
    let lv = libvirt::Libvirt::start(&lab.rack);
    lv.define_vm(&lab.rack, "br0", "vm3");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("vbmc")).unwrap();
    let conf = dir.path().join("virtualbmc.conf");
    std::fs::write(
        &conf,
        format!(
            "[default]\nconfig_dir = {d}/vbmc\npid_file = {d}/vbmcd.pid\nserver_port = {p}\n[log]\nlogfile = {d}/vbmcd.log\n",
            d = dir.path().display(),
            p = sushy::free_port()
        ),
    )
    .unwrap();
    let vbmc_try = |args: &[&str]| {
        Command::new(bin.join("vbmc"))
            .args(args)
            .env("VIRTUALBMC_CONFIG", &conf)
            .output()
            .unwrap()
    };
    let vbmc = |args: &[&str]| {
        let out = vbmc_try(args);
        assert!(out.status.success(), "vbmc {args:?}: {}", stderr(&out));
    };
    let mut vbmcd = Command::new(bin.join("vbmcd"))
        .arg("--foreground")
        .env("VIRTUALBMC_CONFIG", &conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let up = wait_for(std::time::Duration::from_secs(30), || {
        vbmc_try(&["list"]).status.success().then_some(())
    });
    assert!(up.is_some(), "vbmcd did not come up");
    let port = sushy::free_port();
    vbmc(&[
        "add",
        "vm3",
        "--address",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--username",
        "admin",
        "--password",
        sushy::PASSWORD,
        "--libvirt-uri",
        &lv.uri,
    ]);
    vbmc(&["start", "vm3"]);

    let site = Site::from_inventory("lab");
    site.write_config("127.0.0.1:0");
    let hosts = site.inventory_file("hosts.toml");
    let text = std::fs::read_to_string(&hosts).unwrap().replace(
        "bmc = { address = \"127.0.0.1\", port = 8000, scheme = \"http\", system = \"vm3\", vendor = \"generic\", protocol = \"redfish\", credential = \"lab\" }",
        &format!("bmc = {{ address = \"127.0.0.1\", port = {port}, vendor = \"generic\", protocol = \"ipmi\", credential = \"lab\" }}"),
    );
    std::fs::write(&hosts, text).unwrap();
    bmc_site(&site, 8000, sushy::PASSWORD);

    let (code, v, err) = power(&site, &["status", "vm3"]);
    assert_eq!(code, Some(0), "{err}\n{v}");
    assert_eq!(v[0]["state"], "off", "{v}");
    assert_eq!(v[0]["bmc"], format!("ipmi://127.0.0.1:{port}"), "{v}");
    let (code, v, err) = power(&site, &["on", "vm3"]);
    assert_eq!(code, Some(0), "{err}\n{v}");
    assert_eq!(v[0]["state"], "on", "{v}");
    assert_eq!(lv.domstate("vm3"), "running");
    let (code, v, err) = power(&site, &["pxe-once", "vm3"]);
    assert_eq!(code, Some(0), "{err}\n{v}");
    let (code, v, err) = power(&site, &["off", "vm3"]);
    assert_eq!(code, Some(0), "{err}\n{v}");
    assert_eq!(v[0]["state"], "off", "{v}");
    assert_eq!(lv.domstate("vm3"), "shut off");
    let _ = vbmcd.kill();
    let _ = vbmcd.wait();
}
