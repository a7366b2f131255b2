//! Retention and pages (issue 15, item 3 and the list endpoints): a real daemon in a
//! namespace, flooded by DHCP clients with random MACs (busybox udhcpc), keeps its
//! discovered hosts within `[discovery] max_hosts` and its event log within
//! `[events] max_rows`; the list endpoints page with `limit` and `after` and a
//! `Link: rel="next"` header (curl), refuse a limit over the maximum by name, and the CLI
//! follows the pages. Needs root, iproute2, busybox and curl.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use support::*;

const MAX_HOSTS: usize = 8;
const MAX_ROWS: usize = 100;
const CLIENTS: usize = 40;

fn base() -> String {
    format!("http://{GW_IP}:{HTTP_PORT}")
}

/// GET `path` with curl inside the gw namespace: (status, headers, body).
fn get(lab: &Lab, path: &str) -> (u16, String, String) {
    let out = lab
        .gw
        .cmd("curl")
        .args(["-s", "-i", "-m", "10"])
        .arg(format!("{}{path}", base()))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("GET {path}: no answer: {text}"));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: bad status line: {head}"));
    (code, head.to_string(), body.to_string())
}

/// The target of the `Link: <…>; rel="next"` header, if any.
fn next_of(headers: &str) -> Option<String> {
    headers.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        if !name.eq_ignore_ascii_case("link") || !value.contains("rel=\"next\"") {
            return None;
        }
        let start = value.find('<')? + 1;
        let end = value.find('>')?;
        Some(value[start..end].to_string())
    })
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Every page of `path`, following `Link: rel="next"`; also returns the page sizes.
fn all_pages(lab: &Lab, path: &str) -> (Vec<Value>, Vec<usize>) {
    let mut items = Vec::new();
    let mut sizes = Vec::new();
    let mut next = Some(path.to_string());
    while let Some(p) = next.take() {
        let (code, headers, body) = get(lab, &p);
        assert_eq!(code, 200, "GET {p}: {body}");
        let page = json(&body).as_array().expect("a JSON array").clone();
        sizes.push(page.len());
        items.extend(page);
        next = next_of(&headers);
        assert!(sizes.len() < 1000, "pages never end");
    }
    (items, sizes)
}

/// A locally administered unicast MAC, different for every `n` and every run.
fn random_mac(seed: u64, n: usize) -> String {
    let mut x = seed ^ ((n as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    let b = x.to_le_bytes();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], n as u8
    )
}

/// The sum of every sample of `name` in /metrics (all label sets).
fn metric_sum(lab: &Lab, name: &str) -> f64 {
    let (code, _, body) = get(lab, "/metrics");
    assert_eq!(code, 200);
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn count_kind(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["kind"] == kind).count()
}

#[test]
fn a_flood_of_random_macs_stays_within_the_caps_and_lists_page() {
    require_root!();
    require_peer!("busybox", "busybox");
    require_peer!("curl", "curl");
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    let mut cfg = std::fs::read_to_string(site.config()).unwrap();
    cfg.push_str(&format!(
        "\n[events]\nmax_rows = {MAX_ROWS}\nprune_interval = \"1s\"\n\n[discovery]\nmax_hosts = {MAX_HOSTS}\n"
    ));
    std::fs::write(site.config(), cfg).unwrap();
    let mut daemon = Daemon::start(&lab, &site);

    // The flood: every client a new MAC, each taking a dynamic lease.
    let work = tempfile::tempdir().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut macs = Vec::new();
    for n in 0..CLIENTS {
        let mac = random_mac(seed, n);
        lab.rack.ip(&["link", "set", "eth0", "address", &mac]);
        let lease = udhcpc(&lab.rack, "eth0", work.path(), &[]);
        assert!(lease.is_some(), "client {n} ({mac}) got no lease");
        macs.push(mac);
    }

    // Discovered hosts: never more than the cap once the writer caught up, the oldest
    // expired and counted (their events may already be pruned: the metric says it all).
    let expired = wait_for(Duration::from_secs(30), || {
        let n = metric_sum(&lab, "bootgate_discovered_hosts_expired_total");
        (n >= (CLIENTS - MAX_HOSTS) as f64).then_some(n)
    });
    let (hosts, _) = all_pages(&lab, "/api/v1/hosts");
    let discovered: Vec<&Value> = hosts
        .iter()
        .filter(|h| h["name"].as_str().unwrap().starts_with("discovered-"))
        .collect();
    assert!(
        discovered.len() <= MAX_HOSTS,
        "{} discovered hosts, cap {MAX_HOSTS}",
        discovered.len()
    );
    assert!(
        expired.is_some(),
        "expected {} expired hosts, /metrics says {}",
        CLIENTS - MAX_HOSTS,
        metric_sum(&lab, "bootgate_discovered_hosts_expired_total")
    );
    let (_, _, body) = get(&lab, "/api/v1/events?kind=host-expired&limit=10000");
    let expiry_events = json(&body);
    for e in expiry_events.as_array().unwrap() {
        assert!(
            e["mac"].is_string() && e["detail"]["reason"] == "over-cap",
            "{e}"
        );
    }
    // The newest clients are the ones kept; the inventory hosts all stay.
    let newest = macs.last().unwrap().replace(':', "");
    assert!(
        discovered
            .iter()
            .any(|h| h["name"] == format!("discovered-{newest}")),
        "the newest MAC is kept: {discovered:?}"
    );
    for name in ["vm0", "vm1", "vm2", "vm3"] {
        assert!(hosts.iter().any(|h| h["name"] == name), "{name} expired");
    }

    // The event log: pruned to max_rows by the periodic task, with a summary.
    let mut seen = 0;
    let within = wait_for(Duration::from_secs(30), || {
        let (events, _) = all_pages(&lab, "/api/v1/events?after=0&limit=50");
        seen = events.len();
        (events.len() <= MAX_ROWS && count_kind(&events, "events-pruned") > 0).then_some(events)
    });
    let events = within.unwrap_or_else(|| {
        panic!("the event log never came within {MAX_ROWS} with a prune: {seen} events")
    });
    let summary = events
        .iter()
        .rev()
        .find(|e| e["kind"] == "events-pruned")
        .unwrap();
    assert!(
        summary["detail"]["deleted"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert!(
        metric_sum(&lab, "bootgate_events_pruned_total") > 0.0,
        "no prune counter in /metrics"
    );

    // The audit history says the log was pruned, and since when it reaches.
    let (code, _, body) = get(&lab, &format!("/api/v1/audit/mac/{}", macs[CLIENTS - 1]));
    assert_eq!(code, 200, "{body}");
    let history = json(&body);
    assert_eq!(history["pruned"], true, "{history}");
    assert!(history["events_since"].is_string(), "{history}");

    // Leases page by address: 40 leases, 15 at a time, each address once, in order.
    let (leases, sizes) = all_pages(&lab, "/api/v1/leases?limit=15");
    assert_eq!(sizes, [15, 15, 10], "pages of 15");
    let ips: Vec<std::net::Ipv4Addr> = leases
        .iter()
        .map(|l| l["ip"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(ips.windows(2).all(|w| w[0] < w[1]), "by address: {ips:?}");
    assert_eq!(ips.len(), CLIENTS);
    let mut pool = ips.iter().filter(|ip| ip.octets()[3] >= 100);
    assert!(pool.all(|ip| ip.octets()[3] <= 250));
    // A filter stays on every page.
    let (active, _) = all_pages(&lab, "/api/v1/leases?state=active&limit=7");
    assert_eq!(active.len(), CLIENTS);
    assert!(active.iter().all(|l| l["state"] == "active"));

    // Events page forward from a cursor: no gap, no repeat.
    let (first, headers, body) = get(&lab, "/api/v1/events?after=0&limit=5");
    assert_eq!(first, 200, "{body}");
    let page1 = json(&body);
    let next = next_of(&headers).expect("a full page has a next link");
    let last_id = page1.as_array().unwrap().last().unwrap()["id"]
        .as_i64()
        .unwrap();
    assert!(next.contains(&format!("after={last_id}")), "{next}");
    assert!(next.contains("limit=5"), "{next}");
    let (_, _, body) = get(&lab, &next);
    let page2 = json(&body);
    let ids: Vec<i64> = page1
        .as_array()
        .unwrap()
        .iter()
        .chain(page2.as_array().unwrap())
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 10);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // Without a cursor: the newest `limit`.
    let (_, _, body) = get(&lab, "/api/v1/events?limit=3");
    let newest: Vec<i64> = json(&body)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(newest.len(), 3);
    let max_id = events
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .max()
        .unwrap();
    assert!(newest[2] >= max_id, "{newest:?} vs {max_id}");

    // Hosts by name, a page at a time.
    let (names, sizes) = all_pages(&lab, "/api/v1/hosts?limit=3");
    assert_eq!(names.len(), hosts.len());
    assert_eq!(sizes[0], 3);
    let set: BTreeSet<String> = names
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(set.len(), names.len(), "no host twice");

    // Over the maximum: a 400 naming the field, on every list endpoint.
    for path in [
        "/api/v1/events?limit=10001",
        "/api/v1/leases?limit=10001",
        "/api/v1/hosts?limit=10001",
    ] {
        let (code, _, body) = get(&lab, path);
        assert_eq!(code, 400, "{path}: {body}");
        assert!(
            json(&body)["error"].as_str().unwrap().contains("limit"),
            "{body}"
        );
    }
    let (code, _, body) = get(&lab, "/api/v1/events?after=x");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("after"), "{body}");

    // The CLI follows the pages: every lease, every event.
    let api = base();
    let out = sh(lab
        .gw
        .cmd(bootgate_bin())
        .args(["leases", "list", "-o", "json", "--api", &api]));
    assert_eq!(json(&stdout(&out)).as_array().unwrap().len(), CLIENTS);
    let out = sh(lab
        .gw
        .cmd(bootgate_bin())
        .args(["events", "-o", "json", "--api", &api]));
    let cli_events = json(&stdout(&out));
    assert!(
        cli_events.as_array().unwrap().len() >= events.len() - 5,
        "the CLI reads the whole log"
    );
    let out = sh(lab
        .gw
        .cmd(bootgate_bin())
        .args(["events", "--limit", "4", "-o", "json", "--api", &api]));
    assert_eq!(json(&stdout(&out)).as_array().unwrap().len(), 4);

    daemon.stop();
}

/// A bad `[events]`/`[discovery]` key names the file, the section and the field.
#[test]
fn retention_config_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("inv")).unwrap();
    std::fs::create_dir_all(dir.path().join("img")).unwrap();
    let config = dir.path().join("bootgate.toml");
    let check = |sections: &str| {
        std::fs::write(
            &config,
            format!(
                "state_dir = \"state\"\ninventory = \"inv\"\nboot_images = \"img\"\n\
                 [http]\nlisten = \"127.0.0.1:18080\"\n{sections}"
            ),
        )
        .unwrap();
        let out = bootgate(&["--config", path_str(&config), "check-config"]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        format!("{}{}", stdout(&out), stderr(&out))
    };
    let file = path_str(&config).to_string();
    let text = check("[events]\nretain = \"soon\"\n");
    assert!(
        text.contains(&format!("{file}: events: retain: ")),
        "{text}"
    );
    let text = check("[events]\nmax_rows = 10\n[discovery]\nmax_hosts = 0\n");
    assert!(
        text.contains(&format!("{file}: events: max_rows: 10: at least 100")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{file}: discovery: max_hosts: 0: at least 1")),
        "{text}"
    );
    let text = check("[discovery]\nkeep = 5\n");
    assert!(text.contains("discovery: keep: unknown field"), "{text}");
}
