//! Power actions on many hosts (`bootgate power …`) and the reset of a hung node with proof
//! that it came back (`bootgate reset`, `POST /api/v1/hosts/{name}/reset`).
//!
//! Both sit on the [`PowerControl`] seam and the store's event log; neither holds a lock or
//! a transaction across a BMC call. Every action is an event (`power-action`,
//! `reset-started`, `reset-step`, `reset-finished`), so `bootgate events --host H` tells the
//! whole story afterwards, whoever ran it.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use crate::bmc::{
    BmcError, BmcTarget, BootSource, OverrideMode, PowerControl, PowerState, ResetType,
};
use crate::inventory::{Host, Inventory};
use crate::model::{EventKind, EventQuery, NewEvent, Store, StoreError};
use crate::secrets::Secrets;
use crate::types::{HostState, MacAddr, Role, text_enum};

#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error("no host named {0:?} in the inventory")]
    UnknownHost(String),
    #[error("no hosts selected: name hosts, or use --rack / --role")]
    NothingSelected,
    #[error("no host matches {0}")]
    NoMatch(String),
    #[error(transparent)]
    Bmc(Box<BmcError>),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl From<BmcError> for PowerError {
    fn from(e: BmcError) -> Self {
        PowerError::Bmc(Box::new(e))
    }
}

/// What power commands work with: the BMC client, the store (events, proof), the
/// inventory in force and the BMC logins.
pub struct Fleet<'a> {
    pub pc: Arc<dyn PowerControl>,
    pub store: Arc<dyn Store>,
    pub inventory: &'a Inventory,
    pub secrets: &'a Secrets,
}

text_enum!(
    /// What `bootgate power` does to each host.
    PowerAction {
        /// Read the power state.
        Status => "status",
        /// Power on (nothing if already on).
        On => "on",
        /// Hard power off (`ForceOff`; nothing if already off).
        Off => "off",
        /// Power cycle: `PowerCycle`, else `ForceRestart`, else `ForceOff` + `On`; `On` if off.
        Cycle => "cycle",
        /// Boot from the network once at the next boot (`Pxe`, `Once`).
        PxeOnce => "pxe-once",
    }
);

/// Which hosts: names, or everything in a rack and/or of a role.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub hosts: Vec<String>,
    pub rack: Option<String>,
    pub role: Option<Role>,
}

/// The inventory hosts a selection names, in inventory order (names: in the given order).
pub fn select<'a>(inv: &'a Inventory, sel: &Selection) -> Result<Vec<&'a Host>, PowerError> {
    if sel.hosts.is_empty() && sel.rack.is_none() && sel.role.is_none() {
        return Err(PowerError::NothingSelected);
    }
    let mut out: Vec<&Host> = Vec::new();
    for name in &sel.hosts {
        let h = inv
            .host(name)
            .ok_or_else(|| PowerError::UnknownHost(name.clone()))?;
        if !out.iter().any(|o| o.name == h.name) {
            out.push(h);
        }
    }
    if sel.hosts.is_empty() {
        out = inv
            .hosts
            .iter()
            .filter(|h| sel.rack.as_ref().is_none_or(|r| h.rack.as_ref() == Some(r)))
            .filter(|h| sel.role.is_none_or(|r| h.role == r))
            .collect();
        if out.is_empty() {
            let mut what = vec![];
            if let Some(r) = &sel.rack {
                what.push(format!("--rack {r}"));
            }
            if let Some(r) = sel.role {
                what.push(format!("--role {r}"));
            }
            return Err(PowerError::NoMatch(what.join(" ")));
        }
    }
    Ok(out)
}

/// The result of one action on one host.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ActionResult {
    pub host: String,
    pub action: PowerAction,
    pub ok: bool,
    /// The BMC (`http://127.0.0.1:8000`), when the host has one.
    pub bmc: Option<String>,
    /// Power state after the action (as last read).
    pub state: Option<PowerState>,
    /// What was sent: a Redfish ResetType, `Once`/`Continuous` for pxe-once, or nothing.
    pub applied: Option<String>,
    pub error: Option<String>,
    pub elapsed_ms: u64,
}

/// How long an `on`/`off`/`cycle` waits for the BMC to report the new state.
const SETTLE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(500);

/// Does `action` to one host's BMC; the power state after it, and what was sent.
pub(crate) async fn apply(
    pc: &dyn PowerControl,
    t: &BmcTarget,
    action: PowerAction,
) -> Result<(PowerState, Option<String>), BmcError> {
    use crate::bmc::wait_for_power;
    match action {
        PowerAction::Status => Ok((pc.power_state(t).await?, None)),
        PowerAction::PxeOnce => {
            let mode = pc.set_boot_override(t, BootSource::Pxe).await?;
            Ok((
                pc.power_state(t).await?,
                Some(mode.redfish_name().to_string()),
            ))
        }
        PowerAction::On | PowerAction::Off => {
            let (want, kind) = match action {
                PowerAction::On => (PowerState::On, ResetType::On),
                _ => (PowerState::Off, ResetType::ForceOff),
            };
            if pc.power_state(t).await? == want {
                return Ok((want, None));
            }
            pc.reset(t, kind).await?;
            let now = wait_for_power(pc, t, want, SETTLE, POLL).await?;
            Ok((now, Some(kind.to_string())))
        }
        PowerAction::Cycle => {
            if pc.power_state(t).await? == PowerState::Off {
                pc.reset(t, ResetType::On).await?;
                let now = wait_for_power(pc, t, PowerState::On, SETTLE, POLL).await?;
                return Ok((now, Some("On".into())));
            }
            let types = pc.reset_types(t).await?;
            let pick = [ResetType::PowerCycle, ResetType::ForceRestart]
                .into_iter()
                .find(|k| types.contains(k));
            match pick {
                Some(k) => {
                    pc.reset(t, k).await?;
                    Ok((pc.power_state(t).await?, Some(k.to_string())))
                }
                None => {
                    pc.reset(t, ResetType::ForceOff).await?;
                    wait_for_power(pc, t, PowerState::Off, SETTLE, POLL).await?;
                    pc.reset(t, ResetType::On).await?;
                    let now = wait_for_power(pc, t, PowerState::On, SETTLE, POLL).await?;
                    Ok((now, Some("ForceOff+On".into())))
                }
            }
        }
    }
}

/// Runs `action` on each host, at most `concurrency` at once (the BMC layer bounds the
/// gateway's total too), calling `progress` as each finishes; one `power-action` event per
/// host. Results come back in the hosts' order.
pub async fn run_many(
    fleet: &Fleet<'_>,
    hosts: &[&Host],
    action: PowerAction,
    concurrency: usize,
    actor: &str,
    progress: impl Fn(&ActionResult),
) -> Vec<ActionResult> {
    let (pc, store, inv, secrets) = (&fleet.pc, &fleet.store, fleet.inventory, fleet.secrets);
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (i, h) in hosts.iter().enumerate() {
        let target = BmcTarget::resolve(h, inv, secrets);
        let (pc, sem, name) = (pc.clone(), sem.clone(), h.name.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let start = std::time::Instant::now();
            let (bmc, outcome) = match target {
                Ok(t) => (Some(t.bmc_label()), apply(pc.as_ref(), &t, action).await),
                Err(e) => (None, Err(e)),
            };
            let (ok, state, applied, error) = match outcome {
                Ok((s, a)) => (true, Some(s), a, None),
                Err(e) => (false, None, None, Some(e.to_string())),
            };
            let r = ActionResult {
                host: name,
                action,
                ok,
                bmc,
                state,
                applied,
                error,
                elapsed_ms: start.elapsed().as_millis() as u64,
            };
            (i, r)
        });
    }
    let mut results: Vec<Option<ActionResult>> = vec![None; hosts.len()];
    let mut events = Vec::new();
    while let Some(joined) = set.join_next().await {
        let Ok((i, r)) = joined else {
            tracing::error!("a power task panicked");
            continue;
        };
        progress(&r);
        events.push(
            NewEvent::new(EventKind::PowerAction, actor)
                .host(r.host.clone())
                .detail(serde_json::json!({
                    "action": r.action, "ok": r.ok, "bmc": r.bmc, "state": r.state,
                    "applied": r.applied, "error": r.error, "elapsed_ms": r.elapsed_ms,
                })),
        );
        results[i] = Some(r);
    }
    if let Err(e) = store.append_many(&events).await {
        tracing::error!(error = %e, "could not record power-action events");
    }
    results.into_iter().flatten().collect()
}

/// How `bootgate reset` goes about it.
#[derive(Debug, Clone)]
pub struct ResetOptions {
    /// PXE-once first and boot the host's install profile again (state → registered).
    pub reprovision: bool,
    /// The whole reset, from the first BMC call to the proof.
    pub timeout: Duration,
    /// How long each escalation step may take to show a DHCP request before the next.
    pub step_wait: Duration,
    /// Escalation, in order; steps the BMC does not advertise are skipped.
    pub escalation: Vec<Step>,
    /// How often the event log is polled for proof.
    pub poll: Duration,
}

impl Default for ResetOptions {
    fn default() -> Self {
        ResetOptions {
            reprovision: false,
            timeout: Duration::from_secs(15 * 60),
            step_wait: Duration::from_secs(120),
            escalation: vec![
                Step::Reset(ResetType::GracefulRestart),
                Step::Reset(ResetType::ForceRestart),
                Step::OffOn,
            ],
            poll: Duration::from_secs(1),
        }
    }
}

/// One escalation step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Reset(ResetType),
    /// `ForceOff`, wait for Off, then `On`.
    OffOn,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Reset(k) => write!(f, "{k}"),
            Step::OffOn => f.write_str("ForceOff+On"),
        }
    }
}

/// A `--escalation` / `escalation=` item that names no step (the API answers 400 with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: expected a Redfish ResetType or ForceOff+On")]
pub struct BadStep(pub String);

impl std::str::FromStr for Step {
    type Err = BadStep;
    fn from_str(s: &str) -> Result<Step, BadStep> {
        match s {
            "ForceOff+On" | "off-on" => Ok(Step::OffOn),
            other => other
                .parse::<ResetType>()
                .map(Step::Reset)
                .map_err(|_| BadStep(other.to_string())),
        }
    }
}

/// One line of a reset's timeline.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Mark {
    pub at: Timestamp,
    /// Seconds since the reset began.
    pub t: f64,
    pub what: String,
}

/// What `bootgate reset` reports.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ResetReport {
    pub host: String,
    pub came_back: bool,
    /// `came-back`, or why not (`no DHCP request …`, a BMC error, …).
    pub outcome: String,
    pub reprovision: bool,
    pub timeline: Vec<Mark>,
}

struct Timeline {
    start: Timestamp,
    host: String,
    marks: Vec<Mark>,
}

impl Timeline {
    fn mark(&mut self, what: impl Into<String>) {
        let at = Timestamp::now();
        let what = what.into();
        tracing::info!(host = %self.host, "{what}");
        self.marks.push(Mark {
            at,
            t: (at.as_millisecond() - self.start.as_millisecond()) as f64 / 1000.0,
            what,
        });
    }
}

/// What proves a step worked: the host asked for an address, or fetched its boot script.
pub(crate) fn dhcp_proof(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::LeaseOffered | EventKind::LeaseCommitted | EventKind::BootScriptServed
    )
}

/// Resets `host` and waits for proof that it came back: a DHCP request (or boot-script
/// fetch) from one of its MACs, then its phone-home or an SSH banner on its address.
/// Each step is an event; the report's timeline is the same story with timestamps.
pub async fn reset(
    fleet: &Fleet<'_>,
    name: &str,
    opts: &ResetOptions,
    actor: &str,
) -> Result<ResetReport, PowerError> {
    let (pc, store, inv) = (fleet.pc.as_ref(), fleet.store.as_ref(), fleet.inventory);
    let host = inv
        .host(name)
        .ok_or_else(|| PowerError::UnknownHost(name.to_string()))?;
    let target = BmcTarget::resolve(host, inv, fleet.secrets)?;
    let start = Timestamp::now();
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let ev = |kind: EventKind, detail: serde_json::Value| {
        NewEvent::new(kind, actor)
            .host(host.name.clone())
            .detail(detail)
    };
    store
        .append(&ev(
            EventKind::ResetStarted,
            serde_json::json!({"reprovision": opts.reprovision, "bmc": target.bmc_label(),
                "timeout_s": opts.timeout.as_secs()}),
        ))
        .await?;
    let mut run = ResetRun {
        pc,
        store,
        inv,
        host,
        target: &target,
        opts,
        deadline,
        tl: Timeline {
            start,
            host: host.name.clone(),
            marks: vec![],
        },
    };
    let result = run.run().await;
    let mut tl = run.tl;
    let (came_back, outcome) = match result {
        Ok(()) => (true, "came-back".to_string()),
        Err(why) => {
            let why = why.to_string();
            tl.mark(format!("gave up: {why}"));
            (false, why)
        }
    };
    store
        .append(&ev(
            EventKind::ResetFinished,
            serde_json::json!({"came_back": came_back, "outcome": outcome,
                "seconds": tl.marks.last().map_or(0.0, |m| m.t)}),
        ))
        .await?;
    Ok(ResetReport {
        host: host.name.clone(),
        came_back,
        outcome,
        reprovision: opts.reprovision,
        timeline: tl.marks,
    })
}

/// Why a reset gave up. Not an error of [`reset`] (that still answers with a report): its
/// text is the report's `outcome` and the `reset-finished` event's.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error(transparent)]
    Bmc(Box<BmcError>),
    /// Reading the host's stored state before a reprovision.
    #[error("{0}")]
    Store(StoreError),
    #[error("setting state registered: {0}")]
    SetRegistered(StoreError),
    #[error(
        "the BMC advertises none of the escalation steps ({}); it offers {}",
        join(.escalation),
        join(.advertised)
    )]
    NoUsableStep {
        escalation: Vec<Step>,
        advertised: Vec<ResetType>,
    },
    #[error("no DHCP request from {} within the deadline", join(.macs))]
    NoDhcp { macs: Vec<MacAddr> },
    #[error(
        "DHCP seen but no phone-home{} before the deadline",
        .ip.map_or(String::new(), |ip| format!(" and no SSH banner on {ip}"))
    )]
    NoComeback { ip: Option<Ipv4Addr> },
}

impl From<BmcError> for ResetError {
    fn from(e: BmcError) -> Self {
        ResetError::Bmc(Box::new(e))
    }
}

/// One reset between its `reset-started` and `reset-finished` events: what it works on, and
/// the timeline it writes. Each step of the story is a method.
struct ResetRun<'a> {
    pc: &'a dyn PowerControl,
    store: &'a dyn Store,
    inv: &'a Inventory,
    host: &'a Host,
    target: &'a BmcTarget,
    opts: &'a ResetOptions,
    /// `opts.timeout` after the start: no step starts and no wait runs past it.
    deadline: tokio::time::Instant,
    tl: Timeline,
}

impl ResetRun<'_> {
    /// Power state, optional reprovision, escalation until a DHCP request, then proof.
    async fn run(&mut self) -> Result<(), ResetError> {
        let state = self.pc.power_state(self.target).await?;
        self.tl.mark(format!(
            "power state {state} (BMC {})",
            self.target.bmc_label()
        ));
        let override_mode = if self.opts.reprovision {
            Some(self.reprovision().await?)
        } else {
            None
        };
        let steps = self.steps(state).await?;
        let seen = self.escalate(&steps).await?;
        if override_mode == Some(OverrideMode::Continuous) {
            match self.pc.clear_boot_override(self.target).await {
                Ok(()) => self
                    .tl
                    .mark("boot override cleared (the BMC only kept it Continuous)"),
                Err(e) => self
                    .tl
                    .mark(format!("could not clear the boot override: {e}")),
            }
        }
        self.await_comeback(seen).await
    }

    /// A `reset-step` event; a store error is logged (the reset goes on).
    async fn record_step(&self, what: &str, detail: serde_json::Value) {
        let e = NewEvent::new(EventKind::ResetStep, "reset")
            .host(self.host.name.clone())
            .detail(serde_json::json!({"step": what, "detail": detail}));
        if let Err(err) = self.store.append(&e).await {
            tracing::error!(error = %err, "could not record a reset step");
        }
    }

    /// `--reprovision`: state → registered (so the daemon serves an install), then PXE once.
    async fn reprovision(&mut self) -> Result<OverrideMode, ResetError> {
        let host = &self.host.name;
        let record_now = self.store.get_host(host).await.map_err(ResetError::Store)?;
        let from = record_now.map(|r| r.state);
        if from != Some(HostState::Registered) {
            self.store
                .set_host_state(
                    host,
                    from,
                    HostState::Registered,
                    "reset",
                    serde_json::json!({"reason": "reset --reprovision"}),
                )
                .await
                .map_err(ResetError::SetRegistered)?;
            self.tl.mark(format!(
                "state {} → registered (reprovision)",
                from.map_or("none".into(), |s| s.to_string())
            ));
        }
        let mode = self
            .pc
            .set_boot_override(self.target, BootSource::Pxe)
            .await?;
        self.tl
            .mark(format!("boot override Pxe ({})", mode.redfish_name()));
        self.record_step("pxe-once", serde_json::json!({"mode": mode}))
            .await;
        Ok(mode)
    }

    /// The steps to try: `On` for a host that is off, else the escalation steps the BMC
    /// advertises.
    async fn steps(&self, state: PowerState) -> Result<Vec<Step>, ResetError> {
        if state == PowerState::Off {
            return Ok(vec![Step::Reset(ResetType::On)]);
        }
        let advertised = self.pc.reset_types(self.target).await?;
        let usable: Vec<Step> = self
            .opts
            .escalation
            .iter()
            .copied()
            .filter(|s| match s {
                Step::Reset(k) => advertised.contains(k),
                Step::OffOn => {
                    advertised.contains(&ResetType::ForceOff) && advertised.contains(&ResetType::On)
                }
            })
            .collect();
        if usable.is_empty() {
            return Err(ResetError::NoUsableStep {
                escalation: self.opts.escalation.clone(),
                advertised,
            });
        }
        Ok(usable)
    }

    /// Sends each step in turn until one shows a DHCP request (each but the last waits up
    /// to `step_wait`); when the request was seen.
    async fn escalate(&mut self, steps: &[Step]) -> Result<Timestamp, ResetError> {
        let host = self.host;
        for (i, step) in steps.iter().enumerate() {
            if tokio::time::Instant::now() >= self.deadline {
                break;
            }
            let step_start = Timestamp::now();
            self.send(*step).await?;
            self.tl.mark(format!("{step} sent"));
            self.record_step(&step.to_string(), serde_json::json!({"index": i}))
                .await;
            let last = i + 1 == steps.len();
            let wait_until = if last {
                self.deadline
            } else {
                self.deadline
                    .min(tokio::time::Instant::now() + self.opts.step_wait)
            };
            if let Some((at, what)) = wait_event(
                self.store,
                host,
                step_start,
                wait_until,
                self.opts.poll,
                |e| e.mac.is_some_and(|m| host.macs.contains(&m)) && dhcp_proof(e.kind),
            )
            .await
            {
                self.tl.mark(what);
                return Ok(at);
            }
            if !last {
                self.tl.mark(format!(
                    "no DHCP request within {}s of {step}: escalating",
                    self.opts.step_wait.as_secs()
                ));
            }
        }
        Err(ResetError::NoDhcp {
            macs: host.macs.clone(),
        })
    }

    /// One escalation step's BMC calls.
    async fn send(&mut self, step: Step) -> Result<(), ResetError> {
        let (pc, target) = (self.pc, self.target);
        match step {
            Step::Reset(k) => pc.reset(target, k).await?,
            Step::OffOn => {
                pc.reset(target, ResetType::ForceOff).await?;
                let s =
                    crate::bmc::wait_for_power(pc, target, PowerState::Off, SETTLE, POLL).await?;
                self.tl.mark(format!("ForceOff: power {s}"));
                pc.reset(target, ResetType::On).await?;
            }
        }
        Ok(())
    }

    /// Came back: its phone-home after `seen`, or an SSH banner on its provisioning address.
    async fn await_comeback(&mut self, seen: Timestamp) -> Result<(), ResetError> {
        let host = self.host;
        let ip = self.inv.provisioning_ip(host);
        loop {
            if let Some((_, what)) = wait_event(
                self.store,
                host,
                seen,
                self.deadline
                    .min(tokio::time::Instant::now() + self.opts.poll * 3),
                self.opts.poll,
                |e| e.kind == EventKind::PhoneHome && e.host.as_deref() == Some(host.name.as_str()),
            )
            .await
            {
                self.tl.mark(what);
                return Ok(());
            }
            if let Some(ip) = ip
                && let Some(banner) = ssh_banner(ip).await
            {
                self.tl.mark(format!("SSH answers on {ip}: {banner}"));
                return Ok(());
            }
            if tokio::time::Instant::now() >= self.deadline {
                return Err(ResetError::NoComeback { ip });
            }
        }
    }
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Polls the event log for the host's events since `since` until one matches.
async fn wait_event(
    store: &dyn Store,
    host: &Host,
    since: Timestamp,
    until: tokio::time::Instant,
    poll: Duration,
    want: impl Fn(&crate::model::Event) -> bool,
) -> Option<(Timestamp, String)> {
    loop {
        if let Some(e) = host_events(store, host, since)
            .await
            .iter()
            .find(|e| want(e))
        {
            let ip = e.ip.map_or(String::new(), |ip| format!(" {ip}"));
            let mac = e.mac.map_or(String::new(), |m| format!(" from {m}"));
            return Some((e.time, format!("{}{ip}{mac}", e.kind)));
        }
        if tokio::time::Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(poll).await;
    }
}

/// The host's events since `since`, in append order: by host name (phone-home, state
/// changes) and by each of its MACs (DHCP events may lack the host name), without
/// duplicates. A store error is logged and reads as "nothing yet" (the caller polls again).
pub(crate) async fn host_events(
    store: &dyn Store,
    host: &Host,
    since: Timestamp,
) -> Vec<crate::model::Event> {
    let mut queries = vec![EventQuery {
        host: Some(host.name.clone()),
        since: Some(since),
        ..Default::default()
    }];
    queries.extend(host.macs.iter().map(|m: &MacAddr| EventQuery {
        mac: Some(*m),
        since: Some(since),
        ..Default::default()
    }));
    let mut all: Vec<crate::model::Event> = Vec::new();
    for q in &queries {
        match store.query(q).await {
            Ok(events) => all.extend(events),
            Err(err) => tracing::warn!(host = %host.name, error = %err, "reading events"),
        }
    }
    all.sort_by_key(|e| e.id);
    all.dedup_by_key(|e| e.id);
    all
}

/// The first line an SSH server sends (`SSH-2.0-…`), if port 22 answers within 2 s.
async fn ssh_banner(ip: Ipv4Addr) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let fut = async {
        let mut s = tokio::net::TcpStream::connect((ip, 22)).await.ok()?;
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.ok()?;
        let line = String::from_utf8_lossy(&buf[..n]);
        let line = line.lines().next()?.trim().to_string();
        line.starts_with("SSH-").then_some(line)
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_and_print() {
        assert_eq!(
            "ForceRestart".parse::<Step>(),
            Ok(Step::Reset(ResetType::ForceRestart))
        );
        assert_eq!("ForceOff+On".parse::<Step>(), Ok(Step::OffOn));
        assert!(
            "Reboot"
                .parse::<Step>()
                .unwrap_err()
                .to_string()
                .contains("Reboot")
        );
        assert_eq!(Step::OffOn.to_string(), "ForceOff+On");
    }

    #[test]
    fn proof_is_a_dhcp_or_boot_script_event() {
        assert!(dhcp_proof(EventKind::LeaseCommitted));
        assert!(dhcp_proof(EventKind::BootScriptServed));
        assert!(!dhcp_proof(EventKind::PowerAction));
    }
}
