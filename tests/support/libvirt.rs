//! A private libvirtd for tests (port of ../shared/lab/libvirt-lab.sh): no
//! libvirt-daemon-system, no systemd, no default NAT network. libvirtd runs inside the test's
//! rack namespace (so QEMU's taps live there), with its own /etc/libvirt bind-mounted in a
//! private mount namespace and its socket, pid file and logs in a temporary directory.
//! VMs are lab PXE VMs (TCG, q35, SeaBIOS, virtio NIC on a tap in the rack bridge) named
//! uniquely per test; on drop every domain this libvirtd runs is destroyed and libvirtd is
//! killed by PID.
//!
//! Packages: libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86
//! (--no-install-recommends); the QEMU driver also needs the system user `libvirt-qemu`
//! (created here when missing, as the lab script does).

#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::Netns;

pub struct Libvirt {
    /// `qemu:///system?socket=…` for virsh and sushy-emulator's libvirt driver.
    pub uri: String,
    dir: tempfile::TempDir,
    child: Child,
    /// Domains defined here (destroyed and undefined on drop).
    defined: std::sync::Mutex<Vec<String>>,
}

/// The MAC pxe-vm.sh / bmc-sushy.sh derive for a VM name (52:54:00 + md5(name)[0..3]).
pub fn mac_of(name: &str) -> String {
    let h = md5_hex(name);
    format!("52:54:00:{}:{}:{}", &h[0..2], &h[2..4], &h[4..6])
}

/// The UUID they derive (md5("uuid-" + name) as 8-4-4-4-12).
pub fn uuid_of(name: &str) -> String {
    let h = md5_hex(&format!("uuid-{name}"));
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn md5_hex(s: &str) -> String {
    let out = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .expect("md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

impl Libvirt {
    /// Starts libvirtd inside `rack` and waits until virsh can talk to it.
    pub fn start(rack: &Netns) -> Libvirt {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let etc = d.join("etc");
        let sock = d.join("sock");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(&sock).unwrap();
        // libvirt's QEMU driver resolves its compiled-in user before reading qemu.conf.
        let has_user = Command::new("id")
            .arg("libvirt-qemu")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has_user {
            let _ = Command::new("useradd")
                .args(["--system", "--user-group", "--no-create-home"])
                .args([
                    "--home-dir",
                    "/var/lib/libvirt",
                    "--shell",
                    "/usr/sbin/nologin",
                ])
                .arg("libvirt-qemu")
                .status();
        }
        let _ = std::fs::copy("/etc/libvirt/libvirt.conf", etc.join("libvirt.conf"));
        std::fs::write(
            etc.join("libvirtd.conf"),
            format!(
                "unix_sock_dir = \"{sock}\"\nunix_sock_rw_perms = \"0700\"\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\nlisten_tls = 0\nlisten_tcp = 0\nlog_outputs = \"3:file:{log}\"\n",
                sock = sock.display(),
                log = d.join("libvirtd.log").display()
            ),
        )
        .unwrap();
        // Root-run QEMU, no relabeling, cgroups or per-VM namespaces, no virtlogd.
        std::fs::write(
            etc.join("qemu.conf"),
            "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nremember_owner = 0\nsecurity_driver = \"none\"\ncgroup_controllers = [ ]\nnamespaces = [ ]\nstdio_handler = \"file\"\n",
        )
        .unwrap();
        let uri = format!("qemu:///system?socket={}/libvirt-sock", sock.display());
        // unshare/sh/ip all exec: the PID we hold is libvirtd's.
        // Private /etc/libvirt, /run/libvirt, /var/lib/libvirt and /var/cache/libvirt: this
        // daemon neither sees nor locks out another libvirtd's domains (e.g. the lab's).
        let mut binds = format!("mount --bind '{}' /etc/libvirt", etc.display());
        for (own, sys) in [
            ("run", "/run/libvirt"),
            ("lib", "/var/lib/libvirt"),
            ("cache", "/var/cache/libvirt"),
        ] {
            std::fs::create_dir_all(d.join(own)).unwrap();
            std::fs::create_dir_all(sys).unwrap();
            binds.push_str(&format!(
                " && mount --bind '{}' {sys}",
                d.join(own).display()
            ));
        }
        let script = format!(
            "{binds} && exec ip netns exec '{ns}' libvirtd -f '{conf}' -p '{pid}'",
            ns = rack.name,
            conf = etc.join("libvirtd.conf").display(),
            pid = d.join("libvirtd.pid").display(),
        );
        let log = std::fs::File::create(d.join("stdout.log")).unwrap();
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("unshare + libvirtd (apt-get install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients)");
        let lv = Libvirt {
            uri,
            dir,
            child,
            defined: Default::default(),
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if lv.virsh(&["version"]).status.success() {
                return lv;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "libvirtd did not come up: {}{}",
            lv.read("stdout.log"),
            lv.read("libvirtd.log")
        );
    }

    fn read(&self, f: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default()
    }

    /// `virsh -c URI ARGS` (bounded).
    pub fn virsh(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["60", "virsh", "-q", "-c", &self.uri])
            .args(args)
            .output()
            .expect("virsh")
    }

    /// Defines a PXE VM `name` whose NIC is a tap in `bridge` of `rack`, with a small empty
    /// disk (so a BMC can point the boot device back at "Hdd"); returns its serial log.
    pub fn define_vm(&self, rack: &Netns, bridge: &str, name: &str) -> PathBuf {
        let tap: String = format!("tap-{name}").chars().take(15).collect();
        rack.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
        rack.ip(&["link", "set", &tap, "master", bridge, "up"]);
        let serial = self.dir.path().join(format!("{name}.serial.log"));
        let disk = self.dir.path().join(format!("{name}.img"));
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(1 << 20))
            .expect("disk image");
        let xml = format!(
            "<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><boot dev='network'/><bios useserial='yes'/></os>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='ethernet'>
      <mac address='{mac}'/>
      <target dev='{tap}' managed='no'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'><source path='{serial}' append='on'/><target port='0'/></serial>
    <console type='file'><source path='{serial}' append='on'/><target type='serial' port='0'/></console>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
",
            uuid = uuid_of(name),
            mac = mac_of(name),
            serial = serial.display(),
            disk = disk.display(),
        );
        let path = self.dir.path().join(format!("{name}.xml"));
        std::fs::write(&path, xml).unwrap();
        self.defined.lock().unwrap().push(name.to_string());
        let out = self.virsh(&["define", &path.display().to_string()]);
        assert!(
            out.status.success(),
            "virsh define: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serial
    }

    /// `virsh domstate NAME` (running, shut off, …).
    pub fn domstate(&self, name: &str) -> String {
        String::from_utf8_lossy(&self.virsh(&["domstate", name]).stdout)
            .trim()
            .to_string()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        // The QEMU processes are libvirtd's children: destroy our domains first.
        let names = std::mem::take(&mut *self.defined.lock().unwrap());
        for name in names {
            let _ = self.virsh(&["destroy", &name]);
            let _ = self.virsh(&["undefine", &name]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
