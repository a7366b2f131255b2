//! How the hand-off runs (`[handoff]` of the daemon config): the config fills this in, the
//! runner reads it, so the runner needs nothing from the config.

use std::path::PathBuf;
use std::time::Duration;

/// The Ansible hand-off (`[handoff]`): how `ansible-playbook` is run against a host once it
/// phones home `installed`, and by `bootgate handoff HOST`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HandoffSettings {
    /// Run the hand-off automatically when a host phones home `installed`.
    pub enabled: bool,
    /// The playbooks directory: `site.yml` and (optionally) `ansible.cfg`.
    pub playbooks_dir: PathBuf,
    /// The `ansible-playbook` executable: a path, or resolved from `$BOOTGATE_VENV/bin`
    /// then `PATH` when the config gives a bare name.
    pub ansible_playbook: PathBuf,
    /// Runs at once; more hosts wait for a slot (a rack powering on together must not
    /// fork hundreds of SSH sessions from the gateway).
    pub concurrency: usize,
    /// A run still going after this is killed and the host marked `failed`.
    pub timeout: Duration,
    /// The account Ansible logs in as.
    pub ssh_user: String,
    /// Private key Ansible logs in with (none: ssh's defaults / agent).
    pub ssh_key: Option<PathBuf>,
}
