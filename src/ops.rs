//! What operators ask the running daemon to do (reload the inventory, release a lease) and
//! what it says about itself. `app.rs` implements [`Operations`]; the REST API and the
//! control socket hold it as a trait object, so neither knows the daemon's whole state.

use std::net::Ipv4Addr;

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::inventory::Problem;
use crate::model::{Lease, LeaseState, StoreError};
use crate::types::MacAddr;

/// The last reload that failed, kept until a reload succeeds (shown by /healthz).
#[derive(Debug, Clone, Serialize)]
pub struct ReloadFailure {
    pub at: Timestamp,
    pub problems: Vec<Problem>,
}

/// What `bootgate reload` gets back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadOutcome {
    pub ok: bool,
    /// The generation in force after the attempt (unchanged on failure).
    pub generation: u64,
    pub hosts: usize,
    #[serde(default)]
    pub added: Vec<String>,
    #[serde(default)]
    pub changed: Vec<String>,
    #[serde(default)]
    pub removed: Vec<String>,
    /// `file: entry: field: reason` lines when the new inventory was refused.
    #[serde(default)]
    pub problems: Vec<String>,
}

/// Why an operator's lease release was refused; the API answers 404, 409 and 503.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("no lease on {0}")]
    NoLease(Ipv4Addr),
    #[error("the lease on {ip} ({mac}) is {state}, not active")]
    NotActive {
        ip: Ipv4Addr,
        mac: MacAddr,
        state: LeaseState,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// The daemon's operations and self-description, as the API and the control socket see
/// them.
#[async_trait]
pub trait Operations: Send + Sync {
    /// Re-reads the inventory (and tokens); on failure the last good one stays in force.
    async fn reload(&self, actor: &str) -> ReloadOutcome;
    /// Releases the active lease on `ip` at an operator's request.
    async fn release_lease(&self, ip: Ipv4Addr, actor: &str) -> Result<Lease, ReleaseError>;
    /// The last refused reload, until one succeeds.
    fn last_failure(&self) -> Option<ReloadFailure>;
    /// Lease writes that degraded-mode ACKs queued and the store has not taken yet.
    fn deferred_lease_writes(&self) -> usize;
    fn started_at(&self) -> Timestamp;
    /// The live claims of this gateway's address book, by address: what it answers DHCP
    /// from, including while the store is unreachable (where it may differ from the
    /// store's lease table and from the other gateway's book).
    fn book(&self) -> Vec<BookClaim>;
}

/// One live claim of a gateway's in-memory address book (`GET /api/v1/book`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookClaim {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    /// `offer`, `lease`, `committing` or `quarantine`.
    pub kind: String,
    /// Until when the claim stands.
    pub until: Timestamp,
}
