//! Group-written events for busy, read-mostly paths (iPXE scripts, image fetches): each
//! request queues its event and goes on; one writer task appends whatever queued up in one
//! transaction. A synchronous append per request capped scripts at ~2.4k/s on one SQLite
//! writer (bench/http.sh). Readers that must see everything call [`EventSink::flush`] first.
//! While the store is unreachable (degraded mode) events wait in memory and are written,
//! in order, when it returns.
//!
//! Repeats of one *observational* event (the same script or file served to the same MAC,
//! identical in every field) that queue up behind one commit are written once, with
//! `"count": n` in the detail (syslog's "last message repeated n times"): a client looping
//! on its script thousands of times a second costs one row per commit, not one per
//! request, and the timeline stays readable. Nothing that changes state is ever folded.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::model::StoreHealth;
use crate::model::{EventKind, EventRetention, NewEvent, Pruned, Store, StoreError};
use crate::types::MacAddr;

/// Events written per transaction at most.
const MAX_BATCH: usize = 1024;

/// Events kept in memory at most while the store is unreachable; beyond, the oldest are
/// dropped and counted (`bootgate_events_dropped_total{kind="queue-full"}`).
const MAX_QUEUED: usize = 100_000;

/// First and longest wait between attempts while the store is unreachable.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(5);

enum Msg {
    Event(NewEvent),
    /// Answered once every event queued before it is in the store, or once the store was
    /// found unreachable (a flush never hangs on a dead database).
    Flush(oneshot::Sender<()>),
}

/// Handle to the event writer; cheap to clone.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Msg>,
}

impl EventSink {
    /// Starts the writer task for `store`.
    pub fn spawn(store: Arc<dyn Store>) -> EventSink {
        EventSink::spawn_with(store, Arc::new(StoreHealth::new()))
    }

    /// Starts the writer task for `store`, reporting an unreachable store to `health`.
    pub fn spawn_with(store: Arc<dyn Store>, health: Arc<StoreHealth>) -> EventSink {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write(store, health, rx));
        EventSink { tx }
    }

    /// Queues `event`. Waits only when the queue is full (back-pressure; while the store is
    /// down the writer keeps draining into its bounded memory queue, so this never blocks
    /// for long).
    pub async fn record(&self, event: NewEvent) {
        if self.tx.send(Msg::Event(event)).await.is_err() {
            tracing::error!("event writer stopped; event lost");
        }
    }

    /// Returns once everything queued before the call is stored, or the store was found
    /// unreachable (the events stay queued and are written when it returns).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// The writer: appends queued events in batches; while the store is unreachable it keeps
/// them (bounded) and retries with backoff, so events of a degraded period arrive, in
/// order, once the database is back.
async fn write(store: Arc<dyn Store>, health: Arc<StoreHealth>, mut rx: mpsc::Receiver<Msg>) {
    let mut pending: VecDeque<NewEvent> = VecDeque::new();
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    let mut msgs = Vec::with_capacity(MAX_BATCH);
    let mut retry: Option<tokio::time::Instant> = None;
    let mut backoff = RETRY_FIRST;
    let mut open = true;
    loop {
        if !open && pending.is_empty() {
            return;
        }
        match (open, retry) {
            (true, None) if pending.is_empty() => {
                if rx.recv_many(&mut msgs, MAX_BATCH).await == 0 {
                    open = false;
                }
            }
            (true, Some(at)) => {
                tokio::select! {
                    n = rx.recv_many(&mut msgs, MAX_BATCH) => if n == 0 { open = false },
                    _ = tokio::time::sleep_until(at) => retry = None,
                }
            }
            (true, None) => {
                while msgs.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(m) => msgs.push(m),
                        Err(_) => break,
                    }
                }
            }
            (false, Some(at)) => {
                tokio::time::sleep_until(at).await;
                retry = None;
            }
            (false, None) => {}
        }
        for m in msgs.drain(..) {
            match m {
                Msg::Event(e) => pending.push_back(e),
                Msg::Flush(done) => flushes.push(done),
            }
        }
        if pending.len() > MAX_QUEUED {
            let n = pending.len() - MAX_QUEUED;
            pending.drain(..n);
            metrics::counter!("bootgate_events_dropped_total", "kind" => "queue-full")
                .increment(n as u64);
        }
        if retry.is_none() {
            match drain(store.as_ref(), &mut pending).await {
                Ok(()) => backoff = RETRY_FIRST,
                Err(reason) => {
                    health.mark_down(&reason);
                    retry = Some(tokio::time::Instant::now() + backoff);
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
        metrics::gauge!("bootgate_events_queued").set(pending.len() as f64);
        // Answered after an attempt: stored, or the store is known to be down.
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Writes `pending` in batches. Stops at the first "unreachable" (returning its reason,
/// the unwritten events still queued); an event the store refuses for another reason is
/// logged and dropped, so one bad event doesn't hold up the rest.
async fn drain(store: &dyn Store, pending: &mut VecDeque<NewEvent>) -> Result<(), String> {
    while !pending.is_empty() {
        // Fold repeats within the next batch, in place: what stays queued after a failure
        // is exactly what was not written.
        let n = pending.len().min(MAX_BATCH);
        let folded = coalesce(pending.drain(..n));
        let n = folded.len();
        for ev in folded.into_iter().rev() {
            pending.push_front(ev);
        }
        let batch: Vec<NewEvent> = pending.range(..n).cloned().collect();
        metrics::histogram!("bootgate_event_batch").record(batch.len() as f64);
        match store.append_many(&batch).await {
            Ok(()) => {
                pending.drain(..n);
            }
            Err(StoreError::Unavailable { url, reason }) => return Err(format!("{url}: {reason}")),
            Err(e) => {
                tracing::warn!(error = %e, "event batch failed; writing one by one");
                for ev in batch {
                    match store.append(&ev).await {
                        Ok(_) => {}
                        Err(StoreError::Unavailable { url, reason }) => {
                            return Err(format!("{url}: {reason}"));
                        }
                        Err(e) => tracing::error!(error = %e, kind = %ev.kind, "event lost"),
                    }
                    pending.pop_front();
                }
            }
        }
    }
    Ok(())
}

/// Events that say something was served, not that anything changed: repeats may fold.
fn foldable(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::BootScriptServed | EventKind::BootFileServed
    )
}

/// Folds each repeat of a foldable event (equal in every field, no explicit time) into its
/// first occurrence, which gets `"count": n`; everything else keeps its place and order.
fn coalesce(events: impl Iterator<Item = NewEvent>) -> Vec<NewEvent> {
    let mut out: Vec<NewEvent> = Vec::new();
    let mut counts: Vec<u64> = Vec::new();
    let mut seen: HashMap<(EventKind, Option<MacAddr>, Option<Ipv4Addr>), Vec<usize>> =
        HashMap::new();
    for ev in events {
        let folds = foldable(ev.kind)
            && ev.time.is_none()
            && (ev.detail.is_object() || ev.detail.is_null())
            && ev.detail.get("count").is_none();
        if folds {
            let slots = seen.entry((ev.kind, ev.mac, ev.ip)).or_default();
            if let Some(&i) = slots.iter().find(|&&i| out[i] == ev) {
                counts[i] += 1;
                continue;
            }
            slots.push(out.len());
        }
        out.push(ev);
        counts.push(1);
    }
    for (ev, n) in out.iter_mut().zip(counts) {
        if n > 1 {
            if ev.detail.is_null() {
                ev.detail = serde_json::json!({});
            }
            if let Some(obj) = ev.detail.as_object_mut() {
                obj.insert("count".into(), n.into());
            }
        }
    }
    out
}

// ---- retention ---------------------------------------------------------------------------

/// `[events]`: how much of the log is kept, and how often retention runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EventSettings {
    pub retention: EventRetention,
    /// Between two prune runs (the first runs this long after start, too).
    pub prune_interval: Duration,
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            retention: EventRetention::default(),
            prune_interval: Duration::from_secs(600),
        }
    }
}

/// Runs one prune and records what it did: `bootgate_events_pruned_total` (the limit was
/// hit), `bootgate_events_horizon_id`, a log line. The store writes the `events-pruned`
/// event (one per run that deleted anything).
pub async fn prune_once(
    store: &dyn Store,
    retention: &EventRetention,
) -> Result<Pruned, StoreError> {
    let pruned = store
        .prune_events(retention, jiff::Timestamp::now())
        .await?;
    metrics::gauge!("bootgate_events_horizon_id").set(pruned.horizon.below_id as f64);
    if pruned.deleted > 0 {
        metrics::counter!("bootgate_events_pruned_total").increment(pruned.deleted);
        tracing::info!(
            deleted = pruned.deleted,
            batches = pruned.batches,
            below_id = pruned.horizon.below_id,
            oldest_kept = ?pruned.horizon.oldest,
            "pruned the event log"
        );
    }
    Ok(pruned)
}

/// The retention task: every `prune_interval`, prunes the log (in batches, off the DHCP
/// path: see `EventLog::prune_events`) until `cancel` fires. A failed run (the store is
/// down) is logged and tried again at the next tick.
pub async fn retention_loop(
    store: Arc<dyn Store>,
    settings: EventSettings,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.prune_interval,
        settings.prune_interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = prune_once(store.as_ref(), &settings.retention).await {
            tracing::warn!(error = %e, "event retention failed; retrying at the next run");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventKind, EventQuery};

    /// A fresh SQLite store in a temp dir (dropping the guard removes it).
    async fn sqlite_store() -> (Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sqlite::SqliteStore::open(&dir.path().join("s.db"))
            .await
            .unwrap();
        (Arc::new(store), dir)
    }

    #[tokio::test]
    async fn queued_events_are_stored_in_order_by_flush() {
        let (store, _dir) = sqlite_store().await;
        let sink = EventSink::spawn(store.clone());
        for i in 0..500 {
            sink.record(
                NewEvent::new(EventKind::BootScriptServed, "test")
                    .detail(serde_json::json!({ "n": i })),
            )
            .await;
        }
        sink.flush().await;
        let evs = store.query(&EventQuery::default()).await.unwrap();
        assert_eq!(evs.len(), 500);
        assert!(evs.iter().enumerate().all(|(i, e)| e.detail["n"] == i));
    }

    fn served(mac: &str, template: &str) -> NewEvent {
        NewEvent::new(EventKind::BootScriptServed, "http")
            .mac(mac.parse().unwrap())
            .detail(serde_json::json!({ "template": template }))
    }

    #[test]
    fn repeats_of_a_served_script_fold_into_the_first_with_a_count() {
        let state = NewEvent::new(EventKind::HostStateChanged, "http")
            .mac("02:00:00:00:00:01".parse().unwrap());
        let events = vec![
            served("02:00:00:00:00:01", "discovery"),
            state.clone(),
            served("02:00:00:00:00:01", "discovery"),
            served("02:00:00:00:00:02", "discovery"),
            served("02:00:00:00:00:01", "install"),
            state.clone(),
            served("02:00:00:00:00:01", "discovery"),
        ];
        let out = coalesce(events.into_iter());
        let summary: Vec<(EventKind, serde_json::Value)> =
            out.iter().map(|e| (e.kind, e.detail.clone())).collect();
        assert_eq!(
            summary,
            vec![
                (
                    EventKind::BootScriptServed,
                    serde_json::json!({"template": "discovery", "count": 3})
                ),
                (EventKind::HostStateChanged, serde_json::Value::Null),
                (
                    EventKind::BootScriptServed,
                    serde_json::json!({"template": "discovery"})
                ),
                (
                    EventKind::BootScriptServed,
                    serde_json::json!({"template": "install"})
                ),
                (EventKind::HostStateChanged, serde_json::Value::Null),
            ]
        );
        // State changes never fold, even when identical.
        assert_eq!(
            out.iter()
                .filter(|e| e.kind == EventKind::HostStateChanged)
                .count(),
            2
        );
        // A folded event does not fold again (a retried batch keeps its count).
        let again = coalesce(out.clone().into_iter());
        assert_eq!(again, out);
    }

    #[tokio::test]
    async fn a_burst_of_one_request_is_stored_once_with_its_count() {
        let (store, _dir) = sqlite_store().await;
        let sink = EventSink::spawn(store.clone());
        // Queued faster than one commit: the writer takes them as one batch or a few.
        for _ in 0..300 {
            sink.record(served("02:00:00:00:00:01", "discovery")).await;
        }
        sink.flush().await;
        let evs = store.query(&EventQuery::default()).await.unwrap();
        assert!(!evs.is_empty() && evs.len() < 300, "{} rows", evs.len());
        let total: u64 = evs
            .iter()
            .map(|e| e.detail.get("count").and_then(|c| c.as_u64()).unwrap_or(1))
            .sum();
        assert_eq!(total, 300, "every request is counted");
    }
}
