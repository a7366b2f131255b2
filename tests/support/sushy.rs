//! OpenStack sushy-tools' `sushy-emulator` (a real Redfish service) with its libvirt-free
//! fake driver, started on a free port of the test process's loopback, as
//! ../shared/lab/bmc-sushy.sh does: config file, bcrypt htpasswd (admin/password), one
//! system per name with the UUID and MAC that pxe-vm.sh derives for it. Killed by PID on drop.
//!
//! Needs the venv /var/tmp/bootgate-venv with sushy-tools (created here when missing:
//! `python3 -m venv` + `pip install sushy-tools==2.2.0 bcrypt`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const VENV: &str = "/var/tmp/bootgate-venv";
pub const USER: &str = "admin";
pub const PASSWORD: &str = "password";

/// Makes sure the venv has sushy-emulator (and bcrypt for the htpasswd); returns its bin dir.
pub fn venv() -> PathBuf {
    let bin = Path::new(VENV).join("bin");
    if !bin.join("sushy-emulator").exists() {
        if !bin.join("python").exists() {
            let ok = Command::new("python3")
                .args(["-m", "venv", VENV])
                .status()
                .expect("python3 -m venv")
                .success();
            assert!(
                ok,
                "python3 -m venv {VENV} failed (apt-get install python3-venv)"
            );
        }
        let ok = Command::new(bin.join("pip"))
            .args(["install", "-q", "sushy-tools==2.2.0", "bcrypt"])
            .status()
            .expect("pip install sushy-tools")
            .success();
        assert!(ok, "pip install sushy-tools failed");
    }
    bin
}

/// A free TCP port on 127.0.0.1 (bound and released: another process could take it in
/// between, which the start loop notices).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running sushy-emulator.
pub struct Sushy {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Sushy {
    /// Starts one with the fake driver: `systems` (all powered off), basic auth
    /// admin/password.
    pub fn start(systems: &[&str]) -> Sushy {
        let names: Vec<String> = systems.iter().map(|s| format!("'{s}'")).collect();
        Sushy::start_with(&format!(
            "SUSHY_EMULATOR_FAKE_DRIVER = True
SUSHY_EMULATOR_FAKE_SYSTEMS = [
    {{'uuid': _uuid(n), 'name': n, 'power_state': 'Off', 'external_notifier': False,
     'nics': [{{'mac': _mac(n), 'ip': ''}}]}}
    for n in [{}]
]
",
            names.join(", ")
        ))
    }

    /// Starts one with the libvirt driver in front of the libvirtd at `uri` (needs
    /// libvirt-python in the venv: `pip install libvirt-python`, which builds against
    /// libvirt-dev + pkg-config).
    pub fn start_libvirt(uri: &str) -> Sushy {
        Sushy::start_with(&format!(
            "SUSHY_EMULATOR_LIBVIRT_URI = '{uri}'\nSUSHY_EMULATOR_IGNORE_BOOT_DEVICE = False\n"
        ))
    }

    fn start_with(driver: &str) -> Sushy {
        let bin = venv();
        let dir = tempfile::tempdir().expect("tempdir");
        let htpasswd = dir.path().join("htpasswd");
        let out = Command::new(bin.join("python"))
            .args([
                "-c",
                &format!(
                    "import bcrypt;print('{USER}:'+bcrypt.hashpw(b'{PASSWORD}',bcrypt.gensalt(rounds=4)).decode())"
                ),
            ])
            .output()
            .expect("bcrypt");
        assert!(
            out.status.success(),
            "bcrypt: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&htpasswd, &out.stdout).unwrap();
        for _attempt in 0..3 {
            let port = free_port();
            let conf = dir.path().join("sushy.conf.py");
            std::fs::write(
                &conf,
                format!(
                    "# written by tests/support/sushy.rs (after shared/lab/bmc-sushy.sh)
import hashlib
def _mac(n):
    h = hashlib.md5(n.encode()).hexdigest()
    return '52:54:00:%s:%s:%s' % (h[0:2], h[2:4], h[4:6])
def _uuid(n):
    h = hashlib.md5(('uuid-' + n).encode()).hexdigest()
    return '%s-%s-%s-%s-%s' % (h[0:8], h[8:12], h[12:16], h[16:20], h[20:32])
SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'
SUSHY_EMULATOR_LISTEN_PORT = {port}
SUSHY_EMULATOR_STATE_DIR = '{state}'
SUSHY_EMULATOR_AUTH_FILE = '{auth}'
{driver}",
                    state = dir.path().join("state").display(),
                    auth = htpasswd.display(),
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("sushy.log")).unwrap();
            let child = Command::new(bin.join("sushy-emulator"))
                .arg("--config")
                .arg(&conf)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .expect("spawning sushy-emulator");
            let mut child = child;
            if wait_up(&mut child, port, Duration::from_secs(30)) {
                return Sushy { port, child, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.path().join("sushy.log")).unwrap_or_default();
            eprintln!("sushy-emulator did not come up on port {port}; retrying: {log}");
        }
        panic!("sushy-emulator did not start (3 attempts)");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sushy.log")).unwrap_or_default()
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        // Only the process we started, by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the emulator accepts connections on `port` (false if it exited or never did).
fn wait_up(child: &mut Child, port: u16, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The UUID bmc-sushy.sh / pxe-vm.sh derive for a VM name.
pub fn uuid_of(name: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("printf %s 'uuid-{name}' | md5sum")])
        .output()
        .expect("md5sum");
    let h = String::from_utf8_lossy(&out.stdout);
    let h = h.split_whitespace().next().unwrap_or_default();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
