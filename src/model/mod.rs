//! The vocabulary of bootgate's state and the seams to it: host, lease, event and
//! boot-token records, the small traits every store backend implements (`HostStore`,
//! `LeaseStore`, `EventLog`, `BootTokenStore`), `StoreError`, and the store's health and
//! heartbeat seams. No I/O lives here: the backends are in `crate::store`, and protocol
//! modules reach state through these traits (or narrower sinks), never a backend.

use std::net::Ipv4Addr;

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::types::{HostState, MacAddr, Role, text_enum};

mod health;
pub use health::{Degraded, Heartbeats, StoreHealth};

/// Everything a store backend can fail with. Messages name the IP, MAC or host involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot open store {url}: {reason}")]
    Open { url: String, reason: String },
    #[error("address {ip} is held by {holder} until {until}; refused for {requester}")]
    Conflict {
        ip: Ipv4Addr,
        holder: MacAddr,
        until: Timestamp,
        requester: MacAddr,
    },
    #[error("MAC {mac} already belongs to host {owner}; refused for host {host}")]
    MacTaken {
        mac: MacAddr,
        owner: String,
        host: String,
    },
    #[error("host {0} does not exist")]
    NoSuchHost(String),
    #[error("host {host} is {actual}, not {expected}; state change refused")]
    StateMismatch {
        host: String,
        expected: HostState,
        actual: HostState,
    },
    #[error("no lease on {ip} for {mac}")]
    NoSuchLease { ip: Ipv4Addr, mac: MacAddr },
    /// A group commit failed as a whole (the reason is the batch's error).
    #[error("lease commit failed: {0}")]
    Batch(String),
    /// The database server could not be reached (or went away mid-call) within the pool's
    /// acquire timeout. Distinct from `Db` so callers can degrade instead of failing.
    #[error("store {url} is unreachable: {reason}")]
    Unavailable { url: String, reason: String },
    #[error("corrupt value in column {column}: {value:?}")]
    Corrupt { column: &'static str, value: String },
}

text_enum!(
    /// Where a host record came from.
    HostSource {
        /// Declared in `inventory/`; reconciled on every (re)load.
        Inventory => "inventory",
        /// An unknown MAC seen on the wire.
        Discovered => "discovered",
    }
);

/// A host as the store knows it: the inventory's declaration plus its live state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    pub state: HostState,
    pub source: HostSource,
    /// Boot MACs; unique across all hosts (the store refuses a MAC owned by another host).
    pub macs: Vec<MacAddr>,
    /// Reserved address on the provisioning subnet, if any.
    pub ip: Option<Ipv4Addr>,
    pub rack: Option<String>,
    pub role: Option<Role>,
    /// The full inventory entry as JSON (for `hosts show`); `null` for discovered hosts.
    pub spec: serde_json::Value,
    pub created: Timestamp,
    pub updated: Timestamp,
}

/// One change the inventory sync applies; the store writes it and its event atomically.
#[derive(Debug, Clone, PartialEq)]
pub enum HostChange {
    /// A host new to the store (state taken from the record).
    Add(HostRecord),
    /// The declaration changed; `fields` names what changed (for the event). The live
    /// `state` and `created` of the stored host are kept.
    Update {
        host: HostRecord,
        fields: Vec<String>,
    },
    /// The host left the inventory: its row goes, its history stays in the event log.
    Remove { name: String },
}

text_enum!(
    /// A lease's life. `offered` is a short hold (DHCPOFFER), `active` a committed lease.
    LeaseState {
        Offered => "offered",
        Active => "active",
        Released => "released",
        Expired => "expired",
        /// The client declined the address (RFC 2131 §4.3.3): it is quarantined until `ends`.
        Declined => "declined",
    }
);

impl LeaseState {
    /// Whether a lease in this state still holds its address until `ends`.
    pub fn holds_address(self) -> bool {
        matches!(
            self,
            LeaseState::Offered | LeaseState::Active | LeaseState::Declined
        )
    }
}

/// Where a relayed request came from (giaddr and RFC 3046 option 82).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayInfo {
    pub giaddr: Option<Ipv4Addr>,
    /// Option 82 sub-option 1, printable or hex.
    pub circuit_id: Option<String>,
    /// Option 82 sub-option 2, printable or hex.
    pub remote_id: Option<String>,
}

/// One address binding. At most one row per IP: the IP is the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    /// Option 61 client identifier, hex, when the client sent one.
    pub client_id: Option<String>,
    pub state: LeaseState,
    pub starts: Timestamp,
    pub ends: Timestamp,
    /// The inventory host this MAC belongs to, if any.
    pub host: Option<String>,
    /// Name of the inventory subnet the address belongs to.
    pub subnet: String,
    pub relay: RelayInfo,
}

/// Which leases to list.
#[derive(Debug, Clone, Default)]
pub struct LeaseFilter {
    pub subnet: Option<String>,
    pub mac: Option<MacAddr>,
    pub state: Option<LeaseState>,
}

text_enum!(
    /// What an event records. Stored as text; the log is append-only.
    EventKind {
        InventoryLoaded => "inventory-loaded",
        InventoryRejected => "inventory-rejected",
        HostAdded => "host-added",
        HostChanged => "host-changed",
        HostRemoved => "host-removed",
        HostStateChanged => "host-state-changed",
        HostDiscovered => "host-discovered",
        LeaseOffered => "lease-offered",
        LeaseCommitted => "lease-committed",
        LeaseReleased => "lease-released",
        LeaseDeclined => "lease-declined",
        LeaseExpired => "lease-expired",
        /// A lease ACKed while the store was unreachable was refused when written: the
        /// address went to another MAC meanwhile (detail: holder). An alert: the loser is
        /// NAKed at its next request.
        LeaseConflict => "lease-conflict",
        /// A DHCPNAK was sent (detail names the reason).
        DhcpNak => "dhcp-nak",
        /// A free address answered a conflict probe: somebody uses it without a lease.
        AddressConflict => "address-conflict",
        /// A TFTP transfer finished (detail: file, bytes, result).
        TftpTransfer => "tftp-transfer",
        /// A host fetched its iPXE script (detail: template).
        BootScriptServed => "boot-script-served",
        /// A script carrying a token was asked for from an address that does not hold the
        /// MAC's lease (recorded within a budget per source).
        BootScriptRefused => "boot-script-refused",
        /// A kernel/initrd/image was served over HTTP.
        BootFileServed => "boot-file-served",
        /// A booted host reported in (booted, installed, failed) with a valid token.
        PhoneHome => "phone-home",
        /// A phone-home without the right per-boot token.
        PhoneHomeRefused => "phone-home-refused",
        /// `bootgate power` acted on (or read) a host's BMC.
        PowerAction => "power-action",
        /// `bootgate reset` began; its steps and its end follow.
        ResetStarted => "reset-started",
        ResetStep => "reset-step",
        /// Whether the node came back, and how long it took.
        ResetFinished => "reset-finished",
        /// An Ansible hand-off run began (detail: mode, log).
        HandoffStarted => "handoff-started",
        /// A hand-off run finished cleanly (detail: mode, recap counts, log).
        HandoffSucceeded => "handoff-succeeded",
        /// A hand-off run failed, timed out or was refused (detail: task, reason, log).
        HandoffFailed => "handoff-failed",
        /// `bootgate rack onboard` began (detail: rack, hosts, wave size, hand-off).
        OnboardStarted => "onboard-started",
        /// One host of an onboarding moved on: retried, finished, or stood here when the
        /// run was interrupted (detail: step, outcome, reason, attempt).
        OnboardHost => "onboard-host",
        /// The end of a `bootgate rack onboard` run (detail: the whole report as JSON).
        RackReport => "rack-report",
        /// `bootgate hosts adopt` put a discovered MAC into the inventory (detail: file).
        HostAdopted => "host-adopted",
        /// `bootgate rack plan --write` added a rack file to the inventory.
        RackPlanned => "rack-planned",
        DaemonStarted => "daemon-started",
        DaemonStopped => "daemon-stopped",
        /// Retention deleted the oldest events (detail: deleted, below_id, oldest_kept).
        EventsPruned => "events-pruned",
        /// A discovered host not seen within `[discovery] retain`, or the oldest-seen beyond
        /// `[discovery] max_hosts`, was removed (detail: reason, last_seen).
        HostExpired => "host-expired",
    }
);

/// An event to append. `time` is set by the store when `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    pub time: Option<Timestamp>,
    pub kind: EventKind,
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<MacAddr>,
    pub host: Option<String>,
    /// Who caused it: `inventory`, `dhcp`, `api:<token name>`, `cli`, …
    pub actor: String,
    pub detail: serde_json::Value,
}

impl NewEvent {
    pub fn new(kind: EventKind, actor: impl Into<String>) -> Self {
        NewEvent {
            time: None,
            kind,
            ip: None,
            mac: None,
            host: None,
            actor: actor.into(),
            detail: serde_json::Value::Null,
        }
    }
    pub fn ip(mut self, ip: Ipv4Addr) -> Self {
        self.ip = Some(ip);
        self
    }
    pub fn mac(mut self, mac: MacAddr) -> Self {
        self.mac = Some(mac);
        self
    }
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }
    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }
}

/// A stored event; `id` grows with every append.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub time: Timestamp,
    pub kind: EventKind,
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<MacAddr>,
    pub host: Option<String>,
    pub actor: String,
    pub detail: serde_json::Value,
}

/// Which events to read. All set fields must match; results are in append order.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<MacAddr>,
    pub host: Option<String>,
    pub kind: Option<EventKind>,
    /// Inclusive lower bound on `time`.
    pub since: Option<Timestamp>,
    /// Exclusive upper bound on `time`.
    pub until: Option<Timestamp>,
    /// Newest N matching events (still returned oldest first). `None` = all. With
    /// `after`: the first N after it.
    pub limit: Option<u32>,
    /// Only events with a larger id (a page cursor: the last id of the previous page).
    pub after: Option<i64>,
}

/// How much of the event log to keep (`[events]`): events older than `retain`, and all but
/// the newest `max_rows`, are pruned, `batch` rows per statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRetention {
    pub retain: std::time::Duration,
    pub max_rows: u64,
    pub batch: u32,
}

impl Default for EventRetention {
    fn default() -> Self {
        EventRetention {
            retain: std::time::Duration::from_secs(90 * 86_400),
            max_rows: 1_000_000,
            batch: 5_000,
        }
    }
}

/// How far back the event log reaches (the `event_horizon` row).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventHorizon {
    /// Events with a smaller id were pruned (0: nothing ever was).
    pub below_id: i64,
    /// Events deleted by retention so far.
    pub pruned_total: u64,
    /// When retention last deleted something.
    pub pruned_at: Option<Timestamp>,
    /// The time of the oldest event kept, if any is.
    pub oldest: Option<Timestamp>,
}

/// What one [`EventLog::prune_events`] run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    /// Rows this run deleted (another gateway's share is not counted).
    pub deleted: u64,
    /// Delete statements run.
    pub batches: u32,
    pub horizon: EventHorizon,
}

/// Which discovered hosts to keep (`[discovery]`): those seen within `retain`, at most
/// `max_hosts` of them (the oldest-seen go first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiscoveryRetention {
    pub retain: std::time::Duration,
    pub max_hosts: u64,
}

impl Default for DiscoveryRetention {
    fn default() -> Self {
        DiscoveryRetention {
            retain: std::time::Duration::from_secs(30 * 86_400),
            max_hosts: 4_096,
        }
    }
}

/// Why a discovered host expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExpiryReason {
    /// Not seen within `retain`.
    NotSeen,
    /// Among the oldest-seen beyond `max_hosts`.
    OverCap,
}

impl ExpiryReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExpiryReason::NotSeen => "not-seen",
            ExpiryReason::OverCap => "over-cap",
        }
    }
}

/// A discovered host [`HostStore::expire_discovered`] removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpiredHost {
    pub name: String,
    pub mac: Option<MacAddr>,
    pub last_seen: Timestamp,
    pub reason: ExpiryReason,
}

/// The newest time some MACs and host names took an address, for the audit's "not seen for
/// N days" without reading the whole event log (see [`LeaseStore::last_seen`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastSeen {
    /// Per MAC asked about that ever took an address: the newest `lease-committed` event
    /// time or lease start, whichever is later. Sorted by MAC.
    pub macs: Vec<(MacAddr, Timestamp)>,
    /// Per host name asked about: the newest `lease-committed` event naming it. Sorted.
    pub hosts: Vec<(String, Timestamp)>,
}

/// Hosts: the inventory's declarations reconciled into the store, plus discovered MACs.
#[async_trait]
pub trait HostStore: Send + Sync {
    async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError>;
    async fn get_host(&self, name: &str) -> Result<Option<HostRecord>, StoreError>;
    async fn host_by_mac(&self, mac: MacAddr) -> Result<Option<HostRecord>, StoreError>;
    /// Applies all changes and one event per change in a single transaction: either all
    /// land or none do.
    async fn apply_host_changes(
        &self,
        changes: &[HostChange],
        actor: &str,
    ) -> Result<(), StoreError>;
    /// Records sightings of unknown MACs, each a `discovered` record named after its (one)
    /// MAC: a new host is added, a discovered one refreshed (spec, rack, `updated`; its
    /// `first_seen` kept), a MAC that belongs to an inventory host left alone.
    /// Idempotent across gateways: two stores on one database recording the same MAC at
    /// once end with one host and no error. One result per record, in order.
    ///
    /// The default reads, then writes the batch in one transaction; should another writer
    /// have added one of the hosts meanwhile, it records them one by one, reading again.
    async fn record_discovered(
        &self,
        seen: &[HostRecord],
        actor: &str,
    ) -> Result<Vec<Sighted>, StoreError> {
        let mut plan = Vec::with_capacity(seen.len());
        for s in seen {
            let by_name = self.get_host(&s.name).await?;
            let owner = match (&by_name, s.macs.first()) {
                (None, Some(mac)) => self.host_by_mac(*mac).await?,
                _ => None,
            };
            plan.push(discovery_change(s, by_name, owner.is_some()));
        }
        let changes: Vec<HostChange> = plan.iter().filter_map(|(_, c)| c.clone()).collect();
        if changes.is_empty() || self.apply_host_changes(&changes, actor).await.is_ok() {
            return Ok(plan.into_iter().map(|(s, _)| s).collect());
        }
        let mut out = Vec::with_capacity(seen.len());
        for s in seen {
            let mut tries = 0;
            loop {
                let by_name = self.get_host(&s.name).await?;
                let owner = match (&by_name, s.macs.first()) {
                    (None, Some(mac)) => self.host_by_mac(*mac).await?,
                    _ => None,
                };
                let (sighted, change) = discovery_change(s, by_name, owner.is_some());
                let Some(change) = change else {
                    out.push(sighted);
                    break;
                };
                match self
                    .apply_host_changes(std::slice::from_ref(&change), actor)
                    .await
                {
                    Ok(()) => {
                        out.push(sighted);
                        break;
                    }
                    // Lost a race with another writer: read again, once.
                    Err(_) if tries == 0 => tries += 1,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }
    /// Removes up to `at_most` discovered (never inventory) hosts, oldest-seen first: those
    /// not seen since `now - retain`, then, while more than `max_hosts` discovered hosts are
    /// stored, the oldest-seen beyond the cap. Each gets a `host-expired` event in the same
    /// transaction. Idempotent across gateways (a host already gone is skipped).
    async fn expire_discovered(
        &self,
        retention: &DiscoveryRetention,
        now: Timestamp,
        at_most: u32,
        actor: &str,
    ) -> Result<Vec<ExpiredHost>, StoreError>;
    /// Moves a host from `from` (when given: compare-and-set) to `to`, with an event.
    async fn set_host_state(
        &self,
        name: &str,
        from: Option<HostState>,
        to: HostState,
        actor: &str,
        detail: serde_json::Value,
    ) -> Result<HostRecord, StoreError>;
}

/// What recording one sighting of an unknown MAC did (see [`HostStore::record_discovered`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sighted {
    /// A new `discovered` host (with a `host-added` event).
    Added,
    /// The discovered host existed: its spec (last seen, where) was refreshed.
    Refreshed,
    /// The MAC belongs to an inventory host: nothing written.
    Known,
}

/// The refreshed record of an existing discovered host `stored` seen again as `seen`: the
/// new spec, rack and time, the stored first sighting, state and creation.
pub fn refresh_discovered(stored: HostRecord, seen: &HostRecord) -> HostRecord {
    let mut spec = seen.spec.clone();
    if let (Some(first), Some(obj)) = (stored.spec.get("first_seen"), spec.as_object_mut()) {
        obj.insert("first_seen".into(), first.clone());
    }
    HostRecord {
        spec,
        rack: seen.rack.clone(),
        updated: seen.updated,
        ..stored
    }
}

/// The change that records `seen` given what the store holds under its name and MAC
/// (shared by the trait's default and the backends' one-transaction writes).
pub(crate) fn discovery_change(
    seen: &HostRecord,
    by_name: Option<HostRecord>,
    mac_owned: bool,
) -> (Sighted, Option<HostChange>) {
    match (by_name, mac_owned) {
        (Some(h), _) if h.source == HostSource::Discovered => (
            Sighted::Refreshed,
            Some(HostChange::Update {
                host: refresh_discovered(h, seen),
                fields: vec!["last_seen".into()],
            }),
        ),
        (Some(_), _) | (None, true) => (Sighted::Known, None),
        (None, false) => (Sighted::Added, Some(HostChange::Add(seen.clone()))),
    }
}

/// Leases. Never two clients on one address: a write that would take an address still held
/// by another MAC fails with [`StoreError::Conflict`].
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Inserts or replaces the lease on `lease.ip` and appends `event`, atomically and
    /// durably (the call returns only after the commit is on disk). Refused with
    /// `Conflict` when another MAC holds the address (`holds_address()` and `ends > now`).
    async fn commit_lease(&self, lease: &Lease, event: &NewEvent) -> Result<(), StoreError>;
    /// Commits many leases durably at once (group commit: one transaction, one sync).
    /// Each item succeeds or fails on its own, as `commit_lease` would (a `Conflict` fails
    /// only that item); the outer error means nothing was committed.
    async fn commit_leases(
        &self,
        batch: &[(Lease, NewEvent)],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut out = Vec::with_capacity(batch.len());
        for (lease, event) in batch {
            out.push(self.commit_lease(lease, event).await);
        }
        Ok(out)
    }
    async fn get_lease(&self, ip: Ipv4Addr) -> Result<Option<Lease>, StoreError>;
    async fn list_leases(&self, filter: &LeaseFilter) -> Result<Vec<Lease>, StoreError>;
    /// Marks every `offered`/`active` lease whose `ends <= now` as `expired` (with an event
    /// each) and returns them.
    async fn expire_leases(&self, now: Timestamp) -> Result<Vec<Lease>, StoreError>;
    /// Leases holding their address at `now` (offered, active or declined, ending after
    /// `now`), sorted by IP: what the audit counts, without the dead rows.
    async fn live_leases(&self, now: Timestamp) -> Result<Vec<Lease>, StoreError>;
    /// For each of `macs` and `hosts` that ever took an address, the newest time it did
    /// (see [`LastSeen`]). Reads two indexes instead of every lease-committed event.
    async fn last_seen(&self, macs: &[MacAddr], hosts: &[String]) -> Result<LastSeen, StoreError>;
}

/// The append-only event log.
#[async_trait]
pub trait EventLog: Send + Sync {
    async fn append(&self, event: &NewEvent) -> Result<i64, StoreError>;
    /// Appends all events in order, in one transaction (all or none).
    async fn append_many(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        for e in events {
            self.append(e).await?;
        }
        Ok(())
    }
    async fn query(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError>;
    /// Deletes the events `retention` does not keep, oldest first, `retention.batch` rows
    /// per short transaction (never one long one: the hot path writes between batches), and
    /// moves the horizon past them; when anything was deleted, appends one `events-pruned`
    /// event. Idempotent and cheap when another gateway pruned first.
    async fn prune_events(
        &self,
        retention: &EventRetention,
        now: Timestamp,
    ) -> Result<Pruned, StoreError>;
    /// How far back the log reaches.
    async fn event_horizon(&self) -> Result<EventHorizon, StoreError>;
}

text_enum!(
    /// Why a boot token was issued; decides what its phone-home may do.
    BootPurpose {
        /// The install script: the phone-home moves the host (provisioning → provisioned
        /// or failed).
        Install => "install",
        /// The rescue script of a host in maintenance: the phone-home is recorded, the
        /// state stays.
        Rescue => "rescue",
    }
);

/// A per-boot phone-home token, as issued when a script is rendered. The store keeps only
/// its SHA-256, so reading the database does not let anyone phone home as the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootToken {
    pub mac: MacAddr,
    pub host: String,
    /// The token as handed to the host (on its kernel command line).
    pub token: String,
    pub purpose: BootPurpose,
    pub issued: Timestamp,
    /// After this the token is refused (and may be pruned).
    pub expires: Timestamp,
}

/// What a phone-home's token turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    /// It matches the live token of that MAC.
    Accepted { host: String, purpose: BootPurpose },
    /// There is a live token for the MAC but this is not it.
    Wrong,
    /// The MAC's token expired at the given time.
    Expired { at: Timestamp },
    /// No token was ever issued for the MAC (or it expired and was pruned).
    NoBoot,
    /// This token was used up at the given time (its boot reported `installed`/`failed`):
    /// a replay.
    Used { at: Timestamp },
}

/// Whether an accepted token stays valid (a `booted` report: more reports of the same
/// boot follow) or is used up (`installed`/`failed`: the boot is over, replays are refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUse {
    Keep,
    Consume,
}

/// Per-boot phone-home tokens, kept in the store so a daemon restart (or the other
/// gateway) between the script fetch and the phone-home still accepts it.
#[async_trait]
pub trait BootTokenStore: Send + Sync {
    /// Stores `token` as the one its MAC must present, replacing any earlier, different
    /// token of that MAC (a new boot). Issuing the token the MAC already has (a re-fetch of
    /// the script within the same boot) changes nothing: a used token stays used. Also
    /// drops tokens that expired. Durable when it returns.
    async fn issue_boot_token(&self, token: &BootToken) -> Result<(), StoreError>;
    /// Checks `offered` for `mac` at `now`; with [`TokenUse::Consume`] an accepted token is
    /// marked used in the same transaction, so two concurrent reports cannot both use it
    /// (and a replay is [`TokenCheck::Used`]).
    async fn check_boot_token(
        &self,
        mac: MacAddr,
        offered: &str,
        now: Timestamp,
        use_: TokenUse,
    ) -> Result<TokenCheck, StoreError>;
    /// The site's secret key named `name` (at least 32 bytes), shared by every gateway on
    /// this store: created from `candidate` by the first caller, read back by all later
    /// ones (both gateways racing get the same winner).
    async fn site_key(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError>;
}

/// A whole backend.
pub trait Store: HostStore + LeaseStore + EventLog + BootTokenStore {}
impl<T: HostStore + LeaseStore + EventLog + BootTokenStore> Store for T {}
