//! Test support: uniquely named network namespaces wired like the lab in ../shared/lab
//! (a gateway namespace with `gw0` = 10.250.0.1/24, a rack namespace holding the bridge and
//! a client NIC `eth0`), the daemon started inside, and teardown on drop that kills only
//! the processes these helpers started (by PID) and deletes only their namespaces.
//! Traffic stays on loopback and inside these namespaces; no route is ever added.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const GW_IP: &str = "10.250.0.1";
pub const HTTP_PORT: u16 = 8080;

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

    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids.lock().unwrap().drain(..) {
            kill_pid(pid);
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
        let site = Site { dir };
        site.write_config(&format!("{GW_IP}:{HTTP_PORT}"));
        site
    }

    pub fn write_config(&self, listen: &str) {
        let cfg = format!(
            "state_dir = \"{state}\"\ninventory = \"inventory\"\nboot_images = \"{images}\"\n\n[http]\nlisten = \"{listen}\"\n\n[[interface]]\nname = \"gw0\"\naddress = \"{GW_IP}/24\"\n",
            state = self.state_dir().display(),
            images = repo().join("boot-images").display(),
        );
        std::fs::write(self.config(), cfg).unwrap();
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("bootgate.toml")
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
