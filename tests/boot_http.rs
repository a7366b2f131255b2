//! The HTTP boot side against a running daemon in a namespace, with curl as the client:
//! per-host iPXE scripts by host state, images with HEAD/Range/ETag, and the phone-home
//! endpoint with its per-boot token (refusals recorded; the token lives in the store, so a
//! restart between script and phone-home is harmless). Also the same scripts as generated
//! TFTP files, fetched with tftp-hpa's `tftp` and `atftp`.

mod support;

use serde_json::Value;
use support::*;

const VM0_MAC: &str = "52:54:00:d7:8e:1d";

fn base() -> String {
    format!("http://{GW_IP}:{HTTP_PORT}")
}

/// curl in the gw namespace with extra arguments; returns (status, headers+body text).
fn curl_args(lab: &Lab, args: &[&str]) -> (u16, String) {
    curl_in(&lab.gw, args)
}

fn host(lab: &Lab, name: &str) -> Value {
    let (code, body) = curl_args(lab, &[&format!("{}/api/v1/hosts/{name}", base())]);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A phone-home from the rack's client NIC (which holds the MAC's lease: see
/// `Lab::lease_as`).
fn phone_home(lab: &Lab, mac: &str, body: &str) -> (u16, String) {
    phone_home_from(&lab.rack, mac, body)
}

#[test]
fn install_script_token_and_phone_home_drive_the_host_state() {
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    let test_dir = site.boot_images().join("test");
    std::fs::create_dir_all(&test_dir).unwrap();
    let kernel: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(test_dir.join("vmlinuz"), &kernel).unwrap();
    std::fs::write(test_dir.join("initrd.gz"), b"initrd").unwrap();
    let _daemon = Daemon::start(&lab, &site);
    let work = tempfile::tempdir().unwrap();

    // A registered host gets the install script with a token (fetched from the address
    // holding vm0's lease); it moves to provisioning.
    assert_eq!(host(&lab, "vm0")["state"], "registered");
    let vm0_ip = lab.lease_as(VM0_MAC, work.path());
    let (code, script) = curl_in(&lab.rack, &[&format!("{}/ipxe/mac/{VM0_MAC}", base())]);
    assert_eq!(code, 200, "{script}");
    assert!(script.starts_with("#!ipxe"), "{script}");
    assert!(
        script.contains(&format!(
            "kernel {}/images/test/vmlinuz initrd=initrd.gz",
            base()
        )),
        "{script}"
    );
    assert!(script.contains(&format!("initrd {}/images/test/initrd.gz", base())));
    let token = boot_token(&script).expect("token on the kernel line");
    assert_eq!(token.len(), 32);
    assert_eq!(host(&lab, "vm0")["state"], "provisioning");

    // Images: HEAD, Range, ETag / If-None-Match.
    let url = format!("{}/images/test/vmlinuz", base());
    let (code, head) = curl_args(&lab, &["-I", &url]);
    assert_eq!(code, 200);
    assert!(
        head.to_ascii_lowercase().contains("content-length: 100000"),
        "{head}"
    );
    let etag = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("etag: ")
                .or_else(|| l.strip_prefix("ETag: "))
        })
        .expect("ETag header")
        .trim()
        .to_string();
    let (code, part) = curl_args(&lab, &["-r", "10-19", &url]);
    assert_eq!(code, 206);
    assert_eq!(part.as_bytes(), &kernel[10..20]);
    let (code, _) = curl_args(&lab, &["-H", &format!("If-None-Match: {etag}"), &url]);
    assert_eq!(code, 304);
    // Whole GETs come from the RAM image cache: the same bytes and headers as ServeDir's
    // (the ETag of the HEAD above), and a replaced file is served new at once.
    let fetched = tempfile::NamedTempFile::new().unwrap();
    let out = fetched.path().to_str().unwrap();
    for _ in 0..2 {
        let (code, headers) = curl_args(&lab, &["-D", "-", "-o", out, &url]);
        assert_eq!(code, 200, "{headers}");
        assert!(headers.contains(&etag), "{headers}");
        assert_eq!(std::fs::read(out).unwrap(), kernel);
    }
    let replaced: Vec<u8> = kernel.iter().rev().copied().chain([7u8; 10]).collect();
    std::fs::write(test_dir.join("vmlinuz.new"), &replaced).unwrap();
    std::fs::rename(test_dir.join("vmlinuz.new"), test_dir.join("vmlinuz")).unwrap();
    let (code, headers) = curl_args(&lab, &["-D", "-", "-o", out, &url]);
    assert_eq!(code, 200);
    assert!(!headers.contains(&etag), "{headers}");
    assert_eq!(std::fs::read(out).unwrap(), replaced);
    std::fs::write(test_dir.join("vmlinuz"), &kernel).unwrap();
    let (_, metrics) = curl_args(&lab, &[&format!("{}/metrics", base())]);
    assert!(
        metrics.contains("bootgate_image_cache_total{result=\"hit\"} 1")
            && metrics.contains("bootgate_image_cache_total{result=\"miss\"} 2"),
        "{metrics}"
    );
    let (code, _) = curl_args(&lab, &[&format!("{}/images/../bootgate.toml", base())]);
    assert_ne!(code, 200);

    // Phone-home: no token, a wrong token → 403 and an event; the right one moves the state.
    let (code, _) = phone_home(&lab, VM0_MAC, r#"{"event":"booted"}"#);
    assert_eq!(code, 403);
    let (code, body) = phone_home(
        &lab,
        VM0_MAC,
        r#"{"event":"booted","token":"00000000000000000000000000000000"}"#,
    );
    assert_eq!(code, 403, "{body}");
    // The right token from an address that does not hold vm0's lease (the gateway's own).
    let (code, body) = phone_home_from(
        &lab.gw,
        VM0_MAC,
        &format!(r#"{{"event":"installed","token":"{token}"}}"#),
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("holds no lease"), "{body}");
    let (code, body) = phone_home(
        &lab,
        VM0_MAC,
        &format!(
            r#"{{"event":"booted","ip":"10.250.0.99","token":"{token}","ssh_host_keys":["ssh-ed25519 AAAAC3Nza test"]}}"#
        ),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(host(&lab, "vm0")["state"], "provisioning");
    let (code, _) = phone_home(
        &lab,
        VM0_MAC,
        &format!(r#"{{"event":"installed","token":"{token}"}}"#),
    );
    assert_eq!(code, 200);
    assert_eq!(host(&lab, "vm0")["state"], "provisioned");
    // The token was for that boot only.
    let (code, _) = phone_home(
        &lab,
        VM0_MAC,
        &format!(r#"{{"event":"failed","token":"{token}"}}"#),
    );
    assert_eq!(code, 403);
    // Malformed bodies are 400 with the reason.
    let (code, body) = phone_home(&lab, VM0_MAC, r#"{"event":"exploded"}"#);
    assert_eq!(code, 400, "{body}");

    // A provisioned host boots from its disk; an unknown MAC gets the discovery script.
    let (_, script) = curl_args(&lab, &[&format!("{}/ipxe/mac/{VM0_MAC}", base())]);
    assert!(script.contains("boots from the local disk"), "{script}");
    let (_, script) = curl_args(&lab, &[&format!("{}/ipxe/mac/02:00:00:00:00:99", base())]);
    assert!(
        script.contains("unknown machine 02:00:00:00:00:99"),
        "{script}"
    );

    let (_, body) = curl_args(&lab, &[&format!("{}/api/v1/events?host=vm0", base())]);
    let kinds: Vec<String> = serde_json::from_str::<Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .filter(|k| !k.starts_with("lease-"))
        .collect();
    let want = [
        "host-added",
        "host-state-changed",
        "boot-script-served",
        "phone-home-refused",
        "phone-home-refused",
        "phone-home-refused",
        "phone-home",
        "phone-home",
        "host-state-changed",
        "phone-home-refused",
        "boot-script-served",
    ];
    assert_eq!(kinds, want, "{kinds:?}");
    let phone: Value = serde_json::from_str::<Value>(&body).unwrap();
    let booted = phone
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "phone-home")
        .unwrap();
    assert_eq!(
        booted["detail"]["ssh_host_keys"][0],
        "ssh-ed25519 AAAAC3Nza test"
    );
    // The event's address is the one that proved the lease, not what the body claimed.
    assert_eq!(booted["ip"], vm0_ip.as_str());
    assert_eq!(booted["detail"]["reported_ip"], "10.250.0.99");
}

/// A test lab whose kernel and initrd exist (the install plan needs the image files).
fn site_with_image() -> Site {
    let site = Site::from_inventory("lab");
    let test_dir = site.boot_images().join("test");
    std::fs::create_dir_all(&test_dir).unwrap();
    std::fs::write(test_dir.join("vmlinuz"), b"kernel").unwrap();
    std::fs::write(test_dir.join("initrd.gz"), b"initrd").unwrap();
    site
}

fn token_of(script: &str) -> String {
    boot_token(script).unwrap_or_else(|| panic!("no token in {script}"))
}

fn event_kinds(lab: &Lab, host: &str) -> Vec<(String, String)> {
    let (_, body) = curl_args(lab, &[&format!("{}/api/v1/events?host={host}", base())]);
    serde_json::from_str::<Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["actor"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn phone_home_token_survives_a_daemon_restart() {
    let lab = Lab::new();
    let site = site_with_image();
    let mut daemon = Daemon::start(&lab, &site);
    let work = tempfile::tempdir().unwrap();
    lab.lease_as(VM0_MAC, work.path());
    let url = format!("{}/ipxe/mac/{VM0_MAC}", base());
    let (code, script) = curl_in(&lab.rack, &[&url]);
    assert_eq!(code, 200, "{script}");
    let token = token_of(&script);
    assert_eq!(host(&lab, "vm0")["state"], "provisioning");
    assert!(daemon.stop().success());
    drop(daemon);

    // A new process: the token it knows is the one in the store, and a re-fetch within the
    // same boot (same lease binding, same site key) gets that token again.
    let _daemon = Daemon::start(&lab, &site);
    let (code, script) = curl_in(&lab.rack, &[&url]);
    assert_eq!(code, 200, "{script}");
    assert_eq!(token_of(&script), token);
    let (code, body) = phone_home(
        &lab,
        VM0_MAC,
        r#"{"event":"booted","token":"00000000000000000000000000000000"}"#,
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("wrong token"), "{body}");
    let (code, body) = phone_home(
        &lab,
        VM0_MAC,
        &format!(r#"{{"event":"booted","token":"{token}"}}"#),
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = phone_home(
        &lab,
        VM0_MAC,
        &format!(r#"{{"event":"installed","token":"{token}"}}"#),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(host(&lab, "vm0")["state"], "provisioned");
    // Used up by `installed`.
    let (code, body) = phone_home(
        &lab,
        VM0_MAC,
        &format!(r#"{{"event":"installed","token":"{token}"}}"#),
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("already used"), "{body}");
    let kinds: Vec<String> = event_kinds(&lab, "vm0").into_iter().map(|k| k.0).collect();
    let tail = &kinds[kinds.len() - 5..];
    assert_eq!(
        tail,
        [
            "phone-home-refused",
            "phone-home",
            "phone-home",
            "host-state-changed",
            "phone-home-refused"
        ],
        "{kinds:?}"
    );
}

/// Fetches `remote` from the daemon's TFTP server with `client` ("tftp" = tftp-hpa, or
/// "atftp") from the rack namespace; returns the file's text.
fn tftp_get(lab: &Lab, client: &str, remote: &str, dir: &std::path::Path) -> Option<String> {
    let local = dir.join(format!("{client}.out"));
    let _ = std::fs::remove_file(&local);
    let out = match client {
        "tftp" => lab
            .rack
            .cmd("timeout")
            .args(["10", "tftp", "-m", "binary", GW_IP, "-c", "get", remote])
            .arg(&local)
            .output()
            .unwrap(),
        _ => lab
            .rack
            .cmd("timeout")
            .args([
                "10",
                "atftp",
                "--option",
                "blksize 1468",
                "-g",
                "-r",
                remote,
                "-l",
            ])
            .arg(&local)
            .arg(GW_IP)
            .output()
            .unwrap(),
    };
    if !out.status.success() {
        eprintln!("{client} get {remote}: {}", stderr(&out));
    }
    std::fs::read_to_string(&local)
        .ok()
        .filter(|s| !s.is_empty())
}

#[test]
fn tftp_serves_the_same_scripts_and_rescue_boots_carry_a_token() {
    let lab = Lab::new();
    let site = site_with_image();
    let dir = tempfile::tempdir().unwrap();

    // vm0 in maintenance (as an operator would leave it), before the daemon starts.
    {
        let mut daemon = Daemon::start(&lab, &site);
        assert!(daemon.stop().success());
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store =
            bootgate::store::sqlite::SqliteStore::open(&site.state_dir().join("bootgate.db"))
                .await
                .unwrap();
        use bootgate::store::HostStore;
        store
            .set_host_state(
                "vm0",
                None,
                bootgate::types::HostState::Maintenance,
                "test",
                serde_json::Value::Null,
            )
            .await
            .unwrap();
        store.close().await;
    });
    let _daemon = Daemon::start(&lab, &site);
    lab.lease_as(VM0_MAC, dir.path());

    // tftp-hpa: the rescue script, with a token, exactly what HTTP would render. (Dashes:
    // tftp-hpa reads `name:file` as host and file.)
    let script = tftp_get(
        &lab,
        "tftp",
        &format!("hosts/{}.ipxe", VM0_MAC.replace(':', "-")),
        dir.path(),
    )
    .expect("tftp-hpa fetched the generated script");
    assert!(script.starts_with("#!ipxe"), "{script}");
    assert!(script.contains("rescue bootgate.url="), "{script}");
    let token = token_of(&script);
    assert_eq!(token.len(), 32);
    // The rescue boot phones home with it; the host stays in maintenance.
    let (code, body) = phone_home(
        &lab,
        VM0_MAC,
        &format!(r#"{{"event":"booted","token":"{token}"}}"#),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(host(&lab, "vm0")["state"], "maintenance");
    let (code, _) = phone_home(&lab, VM0_MAC, r#"{"event":"booted","token":"nope"}"#);
    assert_eq!(code, 403);

    // atftp, with the MAC as iPXE's ${mac} spells it: an unknown machine gets discovery.
    let script = tftp_get(&lab, "atftp", "hosts/02:00:00:00:00:99.ipxe", dir.path())
        .expect("atftp fetched the generated script");
    assert!(
        script.contains("unknown machine 02:00:00:00:00:99"),
        "{script}"
    );
    // Names that are not a host script still come from the directory (here: absent).
    assert!(tftp_get(&lab, "tftp", "hosts/not-a-mac.ipxe", dir.path()).is_none());

    let evs = event_kinds(&lab, "vm0");
    assert!(
        evs.contains(&("boot-script-served".into(), "tftp".into())),
        "{evs:?}"
    );
    assert!(evs.iter().any(|e| e.0 == "phone-home-refused"), "{evs:?}");
}

/// `boot-images/` holds a symlink to a file outside it: every way of asking for it under
/// `/images/` (plain, ranged, conditional, HEAD, `%`-encoded) is refused by the path jail
/// before a file is read, and none of the secret leaves; a legal file keeps ServeDir's
/// answers (206 to a range, 304 to its own ETag).
#[test]
fn images_never_follow_a_symlink_out_of_boot_images() {
    require_root!();
    let lab = Lab::new();
    let site = site_with_image();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.txt");
    std::fs::write(&secret, b"TOP-SECRET outside boot-images\n").unwrap();
    std::os::unix::fs::symlink(&secret, site.boot_images().join("test/leak")).unwrap();
    // A sibling of boot-images/, reachable only by climbing out of it.
    std::fs::write(site.dir.path().join("sibling.txt"), b"TOP-SECRET sibling\n").unwrap();
    let _daemon = Daemon::start(&lab, &site);

    let images = format!("{}/images", base());
    let leak = format!("{images}/test/leak");
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("GET", vec![leak.clone()]),
        ("Range", vec!["-r".into(), "0-3".into(), leak.clone()]),
        (
            "If-None-Match",
            vec!["-H".into(), "If-None-Match: \"x\"".into(), leak.clone()],
        ),
        (
            "If-Modified-Since",
            vec![
                "-H".into(),
                "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT".into(),
                leak.clone(),
            ],
        ),
        ("HEAD", vec!["-I".into(), leak.clone()]),
        ("%2F", vec![format!("{images}/test%2Fleak")]),
        ("%6c", vec![format!("{images}/test/%6ceak")]),
        (
            "%2e%2e to the link",
            vec![format!("{images}/ipxe/%2e%2e/test/leak")],
        ),
        (
            "%2e%2e%2F out of the root",
            vec![format!("{images}/%2e%2e%2Fsibling.txt")],
        ),
        (
            "%2e%2e/ out of the root, ranged",
            vec![
                "-r".into(),
                "0-3".into(),
                format!("{images}/test/%2e%2e/%2e%2e/sibling.txt"),
            ],
        ),
    ];
    for (what, args) in cases {
        let mut all = vec!["--path-as-is", "-D", "-"];
        all.extend(args.iter().map(String::as_str));
        let (code, out) = curl_args(&lab, &all);
        assert_eq!(code, 403, "{what}: {out}");
        assert!(!out.contains("TOP-SECRET"), "{what} leaked: {out}");
        assert!(!out.to_ascii_lowercase().contains("etag"), "{what}: {out}");
    }

    // A legal file: the same requests get ServeDir's answers.
    let url = format!("{images}/test/vmlinuz");
    let (code, part) = curl_args(&lab, &["-r", "0-3", &url]);
    assert_eq!((code, part.as_str()), (206, "kern"));
    let (code, head) = curl_args(&lab, &["-I", &url]);
    assert_eq!(code, 200, "{head}");
    let etag = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("etag")
                .then(|| value.trim().to_string())
        })
        .expect("ETag header");
    let (code, _) = curl_args(&lab, &["-H", &format!("If-None-Match: {etag}"), &url]);
    assert_eq!(code, 304);
    let (code, body) = curl_args(&lab, &[&format!("{images}/test%2Fvmlinuz")]);
    assert_eq!((code, body.as_str()), (200, "kernel"));
}
