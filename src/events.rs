//! Group-written events for busy, read-mostly paths (iPXE scripts, image fetches): each
//! request queues its event and goes on; one writer task appends whatever queued up in one
//! transaction. A synchronous append per request capped scripts at ~2.4k/s on one SQLite
//! writer (bench/http.sh). Readers that must see everything call [`EventSink::flush`] first.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::store::{NewEvent, Store};

/// Events written per transaction at most.
const MAX_BATCH: usize = 1024;

enum Msg {
    Event(NewEvent),
    /// Answered once every event queued before it is in the store.
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
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write(store, rx));
        EventSink { tx }
    }

    /// Queues `event`. Waits only when the queue is full (back-pressure, never loss).
    pub async fn record(&self, event: NewEvent) {
        if self.tx.send(Msg::Event(event)).await.is_err() {
            tracing::error!("event writer stopped; event lost");
        }
    }

    /// Returns once everything queued before the call is stored.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn write(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Msg>) {
    let mut msgs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut msgs, MAX_BATCH).await > 0 {
        let mut events = Vec::new();
        let mut flushes = Vec::new();
        for m in msgs.drain(..) {
            match m {
                Msg::Event(e) => events.push(e),
                Msg::Flush(done) => flushes.push(done),
            }
        }
        if !events.is_empty() {
            metrics::histogram!("bootgate_event_batch").record(events.len() as f64);
            if let Err(e) = store.append_many(&events).await {
                // Keep what can be kept: one by one, so one bad event doesn't lose the rest.
                tracing::warn!(error = %e, "event batch failed; writing one by one");
                for ev in &events {
                    if let Err(e) = store.append(ev).await {
                        tracing::error!(error = %e, kind = %ev.kind, "event lost");
                    }
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EventKind, EventQuery};

    #[tokio::test]
    async fn queued_events_are_stored_in_order_by_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            crate::store::sqlite::SqliteStore::open(&dir.path().join("s.db"))
                .await
                .unwrap(),
        );
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
}
