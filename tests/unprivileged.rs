//! The daemon as systemd/bootgate.service runs it: an unprivileged user holding only the
//! unit's ambient capabilities (issue 15, item 7). The real binary starts in the lab's gw
//! namespace under `setpriv` (uid `nobody`, a state directory owned by it, the unit's
//! capability set as bounding, inheritable and ambient set, no_new_privs), and real clients
//! in the rack namespace get a lease (busybox udhcpc), a file over TFTP (tftp-hpa) and over
//! HTTP on port 80 (curl); `/healthz` is ok. The unit itself passes `systemd-analyze verify`
//! and keeps its exposure score low.
//!
//! Needs root (namespaces, setpriv, chown). Kills only the PIDs it started.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::*;

const UNIT: &str = "systemd/bootgate.service";

fn unit() -> String {
    std::fs::read_to_string(repo().join(UNIT)).unwrap()
}

/// The value of `Key=` in the unit (the last one, as systemd reads it).
fn unit_value(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .map(str::to_string)
}

/// `CAP_NET_RAW CAP_NET_BIND_SERVICE` → `+net_raw,+net_bind_service` (setpriv's syntax).
fn setpriv_caps(caps: &str) -> String {
    caps.split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The uid, gid and effective capability mask of a running process.
fn identity(pid: u32) -> (u32, u32, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    (
        field("Uid:").parse().unwrap(),
        field("Gid:").parse().unwrap(),
        u64::from_str_radix(&field("CapEff:"), 16).unwrap(),
    )
}

/// Linux capability numbers (linux/capability.h) of the names setpriv takes.
fn cap_mask(caps: &str) -> u64 {
    caps.split(',')
        .map(|c| match c.trim_start_matches('+') {
            "net_bind_service" => 1u64 << 10,
            "net_admin" => 1 << 12,
            "net_raw" => 1 << 13,
            other => panic!("unexpected capability {other}"),
        })
        .fold(0, |a, b| a | b)
}

fn chown_r(path: &Path, owner: &str) {
    sh(Command::new("chown").args(["-R", owner]).arg(path));
}

/// Starts the daemon as `nobody` with exactly `caps` (setpriv syntax) and shows it serves
/// DHCP (67), TFTP (69) and HTTP (80) to a real client in the rack, and /healthz.
fn serves_unprivileged(caps: &str) {
    let lab = Lab::new();
    let site = Site::from_inventory("lab");
    // HTTP on a privileged port too: all three need CAP_NET_BIND_SERVICE.
    site.write_config(&format!("{GW_IP}:80"));
    std::fs::write(
        site.boot_images().join("hello.txt"),
        "served without root\n",
    )
    .unwrap();
    // The config, inventory and images are readable by anyone (as /etc/bootgate and the
    // images are); the state directory is the daemon user's own, as StateDirectory= makes it.
    std::fs::set_permissions(site.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = site.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    chown_r(&state, "nobody:nogroup");

    let inh = format!("--inh-caps=-all,{caps}");
    let amb = format!("--ambient-caps=-all,{caps}");
    let bounding = format!("--bounding-set=-all,{caps}");
    let daemon = Daemon::start_wrapped(
        &lab,
        &site,
        &[
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--init-groups",
            "--no-new-privs",
            &bounding,
            &inh,
            &amb,
            "--",
        ],
    );

    // It really is unprivileged: nobody's uid, and exactly these capabilities in effect.
    let (uid, gid, eff) = identity(daemon.child.id());
    let nobody = stdout(&sh(Command::new("id").args(["-u", "nobody"])));
    assert_eq!(uid.to_string(), nobody.trim(), "daemon uid");
    assert_ne!(gid, 0, "daemon gid");
    assert_eq!(eff, cap_mask(caps), "effective capabilities {eff:#x}");
    // What it made in the state dir is its own and private (SQLite store, control socket).
    for entry in std::fs::read_dir(&state).unwrap() {
        let meta = entry.as_ref().unwrap().metadata().unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            meta.uid(),
            uid,
            "{:?} owned by the daemon",
            entry.unwrap().path()
        );
    }

    // DHCP: a real client gets a lease.
    let work = tempfile::tempdir().unwrap();
    let lease = udhcpc(&lab.rack, "eth0", work.path(), &[]).expect("udhcpc got no lease");
    assert!(lease.ip.starts_with("10.250.0."), "{lease:?}");

    // TFTP (port 69) from the leased address.
    let local = work.path().join("hello.tftp");
    let out = lab
        .rack
        .cmd("timeout")
        .args([
            "10",
            "tftp",
            "-m",
            "binary",
            GW_IP,
            "-c",
            "get",
            "hello.txt",
        ])
        .arg(&local)
        .output()
        .unwrap();
    assert!(out.status.success(), "tftp: {}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&local).unwrap(),
        "served without root\n"
    );

    // HTTP on port 80: a boot file and /healthz.
    let (code, body) =
        curl(&lab.rack, &format!("http://{GW_IP}/images/hello.txt")).expect("HTTP fetch");
    assert_eq!((code, body.as_str()), (200, "served without root\n"));
    let (code, body) = curl(&lab.rack, &format!("http://{GW_IP}/healthz")).expect("/healthz");
    assert_eq!(code, 200, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok", "{health}");
}

/// The unit's own capability set (CAP_NET_ADMIN included, for the ARP entry of a
/// unicast reply to a client without an address yet).
#[test]
fn the_daemon_serves_as_an_unprivileged_user_with_the_units_capabilities() {
    require_root!("namespaces, setpriv, chown");
    require_peer!("setpriv", "apt-get install -y util-linux");
    require_peer!("busybox", "apt-get install -y busybox");
    require_peer!("tftp", "apt-get install -y tftp-hpa");
    let unit = unit();
    let ambient = unit_value(&unit, "AmbientCapabilities").expect("AmbientCapabilities=");
    serves_unprivileged(&setpriv_caps(&ambient));
}

/// Without CAP_NET_ADMIN (an operator who dropped it from the unit) everything still
/// works: replies a client cannot yet take by unicast are broadcast (RFC 2131 §4.1 allows
/// it) instead of written into the ARP table first.
#[test]
fn the_daemon_serves_with_only_net_bind_service_and_net_raw() {
    require_root!("namespaces, setpriv, chown");
    require_peer!("setpriv", "apt-get install -y util-linux");
    require_peer!("busybox", "apt-get install -y busybox");
    require_peer!("tftp", "apt-get install -y tftp-hpa");
    serves_unprivileged("+net_bind_service,+net_raw");
}

/// The unit's sandbox as issue 15 asks for it, `systemd-analyze verify` clean, and
/// `systemd-analyze security` no worse than the score README records.
#[test]
fn the_unit_runs_unprivileged_sandboxed_and_verifies() {
    require_peer!("systemd-analyze", "apt-get install -y systemd");
    let unit = unit();
    for (key, want) in [
        ("User", "bootgate"),
        ("Group", "bootgate"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectProc", "invisible"),
        ("ProcSubset", "pid"),
        ("SystemCallFilter", "@system-service"),
        ("SystemCallArchitectures", "native"),
        ("LockPersonality", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("UMask", "0077"),
        ("StateDirectory", "bootgate"),
        ("StateDirectoryMode", "0700"),
        ("ConfigurationDirectory", "bootgate"),
        ("Environment", "HOME=/var/lib/bootgate"),
        (
            "RestrictAddressFamilies",
            "AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET",
        ),
    ] {
        assert_eq!(
            unit_value(&unit, key).as_deref(),
            Some(want),
            "{UNIT}: {key}="
        );
    }
    for key in ["MemoryMax", "TasksMax"] {
        assert!(unit_value(&unit, key).is_some(), "{UNIT} lacks {key}=");
    }
    // The capabilities the daemon holds are exactly the ones it may ever hold, and
    // never more than these three.
    let ambient = unit_value(&unit, "AmbientCapabilities").unwrap();
    assert_eq!(
        unit_value(&unit, "CapabilityBoundingSet").as_deref(),
        Some(ambient.as_str())
    );
    for cap in ambient.split_whitespace() {
        assert!(
            ["CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_NET_ADMIN"].contains(&cap),
            "unexpected {cap}"
        );
    }
    // The install steps README gives create the user the unit names.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        readme.contains(
            "useradd --system --home /var/lib/bootgate --shell /usr/sbin/nologin bootgate"
        ),
        "README's install steps create the bootgate user"
    );

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
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&copy)
        .output()
        .unwrap();
    let text = stdout(&out) + &stderr(&out);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split_once("Overall exposure level for ")?
                .1
                .split_once(": ")
        })
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in: {text}"));
    let recorded: f64 = readme
        .lines()
        .find_map(|l| {
            l.split_once("exposure level ")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("README records the exposure level");
    assert!(
        score <= recorded,
        "systemd-analyze security: exposure {score} is worse than the {recorded} README records:\n{text}"
    );
}
