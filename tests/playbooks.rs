//! The hand-off playbooks (playbooks/): ansible-lint with the production profile, the
//! syntax check, the hand-written contract inventory (groups, host vars, which hosts each
//! play of site.yml reaches), and the GPU and InfiniBand verification tasks against stub
//! `nvidia-smi` / `ibstat` commands printing matching and mismatching hardware reports.
//!
//! Only playbooks/verify.yml ever runs, against localhost with connection=local: it runs
//! the two (stub) read-only commands and asserts; no other role touches this machine.
//! The Ansible tools come from `${BOOTGATE_VENV:-/var/tmp/bootgate-venv}/bin`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::{repo, require_venv_tool, stderr, stdout, venv_tool};

fn playbooks() -> PathBuf {
    repo().join("playbooks")
}

fn fixtures() -> PathBuf {
    playbooks().join("tests/fixtures")
}

/// An Ansible command with this repository's config, its state in a fresh temp dir, and
/// the venv first on PATH (ansible-lint runs ansible-playbook from there).
struct Ansible {
    tmp: tempfile::TempDir,
    bin: PathBuf,
}

impl Ansible {
    /// The venv's tools; a test checks first (`require_venv_tool!`) that they are there.
    fn new() -> Ansible {
        Ansible {
            tmp: tempfile::tempdir().unwrap(),
            bin: venv_tool("ansible-playbook")
                .parent()
                .unwrap()
                .to_path_buf(),
        }
    }

    fn cmd(&self, name: &str, extra_path: Option<&Path>) -> Command {
        let mut path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .collect::<Vec<_>>();
        path.insert(0, self.bin.clone());
        if let Some(p) = extra_path {
            path.insert(0, p.to_path_buf());
        }
        let mut cmd = Command::new(self.bin.join(name));
        cmd.current_dir(playbooks())
            .env("PATH", std::env::join_paths(path).unwrap())
            .env("ANSIBLE_CONFIG", playbooks().join("ansible.cfg"))
            .env("ANSIBLE_HOME", self.tmp.path().join("home"))
            .env("ANSIBLE_LOCAL_TEMP", self.tmp.path().join("tmp"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("NO_COLOR", "1")
            .env_remove("ANSIBLE_FORCE_COLOR");
        cmd
    }

    /// `ansible-playbook -i tests/fixtures/local verify.yml` with the stub commands on PATH
    /// printing `gpu_report` / `ib_report` (files in tests/fixtures/reports).
    fn verify(&self, gpu_report: &str, ib_report: &str, extra: &[&str]) -> Output {
        let reports = fixtures().join("reports");
        let mut cmd = self.cmd("ansible-playbook", Some(&fixtures().join("bin")));
        cmd.env("BOOTGATE_STUB_NVIDIA_SMI", reports.join(gpu_report))
            .env("BOOTGATE_STUB_IBSTAT", reports.join(ib_report))
            .args(["-i", "tests/fixtures/local", "verify.yml"])
            .args(extra);
        cmd.output().expect("running ansible-playbook")
    }
}

fn output(o: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", stdout(o), stderr(o))
}

/// The play recap line of localhost (`localhost : ok=6 changed=0 ... failed=0 ...`).
fn recap(o: &Output) -> String {
    stdout(o)
        .lines()
        .rev()
        .find(|l| l.starts_with("localhost") && l.contains("ok="))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn ansible_lint_production_profile_is_clean() {
    require_venv_tool!("ansible-playbook");
    let ansible = Ansible::new();
    require_venv_tool!("ansible-lint");
    let out = ansible
        .cmd("ansible-lint", None)
        // offline: no Galaxy at test time (the roles need ansible.builtin only)
        .env("ANSIBLE_LINT_NODEPS", "1")
        .env("ANSIBLE_LINT_SKIP_SCHEMA_UPDATE", "1")
        .args(["--offline", "--profile", "production", "--nocolor"])
        .output()
        .expect("running ansible-lint");
    assert!(
        out.status.success(),
        "ansible-lint failed:\n{}",
        output(&out)
    );
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        all.contains("Profile 'production' was required, and it passed"),
        "{all}"
    );
}

#[test]
fn site_and_verify_pass_the_syntax_check() {
    require_venv_tool!("ansible-playbook");
    let ansible = Ansible::new();
    for playbook in ["site.yml", "verify.yml"] {
        let out = ansible
            .cmd("ansible-playbook", None)
            .args(["--syntax-check", "-i", "tests/fixtures/inventory", playbook])
            .output()
            .expect("running ansible-playbook");
        assert!(out.status.success(), "{playbook}:\n{}", output(&out));
    }
}

/// The groups and host vars the contract names, as ansible-inventory reads the fixture.
#[test]
fn fixture_inventory_follows_the_contract() {
    require_venv_tool!("ansible-playbook");
    let ansible = Ansible::new();
    let out = ansible
        .cmd("ansible-inventory", None)
        .args(["-i", "tests/fixtures/inventory", "--list"])
        .output()
        .expect("running ansible-inventory");
    assert!(out.status.success(), "{}", output(&out));
    let inv: Value = serde_json::from_str(&stdout(&out)).expect("ansible-inventory JSON");
    let hosts_of = |group: &str| -> Vec<String> {
        let mut hosts: Vec<String> = inv[group]["hosts"]
            .as_array()
            .unwrap_or_else(|| panic!("group {group} missing or empty: {inv}"))
            .iter()
            .map(|h| h.as_str().unwrap().to_string())
            .collect();
        hosts.sort();
        hosts
    };
    let table: &[(&str, &[&str])] = &[
        (
            "site_dc1",
            &["cp-01", "gpu-r01-01", "gw-a", "login-01", "stor-r01-01"],
        ),
        ("rack_r01", &["gpu-r01-01", "stor-r01-01"]),
        ("role_gpu", &["gpu-r01-01"]),
        ("role_storage", &["stor-r01-01"]),
        ("role_login", &["login-01"]),
        ("role_control_plane", &["cp-01"]),
        ("role_gateway", &["gw-a"]),
        ("gpu_h100_sxm5_80gb", &["gpu-r01-01"]),
        ("gpu_nodes", &["gpu-r01-01"]),
        ("infiniband", &["gpu-r01-01", "stor-r01-01"]),
        ("ib_subnet_managers", &["stor-r01-01"]),
        ("kube_control_plane", &["cp-01"]),
        ("kube_workers", &["gpu-r01-01", "login-01", "stor-r01-01"]),
        ("state_provisioned", &["gpu-r01-01"]),
        ("state_ready", &["cp-01", "gw-a", "login-01", "stor-r01-01"]),
    ];
    for (group, want) in table {
        assert_eq!(hosts_of(group), *want, "group {group}");
    }
    // Ansible-safe group names: lowercase, [a-z0-9_] only.
    for group in inv.as_object().unwrap().keys().filter(|k| *k != "_meta") {
        assert!(
            group
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "group name {group} is not Ansible-safe"
        );
    }

    type Check = fn(&Value) -> bool;
    let is_str: Check = Value::is_string;
    let is_u64: Check = Value::is_u64;
    let is_bool: Check = Value::is_boolean;
    let is_obj: Check = Value::is_object;
    let is_list: Check = Value::is_array;
    let host_vars: &[(&str, Check)] = &[
        ("ansible_host", is_str),
        ("bootgate_host", is_str),
        ("bootgate_site", is_str),
        ("bootgate_rack", is_str),
        ("bootgate_position", is_u64),
        ("bootgate_role", is_str),
        ("bootgate_state", is_str),
        ("bootgate_provisioning_ip", is_str),
        ("bootgate_bmc_ip", is_str),
        ("bootgate_addresses", is_obj),
        ("bootgate_ipoib", is_list),
        ("bootgate_gpu_model", is_str),
        ("bootgate_gpu_count", is_u64),
        ("bootgate_nvswitch", is_bool),
        ("bootgate_ib_hca_count", is_u64),
        ("bootgate_ib_rate_gbps", is_u64),
        ("bootgate_ib_subnet_manager", is_bool),
        ("bootgate_labels", is_obj),
    ];
    let group_vars: &[(&str, Check)] = &[
        ("bootgate_domain", is_str),
        ("bootgate_ntp_servers", is_list),
        ("bootgate_users", is_list),
        ("bootgate_hosts_entries", is_list),
        ("bootgate_nvidia_repo_url", is_str),
        ("bootgate_nvidia_driver_branch", is_str),
        ("bootgate_nvidia_container_toolkit_repo_url", is_str),
        ("bootgate_doca_repo_url", is_str),
        ("bootgate_kubernetes_version", is_str),
        ("bootgate_kubernetes_repo_url", is_str),
        ("bootgate_kube_api_endpoint", is_str),
        ("bootgate_kube_gpu_taint", is_str),
        ("bootgate_oidc_client_id", is_str),
        ("bootgate_oidc_issuer_url", is_str),
        ("bootgate_oidc_username_claim", is_str),
        ("bootgate_oidc_groups_claim", is_str),
        ("bootgate_oidc_admins", is_list),
        ("bootgate_oidc_viewers", is_list),
    ];
    let hostvars = inv["_meta"]["hostvars"].as_object().unwrap();
    assert_eq!(hostvars.len(), 5, "{inv}");
    for (host, vars) in hostvars {
        for (name, check) in host_vars.iter().chain(group_vars) {
            assert!(
                check(&vars[name]),
                "{host}: {name} missing or of the wrong type: {}",
                vars[name]
            );
        }
        assert_eq!(vars["bootgate_host"], host.as_str());
        for ipoib in vars["bootgate_ipoib"].as_array().unwrap() {
            for key in ["device", "subnet", "address"] {
                assert!(ipoib[key].is_string(), "{host}: bootgate_ipoib {ipoib}");
            }
            assert!(ipoib["prefix"].is_u64(), "{host}: bootgate_ipoib {ipoib}");
        }
    }
    let gpu = &hostvars["gpu-r01-01"];
    assert_eq!(gpu["bootgate_gpu_model"], "H100-SXM5-80GB");
    assert_eq!(gpu["bootgate_gpu_count"], 8);
    assert_eq!(gpu["bootgate_ipoib"][0]["device"], "ib0");
    assert_eq!(hostvars["login-01"]["bootgate_rack"], "");
    assert_eq!(hostvars["login-01"]["bootgate_position"], 0);
}

/// Each play of site.yml reaches the hosts of the group the contract gives it.
#[test]
fn site_plays_reach_the_contract_groups() {
    require_venv_tool!("ansible-playbook");
    let ansible = Ansible::new();
    let out = ansible
        .cmd("ansible-playbook", None)
        .args(["--list-hosts", "-i", "tests/fixtures/inventory", "site.yml"])
        .output()
        .expect("running ansible-playbook");
    assert!(out.status.success(), "{}", output(&out));
    // "  play #2 (infiniband): InfiniBand\tTAGS: [infiniband]" then "    pattern: ..."
    // "    hosts (2):" and one host per line.
    let text = stdout(&out);
    let mut plays: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("play #") {
            let group = rest
                .split_once('(')
                .and_then(|(_, r)| r.split_once(')'))
                .map(|(g, _)| g.to_string())
                .unwrap_or_default();
            plays.push((group, Vec::new()));
        } else if !t.is_empty()
            && !t.starts_with("hosts (")
            && !t.starts_with("pattern:")
            && !t.starts_with("playbook:")
            && let Some((_, hosts)) = plays.last_mut()
        {
            hosts.push(t.to_string());
        }
    }
    for (_, hosts) in &mut plays {
        hosts.sort();
    }
    let want: Vec<(&str, Vec<&str>)> = vec![
        (
            "all",
            vec!["cp-01", "gpu-r01-01", "gw-a", "login-01", "stor-r01-01"],
        ),
        ("infiniband", vec!["gpu-r01-01", "stor-r01-01"]),
        ("gpu_nodes", vec!["gpu-r01-01"]),
        (
            "kube_workers",
            vec!["gpu-r01-01", "login-01", "stor-r01-01"],
        ),
        ("kube_control_plane", vec!["cp-01"]),
    ];
    let got: Vec<(&str, Vec<&str>)> = plays
        .iter()
        .map(|(g, h)| (g.as_str(), h.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(got, want, "{text}");
}

/// The model normalisation and the ibstat parser, table-driven in their doctests.
#[test]
fn filter_plugin_doctests() {
    require_venv_tool!("ansible-playbook");
    let ansible = Ansible::new();
    for plugin in [
        "roles/nvidia_gpu/filter_plugins/bootgate_gpu.py",
        "roles/infiniband/filter_plugins/bootgate_ibstat.py",
    ] {
        let out = ansible
            .cmd("python3", None)
            .args(["-m", "doctest", "-v", plugin])
            .output()
            .expect("running python3 -m doctest");
        assert!(out.status.success(), "{plugin}:\n{}", output(&out));
        assert!(stdout(&out).contains("Test passed."), "{}", output(&out));
    }
}

#[test]
fn verify_passes_on_a_matching_report() {
    require_venv_tool!("ansible-playbook");
    let ansible = Ansible::new();
    let out = ansible.verify("nvidia-smi-8xh100.txt", "ibstat-8x400-active.txt", &[]);
    assert!(out.status.success(), "{}", output(&out));
    // six checks ran, nothing changed, nothing skipped
    assert_eq!(
        recap(&out),
        "localhost : ok=6 changed=0 unreachable=0 failed=0 skipped=0 rescued=0 ignored=0",
        "{}",
        output(&out)
    );
}

#[test]
fn verify_fails_clearly_on_seven_gpus() {
    require_venv_tool!("ansible-playbook");
    let ansible = Ansible::new();
    let out = ansible.verify("nvidia-smi-7xh100.txt", "ibstat-8x400-active.txt", &[]);
    assert!(!out.status.success(), "{}", output(&out));
    assert!(
        stdout(&out).contains(
            "GPU check failed on localhost: expected 8 × H100-SXM5-80GB, \
             found 7 × NVIDIA H100 80GB HBM3"
        ),
        "{}",
        output(&out)
    );
}

#[test]
fn verify_fails_clearly_on_another_gpu_model() {
    require_venv_tool!("ansible-playbook");
    let ansible = Ansible::new();
    let out = ansible.verify("nvidia-smi-8xa100.txt", "ibstat-8x400-active.txt", &[]);
    assert!(!out.status.success(), "{}", output(&out));
    assert!(
        stdout(&out).contains(
            "GPU check failed on localhost: expected 8 × H100-SXM5-80GB, \
             found 8 × NVIDIA A100-SXM4-80GB"
        ),
        "{}",
        output(&out)
    );
}

/// bootgate_gpu_smi_name replaces the token match with an exact comparison.
#[test]
fn verify_uses_the_exact_smi_name_when_given() {
    require_venv_tool!("ansible-playbook");
    let ansible = Ansible::new();
    let tags = ["--tags", "nvidia_gpu"];
    let exact = "bootgate_gpu_smi_name='NVIDIA H100 80GB HBM3'";
    let out = ansible.verify(
        "nvidia-smi-8xh100.txt",
        "-",
        &[&tags[..], &["-e", exact]].concat(),
    );
    assert!(out.status.success(), "{}", output(&out));
    let other = "bootgate_gpu_smi_name='NVIDIA H100 NVL'";
    let out = ansible.verify(
        "nvidia-smi-8xh100.txt",
        "-",
        &[&tags[..], &["-e", other]].concat(),
    );
    assert!(!out.status.success(), "{}", output(&out));
    assert!(
        stdout(&out).contains(
            "expected 8 × H100-SXM5-80GB (nvidia-smi name \"NVIDIA H100 NVL\"), \
             found 8 × NVIDIA H100 80GB HBM3"
        ),
        "{}",
        output(&out)
    );
}

#[test]
fn verify_fails_clearly_when_the_driver_is_not_loaded() {
    require_venv_tool!("ansible-playbook");
    let ansible = Ansible::new();
    let out = {
        let reports = fixtures().join("reports");
        let mut cmd = ansible.cmd("ansible-playbook", Some(&fixtures().join("bin")));
        cmd.env(
            "BOOTGATE_STUB_NVIDIA_SMI",
            reports.join("nvidia-smi-no-driver.txt"),
        )
        .env("BOOTGATE_STUB_EXIT", "9")
        .args([
            "-i",
            "tests/fixtures/local",
            "verify.yml",
            "--tags",
            "nvidia_gpu",
        ]);
        cmd.output().expect("running ansible-playbook")
    };
    assert!(!out.status.success(), "{}", output(&out));
    assert!(
        stdout(&out).contains(
            "GPU check failed on localhost: nvidia-smi exited 9 (driver not loaded?): \
             NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver"
        ),
        "{}",
        output(&out)
    );
}

#[test]
fn verify_fails_clearly_on_a_port_down() {
    require_venv_tool!("ansible-playbook");
    let ansible = Ansible::new();
    let out = ansible.verify("nvidia-smi-8xh100.txt", "ibstat-one-down.txt", &[]);
    assert!(!out.status.success(), "{}", output(&out));
    assert!(
        stdout(&out).contains(
            "InfiniBand check failed on localhost: expected 8 port(s) Active at 400 Gb/s, \
             found 7 of 8 InfiniBand port(s): mlx5_3 port 1 Down (Polling) at 10 Gb/s"
        ),
        "{}",
        output(&out)
    );
}

#[test]
fn verify_fails_clearly_on_a_wrong_rate() {
    require_venv_tool!("ansible-playbook");
    let ansible = Ansible::new();
    let out = ansible.verify("nvidia-smi-8xh100.txt", "ibstat-wrong-rate.txt", &[]);
    assert!(!out.status.success(), "{}", output(&out));
    assert!(
        stdout(&out).contains(
            "InfiniBand check failed on localhost: expected 8 port(s) Active at 400 Gb/s, \
             found 7 of 8 InfiniBand port(s): mlx5_5 port 1 Active (LinkUp) at 200 Gb/s"
        ),
        "{}",
        output(&out)
    );
}

/// The InfiniBand count is checked too: a host expecting more ports than ibstat shows fails.
#[test]
fn verify_fails_clearly_on_missing_ports() {
    require_venv_tool!("ansible-playbook");
    let ansible = Ansible::new();
    let out = ansible.verify(
        "nvidia-smi-8xh100.txt",
        "ibstat-8x400-active.txt",
        &["--tags", "infiniband", "-e", "bootgate_ib_hca_count=9"],
    );
    assert!(!out.status.success(), "{}", output(&out));
    assert!(
        stdout(&out).contains(
            "InfiniBand check failed on localhost: expected 9 port(s) Active at 400 Gb/s, \
             found 8 of 8 InfiniBand port(s) (ibstat)"
        ),
        "{}",
        output(&out)
    );
}

/// `bootgate handoff HOST --check` runs check mode: the read-only checks still run there.
#[test]
fn verify_checks_in_check_mode_too() {
    require_venv_tool!("ansible-playbook");
    let ansible = Ansible::new();
    let out = ansible.verify(
        "nvidia-smi-7xh100.txt",
        "ibstat-8x400-active.txt",
        &["--check"],
    );
    assert!(!out.status.success(), "{}", output(&out));
    assert!(
        stdout(&out).contains("GPU check failed on localhost: expected 8 × H100-SXM5-80GB"),
        "{}",
        output(&out)
    );
}
