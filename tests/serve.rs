//! `bootgate serve` for real: in a network namespace, with systemd's notify protocol, the
//! HTTP API, the CLI against it and against the store, reloads (good and bad) and SIGTERM.
//! Needs root and iproute2 (CI runs as root; scripts/test.sh installs what is missing).

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn api(lab: &Lab, path: &str) -> (u16, String) {
    curl(&lab.gw, &format!("http://{GW_IP}:{HTTP_PORT}{path}"))
        .unwrap_or_else(|| panic!("GET {path}: no answer"))
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn host_names(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn serve_in_namespace_answers_api_reloads_and_stops_on_sigterm() {
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    let mut daemon = Daemon::start(&lab, &site);

    // /healthz and /metrics
    let (code, body) = api(&lab, "/healthz");
    assert_eq!(code, 200, "{body}");
    let health = json(&body);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["inventory"]["hosts"], 4);
    assert_eq!(health["inventory"]["generation"], 1);
    let (code, metrics) = api(&lab, "/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("bootgate_inventory_hosts 4"),
        "metrics: {metrics}"
    );
    assert!(metrics.contains("bootgate_hosts{state=\"registered\"} 4"));

    // The CLI against the running daemon (inside the namespace, over HTTP) …
    let out = sh(lab.gw.cmd(bootgate_bin()).args([
        "hosts",
        "list",
        "--output",
        "json",
        "--api",
        &format!("http://{GW_IP}:{HTTP_PORT}"),
    ]));
    let hosts = json(&stdout(&out));
    assert_eq!(host_names(&hosts), ["vm0", "vm1", "vm2", "vm3"]);
    let vm0 = &hosts[0];
    for field in ["name", "state", "macs", "ip", "rack", "role"] {
        assert!(vm0.get(field).is_some(), "host JSON lacks {field}: {vm0}");
    }
    assert_eq!(vm0["state"], "registered");
    assert_eq!(vm0["ip"], "10.250.0.10");
    assert_eq!(vm0["macs"][0], "52:54:00:d7:8e:1d");

    let out = sh(lab.gw.cmd(bootgate_bin()).args([
        "hosts",
        "show",
        "vm2",
        "-o",
        "json",
        "--api",
        &format!("http://{GW_IP}:{HTTP_PORT}"),
    ]));
    let vm2 = json(&stdout(&out));
    assert_eq!(vm2["name"], "vm2");
    assert_eq!(vm2["spec"]["macs"][0], "52:54:00:e0:a7:44");
    assert_eq!(vm2["events"][0]["kind"], "host-added");

    // … and reading the store directly gives the same hosts.
    assert_eq!(
        host_names(&site.cli_json(&["hosts", "list"])),
        ["vm0", "vm1", "vm2", "vm3"]
    );

    // Events were written for every inventory host.
    let (_, body) = api(&lab, "/api/v1/events?kind=host-added");
    let added: Vec<String> = json(&body)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["host"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(added, ["vm0", "vm1", "vm2", "vm3"]);
    let (code, body) = api(&lab, "/api/v1/events?mac=nonsense");
    assert_eq!(code, 400);
    assert!(body.contains("mac"), "{body}");
    let (code, _) = api(&lab, "/api/v1/hosts/vm9");
    assert_eq!(code, 404);

    // A broken edit: vm3 takes vm0's MAC. Reload is refused, the last good inventory stays.
    let hosts_toml = site.inventory_file("hosts.toml");
    let good = std::fs::read_to_string(&hosts_toml).unwrap();
    let broken = good.replace("52:54:00:12:72:62", "52:54:00:d7:8e:1d");
    assert_ne!(good, broken, "lab hosts.toml should hold vm3's MAC");
    std::fs::write(&hosts_toml, &broken).unwrap();
    let out = bootgate(&["--config", path_str(&site.config()), "reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("hosts.toml") && text.contains("host \"vm3\"") && text.contains("macs"),
        "reload output should name file, entry and field: {text}"
    );
    let (_, body) = api(&lab, "/healthz");
    let health = json(&body);
    assert_eq!(health["inventory"]["generation"], 1);
    assert_eq!(health["inventory"]["hosts"], 4);
    assert!(
        health["inventory"]["last_reload_error"].is_array(),
        "{health}"
    );
    let (_, body) = api(&lab, "/api/v1/hosts/vm3");
    assert_eq!(json(&body)["macs"][0], "52:54:00:12:72:62");
    let (_, body) = api(&lab, "/api/v1/events?kind=inventory-rejected");
    assert_eq!(json(&body).as_array().unwrap().len(), 1);

    // A good edit through SIGHUP: vm3 leaves the inventory.
    let without_vm3 = cut_host(&good, "vm3");
    std::fs::write(&hosts_toml, without_vm3).unwrap();
    daemon.signal("-HUP");
    let health = wait_for(Duration::from_secs(10), || {
        let h = json(&api(&lab, "/healthz").1);
        (h["inventory"]["generation"] == 2).then_some(h)
    })
    .expect("SIGHUP reload did not happen");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["inventory"]["hosts"], 3);
    let (_, body) = api(&lab, "/api/v1/events?host=vm3&kind=host-removed");
    assert_eq!(json(&body).as_array().unwrap().len(), 1);

    // And back through `bootgate reload`, which reports what changed.
    std::fs::write(&hosts_toml, &good).unwrap();
    let out = bootgate(&["--config", path_str(&site.config()), "reload", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = json(&stdout(&out));
    assert_eq!(r["generation"], 3);
    assert_eq!(r["added"], serde_json::json!(["vm3"]));

    // SIGTERM: STOPPING=1, exit 0, within 2 s.
    let t0 = Instant::now();
    daemon.signal("-TERM");
    let msg = daemon.next_notify();
    assert!(msg.contains("STOPPING=1"), "{msg:?}");
    let status = loop {
        if let Some(s) = daemon.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "daemon still running 2 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    assert!(!site.state_dir().join("control.sock").exists());
}

#[test]
fn serve_refuses_to_start_on_an_invalid_inventory() {
    let site = Site::from_inventory("lab");
    site.write_config("127.0.0.1:0");
    let f = site.inventory_file("hosts.toml");
    let text = std::fs::read_to_string(&f).unwrap();
    std::fs::write(&f, text.replace("10.250.0.11", "10.250.7.11")).unwrap();
    let out = bootgate(&["--config", path_str(&site.config()), "serve"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("hosts.toml") && err.contains("host \"vm1\"") && err.contains("addresses"),
        "{err}"
    );
}

/// Removes the `[[host]]` table named `name` from a hosts.toml text.
fn cut_host(text: &str, name: &str) -> String {
    let mut out = String::new();
    for (i, block) in text.split("[[host]]").enumerate() {
        if i > 0 && block.contains(&format!("name = \"{name}\"")) {
            continue;
        }
        if i > 0 {
            out.push_str("[[host]]");
        }
        out.push_str(block);
    }
    out
}
