//! Boot identity on the provisioning network (issue 15, docs/threat-model.md), as an
//! attacker on the lab's L2 would try it, with real clients: curl and tftp-hpa from a
//! machine at 10.250.0.77 that holds no lease, against vm0 holding its lease (busybox
//! udhcpc on the rack's NIC with vm0's MAC).
//! - a script carrying a token is served only to the address holding the MAC's lease (HTTP
//!   and TFTP), and a phone-home is accepted only from it, even with the right token;
//! - a re-fetch within the same boot returns the same token (no rotation that would break
//!   the install in progress); a new DHCP exchange brings a new one, and the old is refused;
//! - refusals are counted, and write a bounded number of events per source.

mod support;

use serde_json::Value;
use support::*;

const VM0_MAC: &str = "52:54:00:d7:8e:1d";
const ATTACKER: &str = "10.250.0.77";

fn base() -> String {
    format!("http://{GW_IP}:{HTTP_PORT}")
}

/// The lab site with the test image's files present (the install plan needs them).
fn site_with_image() -> Site {
    let site = Site::from_inventory("lab");
    let test_dir = site.boot_images().join("test");
    std::fs::create_dir_all(&test_dir).unwrap();
    std::fs::write(test_dir.join("vmlinuz"), b"kernel").unwrap();
    std::fs::write(test_dir.join("initrd.gz"), b"initrd").unwrap();
    site
}

fn script_url() -> String {
    format!("{}/ipxe/mac/{VM0_MAC}", base())
}

fn phone_home(ns: &Netns, body: &str) -> (u16, String) {
    phone_home_from(ns, VM0_MAC, body)
}

fn state(lab: &Lab) -> String {
    let (_, body) = curl_in(&lab.gw, &[&format!("{}/api/v1/hosts/vm0", base())]);
    let v: Value = serde_json::from_str(&body).unwrap();
    v["state"].as_str().unwrap().to_string()
}

fn events(lab: &Lab) -> Vec<Value> {
    let (_, body) = curl_in(&lab.gw, &[&format!("{}/api/v1/events?limit=10000", base())]);
    serde_json::from_str::<Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// tftp-hpa `get` of `remote` from `ns`; the file's text, or None.
fn tftp_get(ns: &Netns, remote: &str, dir: &std::path::Path) -> Option<String> {
    let local = dir.join("tftp.out");
    let _ = std::fs::remove_file(&local);
    let _ = ns
        .cmd("timeout")
        .args(["10", "tftp", "-m", "binary", GW_IP, "-c", "get", remote])
        .arg(&local)
        .output()
        .unwrap();
    std::fs::read_to_string(&local)
        .ok()
        .filter(|s| !s.is_empty())
}

fn metric(lab: &Lab, line_prefix: &str) -> f64 {
    let (_, text) = curl_in(&lab.gw, &[&format!("{}/metrics", base())]);
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn only_the_lease_holder_gets_the_token_and_speaks_for_the_mac() {
    require_root!("network namespaces");
    require_peer!(
        "tftp",
        "apt-get install tftp-hpa (scripts/lib.sh installs it)"
    );
    let lab = Lab::new();
    let site = site_with_image();
    let _daemon = Daemon::start(&lab, &site);
    let work = tempfile::tempdir().unwrap();
    let attacker = lab.machine("atk", ATTACKER);
    let tftp_name = format!("hosts/{}.ipxe", VM0_MAC.replace(':', "-"));

    // Before vm0 has a lease, nobody gets its install script: not over HTTP, not over TFTP.
    let (code, body) = curl_in(&attacker, &[&script_url()]);
    assert_eq!(code, 403, "{body}");
    assert!(boot_token(&body).is_none(), "{body}");
    assert!(body.contains("holds no lease"), "{body}");
    assert!(tftp_get(&attacker, &tftp_name, work.path()).is_none());
    assert_eq!(state(&lab), "registered", "a refused fetch moves nothing");

    // vm0 leases its address; its fetches (HTTP, again, and TFTP) all carry one token.
    let vm0_ip = lab.lease_as(VM0_MAC, work.path());
    let (code, script) = curl_in(&lab.rack, &[&script_url()]);
    assert_eq!(code, 200, "{script}");
    let token = boot_token(&script).expect("a token for the lease holder");
    assert_eq!(state(&lab), "provisioning");
    let (_, again) = curl_in(&lab.rack, &[&script_url()]);
    assert_eq!(
        boot_token(&again).as_deref(),
        Some(token.as_str()),
        "re-fetch rotated"
    );
    let over_tftp = tftp_get(&lab.rack, &tftp_name, work.path()).expect("TFTP script");
    assert_eq!(boot_token(&over_tftp).as_deref(), Some(token.as_str()));

    // The attacker, even with the stolen token, cannot report for vm0, nor fetch (and so
    // rotate) its token; vm0's install is undisturbed.
    for body in [
        format!(
            r#"{{"event":"installed","token":"{token}","ssh_host_keys":["ssh-ed25519 AAAA evil"]}}"#
        ),
        format!(r#"{{"event":"failed","token":"{token}"}}"#),
    ] {
        let (code, answer) = phone_home(&attacker, &body);
        assert_eq!(code, 403, "{answer}");
        assert!(answer.contains("holds no lease"), "{answer}");
    }
    let (code, _) = curl_in(&attacker, &[&script_url()]);
    assert_eq!(code, 403);
    assert!(tftp_get(&attacker, &tftp_name, work.path()).is_none());
    assert_eq!(state(&lab), "provisioning");
    let (code, answer) = phone_home(
        &lab.rack,
        &format!(r#"{{"event":"booted","token":"{token}"}}"#),
    );
    assert_eq!(code, 200, "{answer}");

    // A new DHCP exchange is a new boot: a new token, and the old one is refused.
    assert_eq!(lab.lease_as(VM0_MAC, work.path()), vm0_ip);
    let (_, script) = curl_in(&lab.rack, &[&script_url()]);
    let second = boot_token(&script).expect("a token");
    assert_ne!(second, token, "a new DHCP exchange must bring a new token");
    let (code, answer) = phone_home(
        &lab.rack,
        &format!(r#"{{"event":"installed","token":"{token}"}}"#),
    );
    assert_eq!(code, 403, "{answer}");
    assert!(answer.contains("wrong token"), "{answer}");
    let (code, answer) = phone_home(
        &lab.rack,
        &format!(r#"{{"event":"installed","token":"{second}"}}"#),
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(state(&lab), "provisioned");
    // Used up: a replay is refused, and a re-fetch now gets the local-disk script.
    let (code, answer) = phone_home(
        &lab.rack,
        &format!(r#"{{"event":"installed","token":"{second}"}}"#),
    );
    assert_eq!(code, 403, "{answer}");
    assert!(answer.contains("already used"), "{answer}");

    // The refusals are on record, naming the attacker's address.
    let evs = events(&lab);
    let refused: Vec<&Value> = evs
        .iter()
        .filter(|e| e["kind"] == "boot-script-refused")
        .collect();
    assert!(
        refused
            .iter()
            .any(|e| e["detail"]["source"] == ATTACKER && e["actor"] == "http"),
        "{refused:#?}"
    );
    assert!(
        refused
            .iter()
            .any(|e| e["detail"]["source"] == ATTACKER && e["actor"] == "tftp"),
        "{refused:#?}"
    );
    assert!(
        evs.iter()
            .any(|e| e["kind"] == "phone-home-refused" && e["detail"]["peer"] == ATTACKER)
    );
    // Only vm0's own reports moved it.
    let accepted: Vec<&Value> = evs.iter().filter(|e| e["kind"] == "phone-home").collect();
    assert_eq!(accepted.len(), 2, "{accepted:#?}");
    assert!(
        accepted
            .iter()
            .all(|e| e["detail"]["peer"] == vm0_ip.as_str())
    );
}

#[test]
fn refusals_write_a_bounded_number_of_events_per_source() {
    require_root!("network namespaces");
    let lab = Lab::new();
    let site = site_with_image();
    let _daemon = Daemon::start(&lab, &site);
    let attacker = lab.machine("atk", ATTACKER);
    let events_before = events(&lab).len();

    // 60 install-script fetches for vm0, 60 phone-homes for vm0 with a made-up token, and
    // 60 discovery scripts for random MACs, each in one curl (keep-alive).
    let mut args: Vec<String> = vec![];
    for _ in 0..60 {
        args.extend(["-o".into(), "/dev/null".into(), script_url()]);
    }
    let (_, _) = curl_in(
        &attacker,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut args: Vec<String> = vec![];
    for _ in 0..60 {
        args.extend([
            "-o".into(),
            "/dev/null".into(),
            "-X".into(),
            "POST".into(),
            "--data".into(),
            r#"{"event":"installed","token":"00000000000000000000000000000000"}"#.into(),
            format!("{}/api/v1/hosts/{VM0_MAC}/events", base()),
            "--next".into(),
        ]);
    }
    args.pop();
    let (_, _) = curl_in(
        &attacker,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut args: Vec<String> = vec![];
    for i in 0..60u32 {
        args.extend([
            "-o".into(),
            "/dev/null".into(),
            format!(
                "{}/ipxe/mac/02:00:00:00:{:02x}:{:02x}",
                base(),
                i / 256,
                i % 256
            ),
        ]);
    }
    let (_, _) = curl_in(
        &attacker,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    // All 120 refusals counted; the log got at most the per-source budget (5 a minute) of
    // events from the attacker, across all three kinds.
    assert!(
        metric(&lab, "bootgate_refused_total{what=\"script\"}") >= 60.0,
        "script refusals not counted"
    );
    assert!(metric(&lab, "bootgate_refused_total{what=\"phone-home\"}") >= 60.0);
    let evs = events(&lab);
    let from_attacker = evs[events_before..]
        .iter()
        .filter(|e| e["detail"]["source"] == ATTACKER || e["detail"]["peer"] == ATTACKER)
        .count();
    assert!(
        (1..=5).contains(&from_attacker),
        "{from_attacker} events from one source: {:#?}",
        &evs[events_before..]
    );
    assert_eq!(state(&lab), "registered");
}
