//! The CLI without a daemon: `check-config` on the shipped sites and on broken ones, JSON
//! output, reading an empty store, and the systemd unit.

mod support;

use std::process::Command;

use serde_json::Value;
use support::*;

#[test]
fn check_config_accepts_the_shipped_sites() {
    for site in ["lab", "example"] {
        let cfg = repo().join("inventory").join(site).join("bootgate.toml");
        let out = bootgate(&["check-config", "--config", path_str(&cfg)]);
        assert!(
            out.status.success(),
            "{site}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(stdout(&out).contains("ok"), "{}", stdout(&out));
        let out = bootgate(&["check-config", "--config", path_str(&cfg), "-o", "json"]);
        let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(v["valid"], true);
    }
    let cfg = repo().join("inventory/example/bootgate.toml");
    let out = bootgate(&["check-config", "--config", path_str(&cfg), "-o", "json"]);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(v["hosts"].as_u64().unwrap() >= 64, "{v}");
}

#[test]
fn check_config_lists_every_problem_as_file_entry_field_reason() {
    let site = Site::from_inventory("lab");
    let f = site.inventory_file("hosts.toml");
    let text = std::fs::read_to_string(&f).unwrap();
    // Two problems at once: a duplicate MAC and an address outside its subnet.
    let text = text
        .replace("52:54:00:a8:28:2f", "52:54:00:d7:8e:1d")
        .replace("10.250.0.13", "10.99.0.13");
    std::fs::write(&f, text).unwrap();
    let out = bootgate(&["check-config", "--config", path_str(&site.config())]);
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<String> = stdout(&out).lines().map(String::from).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let file = path_str(&f).to_string();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{file}: host \"vm1\": macs[0]: "))),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{file}: host \"vm3\": addresses."))),
        "{lines:?}"
    );
    let out = bootgate(&[
        "check-config",
        "--config",
        path_str(&site.config()),
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["problems"].as_array().unwrap().len(), 2);
    for key in ["file", "entry", "field", "reason"] {
        assert!(v["problems"][0].get(key).is_some(), "{v}");
    }
}

#[test]
fn check_config_names_a_missing_config_file() {
    let out = bootgate(&["check-config", "--config", "/nonexistent/bootgate.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("/nonexistent/bootgate.toml"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn read_commands_explain_a_missing_store_and_bad_arguments() {
    let site = Site::from_inventory("lab");
    let out = bootgate(&["--config", path_str(&site.config()), "hosts", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bootgate.db"), "{}", stderr(&out));

    let out = bootgate(&[
        "--config",
        path_str(&site.config()),
        "events",
        "--mac",
        "xx",
    ]);
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    assert!(stderr(&out).contains("--mac"), "{}", stderr(&out));
    let out = bootgate(&[
        "--config",
        path_str(&site.config()),
        "events",
        "--since",
        "soon",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--since"), "{}", stderr(&out));

    let out = bootgate(&["--config", path_str(&site.config()), "reload"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("control.sock"), "{}", stderr(&out));
}

#[test]
fn systemd_unit_verifies_and_keeps_privileges_small() {
    let unit = std::fs::read_to_string(repo().join("systemd/bootgate.service")).unwrap();
    for line in [
        "Type=notify",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_NET_RAW CAP_NET_ADMIN",
        "ProtectSystem=strict",
        "StateDirectory=bootgate",
        "ConfigurationDirectory=bootgate",
        "LoadCredential=",
        "Restart=on-failure",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "unit lacks {line}"
        );
    }
    // systemd-analyze checks that ExecStart's binary exists: point it at the one we built.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("bootgate.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/bootgate", path_str(&bootgate_bin())),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (Debian package systemd) must be installed");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn reset_refuses_an_unknown_escalation_step_naming_it() {
    let out = bootgate(&["reset", "vm0", "--escalation", "ForceRestart,Reboot"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("\"Reboot\"") && err.contains("ForceOff+On"),
        "{err}"
    );
}
