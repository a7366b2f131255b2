//! The Ansible hand-off: once a host is installed, bootgate renders an Ansible inventory from
//! the same inventory that booted it (`render`, pure) and runs `ansible-playbook` against it
//! (`runner`, the process edge), pinning the SSH host keys the host reported at phone-home.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::types::HostState;

pub mod render;
pub mod runner;
mod settings;

pub use render::{Rendered, render};
pub use runner::{Mode, Outcome, Recap, RunReport, Runner};
pub use settings::HandoffSettings;

/// Everything the hand-off can fail with. Messages name the host, file or group.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("no host named {0:?} in the inventory")]
    NoSuchHost(String),
    #[error(
        "host {host}: no SSH host keys pinned (the host's phone-home carried none); refusing to \
         connect without host key checking"
    )]
    NoPinnedKeys { host: String },
    #[error("host {host}: phone-home SSH host key #{index} is unusable: {reason}")]
    BadHostKey {
        host: String,
        index: usize,
        reason: String,
    },
    #[error(
        "host {host} is {state}; a hand-off runs on provisioned, ready or failed hosts (is one already running?)"
    )]
    WrongState { host: String, state: HostState },
    #[error("Ansible group {group}: both {first:?} and {second:?} map to it; rename one")]
    GroupCollision {
        group: String,
        first: String,
        second: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("rendering YAML: {0}")]
    Yaml(String),
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hand-off not set up: {0}")]
    NotConfigured(String),
    #[error("the daemon is shutting down; hand-off not started")]
    ShuttingDown,
    #[error("store: {0}")]
    Store(#[from] crate::model::StoreError),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> HandoffError + '_ {
    move |source| HandoffError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The daemon's hook into the runner: the runner and the inventory in force (built by
/// `app.rs` when `[handoff] enabled`).
#[derive(Clone)]
pub struct Handoff {
    pub runner: Arc<Runner>,
    pub inventory: crate::snapshot::Snapshot,
}

impl Handoff {
    /// A host just phoned home `installed` (now `provisioned`): starts its hand-off in the
    /// background; the run waits for a slot of the runner's semaphore and never holds a
    /// store transaction or lock while Ansible runs.
    pub fn on_provisioned(&self, host: &str) {
        let runner = self.runner.clone();
        let inventory = self.inventory.clone();
        let host = host.to_string();
        self.runner.spawn(async move {
            let loaded = inventory.load();
            match runner
                .run(&loaded.inventory, &host, Mode::Apply, "handoff")
                .await
            {
                Ok(report) => {
                    tracing::info!(host, ok = report.ok(), log = %report.log.display(), "hand-off finished")
                }
                Err(e) => tracing::error!(host, error = %e, "hand-off refused"),
            }
        });
    }
}

/// At daemon start: a host left `configuring` had its run cut short by the previous
/// daemon's exit (runs live in the daemon's process). It goes `failed` with that reason, so
/// it neither hangs in `configuring` nor blocks `bootgate handoff HOST`.
pub async fn fail_interrupted(
    store: &dyn crate::model::Store,
) -> Result<Vec<String>, HandoffError> {
    let mut failed = Vec::new();
    for h in store.list_hosts().await? {
        if h.state != HostState::Configuring {
            continue;
        }
        let reason = "the daemon stopped during the hand-off; run `bootgate handoff HOST` again";
        match store
            .set_host_state(
                &h.name,
                Some(HostState::Configuring),
                HostState::Failed,
                "handoff",
                serde_json::json!({ "reason": reason }),
            )
            .await
        {
            Ok(_) | Err(crate::model::StoreError::StateMismatch { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        store
            .append(
                &crate::model::NewEvent::new(crate::model::EventKind::HandoffFailed, "handoff")
                    .host(h.name.clone())
                    .detail(serde_json::json!({ "reason": reason })),
            )
            .await?;
        failed.push(h.name);
    }
    Ok(failed)
}
