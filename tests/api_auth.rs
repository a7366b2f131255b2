//! API bearer tokens against the real daemon in a namespace: mutating endpoints need an
//! admin token (401 without or with an unknown one, 403 with a read token), reads are open
//! or closed by config, the CLI sends the token, events name the token, a tokens file
//! others can read stops the daemon at start and fails a reload (the tokens in force stay).

mod support;

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;
use support::*;

/// (status, WWW-Authenticate header, body) of `curl -X METHOD` inside the gw namespace.
fn call(lab: &Lab, method: &str, path: &str, token: Option<&str>) -> (u16, String, String) {
    let mut cmd = lab.gw.cmd("curl");
    cmd.args(["-s", "-m", "5", "-X", method, "-D", "-"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    cmd.arg(format!("http://{GW_IP}:{HTTP_PORT}{path}"));
    let text = stdout(&sh(&mut cmd));
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let challenge = head
        .lines()
        .find_map(|l| l.strip_prefix("www-authenticate: "))
        .unwrap_or("")
        .to_string();
    (status, challenge, body.to_string())
}

/// Two tokens (`ops` admin, `grafana` read) in a 0600 file, and the config pointing at it.
fn with_tokens(site: &Site, open_reads: bool) -> (String, String) {
    let mut entries = String::new();
    let mut tokens = vec![];
    for (name, scope) in [("ops", "admin"), ("grafana", "read")] {
        let out = sh(std::process::Command::new(bootgate_bin())
            .args(["token", "new", name, "--scope", scope, "--output", "json"]));
        let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
        entries.push_str(v["entry"].as_str().unwrap());
        tokens.push(v["token"].as_str().unwrap().to_string());
    }
    let file = site.dir.path().join("tokens.toml");
    std::fs::write(&file, entries).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = std::fs::read_to_string(site.config()).unwrap();
    let cfg = cfg.replace(
        "[http]\n",
        &format!(
            "[http]\ntokens = \"{}\"\nopen_reads = {open_reads}\n",
            file.display()
        ),
    );
    std::fs::write(site.config(), cfg).unwrap();
    (tokens[0].clone(), tokens[1].clone())
}

#[test]
fn mutations_need_an_admin_token_and_reads_stay_open_by_default() {
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    let (admin, read) = with_tokens(&site, true);
    let _daemon = Daemon::start(&lab, &site);

    let (code, _, body) = call(&lab, "GET", "/api/v1/hosts", None);
    assert_eq!(code, 200, "open reads: {body}");

    let (code, challenge, body) = call(&lab, "POST", "/api/v1/reload", None);
    assert_eq!(code, 401, "{body}");
    assert!(challenge.starts_with("Bearer"), "{challenge:?}");
    assert!(body.contains("authentication required"), "{body}");

    let (code, challenge, _) = call(&lab, "POST", "/api/v1/reload", Some("bgt_forged"));
    assert_eq!(code, 401);
    assert!(challenge.contains("invalid_token"), "{challenge:?}");

    let (code, challenge, body) = call(&lab, "POST", "/api/v1/reload", Some(&read));
    assert_eq!(code, 403, "{body}");
    assert!(challenge.contains("insufficient_scope"), "{challenge:?}");
    assert!(body.contains("grafana") && body.contains("admin"), "{body}");
    let (code, _, _) = call(
        &lab,
        "POST",
        "/api/v1/leases/10.250.0.10/release",
        Some(&read),
    );
    assert_eq!(code, 403);

    let (code, _, body) = call(&lab, "POST", "/api/v1/reload", Some(&admin));
    assert_eq!(code, 200, "{body}");
    let out: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(out["ok"], true);
    assert_eq!(out["generation"], 2);

    // a valid admin request for a lease that does not exist is 404, naming the address
    // (a lease that is not active is 409, the store down 503: ops::ReleaseError)
    let (code, _, body) = call(
        &lab,
        "POST",
        "/api/v1/leases/10.250.0.99/release",
        Some(&admin),
    );
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("10.250.0.99"), "{body}");
    let (code, _, body) = call(
        &lab,
        "POST",
        "/api/v1/leases/10.250.0.999/release",
        Some(&admin),
    );
    assert_eq!(code, 400, "{body}");

    // the CLI sends the token from the environment, and says what to do without one
    let api = format!("http://{GW_IP}:{HTTP_PORT}");
    let out = lab
        .gw
        .cmd(bootgate_bin())
        .args(["reload", "--api", &api])
        .env("BOOTGATE_TOKEN", &admin)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("generation 3"), "{}", stdout(&out));
    let out = lab
        .gw
        .cmd(bootgate_bin())
        .args(["reload", "--api", &api])
        .env_remove("BOOTGATE_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("401") && err.contains("BOOTGATE_TOKEN"),
        "{err}"
    );

    // the event log names the token that acted, never the token itself
    let (_, _, body) = call(&lab, "GET", "/api/v1/events?kind=inventory-loaded", None);
    assert!(body.contains("\"api:ops\""), "{body}");
    assert!(!body.contains(&admin), "a token leaked into the event log");
}

#[test]
fn closed_reads_need_a_read_token() {
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    let (admin, read) = with_tokens(&site, false);
    let _daemon = Daemon::start(&lab, &site);
    let (code, _, _) = call(&lab, "GET", "/api/v1/leases", None);
    assert_eq!(code, 401);
    for t in [&read, &admin] {
        let (code, _, body) = call(&lab, "GET", "/api/v1/leases", Some(t));
        assert_eq!(code, 200, "{body}");
    }
    // the boot path and health stay open: firmware can't send a token (an unknown MAC's
    // discovery script: install scripts also need the boot identity, see boot_identity.rs)
    let (code, _, _) = call(&lab, "GET", "/healthz", None);
    assert_eq!(code, 200);
    let (code, _, _) = call(&lab, "GET", "/ipxe/mac/02:00:00:00:00:99", None);
    assert_eq!(code, 200);
}

#[test]
fn a_tokens_file_others_can_read_stops_the_daemon() {
    let site = Site::from_inventory("lab");
    site.write_config("127.0.0.1:0");
    with_tokens(&site, true);
    let file = site.dir.path().join("tokens.toml");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = bootgate(&["--config", path_str(&site.config()), "serve"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("tokens.toml") && err.contains("0644") && err.contains("chmod 600"),
        "{err}"
    );
}

#[test]
fn a_tokens_file_that_fails_on_reload_fails_the_reload() {
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    let (admin, _) = with_tokens(&site, true);
    let _daemon = Daemon::start(&lab, &site);
    let file = site.dir.path().join("tokens.toml");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();

    // the control socket (`bootgate reload`): refused, exit code 1, the reason named
    let out = bootgate(&["--config", path_str(&site.config()), "reload", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["generation"], 1, "nothing swapped: {v}");
    assert!(v["problems"].to_string().contains("tokens.toml"), "{v}");

    // the API: 422; the admin token in force before still authorizes (the set stays)
    let (code, _, body) = call(&lab, "POST", "/api/v1/reload", Some(&admin));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("0644"), "{body}");
    let (code, _, body) = call(&lab, "GET", "/healthz", None);
    assert_eq!(code, 200, "a refused reload is not an outage: {body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["inventory"]["last_reload_error"]
            .to_string()
            .contains("tokens.toml"),
        "{health}"
    );
    let (code, _, body) = call(&lab, "GET", "/api/v1/events?kind=inventory-rejected", None);
    assert_eq!(code, 200);
    assert!(
        body.contains("tokens.toml"),
        "an event names the file: {body}"
    );

    // fixed: the reload goes through and /healthz is clean again
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, _, body) = call(&lab, "POST", "/api/v1/reload", Some(&admin));
    assert_eq!(code, 200, "{body}");
    let (_, _, body) = call(&lab, "GET", "/healthz", None);
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok", "{health}");
}
