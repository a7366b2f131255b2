//! Address management for DHCP: an in-memory [`Book`] of who holds which address (leases
//! loaded from the store, short offer holds, declined quarantines) that answers the policy's
//! questions without I/O, and the [`Ipam`] service that applies decisions: offers only in
//! memory, leases durably in the store first, then in the book.
//!
//! One address is never given to two clients: a decision and its tentative claim in the
//! book happen under one lock, and the store refuses a lease on an address another MAC holds
//! (the last word when two gateways share a store).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use jiff::Timestamp;

use crate::inventory::Subnet;
use crate::model::{
    EventKind, Lease, LeaseFilter, LeaseState, NewEvent, Store, StoreError, StoreHealth,
};
use crate::types::MacAddr;

mod address;
pub use address::{AddressBook, Binding, ClientKey, Holder, Lane};

/// One address's current claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub client: ClientKey,
    pub mac: MacAddr,
    pub kind: ClaimKind,
    /// Until when the claim stands (hold, lease or quarantine end).
    pub until: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimKind {
    /// Offered, not yet requested; memory only.
    Offer,
    /// A committed lease (in the store).
    Lease,
    /// A lease being committed right now: nobody else may get the address meanwhile.
    Committing,
    /// Declined by a client: out of the pool until `until`.
    Quarantine,
}

/// The in-memory address book. Pure data: every method is synchronous and fast.
#[derive(Debug, Default)]
pub struct Book {
    claims: HashMap<Ipv4Addr, Claim>,
    /// The address each client claims (its newest claim).
    by_client: HashMap<ClientKey, Ipv4Addr>,
    /// Where each subnet's next free-address search starts (round robin, so a released
    /// address is not handed straight to the next client).
    cursors: HashMap<String, u32>,
    /// The clock `decide` runs at; set by the service before each decision.
    now: Option<Timestamp>,
}

impl Book {
    pub fn new() -> Book {
        Book::default()
    }

    pub fn set_now(&mut self, now: Timestamp) {
        self.now = Some(now);
    }

    fn now(&self) -> Timestamp {
        self.now.unwrap_or_else(Timestamp::now)
    }

    fn live(&self, c: &Claim) -> bool {
        c.kind == ClaimKind::Committing || c.until > self.now()
    }

    pub fn claim(&self, ip: Ipv4Addr) -> Option<&Claim> {
        self.claims.get(&ip).filter(|c| self.live(c))
    }

    /// Records `claim` on `ip` (replacing the client's previous address claim unless it is a
    /// quarantine, which belongs to nobody).
    pub fn put(&mut self, ip: Ipv4Addr, claim: Claim) {
        if claim.kind != ClaimKind::Quarantine {
            if let Some(old) = self.by_client.insert(claim.client.clone(), ip)
                && old != ip
                && self
                    .claims
                    .get(&old)
                    .is_some_and(|c| c.client == claim.client && c.kind == ClaimKind::Offer)
            {
                // A client holds one offer at a time: drop its older hold.
                self.claims.remove(&old);
            }
        } else if self.by_client.get(&claim.client) == Some(&ip) {
            self.by_client.remove(&claim.client);
        }
        self.claims.insert(ip, claim);
    }

    /// Forgets the claim on `ip` (a release, an expiry, a failed commit).
    pub fn remove(&mut self, ip: Ipv4Addr) -> Option<Claim> {
        let c = self.claims.remove(&ip)?;
        if self.by_client.get(&c.client) == Some(&ip) {
            self.by_client.remove(&c.client);
        }
        Some(c)
    }

    /// Drops `client`'s offer hold (it chose another server).
    pub fn withdraw(&mut self, client: &ClientKey) {
        if let Some(ip) = self.by_client.get(client).copied()
            && self
                .claims
                .get(&ip)
                .is_some_and(|c| c.kind == ClaimKind::Offer)
        {
            self.remove(ip);
        }
    }

    /// Records that the store says `lease` holds its address (another gateway wrote it, or
    /// a commit of ours was refused because of it). Our own claim in the middle of a commit
    /// is left alone: that commit's answer decides.
    pub fn learn(&mut self, lease: &Lease) {
        let kind = match lease.state {
            LeaseState::Active | LeaseState::Offered => ClaimKind::Lease,
            LeaseState::Declined => ClaimKind::Quarantine,
            LeaseState::Released | LeaseState::Expired => return,
        };
        if lease.ends <= self.now() {
            return;
        }
        match self.claims.get(&lease.ip) {
            Some(c) if c.kind == ClaimKind::Committing => {}
            // Our offer to the same client: the client may still take it.
            Some(c) if c.kind == ClaimKind::Offer && c.mac == lease.mac => {}
            Some(c) if c.kind == kind && c.mac == lease.mac && c.until >= lease.ends => {}
            _ => self.put(
                lease.ip,
                Claim {
                    client: client_of(lease),
                    mac: lease.mac,
                    kind,
                    until: lease.ends,
                },
            ),
        }
    }

    /// Brings the book in step with the store's lease table (every row: one per address):
    /// live leases are learned, and leases the store no longer holds (released or expired,
    /// maybe by the other gateway) are dropped. Offers and probe quarantines are memory
    /// only and stay.
    pub fn merge(&mut self, leases: &[Lease]) {
        for l in leases {
            let holds = l.state.holds_address() && l.ends > self.now();
            if holds {
                self.learn(l);
            } else if self
                .claims
                .get(&l.ip)
                .is_some_and(|c| c.kind == ClaimKind::Lease)
            {
                self.remove(l.ip);
            }
        }
    }

    /// Addresses currently claimed (live), for metrics and audits.
    pub fn live_claims(&self) -> impl Iterator<Item = (&Ipv4Addr, &Claim)> {
        self.claims.iter().filter(|(_, c)| self.live(c))
    }
}

impl AddressBook for Book {
    fn binding_of(&self, subnet: &Subnet, client: &ClientKey) -> Option<Binding> {
        let ip = *self.by_client.get(client)?;
        let c = self.claim(ip)?;
        (subnet.cidr.contains(&ip) && &c.client == client && c.kind != ClaimKind::Quarantine)
            .then_some(Binding {
                ip,
                offered: c.kind == ClaimKind::Offer,
            })
    }

    fn holder(&self, ip: Ipv4Addr, client: &ClientKey) -> Option<Holder> {
        let c = self.claim(ip)?;
        match c.kind {
            ClaimKind::Quarantine => Some(Holder::Quarantined),
            _ if &c.client == client => None,
            _ => Some(Holder::Client { mac: c.mac }),
        }
    }

    /// Round robin from the subnet's cursor, over `lane`'s positions first: two gateways
    /// sharing a pool on different lanes never pick the same free address while each has
    /// one left in its own lane.
    fn next_free(&self, subnet: &Subnet, client: &ClientKey, lane: Lane) -> Option<Ipv4Addr> {
        let total: u64 = subnet.dynamic_ranges.iter().map(|r| r.len()).sum();
        if total == 0 {
            return None;
        }
        let start = u64::from(self.cursors.get(&subnet.name).copied().unwrap_or(0)) % total;
        let free = |want: bool| {
            (0..total)
                .map(|i| (start + i) % total)
                .filter(|p| lane.contains(*p) == want)
                .map(|p| nth_dynamic(subnet, p))
                .find(|ip| self.holder(*ip, client).is_none())
        };
        free(true).or_else(|| free(false))
    }
}

/// The `n`th address of the subnet's dynamic ranges, in range order.
fn nth_dynamic(subnet: &Subnet, mut n: u64) -> Ipv4Addr {
    for r in &subnet.dynamic_ranges {
        if n < r.len() {
            return Ipv4Addr::from(u32::from(r.start) + n as u32);
        }
        n -= r.len();
    }
    // Unreachable for n < total; the first address keeps this total.
    subnet
        .dynamic_ranges
        .first()
        .map_or(Ipv4Addr::UNSPECIFIED, |r| r.start)
}

/// Position of `ip` in the subnet's dynamic ranges.
fn dynamic_index(subnet: &Subnet, ip: Ipv4Addr) -> Option<u64> {
    let mut base = 0;
    for r in &subnet.dynamic_ranges {
        if r.contains(ip) {
            return Some(base + u64::from(u32::from(ip) - u32::from(r.start)));
        }
        base += r.len();
    }
    None
}

/// The client key a stored lease belongs to (its MAC; see [`ClientKey`]).
pub fn client_of(lease: &Lease) -> ClientKey {
    ClientKey::Mac(lease.mac)
}

/// Leases committed in one store transaction at most (bounds a batch's latency).
const MAX_BATCH: usize = 512;

/// One lease waiting for the group commit.
struct CommitJob {
    lease: Lease,
    event: NewEvent,
    done: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

/// Lease writes that degraded ACKs may queue at most; beyond, degraded requests go
/// unanswered rather than ACKed without a record.
const MAX_DEFERRED: usize = 8192;

/// How often the sync loop retries a store that is down.
const RETRY_DOWN: Duration = Duration::from_secs(1);

/// How a lease write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// In the store, durably.
    Durable,
    /// The store is unreachable: queued in memory, written when it returns (degraded mode),
    /// with the lease ending at `ends` (a renewal's end is never extended: see [`Deferral`]).
    Deferred { ends: Timestamp },
}

/// What may be ACKed on a promise to write the lease later, when the store is unreachable
/// (the caller's judgement of what no other gateway can hand out meanwhile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferral {
    /// Nothing: without the store, no ACK.
    Never,
    /// As asked: the host's reservation (no other MAC may get it anywhere), a release, a
    /// decline.
    AsIs,
    /// A renewal of a lease this gateway's book holds for the client until `until`: queued
    /// only up to that end, never extended. The other gateway, which may still reach the
    /// store, keeps the address for the client exactly that long (the store says so), so
    /// no address is ever ACKed to two MACs across a one-sided partition.
    UpTo(Timestamp),
}

/// How the service runs.
#[derive(Debug, Clone)]
pub struct IpamOptions {
    /// The store is shared with another gateway (PostgreSQL): our book can be stale, so a
    /// fresh address is checked against the store before it is offered and the book is
    /// re-read every `sync_interval`.
    pub shared: bool,
    pub sync_interval: Duration,
    pub health: Arc<StoreHealth>,
}

/// Applies DHCP decisions: offers in memory, leases in the store first.
pub struct Ipam {
    book: Mutex<Book>,
    store: Arc<dyn Store>,
    /// Group commit: every lease write goes through one writer task that commits whatever
    /// has queued up in one transaction (one fsync), so durability costs one sync per batch
    /// rather than per ACK. Under light load a batch is one lease and nothing waits.
    jobs: tokio::sync::mpsc::Sender<CommitJob>,
    /// See [`IpamOptions::shared`].
    shared: bool,
    /// Up, or degraded since when and why.
    health: Arc<StoreHealth>,
    /// Lease writes (with their events) of degraded ACKs, in order, waiting for the store.
    deferred: Mutex<Vec<(Lease, NewEvent)>>,
    /// Wakes the sync loop early (a conflict showed the book is stale).
    wake: Arc<tokio::sync::Notify>,
}

/// The group-commit writer: takes the first waiting job, everything queued behind it (up
/// to MAX_BATCH), commits them together and answers each.
async fn group_commit(store: Arc<dyn Store>, mut rx: tokio::sync::mpsc::Receiver<CommitJob>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let batch: Vec<(Lease, NewEvent)> = jobs
            .iter()
            .map(|j| (j.lease.clone(), j.event.clone()))
            .collect();
        metrics::histogram!("bootgate_lease_commit_batch").record(batch.len() as f64);
        match store.commit_leases(&batch).await {
            Ok(results) => {
                for (job, r) in jobs.drain(..).zip(results) {
                    let _ = job.done.send(r);
                }
            }
            // Keep "unreachable" recognisable: callers degrade on it.
            Err(StoreError::Unavailable { url, reason }) => {
                for job in jobs.drain(..) {
                    let _ = job.done.send(Err(StoreError::Unavailable {
                        url: url.clone(),
                        reason: reason.clone(),
                    }));
                }
            }
            Err(e) => {
                let why = e.to_string();
                for job in jobs.drain(..) {
                    let _ = job.done.send(Err(StoreError::Batch(why.clone())));
                }
            }
        }
    }
}

impl Ipam {
    /// Loads every live lease and quarantine from the store into a fresh book (a service
    /// with its own store, no sync loop).
    pub async fn load(store: Arc<dyn Store>) -> Result<Ipam, StoreError> {
        Ipam::load_with(
            store,
            IpamOptions {
                shared: false,
                sync_interval: Duration::from_secs(5),
                health: Arc::new(StoreHealth::new()),
            },
        )
        .await
    }

    async fn load_with(store: Arc<dyn Store>, options: IpamOptions) -> Result<Ipam, StoreError> {
        let mut book = Book::new();
        // A daemon that started without its store begins with an empty book (reservations
        // only); the sync loop reads the leases in once the store answers.
        if options.health.is_up() {
            book.merge(&store.list_leases(&LeaseFilter::default()).await?);
        }
        book.now = None;
        let (jobs, rx) = tokio::sync::mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(group_commit(store.clone(), rx));
        Ok(Ipam {
            book: Mutex::new(book),
            store,
            jobs,
            shared: options.shared,
            health: options.health,
            deferred: Mutex::new(Vec::new()),
            wake: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Loads the book and starts its sync loop (flushes deferred writes once the store is
    /// back; on a shared store, re-reads the other gateway's leases every `sync_interval`).
    /// The loop ends when the service is dropped.
    pub async fn start(
        store: Arc<dyn Store>,
        options: IpamOptions,
    ) -> Result<Arc<Ipam>, StoreError> {
        let interval = options.sync_interval;
        let ipam = Arc::new(Ipam::load_with(store, options).await?);
        tokio::spawn(sync_loop(Arc::downgrade(&ipam), interval));
        Ok(ipam)
    }

    pub fn health(&self) -> &Arc<StoreHealth> {
        &self.health
    }

    /// Whether the store is shared with another gateway.
    pub fn shared(&self) -> bool {
        self.shared
    }

    /// Lease writes waiting for the store.
    pub fn deferred_len(&self) -> usize {
        self.deferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Notes a store failure: `Unavailable` starts (or continues) degraded mode.
    fn observe<T>(&self, r: &Result<T, StoreError>) {
        if let Err(StoreError::Unavailable { reason, url }) = r {
            self.health.mark_down(&format!("{url}: {reason}"));
        }
    }

    /// One sync round: queued lease writes first (in order), then, on a shared store, the
    /// whole lease table into the book. Success ends degraded mode.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let r = self.sync_inner().await;
        self.observe(&r);
        if r.is_ok() {
            self.health.mark_up();
        }
        r
    }

    async fn sync_inner(&self) -> Result<(), StoreError> {
        loop {
            let batch: Vec<(Lease, NewEvent)> = {
                let mut d = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
                let n = d.len().min(MAX_BATCH);
                d.drain(..n).collect()
            };
            if batch.is_empty() {
                break;
            }
            match self.store.commit_leases(&batch).await {
                Ok(results) => {
                    let mut alerts = vec![];
                    let mut superseded = vec![];
                    {
                        let mut book = self.book();
                        book.now = None;
                        let now = Timestamp::now();
                        for ((lease, event), r) in batch.iter().zip(results) {
                            let Err(e) = r else { continue };
                            if lease.ends <= now && matches!(e, StoreError::Conflict { .. }) {
                                // A renewal that ran out before it could be written, and the
                                // address has moved on since (the other gateway handed it
                                // out after that end): no overlap, no alert. The ACK stays
                                // in the event history.
                                metrics::counter!("bootgate_deferred_superseded_total")
                                    .increment(1);
                                tracing::info!(ip = %lease.ip, mac = %lease.mac, ends = %lease.ends, "a degraded ACK's lease ended before it was written; the address has moved on");
                                superseded.push(event.clone());
                                continue;
                            }
                            // The address went to another MAC while we served degraded (a
                            // store restored from an old backup, a reservation moved):
                            // an alert, and the book learns the real holder, so the loser's
                            // next request is NAKed (its address is another's).
                            tracing::error!(error = %e, ip = %lease.ip, mac = %lease.mac, "a degraded ACK's lease was refused when written");
                            metrics::counter!("bootgate_deferred_conflicts_total").increment(1);
                            let mut alert = NewEvent::new(EventKind::LeaseConflict, "dhcp")
                                .ip(lease.ip)
                                .mac(lease.mac)
                                .detail(serde_json::json!({
                                    "reason": e.to_string(),
                                    "acked_while_degraded_until": lease.ends,
                                }));
                            if let StoreError::Conflict { holder, until, .. } = e {
                                alert.detail["holder"] = serde_json::json!(holder.to_string());
                                alert.detail["holder_until"] = serde_json::json!(until);
                                book.learn(&Lease {
                                    mac: holder,
                                    ends: until,
                                    state: LeaseState::Active,
                                    ..lease.clone()
                                });
                            }
                            if let Some(h) = &lease.host {
                                alert = alert.host(h.clone());
                            }
                            alerts.push(alert);
                        }
                    }
                    for ev in superseded {
                        if let Err(e) = self.store.append(&ev).await {
                            tracing::error!(error = %e, "a degraded ACK's event was not stored");
                        }
                    }
                    for alert in alerts {
                        if let Err(e) = self.store.append(&alert).await {
                            tracing::error!(error = %e, "the lease-conflict alert was not stored");
                        }
                    }
                    metrics::gauge!("bootgate_deferred_lease_writes")
                        .set(self.deferred_len() as f64);
                }
                Err(e) => {
                    // Nothing was written: put the batch back in front, in order.
                    let mut d = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
                    d.splice(0..0, batch);
                    return Err(e);
                }
            }
        }
        if self.shared {
            let leases = self.store.list_leases(&LeaseFilter::default()).await?;
            let mut book = self.book();
            book.now = None;
            book.merge(&leases);
        }
        Ok(())
    }

    /// On a shared store, before offering `ip` (a fresh address) to `mac`: does the store
    /// know better? Learns a live lease the client already has in `subnet` (it is offered
    /// that one instead) and another MAC's live lease on `ip`. Returns whether the
    /// decision must be taken again. Unshared stores: never.
    pub async fn check_offer(
        &self,
        subnet: &Subnet,
        ip: Ipv4Addr,
        mac: MacAddr,
    ) -> Result<bool, StoreError> {
        if !self.shared {
            return Ok(false);
        }
        let r = self.check_offer_inner(subnet, ip, mac).await;
        self.observe(&r);
        r
    }

    async fn check_offer_inner(
        &self,
        subnet: &Subnet,
        ip: Ipv4Addr,
        mac: MacAddr,
    ) -> Result<bool, StoreError> {
        let now = Timestamp::now();
        let own = self
            .store
            .list_leases(&LeaseFilter {
                mac: Some(mac),
                ..Default::default()
            })
            .await?;
        if let Some(l) = own.iter().find(|l| {
            l.ip != ip
                && l.state == LeaseState::Active
                && l.ends > now
                && subnet.cidr.contains(&l.ip)
        }) {
            let mut book = self.book();
            book.now = None;
            // Drop our hold on `ip` first: the client's lease becomes its binding.
            if book
                .claims
                .get(&ip)
                .is_some_and(|c| c.mac == mac && c.kind == ClaimKind::Offer)
            {
                book.remove(ip);
            }
            book.learn(l);
            return Ok(true);
        }
        match self.store.get_lease(ip).await? {
            Some(l) if l.mac != mac && l.state.holds_address() && l.ends > now => {
                let mut book = self.book();
                book.now = None;
                book.learn(&l);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Locks the book for one synchronous decision. Never held across an `.await`.
    pub fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `ip` for `client` for `hold` (an OFFER), and moves the subnet's cursor past
    /// it so the next client is offered another address.
    pub fn hold_offer(
        book: &mut Book,
        subnet: &Subnet,
        ip: Ipv4Addr,
        client: ClientKey,
        mac: MacAddr,
        hold: Duration,
    ) {
        let until = book.now() + hold;
        // Never shorten a lease the client already has on this address.
        if let Some(c) = book.claims.get(&ip)
            && c.client == client
            && c.kind == ClaimKind::Lease
            && book.live(c)
        {
            return;
        }
        if let Some(i) = dynamic_index(subnet, ip) {
            book.cursors
                .insert(subnet.name.clone(), (i + 1).min(u64::from(u32::MAX)) as u32);
        }
        book.put(
            ip,
            Claim {
                client,
                mac,
                kind: ClaimKind::Offer,
                until,
            },
        );
    }

    /// Marks `ip` as being committed for `client`; returns the claim it replaced so a failed
    /// commit can restore it.
    pub fn begin_commit(
        book: &mut Book,
        ip: Ipv4Addr,
        client: ClientKey,
        mac: MacAddr,
    ) -> Option<Claim> {
        let previous = book.claims.get(&ip).cloned();
        book.put(
            ip,
            Claim {
                client,
                mac,
                kind: ClaimKind::Committing,
                until: book.now(),
            },
        );
        previous
    }

    /// Writes `lease` (and its event) to the store, durably, then records it in the book.
    /// On failure the book gets `previous` back and the caller must not ACK.
    pub async fn commit(
        &self,
        lease: &Lease,
        client: ClientKey,
        previous: Option<Claim>,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        self.commit_or_defer(lease, client, previous, event, Deferral::Never)
            .await
            .map(|_| ())
    }

    /// As [`Ipam::commit`]; but when the store is unreachable and `deferral` allows it (the
    /// caller has checked that no other gateway can hand out this address: see
    /// [`Deferral`]), the write is queued in memory and the lease recorded in the book:
    /// [`Committed::Deferred`] with the end it got (a renewal capped at the end the book
    /// held), and the caller may ACK up to that end.
    ///
    /// A `Conflict` (another gateway holds the address) teaches the book the real holder,
    /// so the address is not offered again, and wakes the sync loop.
    pub async fn commit_or_defer(
        &self,
        lease: &Lease,
        client: ClientKey,
        previous: Option<Claim>,
        event: &NewEvent,
        deferral: Deferral,
    ) -> Result<Committed, StoreError> {
        let result = if self.health.is_up() {
            let r = self.write(lease, event).await;
            self.observe(&r);
            r
        } else {
            Err(StoreError::Unavailable {
                url: "store".into(),
                reason: self
                    .health
                    .degraded()
                    .map_or_else(String::new, |d| d.reason),
            })
        };
        let capped;
        let (lease, result) = match result {
            Err(e @ StoreError::Unavailable { .. }) if deferral != Deferral::Never => {
                capped = match deferral {
                    Deferral::UpTo(until) if until < lease.ends => Lease {
                        ends: until,
                        ..lease.clone()
                    },
                    _ => lease.clone(),
                };
                let mut d = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
                if d.len() < MAX_DEFERRED {
                    d.push((capped.clone(), event.clone()));
                    metrics::gauge!("bootgate_deferred_lease_writes").set(d.len() as f64);
                    (&capped, Ok(Committed::Deferred { ends: capped.ends }))
                } else {
                    metrics::counter!("bootgate_deferred_refused_total").increment(1);
                    (lease, Err(e))
                }
            }
            Ok(()) => (lease, Ok(Committed::Durable)),
            Err(e) => (lease, Err(e)),
        };
        self.settle(lease, client, previous, &result);
        result
    }

    /// Sends one lease through the group commit and waits for its answer.
    async fn write(&self, lease: &Lease, event: &NewEvent) -> Result<(), StoreError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        let job = CommitJob {
            lease: lease.clone(),
            event: event.clone(),
            done,
        };
        match self.jobs.send(job).await {
            Ok(()) => wait
                .await
                .unwrap_or_else(|_| Err(StoreError::Batch("lease writer stopped".into()))),
            Err(_) => Err(StoreError::Batch("lease writer stopped".into())),
        }
    }

    /// Records the outcome of a lease write in the book.
    fn settle(
        &self,
        lease: &Lease,
        client: ClientKey,
        previous: Option<Claim>,
        result: &Result<Committed, StoreError>,
    ) {
        let mut book = self.book();
        book.now = None;
        match result {
            Ok(_) => {
                let kind = match lease.state {
                    LeaseState::Declined => ClaimKind::Quarantine,
                    LeaseState::Active | LeaseState::Offered => ClaimKind::Lease,
                    LeaseState::Released | LeaseState::Expired => {
                        book.remove(lease.ip);
                        return;
                    }
                };
                book.put(
                    lease.ip,
                    Claim {
                        client,
                        mac: lease.mac,
                        kind,
                        until: lease.ends,
                    },
                );
            }
            Err(StoreError::Conflict { holder, until, .. }) => {
                book.remove(lease.ip);
                book.learn(&Lease {
                    mac: *holder,
                    state: LeaseState::Active,
                    ends: *until,
                    ..lease.clone()
                });
                metrics::counter!("bootgate_lease_conflicts_total").increment(1);
                self.wake.notify_one();
            }
            Err(_) => match previous {
                Some(c) => book.put(lease.ip, c),
                None => {
                    book.remove(lease.ip);
                }
            },
        }
    }

    /// Marks expired leases in the store (with events) and drops them from the book.
    pub async fn reclaim(&self) -> Result<usize, StoreError> {
        let r = self.store.expire_leases(Timestamp::now()).await;
        self.observe(&r);
        let expired = r?;
        let mut book = self.book();
        for l in &expired {
            if book
                .claims
                .get(&l.ip)
                .is_some_and(|c| c.kind == ClaimKind::Lease && c.mac == l.mac)
            {
                book.remove(l.ip);
            }
        }
        // Expired offers and quarantines simply stop being live; drop them to bound memory.
        let now = book.now();
        book.claims
            .retain(|_, c| c.kind == ClaimKind::Committing || c.until > now);
        let Book {
            claims, by_client, ..
        } = &mut *book;
        by_client.retain(|_, ip| claims.contains_key(ip));
        Ok(expired.len())
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

/// Runs [`Ipam::sync`] every `interval` (every second while the store is down, at once
/// when woken by a conflict) until the service is dropped.
async fn sync_loop(ipam: Weak<Ipam>, interval: Duration) {
    loop {
        let Some(this) = ipam.upgrade() else { return };
        let pause = if this.health.is_up() {
            interval
        } else {
            RETRY_DOWN
        };
        let idle = this.health.is_up() && !this.shared && this.deferred_len() == 0;
        // Hold no strong reference while sleeping, so a dropped service ends the loop.
        let wake = this.wake.clone();
        drop(this);
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(pause) => {}
        }
        if idle {
            continue;
        }
        let Some(this) = ipam.upgrade() else { return };
        match this.sync().await {
            Ok(()) => {}
            Err(StoreError::Unavailable { .. }) => {
                tracing::debug!("store still unreachable; retrying")
            }
            Err(e) => tracing::warn!(error = %e, "address book sync failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{IpRange, Purpose, Served};
    use proptest::prelude::*;

    pub(crate) fn subnet(ranges: &[(&str, &str)]) -> Subnet {
        Subnet {
            name: "prov".into(),
            cidr: "10.250.0.0/24".parse().unwrap(),
            purpose: Purpose::Provisioning,
            gateway: None,
            dns: vec![],
            domain: None,
            lease_time: Duration::from_secs(3600),
            dynamic_ranges: ranges
                .iter()
                .map(|(a, b)| IpRange {
                    start: a.parse().unwrap(),
                    end: b.parse().unwrap(),
                })
                .collect(),
            known_hosts_only: false,
            proxy_dhcp: false,
            served: Served::Interface("gw0".into()),
            mtu: None,
            trust_option82: false,
        }
    }

    fn mac(n: u32) -> MacAddr {
        let b = n.to_be_bytes();
        MacAddr([2, 0, b[0], b[1], b[2], b[3]])
    }

    #[test]
    fn offers_rotate_and_respect_claims() {
        let s = subnet(&[("10.250.0.100", "10.250.0.102")]);
        let mut book = Book::new();
        let a = ClientKey::Mac(mac(1));
        let b = ClientKey::Mac(mac(2));
        let ip = book.next_free(&s, &a, Lane::ALL).unwrap();
        assert_eq!(ip, "10.250.0.100".parse::<Ipv4Addr>().unwrap());
        Ipam::hold_offer(
            &mut book,
            &s,
            ip,
            a.clone(),
            mac(1),
            Duration::from_secs(30),
        );
        assert_eq!(book.binding_of(&s, &a).unwrap().ip, ip);
        assert!(book.holder(ip, &b).is_some());
        assert!(book.holder(ip, &a).is_none());
        assert_eq!(
            book.next_free(&s, &b, Lane::ALL).unwrap(),
            "10.250.0.101".parse::<Ipv4Addr>().unwrap()
        );
        book.withdraw(&a);
        assert!(book.holder(ip, &b).is_none());
    }

    #[test]
    fn expired_offers_free_their_address() {
        let s = subnet(&[("10.250.0.100", "10.250.0.100")]);
        let mut book = Book::new();
        let t0 = Timestamp::now();
        book.set_now(t0);
        let a = ClientKey::Mac(mac(1));
        let b = ClientKey::Mac(mac(2));
        Ipam::hold_offer(
            &mut book,
            &s,
            "10.250.0.100".parse().unwrap(),
            a,
            mac(1),
            Duration::from_secs(30),
        );
        assert_eq!(book.next_free(&s, &b, Lane::ALL), None);
        book.set_now(t0 + Duration::from_secs(31));
        assert!(book.next_free(&s, &b, Lane::ALL).is_some());
    }

    proptest! {
        /// The allocator never hands one address to two clients, always stays inside the
        /// pool, and skips quarantined addresses.
        #[test]
        fn allocator_never_double_allocates(
            ops in proptest::collection::vec((0u32..40, 0u8..4), 1..300),
        ) {
            let s = subnet(&[("10.250.0.100", "10.250.0.119"), ("10.250.0.200", "10.250.0.209")]);
            let mut book = Book::new();
            book.set_now(Timestamp::now());
            for (c, op) in ops {
                let client = ClientKey::Mac(mac(c));
                match op {
                    0 | 1 => {
                        if let Some(ip) = book.next_free(&s, &client, Lane::ALL) {
                            prop_assert!(s.in_dynamic_range(ip));
                            prop_assert!(book.holder(ip, &client).is_none());
                            if op == 0 {
                                Ipam::hold_offer(&mut book, &s, ip, client, mac(c), Duration::from_secs(30));
                            } else {
                                Ipam::begin_commit(&mut book, ip, client.clone(), mac(c));
                                book.put(ip, Claim { client, mac: mac(c), kind: ClaimKind::Lease, until: book.now() + Duration::from_secs(60) });
                            }
                        }
                    }
                    2 => {
                        if let Some(b) = book.binding_of(&s, &client) {
                            book.put(b.ip, Claim { client, mac: mac(c), kind: ClaimKind::Quarantine, until: book.now() + Duration::from_secs(60) });
                        }
                    }
                    _ => book.withdraw(&client),
                }
                // Invariant: no two clients are bound to one address, and no binding is
                // a quarantined address.
                let mut seen: HashMap<Ipv4Addr, u32> = HashMap::new();
                for other in 0u32..40 {
                    if let Some(b) = book.binding_of(&s, &ClientKey::Mac(mac(other))) {
                        prop_assert!(s.in_dynamic_range(b.ip));
                        let prev = seen.insert(b.ip, other);
                        prop_assert!(prev.is_none(), "{} bound to {:?} and {}", b.ip, prev, other);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod reclaim_tests {
    use super::*;
    use crate::store::{EventKind, EventQuery, RelayInfo};

    #[tokio::test]
    async fn expired_leases_are_reclaimed_into_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            crate::store::sqlite::SqliteStore::open(&dir.path().join("s.db"))
                .await
                .unwrap(),
        );
        let ipam = Ipam::load(store.clone()).await.unwrap();
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let ip: Ipv4Addr = "10.250.0.100".parse().unwrap();
        let now = Timestamp::now();
        let lease = Lease {
            ip,
            mac,
            client_id: None,
            state: LeaseState::Active,
            starts: now,
            ends: now + Duration::from_millis(300),
            host: None,
            subnet: "prov".into(),
            relay: RelayInfo::default(),
        };
        let client = ClientKey::Mac(mac);
        let prev = Ipam::begin_commit(&mut ipam.book(), ip, client.clone(), mac);
        ipam.commit(
            &lease,
            client.clone(),
            prev,
            &NewEvent::new(EventKind::LeaseCommitted, "test").ip(ip),
        )
        .await
        .unwrap();
        assert!(ipam.book().claim(ip).is_some());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(ipam.reclaim().await.unwrap(), 1);
        assert!(ipam.book().claim(ip).is_none());
        let stored = store.get_lease(ip).await.unwrap().unwrap();
        assert_eq!(stored.state, LeaseState::Expired);
        let evs = store
            .query(&EventQuery {
                kind: Some(EventKind::LeaseExpired),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(evs.len(), 1);
        // A reload of the book from the store no longer sees it.
        let again = Ipam::load(store).await.unwrap();
        assert!(again.book().claim(ip).is_none());
    }
}

#[cfg(test)]
mod ha_tests {
    use super::*;
    use crate::store::{EventKind, RelayInfo};

    fn lease(ip: &str, mac: u8, state: LeaseState, ends: Timestamp) -> Lease {
        Lease {
            ip: ip.parse().unwrap(),
            mac: MacAddr([2, 0, 0, 0, 0, mac]),
            client_id: None,
            state,
            starts: Timestamp::now(),
            ends,
            host: None,
            subnet: "prov".into(),
            relay: RelayInfo::default(),
        }
    }

    #[test]
    fn merge_learns_the_other_gateways_leases_and_forgets_released_ones() {
        let later = Timestamp::now() + Duration::from_secs(600);
        let mut book = Book::new();
        let mine = ClientKey::Mac(MacAddr([2, 0, 0, 0, 0, 9]));
        // Our offer on .100 loses to the other gateway's lease there.
        book.put(
            "10.250.0.100".parse().unwrap(),
            Claim {
                client: mine.clone(),
                mac: MacAddr([2, 0, 0, 0, 0, 9]),
                kind: ClaimKind::Offer,
                until: later,
            },
        );
        book.merge(&[
            lease("10.250.0.100", 1, LeaseState::Active, later),
            lease("10.250.0.101", 2, LeaseState::Active, later),
        ]);
        let ip100 = "10.250.0.100".parse().unwrap();
        assert_eq!(
            book.holder(ip100, &mine),
            Some(Holder::Client {
                mac: MacAddr([2, 0, 0, 0, 0, 1])
            })
        );
        assert!(book.claim("10.250.0.101".parse().unwrap()).is_some());
        // Released by the other gateway: the address is free again.
        book.merge(&[lease(
            "10.250.0.101",
            2,
            LeaseState::Released,
            Timestamp::now(),
        )]);
        assert!(book.claim("10.250.0.101".parse().unwrap()).is_none());
    }

    #[tokio::test]
    async fn degraded_commits_defer_only_what_may_wait_and_flush_on_return() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            crate::store::sqlite::SqliteStore::open(&dir.path().join("s.db"))
                .await
                .unwrap(),
        );
        let ipam = Ipam::load(store.clone()).await.unwrap();
        ipam.health().mark_down("test: server gone");
        let later = Timestamp::now() + Duration::from_secs(600);
        let l = lease("10.250.0.10", 1, LeaseState::Active, later);
        let client = client_of(&l);
        let ev = NewEvent::new(EventKind::LeaseCommitted, "dhcp").ip(l.ip);
        // A fresh dynamic lease must not be ACKed on a promise.
        let prev = Ipam::begin_commit(&mut ipam.book(), l.ip, client.clone(), l.mac);
        let r = ipam
            .commit_or_defer(&l, client.clone(), prev, &ev, Deferral::Never)
            .await;
        assert!(matches!(r, Err(StoreError::Unavailable { .. })), "{r:?}");
        assert!(ipam.book().claim(l.ip).is_none());
        // A reservation may: queued, and in the book.
        let prev = Ipam::begin_commit(&mut ipam.book(), l.ip, client.clone(), l.mac);
        let r = ipam
            .commit_or_defer(&l, client, prev, &ev, Deferral::AsIs)
            .await;
        assert_eq!(r.unwrap(), Committed::Deferred { ends: l.ends });
        assert_eq!(ipam.book().claim(l.ip).unwrap().kind, ClaimKind::Lease);
        assert_eq!(ipam.deferred_len(), 1);
        assert!(store.get_lease(l.ip).await.unwrap().is_none());
        // The store is back: the sync writes the queue and ends degraded mode.
        ipam.sync().await.unwrap();
        assert!(ipam.health().is_up());
        assert_eq!(ipam.deferred_len(), 0);
        assert_eq!(store.get_lease(l.ip).await.unwrap().unwrap().mac, l.mac);
    }
}
