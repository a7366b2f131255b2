//! The `ansible-playbook` edge: one run per host, at most `concurrency` at once, killed (with
//! its whole process group) after the timeout. Each run renders a fresh inventory, pins the
//! host keys from the host's last phone-home in a known_hosts file, keeps its log under
//! `{state_dir}/handoff/<host>/`, and moves the host `configuring → ready | failed`. Store
//! calls are single statements: nothing is held while Ansible runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::Semaphore;

use super::{HandoffError, io_err, render};
use crate::handoff::HandoffSettings;
use crate::inventory::Inventory;
use crate::model::{EventKind, EventQuery, NewEvent, Store, StoreError};
use crate::types::HostState;

/// Apply the playbook, or only report what it would change (`--check`, state untouched).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Apply,
    Check,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
}

/// The PLAY RECAP counts for the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Recap {
    pub ok: u32,
    pub changed: u32,
    pub unreachable: u32,
    pub failed: u32,
    pub skipped: u32,
    pub rescued: u32,
    pub ignored: u32,
}

/// What `bootgate handoff` prints and the events carry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    pub host: String,
    pub mode: Mode,
    pub outcome: Outcome,
    /// The host's state after the run (unchanged in check mode).
    pub state: HostState,
    pub recap: Option<Recap>,
    /// The task that failed (`role : task name`), when one did.
    pub failed_task: Option<String>,
    /// Why: Ansible's message for the failed task, or the timeout.
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    pub log: PathBuf,
    pub duration_ms: u64,
}

impl RunReport {
    pub fn ok(&self) -> bool {
        self.outcome == Outcome::Succeeded
    }
}

/// Runs hand-offs; built once and shared (`Arc`) so the semaphore bounds the whole daemon.
pub struct Runner {
    settings: HandoffSettings,
    state_dir: PathBuf,
    store: Arc<dyn Store>,
    /// One permit per concurrent run.
    slots: Semaphore,
    /// Cancelled at daemon shutdown: running plays are killed and their hosts failed.
    cancel: tokio_util::sync::CancellationToken,
    /// The daemon's background runs, waited for at shutdown.
    tasks: tokio_util::task::TaskTracker,
}

/// What the log of a finished run says (pure parse of the default callback's output).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogSummary {
    pub recap: Option<Recap>,
    pub failed_task: Option<String>,
    pub message: Option<String>,
    /// The last task that started (names what a timed-out run was stuck in).
    pub last_task: Option<String>,
}

impl Runner {
    pub fn new(settings: HandoffSettings, state_dir: PathBuf, store: Arc<dyn Store>) -> Runner {
        Runner {
            slots: Semaphore::new(settings.concurrency.max(1)),
            cancel: tokio_util::sync::CancellationToken::new(),
            tasks: tokio_util::task::TaskTracker::new(),
            settings,
            state_dir,
            store,
        }
    }

    /// Runs the playbooks against `host`. Refusals (unknown host, wrong state, no pinned
    /// keys) are errors and change nothing but the event log; a run that starts always ends
    /// with a report, and in apply mode with the host `ready` or `failed`.
    pub async fn run(
        &self,
        inv: &Inventory,
        host: &str,
        mode: Mode,
        actor: &str,
    ) -> Result<RunReport, HandoffError> {
        self.preflight(inv, host)?;
        // Closed only at shutdown: then nothing new starts.
        let Ok(_permit) = self.slots.acquire().await else {
            return Err(HandoffError::ShuttingDown);
        };
        let state = self.startable_state(host, mode).await?;
        let keys = match self.pinned_keys(host).await {
            Ok(k) => k,
            Err(e) => {
                let detail = serde_json::json!({"mode": mode, "reason": e.to_string()});
                self.event(EventKind::HandoffFailed, host, actor, detail)
                    .await;
                return Err(e);
            }
        };
        let files = self.prepare(inv, host, mode, &keys).await?;
        if mode == Mode::Apply {
            self.start_configuring(host, state, actor, &files.log)
                .await?;
        }
        self.event(
            EventKind::HandoffStarted,
            host,
            actor,
            serde_json::json!({"mode": mode, "log": files.log, "address": files.address}),
        )
        .await;

        let t0 = Instant::now();
        let result = self
            .ansible(host, mode, &files.inv_dir, &files.known_hosts, &files.log)
            .await;
        let log = files.log;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let summary = parse_log(&text, host);
        let (outcome, exit_code, reason) = judge(result, &summary, self.settings.timeout);
        let failed_task = match outcome {
            Outcome::Succeeded => None,
            Outcome::Failed => summary.failed_task.clone(),
            Outcome::TimedOut => summary.last_task.clone(),
        };
        append_footer(&log, outcome, exit_code, reason.as_deref());

        let final_state = if mode == Mode::Apply {
            let detail = serde_json::json!({
                "reason": reason.as_deref().unwrap_or("hand-off succeeded"),
                "task": failed_task,
                "log": log,
            });
            self.finish_configuring(host, outcome, actor, detail).await
        } else {
            state
        };
        let report = RunReport {
            host: host.to_string(),
            mode,
            outcome,
            state: final_state,
            recap: summary.recap,
            failed_task,
            reason,
            exit_code,
            log,
            duration_ms: t0.elapsed().as_millis() as u64,
        };
        self.record_end(&report, actor).await;
        Ok(report)
    }

    /// Before any state change: an unknown host is refused, and a missing tool or playbook
    /// is a setup problem, not the host's failure.
    fn preflight(&self, inv: &Inventory, host: &str) -> Result<(), HandoffError> {
        if inv.host(host).is_none() {
            return Err(HandoffError::NoSuchHost(host.to_string()));
        }
        let site_yml = self.settings.playbooks_dir.join("site.yml");
        if !site_yml.is_file() {
            return Err(HandoffError::NotConfigured(format!(
                "no playbook {} ([handoff] playbooks)",
                site_yml.display()
            )));
        }
        if !self.settings.ansible_playbook.is_file() {
            return Err(HandoffError::NotConfigured(format!(
                "{} not found ([handoff] ansible_playbook; a bare name is looked up in $BOOTGATE_VENV/bin, then PATH)",
                self.settings.ansible_playbook.display()
            )));
        }
        Ok(())
    }

    /// The host's stored state; in apply mode refused unless a hand-off may start from it.
    async fn startable_state(&self, host: &str, mode: Mode) -> Result<HostState, HandoffError> {
        let state = self
            .store
            .get_host(host)
            .await?
            .map_or(HostState::Registered, |r| r.state);
        let startable = matches!(
            state,
            HostState::Provisioned | HostState::Ready | HostState::Failed
        );
        if mode == Mode::Apply && !startable {
            return Err(HandoffError::WrongState {
                host: host.to_string(),
                state,
            });
        }
        Ok(state)
    }

    /// The run's files under `{state_dir}/handoff/<host>/`: the pinned known_hosts and a
    /// fresh inventory rendered with every host's stored state.
    async fn prepare(
        &self,
        inv: &Inventory,
        host: &str,
        mode: Mode,
        keys: &[String],
    ) -> Result<RunFiles, HandoffError> {
        let dir = self.state_dir.join("handoff").join(host);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let stamp = Timestamp::now().strftime("%Y%m%dT%H%M%S%.3fZ").to_string();
        let suffix = if mode == Mode::Check { "-check" } else { "" };
        let log = dir.join(format!("{stamp}{suffix}.log"));
        let inv_dir = dir.join(format!("{stamp}{suffix}.inventory"));
        let known_hosts = dir.join("known_hosts");
        let h = inv
            .host(host)
            .ok_or_else(|| HandoffError::NoSuchHost(host.into()))?;
        let address = render::connect_address(inv, h);
        write_private(&known_hosts, &known_hosts_text(&address, host, keys))?;
        let states: BTreeMap<String, HostState> = self
            .store
            .list_hosts()
            .await?
            .into_iter()
            .map(|r| (r.name, r.state))
            .collect();
        render::render(inv, &states)?.write_dir(&inv_dir)?;
        Ok(RunFiles {
            log,
            inv_dir,
            known_hosts,
            address,
        })
    }

    /// `state → configuring`; refused when another run moved the host first.
    async fn start_configuring(
        &self,
        host: &str,
        state: HostState,
        actor: &str,
        log: &Path,
    ) -> Result<(), HandoffError> {
        match self
            .store
            .set_host_state(
                host,
                Some(state),
                HostState::Configuring,
                actor,
                serde_json::json!({"reason": "hand-off started", "log": log}),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::StateMismatch { actual, .. }) => Err(HandoffError::WrongState {
                host: host.to_string(),
                state: actual,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// `configuring → ready | failed` after the run; the state the host is left in
    /// (`configuring` when the store refuses, which is logged).
    async fn finish_configuring(
        &self,
        host: &str,
        outcome: Outcome,
        actor: &str,
        detail: serde_json::Value,
    ) -> HostState {
        let to = if outcome == Outcome::Succeeded {
            HostState::Ready
        } else {
            HostState::Failed
        };
        match self
            .store
            .set_host_state(host, Some(HostState::Configuring), to, actor, detail)
            .await
        {
            Ok(r) => r.state,
            Err(e) => {
                tracing::error!(host, error = %e, "hand-off: could not record the final state");
                HostState::Configuring
            }
        }
    }

    /// `handoff-succeeded` or `handoff-failed`, carrying the report.
    async fn record_end(&self, report: &RunReport, actor: &str) {
        let kind = if report.ok() {
            EventKind::HandoffSucceeded
        } else {
            EventKind::HandoffFailed
        };
        let host = report.host.as_str();
        self.event(
            kind,
            host,
            actor,
            serde_json::json!({
                "mode": report.mode,
                "outcome": report.outcome,
                "recap": report.recap,
                "task": report.failed_task,
                "host": host,
                "reason": report.reason,
                "exit_code": report.exit_code,
                "log": report.log,
                "duration_ms": report.duration_ms,
            }),
        )
        .await;
    }

    /// Runs `fut` (a hand-off) in the background, tracked for [`Runner::shutdown`].
    pub fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(fut);
    }

    /// Kills running plays (their hosts go `failed`), refuses queued ones, and waits for
    /// the background runs to record their end.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.slots.close();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// The SSH host keys from the host's most recent phone-home that carried any.
    pub async fn pinned_keys(&self, host: &str) -> Result<Vec<String>, HandoffError> {
        let events = self
            .store
            .query(&EventQuery {
                host: Some(host.to_string()),
                kind: Some(EventKind::PhoneHome),
                ..Default::default()
            })
            .await?;
        let keys: Vec<String> = events
            .iter()
            .rev()
            .filter_map(|e| e.detail.get("ssh_host_keys")?.as_array())
            .find(|k| !k.is_empty())
            .map(|k| {
                k.iter()
                    .map(|v| v.as_str().unwrap_or_default().trim().to_string())
                    .collect()
            })
            .unwrap_or_default();
        if keys.is_empty() {
            return Err(HandoffError::NoPinnedKeys {
                host: host.to_string(),
            });
        }
        for (index, k) in keys.iter().enumerate() {
            crate::inventory::load::check_ssh_public_key(k).map_err(|reason| {
                HandoffError::BadHostKey {
                    host: host.to_string(),
                    index,
                    reason,
                }
            })?;
        }
        Ok(keys)
    }

    async fn event(&self, kind: EventKind, host: &str, actor: &str, detail: serde_json::Value) {
        let ev = NewEvent::new(kind, actor).host(host).detail(detail);
        if let Err(e) = self.store.append(&ev).await {
            tracing::error!(host, error = %e, kind = %kind, "could not record hand-off event");
        }
    }

    /// Spawns `ansible-playbook` in its own process group, its output appended to `log`,
    /// and waits for it or the timeout (then the whole group is killed).
    async fn ansible(
        &self,
        host: &str,
        mode: Mode,
        inv_dir: &Path,
        known_hosts: &Path,
        log: &Path,
    ) -> Result<Exit, HandoffError> {
        let s = &self.settings;
        let cfg = s.playbooks_dir.join("ansible.cfg");
        let ansible_home = self.state_dir.join("handoff").join(".ansible");
        std::fs::create_dir_all(ansible_home.join("tmp")).map_err(io_err(&ansible_home))?;
        let (args, ssh_args) = self.ansible_args(host, mode, inv_dir, known_hosts);
        let header = format!(
            "# bootgate hand-off of {host} ({mode:?}) at {}\n# {} {}\n# ANSIBLE_CONFIG={}\n",
            Timestamp::now(),
            s.ansible_playbook.display(),
            args.join(" "),
            if cfg.is_file() {
                cfg.display().to_string()
            } else {
                "(none)".into()
            },
        );
        let (out, err) = open_log(log, &header)?;
        let mut cmd = tokio::process::Command::new(&s.ansible_playbook);
        cmd.args(&args)
            .current_dir(&s.playbooks_dir)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .env(
                "HOME",
                std::env::var_os("HOME").unwrap_or_else(|| ansible_home.clone().into()),
            )
            .env("LC_ALL", "C.UTF-8")
            .env("LANG", "C.UTF-8")
            .env("ANSIBLE_HOME", &ansible_home)
            .env("ANSIBLE_LOCAL_TEMP", ansible_home.join("tmp"))
            .env("ANSIBLE_HOST_KEY_CHECKING", "True")
            .env("ANSIBLE_SSH_ARGS", &ssh_args)
            .env("ANSIBLE_STDOUT_CALLBACK", "ansible.builtin.default")
            .env("ANSIBLE_DISPLAY_FAILED_STDERR", "False")
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_FORCE_COLOR", "0")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0)
            .kill_on_drop(true);
        if cfg.is_file() {
            cmd.env("ANSIBLE_CONFIG", &cfg);
        }
        self.wait(host, cmd).await
    }

    /// ansible-playbook's arguments, and the ssh arguments for `ANSIBLE_SSH_ARGS`.
    fn ansible_args(
        &self,
        host: &str,
        mode: Mode,
        inv_dir: &Path,
        known_hosts: &Path,
    ) -> (Vec<String>, String) {
        let s = &self.settings;
        // Pinned and strict. These go first in ssh_args (ssh keeps the first value of an
        // option, so a playbook's ansible.cfg cannot turn checking off) and again in
        // ansible_ssh_common_args. No connection sharing: a master started by an earlier
        // run must not carry a later run past host key checking.
        let pin = format!(
            "-o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes",
            shell_quote(&known_hosts.to_string_lossy())
        );
        let ssh_args = format!("{pin} -o ControlMaster=no -o ControlPath=none");
        let mut extra = serde_json::json!({
            "ansible_ssh_common_args": pin,
            "ansible_user": s.ssh_user,
        });
        if let Some(key) = &s.ssh_key {
            extra["ansible_ssh_private_key_file"] = serde_json::json!(key);
        }
        let mut args: Vec<String> = vec![
            "-i".into(),
            inv_dir.to_string_lossy().into_owned(),
            s.playbooks_dir
                .join("site.yml")
                .to_string_lossy()
                .into_owned(),
            "--limit".into(),
            host.to_string(),
            "-e".into(),
            extra.to_string(),
        ];
        if mode == Mode::Check {
            args.push("--check".into());
        }
        (args, ssh_args)
    }

    /// Starts `cmd` and waits for it, the timeout or the daemon's shutdown; on the latter
    /// two the whole process tree is killed.
    async fn wait(
        &self,
        host: &str,
        mut cmd: tokio::process::Command,
    ) -> Result<Exit, HandoffError> {
        let program = &self.settings.ansible_playbook;
        let mut child = cmd.spawn().map_err(|source| HandoffError::Spawn {
            program: program.clone(),
            source,
        })?;
        let pgid = child.id();
        let timeout = self.settings.timeout;
        let exit = tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|source| HandoffError::Spawn {
                    program: program.clone(),
                    source,
                })?;
                return Ok(Exit::Status(status.code()));
            }
            _ = tokio::time::sleep(timeout) => {
                tracing::warn!(host, ?timeout, "hand-off timed out; killing ansible-playbook and its children");
                Exit::TimedOut
            }
            _ = self.cancel.cancelled() => {
                tracing::warn!(host, "daemon stopping; killing the hand-off");
                Exit::Cancelled
            }
        };
        if let Some(pgid) = pgid {
            kill_group(pgid).await;
        }
        let _ = child.kill().await;
        Ok(exit)
    }
}

/// The files of one run.
struct RunFiles {
    /// ansible-playbook's output, with bootgate's header and footer.
    log: PathBuf,
    /// The rendered inventory.
    inv_dir: PathBuf,
    /// The host's pinned keys (0600).
    known_hosts: PathBuf,
    /// The address Ansible connects to.
    address: String,
}

/// Opens `log` for appending and writes `header`; the handles for the child's stdout and
/// stderr.
fn open_log(log: &Path, header: &str) -> Result<(std::fs::File, std::fs::File), HandoffError> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err(log))?;
    file.write_all(header.as_bytes()).map_err(io_err(log))?;
    let out = file.try_clone().map_err(io_err(log))?;
    Ok((out, file))
}

/// How a run ended (outcome, exit status, reason), from how the process ended and what
/// its log says.
fn judge(
    result: Result<Exit, HandoffError>,
    summary: &LogSummary,
    timeout: Duration,
) -> (Outcome, Option<i32>, Option<String>) {
    match result {
        Ok(Exit::Status(code)) => {
            let clean = summary
                .recap
                .is_some_and(|r| r.failed == 0 && r.unreachable == 0);
            if code == Some(0) && clean {
                (Outcome::Succeeded, code, None)
            } else {
                let why = summary.message.clone().unwrap_or_else(|| match code {
                    Some(c) => format!("ansible-playbook exited with status {c}"),
                    None => "ansible-playbook was killed by a signal".to_string(),
                });
                (Outcome::Failed, code, Some(why))
            }
        }
        Ok(Exit::Cancelled) => (
            Outcome::Failed,
            None,
            Some("the daemon stopped during the hand-off".to_string()),
        ),
        Ok(Exit::TimedOut) => {
            let mut why = format!("timeout after {}", human(timeout));
            if let Some(t) = &summary.last_task {
                why.push_str(&format!(" (in task {t:?})"));
            }
            (Outcome::TimedOut, None, Some(why))
        }
        Err(e) => (Outcome::Failed, None, Some(e.to_string())),
    }
}

enum Exit {
    Status(Option<i32>),
    TimedOut,
    Cancelled,
}

/// SIGKILLs everything one run started: ansible-playbook's process group, and every
/// descendant of it. Its workers call `setsid()` (leaving the group), so they and their ssh
/// clients are found by walking the process tree; the tree is frozen (SIGSTOP) first so
/// nothing forks away while it is being collected.
async fn kill_group(pgid: u32) {
    let signal = |sig: &'static str, pids: Vec<String>| async move {
        if pids.is_empty() {
            return;
        }
        let _ = tokio::process::Command::new("kill")
            .arg(sig)
            .arg("--")
            .args(pids)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    };
    let mut seen: Vec<u32> = Vec::new();
    for _ in 0..10 {
        let tree = descendants(pgid);
        let new: Vec<u32> = tree.iter().copied().filter(|p| !seen.contains(p)).collect();
        if new.is_empty() {
            break;
        }
        signal("-STOP", new.iter().map(u32::to_string).collect()).await;
        seen.extend(new);
    }
    signal("-KILL", vec![format!("-{pgid}")]).await;
    signal("-KILL", seen.iter().map(u32::to_string).collect()).await;
}

/// `root` and its descendants, from /proc/*/stat.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

fn append_footer(log: &Path, outcome: Outcome, code: Option<i32>, reason: Option<&str>) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log) {
        let _ = writeln!(
            f,
            "# bootgate: {outcome:?}, exit status {}{}",
            code.map_or("-".to_string(), |c| c.to_string()),
            reason.map(|r| format!(": {r}")).unwrap_or_default()
        );
    }
}

/// known_hosts lines for the address Ansible connects to and the host name.
pub fn known_hosts_text(address: &str, host: &str, keys: &[String]) -> String {
    let names = if address == host {
        host.to_string()
    } else {
        format!("{address},{host}")
    };
    keys.iter()
        .map(|k| {
            let mut w = k.split_whitespace();
            let kind = w.next().unwrap_or_default();
            let blob = w.next().unwrap_or_default();
            format!("{names} {kind} {blob}\n")
        })
        .collect()
}

fn write_private(path: &Path, text: &str) -> Result<(), HandoffError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Quotes a path for Ansible's shlex split of the ssh arguments.
fn shell_quote(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `30m`, `1h 5m`, `45s`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, s / 60 % 60, s % 60);
    let mut parts = Vec::new();
    if h > 0 {
        parts.push(format!("{h}h"));
    }
    if m > 0 {
        parts.push(format!("{m}m"));
    }
    if sec > 0 || parts.is_empty() {
        parts.push(format!("{sec}s"));
    }
    parts.join(" ")
}

/// Reads the default stdout callback's output: `TASK [name] ***` headers, `fatal: [host]:
/// FAILED! => {...}` (or `failed:` inside loops, `UNREACHABLE!`), `...ignoring` after an
/// ignored failure, and the `PLAY RECAP` line of `host`.
pub fn parse_log(text: &str, host: &str) -> LogSummary {
    let mut out = LogSummary::default();
    let mut current: Option<String> = None;
    let mut pending: Option<(String, Option<String>)> = None;
    let fatal = format!("fatal: [{host}]");
    let failed = format!("failed: [{host}]");
    let recap_prefix = format!("{host} ");
    let mut in_recap = false;
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("TASK [") {
            if let Some(end) = rest.rfind(']') {
                current = Some(rest[..end].to_string());
                out.last_task = current.clone();
            }
            if let Some(p) = pending.take() {
                out.failed_task.get_or_insert(p.0);
                if out.message.is_none() {
                    out.message = p.1;
                }
            }
            continue;
        }
        if line.starts_with("...ignoring") {
            pending = None;
            continue;
        }
        if line.starts_with("PLAY RECAP") {
            in_recap = true;
            if let Some(p) = pending.take() {
                out.failed_task.get_or_insert(p.0);
                if out.message.is_none() {
                    out.message = p.1;
                }
            }
            continue;
        }
        if line.starts_with(&fatal) || line.starts_with(&failed) {
            let msg = line
                .split_once("=> ")
                .and_then(|(_, json)| failure_message(json));
            if let Some(task) = &current {
                // Keep the first failure: later ones follow from it.
                if out.failed_task.is_none() && pending.is_none() {
                    pending = Some((task.clone(), msg));
                }
            }
            continue;
        }
        if in_recap && line.starts_with(&recap_prefix) && line.contains("ok=") {
            out.recap = Some(parse_recap(line));
        }
    }
    if let Some(p) = pending.take() {
        out.failed_task.get_or_insert(p.0);
        if out.message.is_none() {
            out.message = p.1;
        }
    }
    out
}

/// `msg` of a failure's JSON, or the JSON text itself (shortened) when it has none.
fn failure_message(json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let msg = v
        .get("msg")
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .or_else(|| v.get("stderr").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_else(|| json.chars().take(500).collect());
    Some(msg.trim().to_string())
}

fn parse_recap(line: &str) -> Recap {
    let mut r = Recap::default();
    for word in line.split_whitespace() {
        let Some((k, v)) = word.split_once('=') else {
            continue;
        };
        let Ok(n) = v.parse::<u32>() else { continue };
        match k {
            "ok" => r.ok = n,
            "changed" => r.changed = n,
            "unreachable" => r.unreachable = n,
            "failed" => r.failed = n,
            "skipped" => r.skipped = n,
            "rescued" => r.rescued = n,
            "ignored" => r.ignored = n,
            _ => {}
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAILED: &str = r#"
PLAY [Hand-off] ****************************************************************

TASK [Gathering Facts] *********************************************************
ok: [vm0]

TASK [base : Allowed to fail] **************************************************
fatal: [vm0]: FAILED! => {"changed": false, "msg": "not this one"}
...ignoring

TASK [base : Set the hostname] *************************************************
fatal: [vm0]: FAILED! => {"changed": false, "msg": "hostnamectl: not found"}

PLAY RECAP *********************************************************************
vm0                        : ok=2    changed=0    unreachable=0    failed=1    skipped=3    rescued=0    ignored=1
"#;

    #[test]
    fn names_the_failed_task_not_the_ignored_one() {
        let s = parse_log(FAILED, "vm0");
        assert_eq!(s.failed_task.as_deref(), Some("base : Set the hostname"));
        assert_eq!(s.message.as_deref(), Some("hostnamectl: not found"));
        assert_eq!(
            s.recap,
            Some(Recap {
                ok: 2,
                failed: 1,
                skipped: 3,
                ignored: 1,
                ..Recap::default()
            })
        );
    }

    #[test]
    fn unreachable_and_other_hosts() {
        let log = "TASK [Gathering Facts] ***\nfatal: [vm1]: UNREACHABLE! => {\"changed\": false, \"msg\": \"Failed to connect to the host via ssh: Host key verification failed.\", \"unreachable\": true}\n\nPLAY RECAP ***\nvm1 : ok=0 changed=0 unreachable=1 failed=0 skipped=0 rescued=0 ignored=0\nvm10 : ok=9 changed=9 unreachable=0 failed=0 skipped=0 rescued=0 ignored=0\n";
        let s = parse_log(log, "vm1");
        assert_eq!(s.failed_task.as_deref(), Some("Gathering Facts"));
        assert!(s.message.unwrap().contains("Host key verification failed"));
        assert_eq!(s.recap.unwrap().unreachable, 1);
        assert_eq!(s.recap.unwrap().ok, 0);
        assert_eq!(
            parse_log(log, "vm0"),
            LogSummary {
                last_task: Some("Gathering Facts".into()),
                ..LogSummary::default()
            }
        );
    }

    #[test]
    fn durations_read_like_the_config() {
        assert_eq!(human(Duration::from_secs(1800)), "30m");
        assert_eq!(human(Duration::from_secs(3905)), "1h 5m 5s");
        assert_eq!(human(Duration::from_secs(3)), "3s");
    }

    #[test]
    fn known_hosts_lines_drop_comments() {
        let t = known_hosts_text(
            "10.250.0.10",
            "vm0",
            &["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA root@vm0".into()],
        );
        assert_eq!(t, "10.250.0.10,vm0 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA\n");
    }
}
