//! Throwaway PostgreSQL clusters for tests, from Debian's package binaries
//! (`/usr/lib/postgresql/<ver>/bin`). A cluster lives in its own temp dir, listens on
//! 127.0.0.1 (a free port) and on a unix socket in that dir, and runs as the `postgres`
//! system user when the tests run as root (PostgreSQL refuses root). Tests in one binary
//! share one cluster ([`PgCluster::shared`]) with a database each ([`PgCluster::fresh_db`]);
//! a test that stops the server gets its own ([`PgCluster::start`]).
//!
//! Cleanup kills only the postmaster this module started, by PID: a dedicated cluster on
//! drop; the shared one (a static, never dropped) through a small guardian process that
//! waits for the test process to exit, then stops the postmaster named in *its* data
//! directory's `postmaster.pid` and removes the temp dir.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// The superuser initdb creates; tests connect as it over TCP with a password.
const USER: &str = "bootgate";

/// Where Debian puts the server binaries: the newest installed major version.
pub fn pg_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// How to get the server binaries, for a missing-peer reason.
pub const INSTALL: &str = "apt-get install -y postgresql";

/// A cluster this module started.
pub struct PgCluster {
    /// The temp dir holding `data/`, the socket and the server log; removed on stop.
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    password: String,
    /// `Some("postgres")` when running as root: server commands run as that user.
    run_as: Option<&'static str>,
    /// The running postmaster (our child: `setpriv` execs, so its PID is the server's).
    postmaster: Mutex<Option<Child>>,
    /// The guardian that cleans up if this process dies without dropping us.
    guardian: Mutex<Option<Child>>,
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).expect("getrandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn free_port() -> u16 {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("free port on 127.0.0.1")
        .port()
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgCluster {
    /// The cluster every test of this binary shares (started on first use).
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(PgCluster::start)
    }

    /// initdb + start a new cluster of our own; stopped and removed on drop.
    pub fn start() -> PgCluster {
        let bin = pg_bin_dir().expect(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin \
             (apt-get install -y postgresql)",
        );
        let run_as = crate::support::is_root().then_some("postgres");
        let dir = tempfile::Builder::new()
            .prefix("bootgate-pg-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let password = random_hex(12);
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n")).expect("write pwfile");
        if let Some(user) = run_as {
            run(Command::new("chown")
                .args(["-R", &format!("{user}:{user}")])
                .arg(&dir));
        }
        let cluster = PgCluster {
            dir: dir.clone(),
            bin,
            port: free_port(),
            password,
            run_as,
            postmaster: Mutex::new(None),
            guardian: Mutex::new(None),
        };
        run(cluster
            .server_cmd("initdb")
            .arg("-D")
            .arg(cluster.data())
            .args([
                "--username",
                USER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync", // the cluster is thrown away; the server itself runs fsync=on
            ])
            .arg(format!("--pwfile={}", pwfile.display())));
        *cluster.guardian.lock().unwrap() = Some(cluster.spawn_guardian());
        cluster.start_again();
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// A server binary, run as the `postgres` user when we are root.
    fn server_cmd(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={user}"),
                    &format!("--regid={user}"),
                    "--init-groups",
                    "--",
                ])
                .arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.current_dir(&self.dir).stdin(Stdio::null());
        cmd
    }

    /// A watcher that outlives this process if it dies: once our PID is gone it stops the
    /// postmaster of *this* data dir (PID from its postmaster.pid) and removes the dir.
    fn spawn_guardian(&self) -> Child {
        let script = r#"
            while kill -0 "$1" 2>/dev/null; do sleep 1; done
            pidfile="$2/data/postmaster.pid"
            if [ -f "$pidfile" ]; then
                pid=$(head -n 1 "$pidfile")
                kill -INT "$pid" 2>/dev/null
                for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                kill -KILL "$pid" 2>/dev/null
            fi
            rm -rf "$2"
        "#;
        Command::new("sh")
            .args(["-c", script, "pg-guardian"])
            .arg(std::process::id().to_string())
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the cluster guardian")
    }

    /// `postgres://bootgate:<password>@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    /// `postgres://bootgate@127.0.0.1:<port>/<db>`: the password comes from elsewhere
    /// (the secrets file).
    pub fn url_without_password(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Restarts the server with TLS on (`ssl = on` with `cert`/`key`, PEM) and TCP logins
    /// allowed only over TLS (every `host` line of pg_hba.conf becomes `hostssl`, so a
    /// plain connection finds no entry and is refused).
    pub fn enable_tls(&self, cert: &Path, key: &Path) {
        use std::os::unix::fs::PermissionsExt;
        self.stop();
        let data = self.data();
        std::fs::copy(cert, data.join("server.crt")).expect("copy server.crt");
        std::fs::copy(key, data.join("server.key")).expect("copy server.key");
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        if let Some(user) = self.run_as {
            run(Command::new("chown")
                .arg(format!("{user}:{user}"))
                .arg(data.join("server.crt"))
                .arg(data.join("server.key")));
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).unwrap();
        let hba = data.join("pg_hba.conf");
        let text: String = std::fs::read_to_string(&hba)
            .expect("pg_hba.conf")
            .lines()
            .map(|l| match l.strip_prefix("host ") {
                Some(rest) => format!("hostssl {rest}\n"),
                None => format!("{l}\n"),
            })
            .collect();
        std::fs::write(&hba, text).unwrap();
        self.start_again();
    }

    /// The password in the URLs (tests check it never shows in errors or logs).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Creates an empty database `t_<pid>_<n>` and returns its URL.
    pub async fn fresh_db(&self) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let mut admin = PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connect to the test cluster");
        // `name` is ours (digits and underscores), not user input.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE");
        admin.close().await.ok();
        self.url(&name)
    }

    /// (Re)starts the server on the same port and data dir and waits until it accepts
    /// connections. `fsync` and `synchronous_commit` are on: a commit the store ACKs is on
    /// disk, as in production.
    pub fn start_again(&self) {
        let mut slot = self.postmaster.lock().unwrap();
        assert!(slot.is_none(), "the test cluster is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("server log");
        let child = self
            .server_cmd("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", &format!("port={}", self.port)])
            .args([
                "-c",
                &format!("unix_socket_directories={}", self.dir.display()),
            ])
            .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
            .args(["-c", "max_connections=300", "-c", "shared_buffers=32MB"])
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn postgres");
        *slot = Some(child);
        drop(slot);
        self.wait_ready(Duration::from_secs(30));
    }

    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            if let Some(child) = self.postmaster.lock().unwrap().as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("postgres exited ({status}) at start:\n{}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready after {timeout:?}:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The end of the server log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops the server (fast shutdown: open sessions are cut off, as a crash or failover
    /// would) and waits for the postmaster to exit. Signals only the PID we started.
    pub fn stop(&self) {
        self.thaw(); // a frozen server cannot shut down
        let Some(mut child) = self.postmaster.lock().unwrap().take() else {
            return;
        };
        signal(child.id(), "INT");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl PgCluster {
    /// The postmaster and every server process it forked (backends, walwriter, …): all
    /// descendants of the PID we started, read from /proc.
    fn server_pids(&self) -> Vec<u32> {
        let Some(root) = self.postmaster.lock().unwrap().as_ref().map(Child::id) else {
            return Vec::new();
        };
        let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                // `pid (comm) state ppid …`: comm may hold spaces, so split after ')'.
                let ppid = stat
                    .rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some((pid, ppid))
            })
            .collect();
        let mut out = vec![root];
        let mut i = 0;
        while i < out.len() {
            let parent = out[i];
            out.extend(
                parents
                    .iter()
                    .filter(|(_, pp)| *pp == parent)
                    .map(|(p, _)| *p),
            );
            i += 1;
        }
        out
    }

    /// Freezes the whole server (SIGSTOP to the postmaster and its processes): open TCP
    /// connections stay up but nothing answers, as in a network partition or a hung host.
    pub fn freeze(&self) {
        for pid in self.server_pids().into_iter().rev() {
            signal(pid, "STOP");
        }
    }

    /// Crashes the server: SIGKILL to the postmaster and all its processes at once (no
    /// shutdown checkpoint; the next start runs crash recovery from the WAL).
    pub fn crash(&self) {
        for pid in self.server_pids() {
            signal(pid, "KILL");
        }
        if let Some(mut child) = self.postmaster.lock().unwrap().take() {
            let _ = child.wait();
        }
        // Orphaned backends exit on their own once their postmaster is gone; a restart
        // refuses to start while they still hold the shared memory, so wait for them.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && self.dir.join("data/postmaster.pid").exists() {
            let pid = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
                .ok()
                .and_then(|s| s.lines().next()?.trim().parse::<u32>().ok());
            if pid.is_none_or(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Undoes [`PgCluster::freeze`].
    pub fn thaw(&self) {
        for pid in self.server_pids() {
            signal(pid, "CONT");
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut guardian) = self.guardian.lock().unwrap().take() {
            let _ = guardian.kill();
            let _ = guardian.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
