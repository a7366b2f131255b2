//! Test support: uniquely named network namespaces wired like the lab in ../shared/lab
//! (a gateway namespace with `gw0` = 10.250.0.1/24, a rack namespace holding the bridge and
//! a client NIC `eth0`), the daemon started inside, and teardown on drop that kills only
//! the processes these helpers started (by PID) and deletes only their namespaces.
//! Traffic stays on loopback and inside these namespaces; no route is ever added.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod golden;
pub mod qemu;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const GW_IP: &str = "10.250.0.1";
pub const HTTP_PORT: u16 = 8080;

// ---------------------------------------------------------------------------------------
// Prerequisites: root and real peers. Under CI a missing one fails the test; on a developer
// box the test stops with a loud SKIPPED line (never a silent "ok").
// ---------------------------------------------------------------------------------------

/// Whether this run is CI (`CI` set and non-empty): a missing prerequisite is then a
/// failure, never a skip.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Whether the effective user is root (`/proc/self` belongs to it).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Whether `peer` is installed: a path (with a `/`) that exists, or a program on `PATH`.
pub fn peer_installed(peer: &str) -> bool {
    if peer.contains('/') {
        return Path::new(peer).exists();
    }
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(dir.join(peer))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// A prerequisite of `test` is missing: under CI that fails the test (panics with
/// `reason`); otherwise prints `SKIPPED: <test>: <reason>` straight to stderr (past the
/// test harness's capture, so it shows next to the "ok") and the caller returns.
pub fn skip_or_fail(test: &str, reason: &str) {
    if in_ci() {
        panic!("{test}: {reason} (CI never skips)");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {test}: {reason}");
}

/// The test's name from the type name of a fn item declared in its body
/// (`crate::module::test_name::{{closure}}::here` → `module::test_name`).
pub fn test_name(here: &'static str) -> &'static str {
    let mut name = here.strip_suffix("::here").unwrap_or(here);
    while let Some(outer) = name.strip_suffix("::{{closure}}") {
        name = outer;
    }
    name.split_once("::").map_or(name, |(_, rest)| rest)
}

/// The enclosing test's name (see [`test_name`]).
#[allow(unused_macros)] // each test binary uses a different part of this module
macro_rules! current_test {
    () => {{
        fn here() {}
        $crate::support::test_name(std::any::type_name_of_val(&here))
    }};
}
#[allow(unused_imports)]
pub(crate) use current_test;

/// Returns from the test unless it runs as root (network namespaces, chroot, chown); under
/// CI a non-root run fails instead. `require_root!("why")` names what root is for.
#[allow(unused_macros)] // each test binary uses a different part of this module
macro_rules! require_root {
    () => {
        $crate::support::require_root!("network namespaces")
    };
    ($why:expr) => {
        if !$crate::support::is_root() {
            $crate::support::skip_or_fail(
                $crate::support::current_test!(),
                &format!("needs root ({})", $why),
            );
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_root;

/// Returns from the test unless peer `name` is installed, printing `why` (how to install
/// it); under CI a missing peer fails instead. `name` is a program on `PATH` or a path
/// ([`peer_installed`]); a third argument replaces that check with a computed `bool`
/// (e.g. `require_peer!("qemu", hint, missing.is_empty())`).
#[allow(unused_macros)] // each test binary uses a different part of this module
macro_rules! require_peer {
    ($name:expr, $why:expr) => {
        $crate::support::require_peer!($name, $why, $crate::support::peer_installed($name))
    };
    ($name:expr, $why:expr, $found:expr) => {
        if !$found {
            $crate::support::skip_or_fail(
                $crate::support::current_test!(),
                &format!("{} missing: {}", $name, $why),
            );
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_peer;

/// The Python tools' venv (Ansible, sushy-tools, …): `$BOOTGATE_VENV`, by default
/// /var/tmp/bootgate-venv.
pub fn venv() -> PathBuf {
    std::env::var_os("BOOTGATE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/bootgate-venv"))
}

/// `bin/<name>` in [`venv`].
pub fn venv_tool(name: &str) -> PathBuf {
    venv().join("bin").join(name)
}

/// How to fill [`venv`], for a missing tool's reason.
pub fn venv_hint() -> String {
    format!(
        "python3 -m venv {v} && {v}/bin/pip install -r scripts/requirements-test.txt",
        v = venv().display()
    )
}

/// [`require_peer!`] for a tool of the venv ([`venv_tool`]).
#[allow(unused_macros)] // each test binary uses a different part of this module
macro_rules! require_venv_tool {
    ($name:expr) => {
        $crate::support::require_peer!(
            $crate::support::path_str(&$crate::support::venv_tool($name)),
            $crate::support::venv_hint()
        )
    };
}
#[allow(unused_imports)]
pub(crate) use require_venv_tool;

/// The repository root (where Cargo.toml lives).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The bootgate binary cargo built for this test run.
pub fn bootgate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bootgate"))
}

/// Runs a command, panicking with its output when it fails (test setup must not half-work).
pub fn sh(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) {
    sh(Command::new("ip").args(args));
}

/// A network namespace this test created; deleted (with every process still inside it that
/// this test started) on drop.
pub struct Netns {
    pub name: String,
    /// PIDs of processes this test started inside; killed on drop.
    pids: std::sync::Mutex<Vec<u32>>,
    /// Background helpers (relays, servers) owned here: killed and reaped on drop.
    children: std::sync::Mutex<Vec<Child>>,
}

impl Netns {
    /// Creates `bgt<pid>-<n>-<role>` with loopback up.
    pub fn new(role: &str) -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "bgt{}-{}-{role}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        // `ip netns exec` bind-mounts /etc/netns/NAME/* over /etc: keep clients' hooks from
        // touching the host's resolv.conf.
        let etc = PathBuf::from("/etc/netns").join(&name);
        let _ = std::fs::create_dir_all(&etc);
        let _ = std::fs::write(etc.join("resolv.conf"), "");
        Netns {
            name,
            pids: Default::default(),
            children: Default::default(),
        }
    }

    /// A command that runs inside this namespace.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Starts a long-running process inside; it is killed when the namespace drops.
    pub fn spawn(&self, cmd: &mut Command) -> Child {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        self.pids.lock().unwrap().push(child.id());
        child
    }

    /// Starts a helper process inside that lives until the namespace drops; its PID.
    pub fn background(&self, cmd: &mut Command) -> u32 {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    /// `ip -n NAME ARGS…`, panicking on failure; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = sh(Command::new("ip").args(["-n", &self.name]).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids.lock().unwrap().drain(..) {
            kill_pid(pid);
        }
        for mut child in self.children.lock().unwrap().drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.name));
    }
}

/// SIGKILLs one of our own processes and reaps it if it is our child.
pub fn kill_pid(pid: u32) {
    let _ = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// The lab topology: `gw` holds `gw0` (10.250.0.1/24); `rack` holds bridge `br0` with the
/// uplink `rk0` and a client NIC `eth0` (address-less; DHCP clients configure it).
pub struct Lab {
    pub gw: Netns,
    pub rack: Netns,
}

impl Lab {
    pub fn new() -> Lab {
        let gw = Netns::new("gw");
        let rack = Netns::new("rack");
        rack.ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ]);
        rack.ip(&["link", "set", "br0", "up"]);
        rack.ip(&[
            "link", "add", "rk0", "type", "veth", "peer", "name", "gw0", "netns", &gw.name,
        ]);
        rack.ip(&["link", "set", "rk0", "master", "br0", "up"]);
        // No duplicate-address detection on the test link: IPv6 link-local is usable at
        // once (the RA helper answers iPXE's router solicitations immediately).
        let _ = gw
            .cmd("sysctl")
            .args(["-qw", "net.ipv6.conf.gw0.accept_dad=0"])
            .status();
        gw.ip(&["addr", "add", &format!("{GW_IP}/24"), "dev", "gw0"]);
        gw.ip(&["link", "set", "gw0", "up"]);
        rack.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-br",
        ]);
        rack.ip(&["link", "set", "eth0-br", "master", "br0", "up"]);
        rack.ip(&["link", "set", "eth0", "up"]);
        Lab { gw, rack }
    }
}

impl Lab {
    /// Makes the rack's client NIC `eth0` take `mac` and leases an address for it from the
    /// running daemon (busybox udhcpc, which configures it): the boot identity a script
    /// with a token or a phone-home of that MAC needs. Returns the address.
    pub fn lease_as(&self, mac: &str, dir: &Path) -> String {
        self.rack.ip(&["-4", "addr", "flush", "dev", "eth0"]);
        self.rack.ip(&["link", "set", "eth0", "down"]);
        self.rack.ip(&["link", "set", "eth0", "address", mac]);
        self.rack.ip(&["link", "set", "eth0", "up"]);
        udhcpc(&self.rack, "eth0", dir, &[])
            .unwrap_or_else(|| panic!("no lease for {mac}"))
            .ip
    }

    /// One more machine on the rack's bridge: its own namespace with NIC `eth0` at the
    /// static `ip`/24 (no lease), e.g. an attacker or a neighbour.
    pub fn machine(&self, role: &str, ip: &str) -> Netns {
        let ns = Netns::new(role);
        self.rack.ip(&[
            "link",
            "add",
            &format!("{role}-br"),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.name,
        ]);
        self.rack
            .ip(&["link", "set", &format!("{role}-br"), "master", "br0", "up"]);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }
}

/// A phone-home report for `mac` POSTed from `ns` to the lab daemon (which accepts it only
/// from the address holding the MAC's lease: see [`Lab::lease_as`]).
pub fn phone_home_from(ns: &Netns, mac: &str, body: &str) -> (u16, String) {
    curl_in(
        ns,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            body,
            &format!("http://{GW_IP}:{HTTP_PORT}/api/v1/hosts/{mac}/events"),
        ],
    )
}

/// The per-boot token on a script's kernel line (`bootgate.token=`), if it carries one.
pub fn boot_token(script: &str) -> Option<String> {
    script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bootgate.token="))
        .map(String::from)
}

/// curl in `ns` with extra arguments; returns (status, headers+body text).
pub fn curl_in(ns: &Netns, args: &[&str]) -> (u16, String) {
    let out = ns
        .cmd("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A scratch copy of a site's inventory plus a daemon config pointing at it, with state in
/// a temporary directory. The config listens where the lab expects (10.250.0.1:8080).
pub struct Site {
    pub dir: tempfile::TempDir,
}

impl Site {
    /// Copies `inventory/<name>/*.toml` (except its bootgate.toml) and writes a config.
    pub fn from_inventory(name: &str) -> Site {
        let dir = tempfile::tempdir().expect("tempdir");
        let inv = dir.path().join("inventory");
        std::fs::create_dir_all(&inv).unwrap();
        for entry in std::fs::read_dir(repo().join("inventory").join(name)).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml")
                && p.file_name().is_some_and(|f| f != "bootgate.toml")
            {
                std::fs::copy(&p, inv.join(p.file_name().unwrap())).unwrap();
            }
        }
        // A private copy of boot-images/ (manifest + iPXE templates) tests may add files to.
        let images = dir.path().join("boot-images");
        std::fs::create_dir_all(images.join("ipxe")).unwrap();
        std::fs::copy(
            repo().join("boot-images/images.toml"),
            images.join("images.toml"),
        )
        .unwrap();
        for entry in std::fs::read_dir(repo().join("boot-images/ipxe")).unwrap() {
            let p = entry.unwrap().path();
            std::fs::copy(&p, images.join("ipxe").join(p.file_name().unwrap())).unwrap();
        }
        let site = Site { dir };
        site.write_config(&format!("{GW_IP}:{HTTP_PORT}"));
        site
    }

    pub fn write_config(&self, listen: &str) {
        let cfg = format!(
            "state_dir = \"{state}\"\ninventory = \"inventory\"\nboot_images = \"{images}\"\n\n[http]\nlisten = \"{listen}\"\n\n[[interface]]\nname = \"gw0\"\naddress = \"{GW_IP}/24\"\n",
            state = self.state_dir().display(),
            images = self.boot_images().display(),
        );
        std::fs::write(self.config(), cfg).unwrap();
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("bootgate.toml")
    }
    pub fn boot_images(&self) -> PathBuf {
        self.dir.path().join("boot-images")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn inventory_file(&self, name: &str) -> PathBuf {
        self.dir.path().join("inventory").join(name)
    }
}

/// Runs `bootgate ARGS` (on the host: only the control socket and the store are used).
pub fn bootgate(args: &[&str]) -> Output {
    Command::new(bootgate_bin())
        .args(args)
        .output()
        .expect("running bootgate")
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `curl` inside a namespace; returns (HTTP status, body).
pub fn curl(ns: &Netns, url: &str) -> Option<(u16, String)> {
    let out = ns
        .cmd("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}", url])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_string()))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A daemon started in the lab's gw namespace, with a NOTIFY_SOCKET we read like systemd.
pub struct Daemon {
    pub child: Child,
    notify: UnixDatagram,
    _notify_dir: tempfile::TempDir,
}

impl Daemon {
    pub fn start(lab: &Lab, site: &Site) -> Daemon {
        let notify_dir = tempfile::tempdir().unwrap();
        let sock = notify_dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&sock).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let child = lab.gw.spawn(
            lab.gw
                .cmd(bootgate_bin())
                .args(["--config", path_str(&site.config()), "serve"])
                .env("NOTIFY_SOCKET", &sock),
        );
        let d = Daemon {
            child,
            notify,
            _notify_dir: notify_dir,
        };
        let msg = d.next_notify();
        assert!(msg.contains("READY=1"), "expected READY=1, got {msg:?}");
        d
    }

    /// As [`Daemon::start`], with the daemon's command run through `wrapper` (e.g.
    /// `setpriv --reuid=… --ambient-caps=…`, which execs it, so the PID stays the
    /// daemon's). The notify socket is opened to other users, for a daemon that is not root.
    pub fn start_wrapped(lab: &Lab, site: &Site, wrapper: &[&str]) -> Daemon {
        use std::os::unix::fs::PermissionsExt;
        let notify_dir = tempfile::tempdir().unwrap();
        let sock = notify_dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&sock).unwrap();
        std::fs::set_permissions(notify_dir.path(), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let (program, args) = wrapper.split_first().expect("a wrapper command");
        let child = lab.gw.spawn(
            lab.gw
                .cmd(program)
                .args(args)
                .arg(bootgate_bin())
                .args(["--config", path_str(&site.config()), "serve"])
                .env("NOTIFY_SOCKET", &sock),
        );
        let d = Daemon {
            child,
            notify,
            _notify_dir: notify_dir,
        };
        let msg = d.next_notify();
        assert!(msg.contains("READY=1"), "expected READY=1, got {msg:?}");
        d
    }

    pub fn next_notify(&self) -> String {
        let mut buf = [0u8; 4096];
        // A signal to the test process (another test's child exiting) interrupts the wait:
        // wait again rather than fail on EINTR.
        let n = loop {
            match self.notify.recv(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r.expect("daemon sent no sd_notify message within 20 s"),
            }
        };
        String::from_utf8_lossy(&buf[..n]).to_string()
    }

    pub fn signal(&self, sig: &str) {
        sh(Command::new("kill").args([sig, &self.child.id().to_string()]));
    }
}

impl Daemon {
    /// SIGTERM and wait for the exit (up to 5 s), returning the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "daemon ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A DHCP client's view of its lease, read from the hook's output.
#[derive(Debug, Clone, Default)]
pub struct ClientLease {
    pub ip: String,
    pub fields: std::collections::BTreeMap<String, String>,
}

/// Writes an executable hook script that appends `KEY=VALUE` lines of the given variables
/// to `out` and configures nothing on the host (addresses only inside the namespace).
fn hook(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn parse_env(text: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    text.split("---\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| {
            b.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// busybox udhcpc on `iface` in `ns`: one lease, then exit (-q). None when no lease came.
pub fn udhcpc(ns: &Netns, iface: &str, dir: &Path, extra: &[&str]) -> Option<ClientLease> {
    let out = dir.join("udhcpc.env");
    let _ = std::fs::remove_file(&out);
    let script = udhcpc_hook(dir, &out);
    let status = ns
        .cmd("timeout")
        .args([
            "20", "busybox", "udhcpc", "-i", iface, "-n", "-q", "-f", "-t", "4", "-T", "1", "-s",
        ])
        .arg(&script)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    if !status.success() {
        return None;
    }
    let text = std::fs::read_to_string(&out).ok()?;
    let fields = parse_env(&text).pop()?;
    Some(ClientLease {
        ip: fields.get("ip")?.clone(),
        fields,
    })
}

/// ISC dhclient on `iface` in `ns` (oneshot, `-1`), with a lease file in `dir` so a second
/// run asks for the same address (INIT-REBOOT). Returns the lease and stops the client.
pub fn dhclient(ns: &Netns, iface: &str, dir: &Path) -> Option<ClientLease> {
    let out = dir.join("dhclient.env");
    let _ = std::fs::remove_file(&out);
    let pid = dir.join("dhclient.pid");
    let status = run_dhclient(ns, iface, dir, "-1", &pid, 30).ok();
    // dhclient daemonizes after binding: stop exactly that process.
    if let Some(p) = std::fs::read_to_string(&pid)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    {
        kill_pid(p);
    }
    let _ = std::fs::remove_file(&pid);
    if !status?.success() {
        return None;
    }
    let text = std::fs::read_to_string(&out).ok()?;
    let fields = parse_env(&text).into_iter().rev().find(|f| {
        f.get("reason")
            .is_some_and(|r| r != "PREINIT" && r != "RELEASE")
    })?;
    Some(ClientLease {
        ip: fields.get("new_ip_address")?.clone(),
        fields,
    })
}

/// `dhclient -r`: sends DHCPRELEASE for the lease in `dir`'s lease file.
pub fn dhclient_release(ns: &Netns, iface: &str, dir: &Path) {
    let _ = run_dhclient(ns, iface, dir, "-r", &dir.join("dhclient-r.pid"), 15);
}

/// Runs dhclient in `ns` with the test hook, `dir`'s lease file and `pid` as its pid file.
fn run_dhclient(
    ns: &Netns,
    iface: &str,
    dir: &Path,
    mode: &str,
    pid: &Path,
    timeout_s: u32,
) -> std::io::Result<std::process::ExitStatus> {
    let script = dhclient_hook(dir, &dir.join("dhclient.env"));
    ns.cmd("timeout")
        .arg(timeout_s.to_string())
        .args(["dhclient", mode, "-sf"])
        .arg(&script)
        .arg("-lf")
        .arg(dir.join("dhclient.leases"))
        .arg("-pf")
        .arg(pid)
        .arg(iface)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
}

fn dhclient_hook(dir: &Path, out: &Path) -> PathBuf {
    hook(
        dir,
        "dhclient.sh",
        &format!(
            "#!/bin/sh\n{{ echo \"reason=$reason\"; echo \"new_ip_address=$new_ip_address\"; echo \"new_dhcp_server_identifier=$new_dhcp_server_identifier\"; echo \"new_dhcp_lease_time=$new_dhcp_lease_time\"; echo \"new_filename=$new_filename\"; echo \"new_routers=$new_routers\"; echo ---; }} >> {out}\ncase \"$reason\" in BOUND|RENEW|REBIND|REBOOT) ip addr replace \"$new_ip_address/24\" dev \"$interface\";; EXPIRE|FAIL|RELEASE|STOP) ip -4 addr flush dev \"$interface\";; esac\nexit 0\n",
            out = out.display()
        ),
    )
}

/// Runs `f` on a thread that has entered network namespace `ns` (only that thread moves),
/// for test-side clients that speak a protocol no packaged tool covers.
pub fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = PathBuf::from("/var/run/netns").join(&ns.name);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The udhcpc hook: appends each bound/renew's variables to `out`; addresses only.
fn udhcpc_hook(dir: &Path, out: &Path) -> PathBuf {
    hook(
        dir,
        "udhcpc.sh",
        &format!(
            "#!/bin/sh\ncase \"$1\" in bound|renew) {{ echo \"event=$1\"; echo \"ip=$ip\"; echo \"mask=$mask\"; echo \"router=$router\"; echo \"dns=$dns\"; echo \"serverid=$serverid\"; echo \"lease=$lease\"; echo \"boot_file=$boot_file\"; echo \"siaddr=$siaddr\"; echo \"domain=$domain\"; echo ---; }} >> {out}\n ip addr replace \"$ip/${{mask:-24}}\" dev \"$interface\";; deconfig) ip -4 addr flush dev \"$interface\";; esac\nexit 0\n",
            out = out.display()
        ),
    )
}

/// A long-running busybox udhcpc (it renews on SIGUSR1 and releases on SIGUSR2); killed
/// when the namespace drops. Returns its PID and the file its hook appends to.
pub fn udhcpc_daemon(ns: &Netns, iface: &str, dir: &Path) -> (u32, PathBuf) {
    let out = dir.join("udhcpc-d.env");
    let _ = std::fs::remove_file(&out);
    let script = udhcpc_hook(dir, &out);
    let pid = ns.background(
        ns.cmd("busybox")
            .args(["udhcpc", "-i", iface, "-f", "-t", "4", "-T", "1", "-s"])
            .arg(&script)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    (pid, out)
}

/// The hook events (`bound`, `renew`) a udhcpc_daemon has reported so far.
pub fn hook_events(out: &Path) -> Vec<std::collections::BTreeMap<String, String>> {
    std::fs::read_to_string(out)
        .map(|t| parse_env(&t))
        .unwrap_or_default()
}

impl Site {
    /// `bootgate --config <this site> ARGS -o json` (reading the store directly), parsed;
    /// panics with stderr when the command fails.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let config = self.config();
        let mut all = vec!["--config", path_str(&config)];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = bootgate(&all);
        assert!(out.status.success(), "bootgate {args:?}: {}", stderr(&out));
        serde_json::from_str(&stdout(&out))
            .unwrap_or_else(|e| panic!("bootgate {args:?}: not JSON ({e}): {}", stdout(&out)))
    }
}

impl Site {
    /// Copies `file` (e.g. a fixture rack file) into the scratch inventory, keeping its name.
    pub fn add_inventory_file(&self, file: &Path) -> PathBuf {
        let to = self.inventory_file(path_str(Path::new(file.file_name().expect("a file"))));
        std::fs::copy(file, &to).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        to
    }

    /// Points every lab BMC of the scratch inventory (`port = 8000` in any of its files) at
    /// `port`, and installs a private secrets file with the `lab` login.
    pub fn use_bmc_port(&self, port: u16, password: &str) {
        use std::os::unix::fs::PermissionsExt;
        for entry in std::fs::read_dir(self.dir.path().join("inventory")).unwrap() {
            let p = entry.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap();
            if text.contains("port = 8000") {
                std::fs::write(&p, text.replace("port = 8000", &format!("port = {port}"))).unwrap();
            }
        }
        let secrets = self.dir.path().join("secrets.toml");
        std::fs::write(
            &secrets,
            format!("[bmc.lab]\nusername = \"admin\"\npassword = \"{password}\"\n"),
        )
        .unwrap();
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
        let cfg = std::fs::read_to_string(self.config()).unwrap();
        if !cfg.contains("secrets = ") {
            std::fs::write(
                self.config(),
                format!("secrets = \"{}\"\n{cfg}", secrets.display()),
            )
            .unwrap();
        }
    }

    /// Puts the test boot image (kernel, phone-home initrd, iPXE binaries) where this site's
    /// `lab-debian` profile and firmware stage expect them.
    pub fn install_test_image(&self, image: &qemu::TestImage) {
        let images = self.boot_images();
        std::fs::create_dir_all(images.join("test")).unwrap();
        std::fs::copy(&image.vmlinuz, images.join("test/vmlinuz")).unwrap();
        std::fs::copy(&image.initrd, images.join("test/initrd.gz")).unwrap();
        for f in [&image.undionly, &image.ipxe_efi, &image.snponly] {
            std::fs::copy(f, images.join(f.file_name().unwrap())).unwrap();
        }
    }
}
