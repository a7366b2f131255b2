//! `bootgate rack onboard RACK`: power on a rack's hosts in waves with PXE-once through their
//! BMCs, follow each through DHCP → boot script → phone-home → hand-off, retry a failed host
//! once, and finish with a rack report (also an event).
//!
//! Per host, the pure [`step`] turns what the event log and the store show ([`Seen`]) into
//! the next [`Stage`]; [`onboard`] is the edge: BMC calls, polling, events. No lock or store
//! transaction is held across a BMC or store await. Cancelling (Ctrl-C) stops every host at
//! once and records where each stood (`onboard-host`, outcome `interrupted`); a second run
//! skips hosts already at their target state and starts the others over.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::bmc::{BmcTarget, BootSource, OverrideMode, PowerControl};
use crate::inventory::Host;
use crate::model::{Event, EventKind, NewEvent, Store, StoreError};
use crate::power::{Fleet, PowerAction};
use crate::types::{HostState, text_enum};

#[derive(Debug, thiserror::Error)]
pub enum OnboardError {
    #[error(
        "no inventory host has rack = {0:?} (a rack's hosts are inventory hosts with `rack` and `position`)"
    )]
    EmptyRack(String),
    #[error(
        "rack {rack}: {} not in the store yet: is the daemon running with this inventory? (`bootgate reload`)",
        hosts.join(", ")
    )]
    NotInStore { rack: String, hosts: Vec<String> },
    #[error("--wave must be at least 1")]
    ZeroWave,
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

text_enum!(
    /// Where a host is in its onboarding (and, in a report, where it failed or stood).
    Stage {
        /// Its wave has not started yet.
        Waiting => "waiting",
        /// Reading the power state: is the BMC there at all?
        Bmc => "bmc",
        /// Setting the boot override to PXE, once.
        PxeOnce => "pxe-once",
        /// Power on, or force-restart when already on.
        PowerOn => "power-on",
        /// Waiting for a DHCP request from one of its MACs.
        Dhcp => "dhcp",
        /// Waiting for it to fetch its iPXE script.
        BootScript => "boot-script",
        /// Waiting for its phone-home `installed`.
        PhoneHome => "phone-home",
        /// Waiting for the Ansible hand-off to end (`ready`).
        Handoff => "handoff",
        /// At its target state.
        Done => "done",
    }
);

text_enum!(
    /// How a host's onboarding ended.
    Outcome {
        /// Provisioned and handed off.
        Ready => "ready",
        /// Provisioned; the hand-off was skipped.
        Provisioned => "provisioned",
        /// Failed twice (or once, with no retry left): see `step` and `reason`.
        Failed => "failed",
        /// The BMC did not answer: the host was left alone.
        BmcUnreachable => "bmc-unreachable",
        /// The run was interrupted; `step` says where the host stood.
        Interrupted => "interrupted",
    }
);

/// What the follower observed for a host, from its events and its stored state.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// A DHCP offer or commit for one of its MACs.
    Dhcp,
    /// The daemon served it an iPXE script.
    BootScript,
    /// It phoned home: `booted`, `installed` or `failed`, with its message.
    PhoneHome {
        event: String,
        message: Option<String>,
    },
    /// A hand-off run for it failed (the runner's reason).
    HandoffFailed(String),
    /// Its state in the store.
    State(HostState),
    /// The attempt's time ran out.
    Deadline,
}

/// What [`step`] decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Nothing new: keep waiting at the same stage.
    Stay,
    /// Move on to this stage.
    Go(Stage),
    /// This attempt failed at the current stage, for this reason.
    Fail(String),
    /// At the target.
    Done(Outcome),
}

/// The per-host state machine, from the first DHCP request on. `handoff`: whether the host
/// must also be handed off (target `ready`) or stops at `provisioned`.
pub fn step(stage: Stage, seen: &Seen, handoff: bool) -> Next {
    use Stage as S;
    let following = matches!(stage, S::Dhcp | S::BootScript | S::PhoneHome);
    let installed = || {
        if handoff {
            Next::Go(S::Handoff)
        } else {
            Next::Done(Outcome::Provisioned)
        }
    };
    match seen {
        Seen::Deadline => Next::Fail(format!("timeout waiting for {}", waiting_for(stage))),
        Seen::Dhcp if stage == S::Dhcp => Next::Go(S::BootScript),
        Seen::BootScript if matches!(stage, S::Dhcp | S::BootScript) => Next::Go(S::PhoneHome),
        Seen::PhoneHome { event, message } if following => match event.as_str() {
            "installed" => installed(),
            "failed" => Next::Fail(format!(
                "phone-home failed: {}",
                message.as_deref().unwrap_or("no message")
            )),
            // `booted`: the installer is up; the phone-home that counts comes later.
            _ => Next::Go(S::PhoneHome),
        },
        Seen::State(HostState::Provisioned) if following => installed(),
        Seen::State(HostState::Configuring) if following && handoff => Next::Go(S::Handoff),
        Seen::State(HostState::Ready) if following || stage == S::Handoff => {
            Next::Done(if handoff {
                Outcome::Ready
            } else {
                Outcome::Provisioned
            })
        }
        Seen::State(HostState::Failed) if following => {
            Next::Fail("the host went failed (see `bootgate events --host`)".into())
        }
        Seen::HandoffFailed(reason) if stage == S::Handoff => {
            Next::Fail(format!("hand-off failed: {reason}"))
        }
        Seen::State(HostState::Failed) if stage == S::Handoff => {
            Next::Fail("hand-off failed (the host went failed)".into())
        }
        _ => Next::Stay,
    }
}

fn waiting_for(stage: Stage) -> &'static str {
    match stage {
        Stage::Dhcp => "a DHCP request",
        Stage::BootScript => "the boot-script fetch",
        Stage::PhoneHome => "the phone-home",
        Stage::Handoff => "the hand-off",
        _ => "the BMC",
    }
}

/// What one event of the host's says, if it matters here.
pub fn observe(e: &Event) -> Option<Seen> {
    match e.kind {
        k if crate::power::dhcp_proof(k) && k != EventKind::BootScriptServed => Some(Seen::Dhcp),
        EventKind::BootScriptServed => Some(Seen::BootScript),
        EventKind::PhoneHome => Some(Seen::PhoneHome {
            event: e.detail["event"].as_str().unwrap_or("").to_string(),
            message: e.detail["message"].as_str().map(String::from),
        }),
        EventKind::HandoffFailed => Some(Seen::HandoffFailed(
            e.detail["reason"]
                .as_str()
                .unwrap_or("no reason given")
                .to_string(),
        )),
        _ => None,
    }
}

/// Where the hand-off stands for this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handoff {
    /// The daemon hands each host off when it phones home `installed`; follow it to `ready`.
    Follow,
    /// Stop at `provisioned`; why (`--no-handoff`, `[handoff]` not enabled).
    Skip(String),
}

/// How `bootgate rack onboard` goes about it.
#[derive(Debug, Clone)]
pub struct Options {
    /// Hosts powered on together; the next wave starts when this one has finished.
    pub wave: usize,
    /// One attempt of one host, from the BMC check to its target state.
    pub timeout: Duration,
    pub handoff: Handoff,
    /// How often the event log and the store are read.
    pub poll: Duration,
    /// Attempts per host (the first plus retries).
    pub attempts: u32,
    /// Recorded as the events' actor.
    pub actor: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            wave: 4,
            timeout: Duration::from_secs(20 * 60),
            handoff: Handoff::Follow,
            poll: Duration::from_secs(1),
            attempts: 2,
            actor: "cli:rack-onboard".into(),
        }
    }
}

/// One host's line of the rack report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostReport {
    pub host: String,
    pub position: Option<u32>,
    /// 1-based; `None` for a host skipped up front.
    pub wave: Option<usize>,
    pub outcome: Outcome,
    /// Already at its target when the run began: nothing was done to it.
    pub skipped: bool,
    /// Its state in the store when the run ended.
    pub state: Option<HostState>,
    /// Where it failed or stood (interrupted); `done` when it got there.
    pub step: Stage,
    pub reason: Option<String>,
    pub attempts: u32,
    pub seconds: f64,
    /// `done`, or `skipped: <why>` when the hand-off was skipped.
    pub handoff: String,
}

/// What `bootgate rack onboard` prints and records (`rack-report`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RackReport {
    pub rack: String,
    /// Every host reached its target state.
    pub ok: bool,
    pub interrupted: bool,
    /// The state each host had to reach: `ready`, or `provisioned` when the hand-off is skipped.
    pub target: HostState,
    pub wave: usize,
    pub started: Timestamp,
    pub seconds: f64,
    pub hosts: Vec<HostReport>,
}

/// Live progress: the CLI shows it as bars on a terminal, as log lines otherwise.
pub trait Progress: Send + Sync {
    fn stage(&self, host: &str, stage: Stage, note: &str);
    fn finished(&self, r: &HostReport);
}

/// Hosts of `rack` in position order (then name), split into the skipped ones (already at
/// the target: `ready`, or `provisioned` when the hand-off is skipped) and waves of `wave`.
pub fn plan<'a>(
    hosts: &[&'a Host],
    states: &BTreeMap<String, HostState>,
    wave: usize,
    handoff: bool,
) -> (Vec<&'a Host>, Vec<Vec<&'a Host>>) {
    let mut sorted: Vec<&Host> = hosts.to_vec();
    sorted.sort_by(|a, b| {
        (a.position.unwrap_or(u32::MAX), &a.name).cmp(&(b.position.unwrap_or(u32::MAX), &b.name))
    });
    let at_target = |h: &Host| match states.get(&h.name) {
        Some(HostState::Ready) => true,
        Some(HostState::Provisioned) => !handoff,
        _ => false,
    };
    let (skipped, todo): (Vec<&Host>, Vec<&Host>) = sorted.into_iter().partition(|h| at_target(h));
    let waves = todo.chunks(wave.max(1)).map(|c| c.to_vec()).collect();
    (skipped, waves)
}

/// Onboards every inventory host of `rack`. Returns the report (also recorded as a
/// `rack-report` event); a cancelled run returns the partial report with `interrupted`.
pub async fn onboard(
    fleet: &Fleet<'_>,
    rack: &str,
    opts: &Options,
    cancel: CancellationToken,
    progress: Arc<dyn Progress>,
) -> Result<RackReport, OnboardError> {
    if opts.wave == 0 {
        return Err(OnboardError::ZeroWave);
    }
    let store = fleet.store.clone();
    let (members, states) = rack_members(fleet, rack).await?;
    let handoff = opts.handoff == Handoff::Follow;
    let (skipped, waves) = plan(&members, &states, opts.wave, handoff);
    let started = Timestamp::now();
    let t0 = Instant::now();
    let names = |hosts: &[&Host]| hosts.iter().map(|h| h.name.clone()).collect::<Vec<_>>();
    store
        .append(
            &NewEvent::new(EventKind::OnboardStarted, opts.actor.clone()).detail(
                serde_json::json!({
                    "rack": rack, "wave": opts.wave,
                    "hosts": names(&members), "skipped": names(&skipped),
                    "handoff": handoff_text(&opts.handoff),
                    "timeout_s": opts.timeout.as_secs(),
                }),
            ),
        )
        .await?;

    let mut reports: Vec<HostReport> = skipped
        .iter()
        .map(|h| skipped_report(h, states.get(&h.name).copied(), opts))
        .collect();
    for r in &reports {
        progress.finished(r);
    }
    for (i, wave) in waves.iter().enumerate() {
        if cancel.is_cancelled() {
            reports.extend(wave.iter().map(|h| interrupted_before(h, i + 1, opts)));
            continue;
        }
        let ctx = |h: &Host| HostCtx {
            host: h.clone(),
            target: BmcTarget::resolve(h, fleet.inventory, fleet.secrets),
            pc: fleet.pc.clone(),
            store: store.clone(),
            opts: opts.clone(),
            progress: progress.clone(),
            cancel: cancel.clone(),
            wave: i + 1,
        };
        reports.extend(run_wave(wave.iter().map(|&h| ctx(h)).collect()).await);
    }

    read_end_states(store.as_ref(), &mut reports).await;
    sort_like_plan(&mut reports, &members, handoff);
    let report = RackReport {
        rack: rack.to_string(),
        ok: reports
            .iter()
            .all(|r| matches!(r.outcome, Outcome::Ready | Outcome::Provisioned)),
        interrupted: cancel.is_cancelled(),
        target: if handoff {
            HostState::Ready
        } else {
            HostState::Provisioned
        },
        wave: opts.wave,
        started,
        seconds: secs(t0),
        hosts: reports,
    };
    record_report(store.as_ref(), &report, &opts.actor).await?;
    Ok(report)
}

/// The state each host worked on ended in, read after the fact (never held across
/// anything).
async fn read_end_states(store: &dyn Store, reports: &mut [HostReport]) {
    let now = states_or_empty(store).await;
    for r in reports {
        if !r.skipped {
            r.state = now.get(&r.host).copied();
        }
    }
}

/// Puts the reports in the plan's order (position, then name) whatever their wave.
fn sort_like_plan(reports: &mut [HostReport], members: &[&Host], handoff: bool) {
    let order: BTreeMap<&str, usize> = {
        let (s, w) = plan(members, &BTreeMap::new(), 1, handoff);
        s.iter()
            .chain(w.iter().flatten())
            .enumerate()
            .map(|(i, h)| (h.name.as_str(), i))
            .collect()
    };
    reports.sort_by_key(|r| order.get(r.host.as_str()).copied().unwrap_or(usize::MAX));
}

/// The rack's inventory hosts and every host's stored state; refused when the rack has
/// none, or some are not in the store yet.
async fn rack_members<'a>(
    fleet: &Fleet<'a>,
    rack: &str,
) -> Result<(Vec<&'a Host>, BTreeMap<String, HostState>), OnboardError> {
    let members: Vec<&Host> = fleet
        .inventory
        .hosts
        .iter()
        .filter(|h| h.rack.as_deref() == Some(rack))
        .collect();
    if members.is_empty() {
        return Err(OnboardError::EmptyRack(rack.to_string()));
    }
    let states = states(fleet.store.as_ref()).await?;
    let unknown: Vec<String> = members
        .iter()
        .filter(|h| !states.contains_key(&h.name))
        .map(|h| h.name.clone())
        .collect();
    if !unknown.is_empty() {
        return Err(OnboardError::NotInStore {
            rack: rack.to_string(),
            hosts: unknown,
        });
    }
    Ok((members, states))
}

/// The line of a host already at its target (`state`) when the run began.
fn skipped_report(h: &Host, state: Option<HostState>, opts: &Options) -> HostReport {
    HostReport {
        host: h.name.clone(),
        position: h.position,
        wave: None,
        outcome: if state == Some(HostState::Ready) {
            Outcome::Ready
        } else {
            Outcome::Provisioned
        },
        skipped: true,
        state,
        step: Stage::Done,
        reason: Some(format!(
            "already {}",
            state.map_or("?".into(), |s| s.to_string())
        )),
        attempts: 0,
        seconds: 0.0,
        handoff: handoff_text(&opts.handoff),
    }
}

/// One wave: every host at once; their reports in the wave's order.
async fn run_wave(hosts: Vec<HostCtx>) -> Vec<HostReport> {
    let mut set = tokio::task::JoinSet::new();
    let n = hosts.len();
    for (j, ctx) in hosts.into_iter().enumerate() {
        set.spawn(async move { (j, run_host(ctx).await) });
    }
    let mut done: Vec<Option<HostReport>> = vec![None; n];
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((j, r)) => done[j] = Some(r),
            Err(e) => tracing::error!(error = %e, "an onboarding task panicked"),
        }
    }
    done.into_iter().flatten().collect()
}

/// An `onboard-host` event per host worked on, then the `rack-report`.
async fn record_report(
    store: &dyn Store,
    report: &RackReport,
    actor: &str,
) -> Result<(), StoreError> {
    let mut events: Vec<NewEvent> = report
        .hosts
        .iter()
        .filter(|r| !r.skipped)
        .map(|r| host_event(r, actor))
        .collect();
    events.push(
        NewEvent::new(EventKind::RackReport, actor.to_string())
            .detail(serde_json::to_value(report).unwrap_or_default()),
    );
    store.append_many(&events).await
}

fn handoff_text(h: &Handoff) -> String {
    match h {
        Handoff::Follow => "done".into(),
        Handoff::Skip(why) => format!("skipped: {why}"),
    }
}

fn host_event(r: &HostReport, actor: &str) -> NewEvent {
    NewEvent::new(EventKind::OnboardHost, actor)
        .host(r.host.clone())
        .detail(serde_json::json!({
            "step": r.step, "outcome": r.outcome, "reason": r.reason,
            "attempts": r.attempts, "seconds": r.seconds, "wave": r.wave,
        }))
}

fn interrupted_before(h: &Host, wave: usize, opts: &Options) -> HostReport {
    HostReport {
        host: h.name.clone(),
        position: h.position,
        wave: Some(wave),
        outcome: Outcome::Interrupted,
        skipped: false,
        state: None,
        step: Stage::Waiting,
        reason: Some("interrupted before its wave started".into()),
        attempts: 0,
        seconds: 0.0,
        handoff: handoff_text(&opts.handoff),
    }
}

async fn states(store: &dyn Store) -> Result<BTreeMap<String, HostState>, StoreError> {
    Ok(store
        .list_hosts()
        .await?
        .into_iter()
        .map(|h| (h.name, h.state))
        .collect())
}

async fn states_or_empty(store: &dyn Store) -> BTreeMap<String, HostState> {
    states(store).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "reading host states for the report");
        BTreeMap::new()
    })
}

fn secs(t0: Instant) -> f64 {
    (t0.elapsed().as_millis() as f64 / 100.0).round() / 10.0
}

/// Everything one host's task owns.
struct HostCtx {
    host: Host,
    target: Result<BmcTarget, crate::bmc::BmcError>,
    pc: Arc<dyn PowerControl>,
    store: Arc<dyn Store>,
    opts: Options,
    progress: Arc<dyn Progress>,
    cancel: CancellationToken,
    wave: usize,
}

/// Why an attempt ended early.
struct Failure {
    stage: Stage,
    reason: String,
    /// The BMC never answered: the host is left alone, no retry.
    unreachable: bool,
}

impl Failure {
    /// A failure at `stage` that a retry may get past.
    fn at(stage: Stage, reason: String) -> Failure {
        Failure {
            stage,
            reason,
            unreachable: false,
        }
    }
}

impl HostCtx {
    fn at(&self, cur: &Mutex<Stage>, stage: Stage, note: &str) {
        *cur.lock().unwrap_or_else(|p| p.into_inner()) = stage;
        self.progress.stage(&self.host.name, stage, note);
    }

    fn event(&self, detail: serde_json::Value) -> NewEvent {
        NewEvent::new(EventKind::OnboardHost, self.opts.actor.clone())
            .host(self.host.name.clone())
            .detail(detail)
    }
}

/// How long past its deadline an attempt may hang in a BMC call before it is abandoned.
const HUNG_GRACE: Duration = Duration::from_secs(60);

/// One host, up to `attempts` times; always ends with its report.
async fn run_host(ctx: HostCtx) -> HostReport {
    let t0 = Instant::now();
    let cur = Mutex::new(Stage::Bmc);
    let mut attempt = 0;
    let (outcome, step, reason) = loop {
        attempt += 1;
        let result = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => None,
            r = tokio::time::timeout(ctx.opts.timeout + HUNG_GRACE, try_once(&ctx, &cur, attempt)) => Some(r),
        };
        let stage = *cur.lock().unwrap_or_else(|p| p.into_inner());
        let failure = match result {
            None => break (Outcome::Interrupted, stage, Some("interrupted".to_string())),
            Some(Ok(Ok(outcome))) => break (outcome, Stage::Done, None),
            Some(Ok(Err(f))) => f,
            // try_once watches its own deadline; this only fires if a BMC call hung past it
            Some(Err(_)) => Failure {
                stage,
                reason: format!("timeout after {}s at {stage}", ctx.opts.timeout.as_secs()),
                unreachable: false,
            },
        };
        if failure.unreachable {
            break (Outcome::BmcUnreachable, failure.stage, Some(failure.reason));
        }
        if attempt >= ctx.opts.attempts {
            break (Outcome::Failed, failure.stage, Some(failure.reason));
        }
        ctx.progress.stage(
            &ctx.host.name,
            failure.stage,
            &format!("failed ({}); retrying", failure.reason),
        );
        let ev = ctx.event(serde_json::json!({
            "step": failure.stage, "outcome": "retrying", "reason": failure.reason,
            "attempts": attempt, "wave": ctx.wave,
        }));
        if let Err(e) = ctx.store.append(&ev).await {
            tracing::error!(host = %ctx.host.name, error = %e, "recording a retry");
        }
    };
    let r = HostReport {
        host: ctx.host.name.clone(),
        position: ctx.host.position,
        wave: Some(ctx.wave),
        outcome,
        skipped: false,
        state: None,
        step,
        reason,
        attempts: attempt,
        seconds: secs(t0),
        handoff: handoff_text(&ctx.opts.handoff),
    };
    ctx.progress.finished(&r);
    r
}

/// One attempt: BMC check, PXE-once, `provisioning`, power on / force-restart, then follow.
async fn try_once(ctx: &HostCtx, cur: &Mutex<Stage>, attempt: u32) -> Result<Outcome, Failure> {
    let deadline = tokio::time::Instant::now() + ctx.opts.timeout;
    ctx.at(cur, Stage::Bmc, &format!("attempt {attempt}"));
    let t = ctx.target.as_ref().map_err(|e| Failure {
        stage: Stage::Bmc,
        reason: e.to_string(),
        unreachable: true,
    })?;
    let pc = ctx.pc.as_ref();
    let power = pc.power_state(t).await.map_err(|e| Failure {
        stage: Stage::Bmc,
        reason: e.to_string(),
        unreachable: true,
    })?;
    ctx.at(cur, Stage::PxeOnce, &format!("power {power}"));
    let mode = pc
        .set_boot_override(t, BootSource::Pxe)
        .await
        .map_err(|e| Failure::at(Stage::PxeOnce, e.to_string()))?;
    ensure_provisioning(ctx, attempt).await?;
    let since = Timestamp::now();
    ctx.at(cur, Stage::PowerOn, mode.redfish_name());
    let (_, sent) = crate::power::apply(pc, t, PowerAction::Cycle)
        .await
        .map_err(|e| Failure::at(Stage::PowerOn, e.to_string()))?;
    ctx.at(
        cur,
        Stage::Dhcp,
        &format!("{} sent", sent.as_deref().unwrap_or("nothing")),
    );
    follow(ctx, cur, t, mode, since, deadline).await
}

/// An install is what the daemon serves a `provisioning` host (a `provisioned` or `failed`
/// one would boot from disk, or not at all).
async fn ensure_provisioning(ctx: &HostCtx, attempt: u32) -> Result<(), Failure> {
    let record = ctx
        .store
        .get_host(&ctx.host.name)
        .await
        .map_err(|e| Failure::at(Stage::PxeOnce, format!("store: {e}")))?;
    if record.map(|r| r.state) != Some(HostState::Provisioning) {
        ctx.store
            .set_host_state(
                &ctx.host.name,
                None,
                HostState::Provisioning,
                &ctx.opts.actor,
                serde_json::json!({"reason": "rack onboard", "attempt": attempt}),
            )
            .await
            .map_err(|e| Failure::at(Stage::PxeOnce, format!("setting provisioning: {e}")))?;
    }
    Ok(())
}

/// Follows the host from its first DHCP request (events since `since`, its stored state)
/// through [`step`] until it is done, fails or `deadline` passes. A boot override the BMC
/// only kept `Continuous` is cleared once the host has DHCPed.
async fn follow(
    ctx: &HostCtx,
    cur: &Mutex<Stage>,
    t: &BmcTarget,
    mode: OverrideMode,
    since: Timestamp,
    deadline: tokio::time::Instant,
) -> Result<Outcome, Failure> {
    let handoff = ctx.opts.handoff == Handoff::Follow;
    let mut stage = Stage::Dhcp;
    let mut last_id = 0;
    loop {
        let events = crate::power::host_events(ctx.store.as_ref(), &ctx.host, since).await;
        let mut seen: Vec<Seen> = events
            .iter()
            .filter(|e| e.id > last_id)
            .filter_map(observe)
            .collect();
        last_id = events.iter().map(|e| e.id).max().unwrap_or(last_id);
        match ctx.store.get_host(&ctx.host.name).await {
            Ok(Some(r)) => seen.push(Seen::State(r.state)),
            Ok(None) => {}
            Err(e) => tracing::warn!(host = %ctx.host.name, error = %e, "reading the host's state"),
        }
        if tokio::time::Instant::now() >= deadline {
            seen.push(Seen::Deadline);
        }
        for s in &seen {
            match step(stage, s, handoff) {
                Next::Stay => {}
                Next::Go(next) => {
                    if stage == Stage::Dhcp
                        && next != Stage::Dhcp
                        && mode == OverrideMode::Continuous
                        && let Err(e) = ctx.pc.clear_boot_override(t).await
                    {
                        tracing::warn!(host = %ctx.host.name, error = %e, "clearing the boot override");
                    }
                    if next != stage {
                        stage = next;
                        ctx.at(cur, stage, "");
                    }
                }
                Next::Fail(reason) => return Err(Failure::at(stage, reason)),
                Next::Done(o) => return Ok(o),
            }
        }
        tokio::time::sleep(ctx.opts.poll).await;
    }
}

/// Progress as plain log lines on stderr (not a terminal, or JSON output).
pub struct Lines;

impl Progress for Lines {
    fn stage(&self, host: &str, stage: Stage, note: &str) {
        let sep = if note.is_empty() { "" } else { ": " };
        eprintln!(
            "{} {host}: {stage}{sep}{note}",
            Timestamp::now().strftime("%H:%M:%S")
        );
    }
    fn finished(&self, r: &HostReport) {
        eprintln!(
            "{} {}: {}{}",
            Timestamp::now().strftime("%H:%M:%S"),
            r.host,
            outcome_text(r),
            r.reason
                .as_deref()
                .map_or(String::new(), |w| format!(" ({w})"))
        );
    }
}

/// Progress on a terminal: one line per host showing its stage (indicatif).
pub struct Bars {
    /// Owns the terminal lines; the bars draw through it.
    _multi: indicatif::MultiProgress,
    bars: Mutex<BTreeMap<String, indicatif::ProgressBar>>,
}

impl Bars {
    /// One line per host, in the order given.
    pub fn new(hosts: &[String]) -> Bars {
        let multi = indicatif::MultiProgress::new();
        let style =
            indicatif::ProgressStyle::with_template("{spinner} {prefix:<12} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        let bars = hosts
            .iter()
            .map(|h| {
                let b = multi.add(indicatif::ProgressBar::new_spinner());
                b.set_style(style.clone());
                b.set_prefix(h.clone());
                b.set_message("waiting");
                b.enable_steady_tick(Duration::from_millis(200));
                (h.clone(), b)
            })
            .collect();
        Bars {
            _multi: multi,
            bars: Mutex::new(bars),
        }
    }
}

impl Progress for Bars {
    fn stage(&self, host: &str, stage: Stage, note: &str) {
        let bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = bars.get(host) {
            let sep = if note.is_empty() { "" } else { ": " };
            b.set_message(format!("{stage}{sep}{note}"));
        }
    }
    fn finished(&self, r: &HostReport) {
        let bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = bars.get(&r.host) {
            b.finish_with_message(format!(
                "{}{}",
                outcome_text(r),
                r.reason
                    .as_deref()
                    .map_or(String::new(), |w| format!(" ({w})"))
            ));
        }
    }
}

fn outcome_text(r: &HostReport) -> String {
    match (r.outcome, r.skipped) {
        (o, true) => format!("{o} (skipped)"),
        (o @ (Outcome::Failed | Outcome::Interrupted), _) => format!("{o} at {}", r.step),
        (o, _) => o.to_string(),
    }
}

/// The report as a table, with a verdict line.
pub fn render_table(r: &RackReport) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING).set_header(vec![
        "HOST", "POS", "WAVE", "OUTCOME", "STATE", "STEP", "TRIES", "TIME", "REASON",
    ]);
    for h in &r.hosts {
        t.add_row(vec![
            h.host.clone(),
            h.position.map_or("-".into(), |p| p.to_string()),
            h.wave.map_or("-".into(), |w| w.to_string()),
            outcome_text(h),
            h.state.map_or("-".into(), |s| s.to_string()),
            h.step.to_string(),
            h.attempts.to_string(),
            format!("{:.1}s", h.seconds),
            h.reason.clone().unwrap_or_default(),
        ]);
    }
    let count = |o: Outcome| r.hosts.iter().filter(|h| h.outcome == o).count();
    let handoff = r.hosts.first().map_or("", |h| h.handoff.as_str());
    format!(
        "rack {}: {} host(s) in {:.0}s: {} ready, {} provisioned, {} failed, {} bmc-unreachable, {} interrupted; hand-off {handoff}\n{t}\n{}",
        r.rack,
        r.hosts.len(),
        r.seconds,
        count(Outcome::Ready),
        count(Outcome::Provisioned),
        count(Outcome::Failed),
        count(Outcome::BmcUnreachable),
        count(Outcome::Interrupted),
        if r.interrupted {
            "INTERRUPTED: run `bootgate rack onboard` again to resume"
        } else if r.ok {
            "every host reached its target state"
        } else {
            "NOT every host reached its target state"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ph(event: &str) -> Seen {
        Seen::PhoneHome {
            event: event.into(),
            message: Some("disk full".into()),
        }
    }

    #[test]
    fn the_happy_path_follows_dhcp_script_phone_home() {
        use Stage as S;
        let table: &[(Stage, Seen, bool, Next)] = &[
            (S::Dhcp, Seen::Dhcp, false, Next::Go(S::BootScript)),
            (S::Dhcp, Seen::BootScript, false, Next::Go(S::PhoneHome)),
            (
                S::BootScript,
                Seen::BootScript,
                false,
                Next::Go(S::PhoneHome),
            ),
            (S::PhoneHome, ph("booted"), false, Next::Go(S::PhoneHome)),
            (
                S::PhoneHome,
                ph("installed"),
                false,
                Next::Done(Outcome::Provisioned),
            ),
            (S::PhoneHome, ph("installed"), true, Next::Go(S::Handoff)),
            (
                S::PhoneHome,
                Seen::State(HostState::Provisioned),
                false,
                Next::Done(Outcome::Provisioned),
            ),
            (
                S::PhoneHome,
                Seen::State(HostState::Configuring),
                true,
                Next::Go(S::Handoff),
            ),
            (
                S::Handoff,
                Seen::State(HostState::Ready),
                true,
                Next::Done(Outcome::Ready),
            ),
            // a fast daemon: ready before we saw provisioned
            (
                S::BootScript,
                Seen::State(HostState::Ready),
                true,
                Next::Done(Outcome::Ready),
            ),
            // nothing new
            (
                S::Dhcp,
                Seen::State(HostState::Provisioning),
                false,
                Next::Stay,
            ),
            (
                S::Handoff,
                Seen::State(HostState::Configuring),
                true,
                Next::Stay,
            ),
            (S::PhoneHome, Seen::Dhcp, false, Next::Stay),
        ];
        for (stage, seen, handoff, want) in table {
            assert_eq!(&step(*stage, seen, *handoff), want, "{stage} + {seen:?}");
        }
    }

    #[test]
    fn failures_name_the_step_and_reason() {
        assert_eq!(
            step(Stage::PhoneHome, &ph("failed"), false),
            Next::Fail("phone-home failed: disk full".into())
        );
        assert_eq!(
            step(Stage::Dhcp, &Seen::Deadline, false),
            Next::Fail("timeout waiting for a DHCP request".into())
        );
        assert_eq!(
            step(Stage::PhoneHome, &Seen::Deadline, true),
            Next::Fail("timeout waiting for the phone-home".into())
        );
        assert_eq!(
            step(
                Stage::Handoff,
                &Seen::HandoffFailed("ssh: no route".into()),
                true
            ),
            Next::Fail("hand-off failed: ssh: no route".into())
        );
        assert!(matches!(
            step(Stage::Handoff, &Seen::State(HostState::Failed), true),
            Next::Fail(_)
        ));
        assert!(matches!(
            step(Stage::BootScript, &Seen::State(HostState::Failed), false),
            Next::Fail(_)
        ));
    }

    fn host(name: &str, position: u32) -> Host {
        Host {
            name: name.into(),
            role: crate::types::Role::Gpu,
            rack: Some("r".into()),
            position: Some(position),
            macs: vec![],
            addresses: Default::default(),
            bmc: None,
            hardware: Default::default(),
            profile: None,
            labels: Default::default(),
            boot_file: None,
        }
    }

    #[test]
    fn waves_go_in_position_order_and_skip_hosts_at_their_target() {
        let (a, b, c, d, e) = (
            host("n-c", 3),
            host("n-a", 1),
            host("n-e", 5),
            host("n-b", 2),
            host("n-d", 4),
        );
        let hosts = [&a, &b, &c, &d, &e];
        let states = BTreeMap::from([
            ("n-b".to_string(), HostState::Ready),
            ("n-c".to_string(), HostState::Provisioned),
            ("n-d".to_string(), HostState::Failed),
        ]);
        let names = |v: &[&Host]| v.iter().map(|h| h.name.clone()).collect::<Vec<_>>();
        // hand-off skipped: provisioned is the target
        let (skipped, waves) = plan(&hosts, &states, 2, false);
        assert_eq!(names(&skipped), ["n-b", "n-c"]);
        assert_eq!(waves.len(), 2);
        assert_eq!(names(&waves[0]), ["n-a", "n-d"]);
        assert_eq!(names(&waves[1]), ["n-e"]);
        // with the hand-off, a provisioned host still has work to do
        let (skipped, waves) = plan(&hosts, &states, 4, true);
        assert_eq!(names(&skipped), ["n-b"]);
        assert_eq!(names(&waves[0]), ["n-a", "n-c", "n-d", "n-e"]);
    }

    #[test]
    fn events_map_to_observations() {
        let ev = |kind, detail| Event {
            id: 1,
            time: Timestamp::now(),
            kind,
            ip: None,
            mac: None,
            host: None,
            actor: "t".into(),
            detail,
        };
        assert_eq!(
            observe(&ev(EventKind::LeaseCommitted, serde_json::Value::Null)),
            Some(Seen::Dhcp)
        );
        assert_eq!(
            observe(&ev(EventKind::BootScriptServed, serde_json::Value::Null)),
            Some(Seen::BootScript)
        );
        assert_eq!(
            observe(&ev(
                EventKind::PhoneHome,
                serde_json::json!({"event": "failed", "message": "disk full"})
            )),
            Some(ph("failed"))
        );
        assert_eq!(
            observe(&ev(EventKind::PowerAction, serde_json::Value::Null)),
            None
        );
    }
}
