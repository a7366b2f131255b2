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
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;

use crate::dhcp::policy::{AddressBook, Binding, ClientKey, Holder};
use crate::inventory::Subnet;
use crate::store::{Lease, LeaseFilter, LeaseState, NewEvent, Store, StoreError};
use crate::types::MacAddr;

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

    fn next_free(&self, subnet: &Subnet, client: &ClientKey) -> Option<Ipv4Addr> {
        let total: u64 = subnet.dynamic_ranges.iter().map(|r| r.len()).sum();
        if total == 0 {
            return None;
        }
        let start = u64::from(self.cursors.get(&subnet.name).copied().unwrap_or(0)) % total;
        (0..total)
            .map(|i| nth_dynamic(subnet, (start + i) % total))
            .find(|ip| self.holder(*ip, client).is_none())
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

/// Applies DHCP decisions: offers in memory, leases in the store first.
pub struct Ipam {
    book: Mutex<Book>,
    store: Arc<dyn Store>,
    /// Group commit: every lease write goes through one writer task that commits whatever
    /// has queued up in one transaction (one fsync), so durability costs one sync per batch
    /// rather than per ACK. Under light load a batch is one lease and nothing waits.
    jobs: tokio::sync::mpsc::Sender<CommitJob>,
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
    /// Loads every live lease and quarantine from the store into a fresh book.
    pub async fn load(store: Arc<dyn Store>) -> Result<Ipam, StoreError> {
        let mut book = Book::new();
        let now = Timestamp::now();
        for l in store.list_leases(&LeaseFilter::default()).await? {
            let kind = match l.state {
                LeaseState::Active => ClaimKind::Lease,
                LeaseState::Declined => ClaimKind::Quarantine,
                // Offers are not persisted as claims; released/expired hold nothing.
                _ => continue,
            };
            if l.ends > now {
                book.put(
                    l.ip,
                    Claim {
                        client: client_of(&l),
                        mac: l.mac,
                        kind,
                        until: l.ends,
                    },
                );
            }
        }
        let (jobs, rx) = tokio::sync::mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(group_commit(store.clone(), rx));
        Ok(Ipam {
            book: Mutex::new(book),
            store,
            jobs,
        })
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
        let (done, wait) = tokio::sync::oneshot::channel();
        let job = CommitJob {
            lease: lease.clone(),
            event: event.clone(),
            done,
        };
        let result = match self.jobs.send(job).await {
            Ok(()) => wait
                .await
                .unwrap_or_else(|_| Err(StoreError::Batch("lease writer stopped".into()))),
            Err(_) => Err(StoreError::Batch("lease writer stopped".into())),
        };
        let mut book = self.book();
        match &result {
            Ok(()) => {
                let kind = match lease.state {
                    LeaseState::Declined => ClaimKind::Quarantine,
                    LeaseState::Active | LeaseState::Offered => ClaimKind::Lease,
                    LeaseState::Released | LeaseState::Expired => {
                        book.remove(lease.ip);
                        return result;
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
            Err(_) => match previous {
                Some(c) => book.put(lease.ip, c),
                None => {
                    book.remove(lease.ip);
                }
            },
        }
        result
    }

    /// Marks expired leases in the store (with events) and drops them from the book.
    pub async fn reclaim(&self) -> Result<usize, StoreError> {
        let expired = self.store.expire_leases(Timestamp::now()).await?;
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
        let ip = book.next_free(&s, &a).unwrap();
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
            book.next_free(&s, &b).unwrap(),
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
        assert_eq!(book.next_free(&s, &b), None);
        book.set_now(t0 + Duration::from_secs(31));
        assert!(book.next_free(&s, &b).is_some());
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
                        if let Some(ip) = book.next_free(&s, &client) {
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
