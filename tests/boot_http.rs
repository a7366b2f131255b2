//! The HTTP boot side against a running daemon in a namespace, with curl as the client:
//! per-host iPXE scripts by host state, images with HEAD/Range/ETag, and the phone-home
//! endpoint with its per-boot token (refusals recorded).

mod support;

use serde_json::Value;
use support::*;

const VM0_MAC: &str = "52:54:00:d7:8e:1d";

fn base() -> String {
    format!("http://{GW_IP}:{HTTP_PORT}")
}

/// curl in the gw namespace with extra arguments; returns (status, headers+body text).
fn curl_args(lab: &Lab, args: &[&str]) -> (u16, String) {
    let out = lab
        .gw
        .cmd("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn host(lab: &Lab, name: &str) -> Value {
    let (code, body) = curl_args(lab, &[&format!("{}/api/v1/hosts/{name}", base())]);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn phone_home(lab: &Lab, mac: &str, body: &str) -> (u16, String) {
    curl_args(
        lab,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            body,
            &format!("{}/api/v1/hosts/{mac}/events", base()),
        ],
    )
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

    // A registered host gets the install script with a token; it moves to provisioning.
    assert_eq!(host(&lab, "vm0")["state"], "registered");
    let (code, script) = curl_args(&lab, &[&format!("{}/ipxe/mac/{VM0_MAC}", base())]);
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
    let token = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bootgate.token="))
        .expect("token on the kernel line")
        .to_string();
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
    let (code, body) = phone_home(
        &lab,
        VM0_MAC,
        &format!(
            r#"{{"event":"booted","ip":"10.250.0.10","token":"{token}","ssh_host_keys":["ssh-ed25519 AAAAC3Nza test"]}}"#
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
        .collect();
    let want = [
        "host-added",
        "host-state-changed",
        "boot-script-served",
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
    assert_eq!(booted["ip"], "10.250.0.10");
}
