//! PXE-boot throwaway QEMU VMs on a test lab's bridge (port of ../shared/lab/pxe-vm.sh).
//!
//! A [`Vm`] gets a tap `tap-NAME` in the rack namespace, enslaved to its bridge `br0`, and a
//! `qemu-system-x86_64` (TCG: KVM is unusable on these nested machines) started in that
//! namespace with its serial console in a file. Dropping the `Vm` kills that QEMU (by PID),
//! reaps it and deletes the tap.
//!
//! Host packages (all `--no-install-recommends`): qemu-system-x86 ipxe-qemu seabios ovmf.
//! [`missing_host_files`] tells a test whether they are there. The boot image the VMs load
//! (Debian kernel + phone-home initramfs + iPXE binaries) comes from
//! `boot-images/build-test-image.sh`; [`test_image`] runs it once per test binary.
//!
//! Firmware behaviour (see the lab's RESULTS.md):
//! * `Bios`: SeaBIOS runs the virtio NIC's iPXE option ROM (QEMU's default
//!   `efi-virtio.rom` from ipxe-qemu). The ROM is deliberately not named with `romfile=`:
//!   with an explicit `romfile=efi-virtio.rom` SeaBIOS skipped it ("No bootable device").
//!   DHCP: arch 0, user-class `iPXE`.
//! * `UefiIpxe`: OVMF runs the same ROM's iPXE EFI driver directly: DHCP arch 7 *with*
//!   user-class `iPXE`, so no `ipxe.efi` is fetched over TFTP.
//! * `UefiFirmwarePxe`: the NIC has no option ROM (`romfile=`), so OVMF's own PXE client
//!   runs, like real UEFI hardware: DHCP arch 7 without user-class -> TFTP `ipxe.efi` ->
//!   iPXE re-DHCPs with user-class `iPXE`.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub const QEMU: &str = "qemu-system-x86_64";
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// The bridge in the rack namespace that VM taps are enslaved to.
pub const BRIDGE: &str = "br0";
/// Serial-console text that means the boot chain failed (checked by [`Vm::wait_serial`]).
pub const FAILURE_PATTERNS: &[&str] = &[
    "No bootable device",
    "PXE-E",
    "No more network devices",
    "Kernel panic",
];

/// Which firmware boots the VM and how it reaches iPXE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS + the NIC's iPXE option ROM (DHCP arch 0, user-class iPXE).
    Bios,
    /// OVMF + the NIC's iPXE option ROM (DHCP arch 7, user-class iPXE; no ipxe.efi fetch).
    UefiIpxe,
    /// OVMF's own PXE client (`romfile=`): DHCP arch 7 -> TFTP ipxe.efi -> iPXE.
    UefiFirmwarePxe,
}

impl Firmware {
    pub fn is_uefi(self) -> bool {
        self != Firmware::Bios
    }
}

/// Host files the VMs need; empty when everything is installed. Each entry names the file
/// and the Debian package that ships it.
pub fn missing_host_files() -> Vec<String> {
    let need = [
        ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
        ("/usr/lib/ipxe/qemu/efi-virtio.rom", "ipxe-qemu"),
        ("/usr/share/seabios/bios-256k.bin", "seabios"),
        (OVMF_CODE, "ovmf"),
        (OVMF_VARS, "ovmf"),
    ];
    need.iter()
        .filter(|(f, _)| !Path::new(f).exists())
        .map(|(f, p)| format!("{f} (package {p})"))
        .collect()
}

fn md5_hex(s: &str) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning md5sum");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(s.as_bytes())
        .expect("writing to md5sum");
    let out = child.wait_with_output().expect("md5sum");
    assert!(out.status.success(), "md5sum failed");
    String::from_utf8_lossy(&out.stdout)[..32].to_string()
}

/// Deterministic SMBIOS system UUID for a VM name (what iPXE reports as `${uuid}` and in DHCP
/// option 97): md5("uuid-NAME") as 8-4-4-4-12, like pxe-vm.sh.
pub fn uuid_for(name: &str) -> String {
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

/// Deterministic locally administered MAC for a VM name: 52:54:00 + the first three bytes of
/// md5(NAME), like pxe-vm.sh.
pub fn mac_for(name: &str) -> String {
    let h = md5_hex(name);
    format!("52:54:00:{}:{}:{}", &h[0..2], &h[2..4], &h[4..6])
}

/// The tap a VM named NAME gets: `tap-NAME`, cut to the 15 characters Linux allows (so keep
/// names that differ within their first 11 characters).
pub fn tap_for(name: &str) -> String {
    format!("tap-{name}").chars().take(15).collect()
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A running (or exited) QEMU VM; killed, reaped and its tap deleted on drop.
pub struct Vm {
    child: Mutex<Child>,
    pid: u32,
    pub name: String,
    pub mac: String,
    pub uuid: String,
    pub firmware: Firmware,
    /// The tap in `ns`, enslaved to `br0`.
    pub tap: String,
    /// The rack namespace.
    pub ns: String,
    /// Serial console (ttyS0) log: `DIR/NAME.serial.log`.
    pub serial_path: PathBuf,
    /// QEMU's own stdout/stderr: `DIR/NAME.qemu.log`.
    pub qemu_log_path: PathBuf,
    pub dir: PathBuf,
    pub started: Instant,
}

impl Vm {
    /// Creates tap `tap-NAME` in the rack namespace `rack_ns` on bridge `br0` and starts
    /// qemu-system-x86_64 there (TCG, q35, 512 MiB, 1 vCPU, no display, serial to a file,
    /// `-no-reboot` so a guest `poweroff -f` or reboot ends QEMU, virtio-net-pci with `mac`
    /// as boot device 1, `-uuid` = [`uuid_for`]`(name)`; UEFI: OVMF with a private copy of
    /// the vars in `dir`). Logs and the vars copy go to `dir`. Panics when setup fails.
    pub fn start(rack_ns: &str, name: &str, mac: &str, fw: Firmware, dir: &Path) -> Vm {
        let missing = missing_host_files();
        assert!(
            missing.is_empty(),
            "QEMU VM needs (apt-get install --no-install-recommends qemu-system-x86 ipxe-qemu \
             seabios ovmf): missing {missing:?}"
        );
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let tap = tap_for(name);
        let uuid = uuid_for(name);
        run(Command::new("ip").args(["-n", rack_ns, "link", "show", BRIDGE]));

        // Persistent tap created and bridged before QEMU opens it, so the firmware's first
        // DHCPDISCOVER is not lost (the bridge has forward_delay 0).
        let _ = Command::new("ip")
            .args(["-n", rack_ns, "link", "del", &tap])
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["-n", rack_ns, "tuntap", "add", "dev", &tap, "mode", "tap"]));
        let bridged = Command::new("ip")
            .args(["-n", rack_ns, "link", "set", &tap, "master", BRIDGE, "up"])
            .status();
        if !matches!(bridged, Ok(s) if s.success()) {
            let _ = Command::new("ip")
                .args(["-n", rack_ns, "link", "del", &tap])
                .status();
            panic!("cannot enslave {tap} to {BRIDGE} in {rack_ns}");
        }

        let serial_path = dir.join(format!("{name}.serial.log"));
        let qemu_log_path = dir.join(format!("{name}.qemu.log"));
        fs::write(&serial_path, b"").expect("creating the serial log");
        let qemu_log = fs::File::create(&qemu_log_path).expect("creating the qemu log");

        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            rack_ns.into(),
            QEMU.into(),
            "-name".into(),
            name.into(),
            "-uuid".into(),
            uuid.clone(),
            "-machine".into(),
            "q35".into(),
            "-accel".into(),
            "tcg".into(),
            "-cpu".into(),
            "max".into(),
            "-smp".into(),
            "1".into(),
            "-m".into(),
            "512".into(),
        ];
        if fw.is_uefi() {
            let vars = dir.join(format!("{name}.OVMF_VARS.fd"));
            fs::copy(OVMF_VARS, &vars).expect("copying the OVMF vars");
            args.push("-drive".into());
            args.push(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"));
            args.push("-drive".into());
            args.push(format!("if=pflash,format=raw,file={}", vars.display()));
        }
        // Bios and UefiIpxe: QEMU's default ROM (efi-virtio.rom); never name it (pitfall 3).
        // UefiFirmwarePxe: no ROM at all, so OVMF's own PXE client runs.
        let rom = if fw == Firmware::UefiFirmwarePxe {
            ",romfile="
        } else {
            ""
        };
        for a in [
            "-nographic".to_string(),
            "-serial".into(),
            format!("file:{}", serial_path.display()),
            "-monitor".into(),
            "none".into(),
            "-parallel".into(),
            "none".into(),
            "-nodefaults".into(),
            "-vga".into(),
            "none".into(),
            "-netdev".into(),
            format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1{rom}"),
            "-no-reboot".into(),
        ] {
            args.push(a);
        }
        // `ip netns exec` setns()es and execs QEMU in the same process: the child's PID is
        // QEMU's.
        let child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(qemu_log.try_clone().expect("dup qemu log"))
            .stderr(qemu_log)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                let _ = Command::new("ip")
                    .args(["-n", rack_ns, "link", "del", &tap])
                    .status();
                panic!("spawning {QEMU}: {e}");
            }
        };
        Vm {
            pid: child.id(),
            child: Mutex::new(child),
            name: name.into(),
            mac: mac.into(),
            uuid,
            firmware: fw,
            tap,
            ns: rack_ns.into(),
            serial_path,
            qemu_log_path,
            dir: dir.into(),
            started: Instant::now(),
        }
    }

    /// QEMU's PID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The serial console so far (lossy UTF-8, `\r` stripped).
    pub fn serial(&self) -> String {
        let bytes = fs::read(&self.serial_path).unwrap_or_default();
        String::from_utf8_lossy(&bytes).replace('\r', "")
    }

    /// QEMU's own stdout/stderr so far.
    pub fn qemu_log(&self) -> String {
        fs::read_to_string(&self.qemu_log_path).unwrap_or_default()
    }

    /// QEMU's exit status once it has exited (reaps it), else `None`.
    pub fn try_exit(&self) -> Option<ExitStatus> {
        // Child caches the status once reaped, so this stays right after the first Some.
        self.child
            .lock()
            .unwrap()
            .try_wait()
            .expect("waiting for qemu")
    }

    /// Waits until the serial console contains `needle` (true). Returns false at the
    /// timeout, as soon as QEMU has exited without it, or as soon as the console shows one
    /// of [`FAILURE_PATTERNS`] ("No bootable device", "PXE-E", "No more network devices",
    /// "Kernel panic").
    pub fn wait_serial(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.try_exit().is_some(); // read the log after this: nothing is lost
            let s = self.serial();
            if s.contains(needle) {
                return true;
            }
            if exited || FAILURE_PATTERNS.iter().any(|p| s.contains(p)) {
                return false;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(Duration::from_millis(200));
        }
    }

    /// Waits up to `timeout` for QEMU to exit (a guest `poweroff -f` ends it, and so does a
    /// reboot, because of `-no-reboot`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_exit() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(200));
        }
    }

    /// Everything a failing assertion wants to show: firmware, MAC, elapsed time, QEMU's log
    /// and the tail of the serial console.
    pub fn diagnostics(&self) -> String {
        let s = self.serial();
        let lines: Vec<&str> = s.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        format!(
            "VM {} ({:?}, mac {}, uuid {}, pid {}, {:.1} s since start)\n--- qemu log ---\n{}\
             --- serial (last 60 lines) ---\n{}",
            self.name,
            self.firmware,
            self.mac,
            self.uuid,
            self.pid(),
            self.started.elapsed().as_secs_f64(),
            self.qemu_log(),
            tail
        )
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        if !matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill(); // SIGKILL to our own child, by PID
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["-n", &self.ns, "link", "del", &self.tap])
            .stderr(Stdio::null())
            .status();
    }
}

/// The boot image built by `boot-images/build-test-image.sh` (cached, see that script).
#[derive(Clone, Debug)]
pub struct TestImage {
    pub cache: PathBuf,
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
    pub undionly: PathBuf,
    pub ipxe_efi: PathBuf,
    pub snponly: PathBuf,
    /// Private half of the key root's authorized_keys in the initramfs holds (`.pub` beside).
    pub node_key: PathBuf,
    pub kernel_version: String,
}

/// Runs `boot-images/build-test-image.sh` once per test binary (it is a no-op when its
/// cache is up to date) and returns the output paths. Honours `BOOTGATE_CACHE`.
pub fn test_image() -> &'static TestImage {
    static IMAGE: OnceLock<TestImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("boot-images/build-test-image.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let get = |k: &str| -> String {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")).map(str::to_string))
                .unwrap_or_else(|| panic!("{} printed no {k}=:\n{stdout}", script.display()))
        };
        let vmlinuz = PathBuf::from(get("vmlinuz"));
        TestImage {
            cache: vmlinuz.parent().unwrap().to_path_buf(),
            vmlinuz,
            initrd: get("initrd").into(),
            undionly: get("undionly").into(),
            ipxe_efi: get("ipxe_efi").into(),
            snponly: get("snponly").into(),
            node_key: get("node_key").into(),
            kernel_version: get("kernel_version"),
        }
    })
}
