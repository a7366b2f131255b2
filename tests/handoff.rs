//! The Ansible hand-off: golden rendered inventories (lab, example), what
//! `ansible-inventory` reads back from them (groups and vars exactly as the contract says,
//! YAML 1.1 look-alikes kept as strings), the runner's timeout, and real runs: the daemon,
//! on a phone-home `installed`, runs the playbooks over SSH against a chrooted sshd in a test
//! namespace (host keys pinned from the phone-home), to `ready`, idempotently (the real
//! `playbooks/site.yml`, role `base`); a failing task and a mismatched host key end `failed`.
//!
//! Tools: `ansible-playbook` / `ansible-inventory` from `${BOOTGATE_VENV:-/var/tmp/bootgate-venv}/bin`.

#[path = "support/sshd.rs"]
mod sshd;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bootgate::handoff::{Mode, Outcome, Runner, render};
use bootgate::inventory::load::load_dir;
use bootgate::store::{EventKind, EventQuery, NewEvent, Store};
use bootgate::types::HostState;
use serde_json::Value;
use support::*;

const VM0_MAC: &str = "52:54:00:d7:8e:1d";
const VM1_MAC: &str = "52:54:00:a8:28:2f";
const VM2_MAC: &str = "52:54:00:e0:a7:44";

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/handoff").join(name)
}

// ---------------------------------------------------------------------------------------
// Golden files and what ansible-inventory reads back
// ---------------------------------------------------------------------------------------

fn rendered(site: &str) -> render::Rendered {
    let inv = load_dir(&repo().join("inventory").join(site)).expect("inventory loads");
    render(&inv, &BTreeMap::new()).expect("renders")
}

/// The sites whose rendering is checked in under `tests/golden/ansible/<site>/`.
const GOLDEN_SITES: [&str; 2] = ["lab", "example"];

/// Compares the rendered files with `tests/golden/ansible/<site>/` (and fails on a file
/// there that is no longer rendered); `BOOTGATE_BLESS=1` rewrites them.
fn check_golden(site: &str) {
    assert!(
        GOLDEN_SITES.contains(&site),
        "{site}: add it to GOLDEN_SITES"
    );
    let mut golden = golden::GoldenDir::new(repo().join("tests/golden/ansible").join(site));
    for (rel, text) in rendered(site).files().unwrap() {
        golden.check(rel, &text);
    }
    golden.finish();
}

#[test]
fn golden_lab_inventory() {
    check_golden("lab");
}

#[test]
fn golden_example_inventory() {
    check_golden("example");
}

/// Every directory under `tests/golden/ansible/` is a site the tests above render: a
/// directory of a site no test renders any more fails (`BOOTGATE_BLESS=1` deletes it).
#[test]
fn golden_ansible_holds_only_rendered_sites() {
    let dir = repo().join("tests/golden/ansible");
    let stale: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| GOLDEN_SITES.iter().any(|s| n == *s))
        })
        .collect();
    if golden::blessing() {
        for p in &stale {
            if p.is_dir() {
                std::fs::remove_dir_all(p).unwrap();
            } else {
                std::fs::remove_file(p).unwrap();
            }
        }
        return;
    }
    assert!(
        stale.is_empty(),
        "golden entries no test renders any more (delete them, or BOOTGATE_BLESS=1 does): {stale:?}"
    );
}

/// `ansible-inventory -i DIR --list`, parsed.
fn ansible_inventory(dir: &Path) -> Value {
    let home = tempfile::tempdir().unwrap();
    let out = sh(Command::new(venv_tool("ansible-inventory"))
        .args(["-i"])
        .arg(dir)
        .arg("--list")
        .env("ANSIBLE_HOME", home.path())
        .env("ANSIBLE_LOCAL_TEMP", home.path().join("tmp"))
        .env("LC_ALL", "C.UTF-8"));
    serde_json::from_slice(&out.stdout).expect("ansible-inventory prints JSON")
}

/// The groups ansible-inventory shows under `all`, each with its hosts.
fn groups_of(list: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for g in list["all"]["children"].as_array().unwrap() {
        let g = g.as_str().unwrap();
        let hosts = list[g]["hosts"]
            .as_array()
            .map(|a| a.iter().map(|h| h.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        out.insert(g.to_string(), hosts);
    }
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Renders through the CLI (`playbook render --out`), as operators do.
fn render_cli(site: &Site, out: &Path) {
    let o = bootgate(&[
        "--config",
        path_str(&site.config()),
        "playbook",
        "render",
        "--out",
        path_str(out),
    ]);
    assert!(o.status.success(), "playbook render: {}", stderr(&o));
}

#[test]
fn ansible_inventory_reads_the_lab_contract() {
    require_venv_tool!("ansible-inventory");
    let site = Site::from_inventory("lab");
    let out = site.dir.path().join("ansible");
    render_cli(&site, &out);
    let list = ansible_inventory(&out);
    let all4 = set(&["vm0", "vm1", "vm2", "vm3"]);
    let want: BTreeMap<String, BTreeSet<String>> = [
        ("site_lab", all4.clone()),
        ("rack_lab_r1", all4.clone()),
        ("role_gpu", set(&["vm0", "vm1", "vm2"])),
        ("role_storage", set(&["vm3"])),
        ("state_registered", all4.clone()),
        ("kube_workers", all4.clone()),
        ("gpu_nodes", set(&[])),
        ("infiniband", set(&[])),
        ("ib_subnet_managers", set(&[])),
        ("kube_control_plane", set(&[])),
        ("ungrouped", set(&[])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(groups_of(&list), want);

    let vm3 = &list["_meta"]["hostvars"]["vm3"];
    let want = serde_json::json!({
        "ansible_host": "10.250.0.13",
        "bootgate_host": "vm3",
        "bootgate_site": "lab",
        "bootgate_rack": "lab-r1",
        "bootgate_position": 4,
        "bootgate_role": "storage",
        "bootgate_state": "registered",
        "bootgate_provisioning_ip": "10.250.0.13",
        "bootgate_bmc_ip": "127.0.0.1",
        "bootgate_addresses": {"provisioning": "10.250.0.13"},
        "bootgate_ipoib": [],
        "bootgate_gpu_model": "",
        "bootgate_gpu_count": 0,
        "bootgate_nvswitch": false,
        "bootgate_ib_hca_count": 0,
        "bootgate_ib_rate_gbps": 0,
        "bootgate_ib_subnet_manager": false,
        "bootgate_labels": {},
        // group_vars/all.yml
        "bootgate_domain": "lab.internal",
        "bootgate_ntp_servers": ["10.250.0.1"],
        "bootgate_users": [{"name": "ops", "sudo": true, "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH3mTQzGmKwXQ4fYkq9YbV6l0hB0mNnqvJ1u9W7Y3lab ops@lab.internal"]}],
        "bootgate_hosts_entries": [
            {"name": "vm0", "address": "10.250.0.10"},
            {"name": "vm1", "address": "10.250.0.11"},
            {"name": "vm2", "address": "10.250.0.12"},
            {"name": "vm3", "address": "10.250.0.13"},
        ],
        "bootgate_nvidia_repo_url": "",
        "bootgate_nvidia_driver_branch": "",
        "bootgate_nvidia_container_toolkit_repo_url": "",
        "bootgate_doca_repo_url": "",
        "bootgate_kubernetes_version": "1.31.4",
        "bootgate_kubernetes_repo_url": "https://pkgs.k8s.io/core:/stable:/v1.31/deb/",
        "bootgate_kube_api_endpoint": "10.250.0.13:6443",
        "bootgate_kube_gpu_taint": "nvidia.com/gpu=present:NoSchedule",
        "bootgate_oidc_client_id": "",
        "bootgate_oidc_issuer_url": "https://accounts.google.com",
        "bootgate_oidc_username_claim": "email",
        "bootgate_oidc_groups_claim": "groups",
        "bootgate_oidc_admins": [],
        "bootgate_oidc_viewers": [],
    });
    assert_eq!(vm3, &want);
}

#[test]
fn ansible_inventory_reads_the_example_contract() {
    require_venv_tool!("ansible-inventory");
    let site = Site::from_inventory("example");
    let out = site.dir.path().join("ansible");
    render_cli(&site, &out);
    let list = ansible_inventory(&out);
    let groups = groups_of(&list);
    let names: BTreeSet<&str> = groups.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = [
        "site_dc1",
        "rack_r01",
        "rack_r02",
        "rack_r03",
        "rack_r04",
        "role_gpu",
        "role_control_plane",
        "role_storage",
        "role_login",
        "role_gateway",
        "gpu_h100_sxm5_80gb",
        "gpu_nodes",
        "infiniband",
        "ib_subnet_managers",
        "kube_control_plane",
        "kube_workers",
        "state_registered",
        "ungrouped",
    ]
    .into_iter()
    .collect();
    assert_eq!(names, want);
    assert_eq!(groups["site_dc1"].len(), 75);
    assert_eq!(groups["gpu_nodes"].len(), 64);
    assert_eq!(groups["gpu_h100_sxm5_80gb"], groups["gpu_nodes"]);
    assert_eq!(groups["rack_r02"].len(), 16);
    assert_eq!(groups["infiniband"].len(), 64 + 2 + 4);
    assert_eq!(
        groups["ib_subnet_managers"],
        set(&["storage-01", "storage-02"])
    );
    assert_eq!(
        groups["kube_control_plane"],
        set(&["cp-01", "cp-02", "cp-03"])
    );
    assert_eq!(groups["kube_workers"].len(), 64 + 2 + 4);
    assert!(!groups["kube_workers"].contains("gw-a"));

    let hv = &list["_meta"]["hostvars"];
    let g = &hv["gpu-r03-15"];
    assert_eq!(g["ansible_host"], "10.20.2.25");
    assert_eq!(g["bootgate_bmc_ip"], "10.21.2.25");
    assert_eq!(g["bootgate_gpu_model"], "H100-SXM5-80GB");
    assert_eq!(g["bootgate_gpu_count"], 8);
    assert_eq!(g["bootgate_nvswitch"], true);
    assert_eq!(g["bootgate_ib_hca_count"], 8);
    assert_eq!(g["bootgate_ib_rate_gbps"], 400);
    assert_eq!(
        g["bootgate_ipoib"],
        serde_json::json!([{"device": "ib0", "subnet": "ipoib", "address": "10.30.3.25", "prefix": 16}])
    );
    assert_eq!(
        g["bootgate_labels"]["topology.kubernetes.io/zone"],
        "dc1-r03"
    );
    let cp = &hv["cp-01"];
    assert_eq!(cp["ansible_host"], "10.20.4.11");
    assert_eq!(cp["bootgate_rack"], "");
    assert_eq!(cp["bootgate_position"], 0);
    assert_eq!(cp["bootgate_ipoib"], serde_json::json!([]));
    assert_eq!(hv["storage-01"]["bootgate_ib_subnet_manager"], true);
    assert_eq!(
        cp["bootgate_oidc_client_id"],
        "1234-abc.apps.googleusercontent.com"
    );
    assert_eq!(
        cp["bootgate_oidc_admins"],
        serde_json::json!(["alice@example.com", "bob@example.com"])
    );
    assert_eq!(cp["bootgate_nvidia_driver_branch"], "550");
    assert_eq!(cp["bootgate_kube_api_endpoint"], "api.dc1.example.net:6443");
    assert_eq!(cp["bootgate_hosts_entries"].as_array().unwrap().len(), 75);
}

/// Labels that YAML 1.1 (Ansible's reader) would turn into booleans, times, dates or numbers
/// stay the strings the operator wrote.
#[test]
fn yaml_lookalike_labels_stay_strings() {
    require_venv_tool!("ansible-inventory");
    let site = Site::from_inventory("lab");
    let tricky = [
        ("a", "yes"),
        ("b", "no"),
        ("c", "on"),
        ("d", "12:30"),
        ("e", "2024-01-01"),
        ("f", "0x10"),
        ("g", "1e3"),
        ("h", "~"),
        ("i", "null"),
        ("j", "010"),
        ("k", "{{ not_a_template }}"),
        ("l", "*anchor"),
        ("m", "- item"),
        ("n", "a: b"),
        ("o", "#comment"),
    ];
    let labels: Vec<String> = tricky
        .iter()
        .map(|(k, v)| format!("{k} = {}", toml::Value::String(v.to_string())))
        .collect();
    let hosts = site.inventory_file("hosts.toml");
    let mut text = std::fs::read_to_string(&hosts).unwrap();
    // The last [[host]] (vm3) gets the labels.
    text.push_str(&format!("labels = {{ {} }}\n", labels.join(", ")));
    std::fs::write(&hosts, text).unwrap();
    let out = site.dir.path().join("ansible");
    render_cli(&site, &out);
    let list = ansible_inventory(&out);
    let got = &list["_meta"]["hostvars"]["vm3"]["bootgate_labels"];
    for (k, v) in tricky {
        // `{{ }}` is templated by Ansible at use time, not by the inventory: the raw text.
        assert_eq!(got[k], Value::String(v.to_string()), "label {k}: {got}");
    }
}

#[test]
fn render_json_and_stdout() {
    let site = Site::from_inventory("lab");
    let v = site.cli_json(&["playbook", "render"]);
    assert_eq!(v["all"]["hosts"]["vm0"]["ansible_host"], "10.250.0.10");
    assert!(v["all"]["children"]["kube_workers"]["hosts"]["vm2"].is_object());
    let o = bootgate(&["--config", path_str(&site.config()), "playbook", "render"]);
    assert!(o.status.success());
    let text = stdout(&o);
    let golden =
        std::fs::read_to_string(repo().join("tests/golden/ansible/lab/hosts.yml")).unwrap();
    assert_eq!(text, golden);
}

// ---------------------------------------------------------------------------------------
// Runner: timeout (controller-only playbook, no namespaces needed)
// ---------------------------------------------------------------------------------------

async fn scratch_store(dir: &Path) -> Arc<dyn Store> {
    let store: Arc<dyn Store> = Arc::new(
        bootgate::store::sqlite::SqliteStore::open(&dir.join("bootgate.db"))
            .await
            .unwrap(),
    );
    store
}

async fn pin(store: &Arc<dyn Store>, host: &str, keys: &[&str]) {
    store
        .append(
            &NewEvent::new(EventKind::PhoneHome, "test")
                .host(host)
                .detail(serde_json::json!({"event": "installed", "ssh_host_keys": keys})),
        )
        .await
        .unwrap();
}

fn settings(playbooks: &Path, timeout: Duration) -> bootgate::config::HandoffSettings {
    bootgate::config::HandoffSettings {
        enabled: true,
        playbooks_dir: playbooks.to_path_buf(),
        ansible_playbook: venv_tool("ansible-playbook"),
        concurrency: 2,
        timeout,
        ssh_user: "root".into(),
        ssh_key: None,
    }
}

/// Running `sleep SECS` processes (the sleep fixture sleeps 30000 + rack position).
fn sleepers(secs: u32) -> usize {
    let want = format!("sleep\0{secs}\0").into_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| *c == want)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_run_and_fails_the_host() {
    require_venv_tool!("ansible-playbook");
    let dir = tempfile::tempdir().unwrap();
    let inv = load_dir(&repo().join("inventory/lab")).unwrap();
    let store = scratch_store(dir.path()).await;
    bootgate::inventory::sync::reconcile(store.as_ref(), &inv, "test")
        .await
        .unwrap();
    let runner = Runner::new(
        settings(&fixture("sleep"), Duration::from_secs(4)),
        dir.path().join("state"),
        store.clone(),
    );

    // Refusals change nothing: wrong state, then no pinned keys.
    let e = runner
        .run(&inv, "vm0", Mode::Apply, "test")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is registered"), "{e}");
    store
        .set_host_state("vm0", None, HostState::Provisioned, "test", Value::Null)
        .await
        .unwrap();
    let e = runner
        .run(&inv, "vm0", Mode::Apply, "test")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no SSH host keys pinned"), "{e}");
    assert_eq!(
        store.get_host("vm0").await.unwrap().unwrap().state,
        HostState::Provisioned
    );
    let e = runner
        .run(&inv, "nope", Mode::Apply, "test")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no host named \"nope\""), "{e}");

    pin(
        &store,
        "vm0",
        &["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZpeHR1cmUga2V5IG5vdCBzZXJ2ZWQ vm0"],
    )
    .await;
    let before = sleepers(30001);
    let t0 = std::time::Instant::now();
    let report = runner.run(&inv, "vm0", Mode::Apply, "test").await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(60));
    assert_eq!(
        report.outcome,
        Outcome::TimedOut,
        "{report:#?}\n{}",
        std::fs::read_to_string(&report.log).unwrap_or_default()
    );
    assert_eq!(report.state, HostState::Failed);
    let reason = report.reason.clone().unwrap();
    assert!(reason.starts_with("timeout after 4s"), "{reason}");
    assert_eq!(report.failed_task.as_deref(), Some("Wait forever"));
    assert!(report.log.is_file());
    let log = std::fs::read_to_string(&report.log).unwrap();
    assert!(log.contains("TASK [Wait forever]"), "{log}");
    assert!(log.contains("# bootgate: TimedOut"), "{log}");
    // The whole process group went: no sleep of ours outlives the run.
    let gone = wait_for(Duration::from_secs(5), || {
        (sleepers(30001) <= before).then_some(())
    });
    assert!(gone.is_some(), "the playbook's sleep survived the kill");

    let kinds: Vec<EventKind> = store
        .query(&EventQuery {
            host: Some("vm0".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .filter(|k| k.as_str().starts_with("handoff") || *k == EventKind::HostStateChanged)
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::HostStateChanged, // registered → provisioned (test)
            EventKind::HandoffFailed,    // refused: no keys
            EventKind::HostStateChanged, // → configuring
            EventKind::HandoffStarted,
            EventKind::HostStateChanged, // → failed
            EventKind::HandoffFailed,
        ]
    );
}

/// A run cut short by a daemon exit leaves its host `configuring`; the next start fails it.
#[tokio::test]
async fn interrupted_runs_fail_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let inv = load_dir(&repo().join("inventory/lab")).unwrap();
    let store = scratch_store(dir.path()).await;
    bootgate::inventory::sync::reconcile(store.as_ref(), &inv, "test")
        .await
        .unwrap();
    store
        .set_host_state("vm1", None, HostState::Configuring, "test", Value::Null)
        .await
        .unwrap();
    let failed = bootgate::handoff::fail_interrupted(store.as_ref())
        .await
        .unwrap();
    assert_eq!(failed, ["vm1"]);
    let vm1 = store.get_host("vm1").await.unwrap().unwrap();
    assert_eq!(vm1.state, HostState::Failed);
    let last = store
        .query(&EventQuery {
            host: Some("vm1".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(last.kind, EventKind::HandoffFailed);
    assert!(
        last.detail["reason"]
            .as_str()
            .unwrap()
            .contains("daemon stopped")
    );
    assert_eq!(
        store.get_host("vm0").await.unwrap().unwrap().state,
        HostState::Registered
    );
}

// ---------------------------------------------------------------------------------------
// Real runs: daemon + chroot sshd in the lab namespaces
// ---------------------------------------------------------------------------------------

fn base() -> String {
    format!("http://{GW_IP}:{HTTP_PORT}")
}

/// curl in the gw namespace with extra arguments; returns (status, headers+body text).
fn curl_args(lab: &Lab, args: &[&str]) -> (u16, String) {
    curl_in(&lab.gw, args)
}

fn host_state(lab: &Lab, name: &str) -> String {
    let (code, body) = curl_args(lab, &[&format!("{}/api/v1/hosts/{name}", base())]);
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["state"].as_str().unwrap().to_string()
}

fn events(lab: &Lab, host: &str) -> Vec<Value> {
    let (_, body) = curl_args(lab, &[&format!("{}/api/v1/events?host={host}", base())]);
    serde_json::from_str::<Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Leases an address as `mac` on the rack's NIC (the boot identity), fetches the install
/// script (minting the boot token) and phones home `installed` with `keys` as the host's
/// SSH host keys, both from that address.
fn install(lab: &Lab, mac: &str, keys: &[&str]) {
    let work = tempfile::tempdir().unwrap();
    lab.lease_as(mac, work.path());
    let (code, script) = curl_in(&lab.rack, &[&format!("{}/ipxe/mac/{mac}", base())]);
    assert_eq!(code, 200, "{script}");
    let token = boot_token(&script).expect("token on the kernel line");
    let body = serde_json::json!({"event": "installed", "token": token, "ssh_host_keys": keys});
    let (code, body) = phone_home_from(&lab.rack, mac, &body.to_string());
    assert_eq!(code, 200, "{body}");
}

fn wait_state(lab: &Lab, host: &str, want: &[&str], secs: u64) -> String {
    wait_for(Duration::from_secs(secs), || {
        let s = host_state(lab, host);
        want.contains(&s.as_str()).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "{host} never became {want:?} (now {}); events: {:#?}",
            host_state(lab, host),
            events(lab, host)
        )
    })
}

/// The lab site with `[handoff]` enabled against `playbooks`, logging in with `key`.
fn handoff_config(site: &Site, name: &str, playbooks: &Path, key: &Path) -> PathBuf {
    let text = std::fs::read_to_string(site.config()).unwrap();
    // The daemon's config may already carry a [handoff]: replace it.
    let base = text.split("\n[handoff]").next().unwrap();
    let cfg = site.dir.path().join(name);
    std::fs::write(
        &cfg,
        format!(
            "{base}\n[handoff]\nenabled = true\nplaybooks = \"{}\"\nansible_playbook = \"{}\"\nconcurrency = 2\ntimeout = \"5m\"\nssh_user = \"root\"\nssh_key = \"{}\"\n",
            playbooks.display(),
            venv_tool("ansible-playbook").display(),
            key.display()
        ),
    )
    .unwrap();
    cfg
}

/// `bootgate --config CFG handoff HOST [--check] -o json` from the gw namespace.
fn cli_handoff(lab: &Lab, cfg: &Path, host: &str, check: bool) -> (bool, Value) {
    let mut cmd = lab.gw.cmd(bootgate_bin());
    cmd.args(["--config", path_str(cfg), "handoff", host, "-o", "json"]);
    if check {
        cmd.arg("--check");
    }
    let out = cmd.output().unwrap();
    let v = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("handoff: not JSON ({e}): {} {}", stdout(&out), stderr(&out)));
    (out.status.success(), v)
}

#[test]
fn phone_home_runs_the_playbooks_to_ready_idempotently() {
    require_root!("network namespaces and chroot");
    require_venv_tool!("ansible-playbook");
    let lab = Lab::new();
    lab.rack
        .ip(&["addr", "add", "10.250.0.10/24", "dev", "eth0"]);
    let sshd = sshd::ChrootSshd::start(&lab.rack, "vm0");
    let site = Site::from_inventory("lab");
    // The real playbooks: site.yml with role base (and kubernetes, which does nothing in a
    // lab without a control plane) applies to the chroot.
    let playbooks = repo().join("playbooks");
    let cfg = handoff_config(&site, "bootgate.toml", &playbooks, &sshd.client_key);
    assert_eq!(cfg, site.config());
    let mut daemon = Daemon::start(&lab, &site);

    install(&lab, VM0_MAC, &[&sshd.host_key]);
    assert_eq!(
        wait_state(&lab, "vm0", &["ready", "failed"], 180),
        "ready",
        "{:#?}\nsshd: {}",
        events(&lab, "vm0"),
        sshd.log()
    );
    // What base wrote, as the target sees it (the overlay's upper layer).
    assert_eq!(sshd.written("/etc/hostname").as_deref(), Some("vm0\n"));
    let hosts = sshd.written("/etc/hosts").unwrap();
    assert!(
        hosts.contains("10.250.0.13\tvm3.lab.internal vm3"),
        "{hosts}"
    );
    let chrony = sshd.written("/etc/chrony/chrony.conf").unwrap();
    assert!(chrony.contains("server 10.250.0.1 iburst"), "{chrony}");
    let keys = sshd.written("/home/ops/.ssh/authorized_keys").unwrap();
    assert!(keys.contains("ops@lab.internal"), "{keys}");
    let sudoers = sshd.written("/etc/sudoers.d/bootgate").unwrap();
    assert!(
        sudoers.contains("ops ALL=(ALL:ALL) NOPASSWD: ALL"),
        "{sudoers}"
    );
    assert!(sshd.written("/etc/sysctl.d/90-bootgate.conf").is_some());

    // The end event follows the move to `ready` (the runner records it after the state).
    let evs = wait_for(Duration::from_secs(10), || {
        let evs = events(&lab, "vm0");
        (evs.last()?["kind"] == "handoff-succeeded").then_some(evs)
    })
    .unwrap_or_else(|| panic!("no handoff-succeeded: {:#?}", events(&lab, "vm0")));
    let kinds: Vec<&str> = evs.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let tail: Vec<&str> = kinds[kinds.len() - 6..].to_vec();
    assert_eq!(
        tail,
        [
            "phone-home",
            "host-state-changed", // → provisioned
            "host-state-changed", // → configuring
            "handoff-started",
            "host-state-changed", // → ready
            "handoff-succeeded",
        ],
        "{kinds:?}"
    );
    let done = evs.last().unwrap();
    assert_eq!(done["detail"]["recap"]["failed"], 0);
    assert!(
        done["detail"]["recap"]["changed"].as_u64().unwrap() >= 2,
        "{done}"
    );
    let log = PathBuf::from(done["detail"]["log"].as_str().unwrap());
    assert!(
        log.starts_with(site.state_dir().join("handoff/vm0")),
        "{log:?}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("PLAY RECAP"), "{text}");
    let pinned = std::fs::read_to_string(site.state_dir().join("handoff/vm0/known_hosts")).unwrap();
    let key_blob = sshd.host_key.split_whitespace().nth(1).unwrap();
    assert_eq!(pinned, format!("10.250.0.10,vm0 ssh-ed25519 {key_blob}\n"));

    // Again from the CLI: nothing left to change.
    let (ok, report) = cli_handoff(&lab, &cfg, "vm0", false);
    assert!(ok, "{report:#}");
    assert_eq!(report["outcome"], "succeeded");
    assert_eq!(report["recap"]["changed"], 0, "{report:#}");
    assert_eq!(report["state"], "ready");

    // Check mode: reports, state untouched (no host-state-changed).
    let n = events(&lab, "vm0").len();
    let (ok, report) = cli_handoff(&lab, &cfg, "vm0", true);
    assert!(ok, "{report:#}");
    assert_eq!(report["mode"], "check");
    assert_eq!(report["recap"]["changed"], 0);
    assert!(report["log"].as_str().unwrap().ends_with("-check.log"));
    let later: Vec<String> = events(&lab, "vm0")[n..]
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(later, ["handoff-started", "handoff-succeeded"]);
    assert_eq!(host_state(&lab, "vm0"), "ready");

    // A failing playbook: failed, naming the task.
    let bad = handoff_config(&site, "failing.toml", &fixture("failing"), &sshd.client_key);
    let (ok, report) = cli_handoff(&lab, &bad, "vm0", false);
    assert!(!ok);
    assert_eq!(report["outcome"], "failed");
    assert_eq!(report["failed_task"], "Fail on purpose");
    assert_eq!(report["reason"], "the fixture fails here on vm0");
    assert_eq!(report["state"], "failed");
    assert_eq!(host_state(&lab, "vm0"), "failed");
    let last = events(&lab, "vm0").pop().unwrap();
    assert_eq!(last["kind"], "handoff-failed");
    assert_eq!(last["detail"]["task"], "Fail on purpose");
    assert_eq!(last["detail"]["host"], "vm0");

    let status = daemon.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn wrong_or_missing_host_keys_are_never_accepted() {
    require_root!("network namespaces and chroot");
    require_venv_tool!("ansible-playbook");
    let lab = Lab::new();
    lab.rack
        .ip(&["addr", "add", "10.250.0.11/24", "dev", "eth0"]);
    lab.rack
        .ip(&["addr", "add", "10.250.0.12/24", "dev", "eth0"]);
    let sshd = sshd::ChrootSshd::start(&lab.rack, "vm1");
    let site = Site::from_inventory("lab");
    handoff_config(&site, "bootgate.toml", &fixture("ok"), &sshd.client_key);
    let _daemon = Daemon::start(&lab, &site);

    // vm1 phones home with a key its sshd does not have: ssh refuses, the host fails.
    let impostor = sshd::other_host_key(site.dir.path());
    install(&lab, VM1_MAC, &[&impostor]);
    assert_eq!(wait_state(&lab, "vm1", &["ready", "failed"], 120), "failed");
    let last = events(&lab, "vm1").pop().unwrap();
    assert_eq!(last["kind"], "handoff-failed", "{last:#}");
    assert_eq!(last["detail"]["recap"]["unreachable"], 1, "{last:#}");
    let reason = last["detail"]["reason"].as_str().unwrap();
    assert!(reason.contains("Host key verification failed"), "{reason}");
    assert!(sshd.written("/etc/bootgate-handoff").is_none());

    // vm2 phones home without keys: refused before any connection; stays provisioned.
    install(&lab, VM2_MAC, &[]);
    let refused = wait_for(Duration::from_secs(20), || {
        events(&lab, "vm2")
            .into_iter()
            .find(|e| e["kind"] == "handoff-failed")
    })
    .expect("a handoff-failed event for vm2");
    let reason = refused["detail"]["reason"].as_str().unwrap();
    assert!(reason.contains("no SSH host keys pinned"), "{reason}");
    assert_eq!(host_state(&lab, "vm2"), "provisioned");
}

/// SIGTERM while a hand-off runs: the daemon still stops promptly, the play is killed and
/// the host is recorded `failed` (not left `configuring`).
#[test]
fn shutdown_kills_running_handoffs_and_fails_their_hosts() {
    require_root!("network namespaces and chroot");
    require_venv_tool!("ansible-playbook");
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    let key = site.dir.path().join("unused_key");
    std::fs::write(&key, "not used: the sleep fixture runs on the controller\n").unwrap();
    handoff_config(&site, "bootgate.toml", &fixture("sleep"), &key);
    let mut daemon = Daemon::start(&lab, &site);
    install(
        &lab,
        VM2_MAC,
        &["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZpeHR1cmUga2V5IG5vdCBzZXJ2ZWQ vm2"],
    );
    wait_state(&lab, "vm2", &["configuring"], 30);
    assert!(
        wait_for(Duration::from_secs(30), || (sleepers(30003) > 0)
            .then_some(()))
        .is_some(),
        "the play never reached its sleep"
    );
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    let gone = wait_for(Duration::from_secs(5), || {
        (sleepers(30003) == 0).then_some(())
    });
    assert!(gone.is_some(), "the play's sleep survived the daemon");
    let host = site.cli_json(&["hosts", "show", "vm2"]);
    assert_eq!(host["state"], "failed", "{host:#}");
    let evs = site.cli_json(&["events", "--host", "vm2", "--kind", "handoff-failed"]);
    let reason = evs[0]["detail"]["reason"].as_str().unwrap();
    assert!(reason.contains("daemon stopped"), "{reason}");
}
