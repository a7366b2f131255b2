//! A throw-away SSH target for real Ansible runs: a minimal Debian rootfs (debootstrap,
//! cached under /var/tmp/bootgate-cache/) mounted as an overlay in a private mount, UTS and
//! PID namespace, with sshd chrooted into it, inside a network namespace the test created.
//! Whatever Ansible changes lands in the overlay's upper directory (a temp dir), never on
//! the machine running the tests: /proc/sys and /sys are read-only in the chroot, so a
//! sysctl or module task fails instead of reaching the host kernel.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Netns, sh, wait_for};

/// The packages the hand-off playbooks need on a target (the brief's debootstrap line).
const INCLUDE: &str = "python3,openssh-server,chrony,sudo,kmod,procps,iproute2";
const CACHE: &str = "/var/tmp/bootgate-cache";
/// Bump the suffix when INCLUDE changes, so old caches are not reused.
const ROOTFS: &str = "rootfs-bookworm-sshd-v1";
const COMPLETE: &str = ".bootgate-rootfs-complete";

/// The cached rootfs, built on first use (serialised by a lock file so parallel tests and
/// test binaries build it once). Needs debootstrap and the Debian mirror.
pub fn rootfs() -> PathBuf {
    let dir = Path::new(CACHE).join(ROOTFS);
    if dir.join(COMPLETE).is_file() {
        return dir;
    }
    std::fs::create_dir_all(CACHE).unwrap();
    let tmp = Path::new(CACHE).join(format!("{ROOTFS}.tmp"));
    let script = format!(
        "test -f {dir}/{COMPLETE} && exit 0; rm -rf {tmp}; \
         debootstrap --variant=minbase --include={INCLUDE} bookworm {tmp} http://deb.debian.org/debian \
         && touch {tmp}/{COMPLETE} && mv {tmp} {dir}",
        dir = dir.display(),
        tmp = tmp.display()
    );
    sh(Command::new("flock")
        .arg(Path::new(CACHE).join(format!("{ROOTFS}.lock")))
        .args(["sh", "-c", &script]));
    assert!(dir.join(COMPLETE).is_file(), "debootstrap left no rootfs");
    dir
}

/// sshd chrooted into an overlay of the cached rootfs, in `ns`, listening on port 22 of
/// every address of the namespace. Killed (its whole PID namespace) on drop.
pub struct ChrootSshd {
    /// The host's public key line, as a phone-home reports it.
    pub host_key: String,
    /// A client key root's authorized_keys accepts.
    pub client_key: PathBuf,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl ChrootSshd {
    pub fn start(ns: &Netns, hostname: &str) -> ChrootSshd {
        let lower = rootfs();
        let dir = tempfile::Builder::new()
            .prefix("bgt-chroot")
            .tempdir_in("/var/tmp")
            .unwrap();
        let d = dir.path();
        for sub in ["upper", "work", "merged", "keys"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let upper = d.join("upper");
        let keygen = |path: &Path, comment: &str| {
            sh(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                .arg(path));
        };
        let client_key = d.join("keys/id_ed25519");
        keygen(&client_key, "bootgate-test");
        std::fs::create_dir_all(upper.join("etc/ssh")).unwrap();
        let host_key_path = upper.join("etc/ssh/bootgate_test_host_ed25519_key");
        keygen(&host_key_path, &format!("root@{hostname}"));
        let host_key = std::fs::read_to_string(host_key_path.with_extension("pub"))
            .unwrap()
            .trim()
            .to_string();
        let ssh_dir = upper.join("root/.ssh");
        std::fs::create_dir_all(&ssh_dir).unwrap();
        std::fs::set_permissions(&ssh_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::copy(
            client_key.with_extension("pub"),
            ssh_dir.join("authorized_keys"),
        )
        .unwrap();
        std::fs::write(
            upper.join("etc/ssh/bootgate_test_sshd_config"),
            "ListenAddress 0.0.0.0:22\n\
             HostKey /etc/ssh/bootgate_test_host_ed25519_key\n\
             PermitRootLogin prohibit-password\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             PidFile none\n\
             Subsystem sftp internal-sftp\n",
        )
        .unwrap();
        std::fs::write(upper.join("etc/hostname"), format!("{hostname}\n")).unwrap();

        let m = d.join("merged");
        let script = format!(
            "set -e\n\
             mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={work} {m}\n\
             mount -t proc proc {m}/proc\n\
             mount --bind {m}/proc/sys {m}/proc/sys\n\
             mount -o remount,bind,ro {m}/proc/sys\n\
             mount -t sysfs -o ro sysfs {m}/sys\n\
             mount -t tmpfs tmpfs {m}/run\n\
             mkdir -p {m}/run/sshd\n\
             mount -t tmpfs tmpfs {m}/tmp\n\
             mount -t devpts -o newinstance,ptmxmode=0666 devpts {m}/dev/pts || true\n\
             hostname {hostname}\n\
             exec chroot {m} /usr/sbin/sshd -D -e -f /etc/ssh/bootgate_test_sshd_config\n",
            lower = lower.display(),
            upper = upper.display(),
            work = d.join("work").display(),
            m = m.display(),
        );
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        // --pid --fork: sshd and every session live in a PID namespace that dies with
        // unshare (--kill-child), so killing our one child cleans everything up.
        let child = ns
            .cmd("unshare")
            .args([
                "--uts",
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning the chroot sshd");
        let mut sshd = ChrootSshd {
            host_key,
            client_key,
            child: Some(child),
            dir,
        };
        let log_path = sshd.dir.path().join("sshd.log");
        let up = wait_for(Duration::from_secs(15), || {
            if let Some(c) = sshd.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "chroot sshd exited ({status}): {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            std::fs::read_to_string(&log_path)
                .ok()
                .filter(|l| l.contains("Server listening"))
        });
        assert!(
            up.is_some(),
            "chroot sshd did not start: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        sshd
    }

    /// A file as the target sees it, read from the overlay's upper directory (only what
    /// Ansible or the setup wrote).
    pub fn written(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(
            self.dir
                .path()
                .join("upper")
                .join(path.trim_start_matches('/')),
        )
        .ok()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for ChrootSshd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A fresh ed25519 public key line nobody serves (to pin the wrong key).
pub fn other_host_key(dir: &Path) -> String {
    let p = dir.join("other_ed25519");
    sh(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "impostor", "-f"])
        .arg(&p));
    std::fs::read_to_string(p.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}
