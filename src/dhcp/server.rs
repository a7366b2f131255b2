//! The DHCP edge: one UDP socket per configured interface (SO_BINDTODEVICE, so we never
//! answer on an interface we were not told to serve), a bounded number of requests in
//! flight, and for each datagram: decode → decide (under the address book's lock, with
//! its tentative claim) → durable commit → reply → event.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::balance::ShareSource;
use super::policy::{self, AddressBook, ClientKey, Decision, View};
use super::reply::{self, BootInfo, Destination, ReplyParams};
use super::tracker::{ClientTracker, LogLimiter, UnofferedBudget};
use super::{Arrival, Request};
use super::{DhcpSettings, Interface};
use super::{arp, probe, request};
use crate::discovery::{DiscoverySink, Sighting};
use crate::events::EventSink;
use crate::inventory::{Host, Inventory, Purpose, Served, Subnet};
use crate::ipam::{Claim, ClaimKind, Committed, Deferral, Ipam};
use crate::model::{EventKind, Lease, LeaseState, NewEvent, RelayInfo, StoreError};
use crate::pxe::{self, BootSettings};
use crate::snapshot::Snapshot;
use crate::types::MacAddr;

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// Largest datagram we read; DHCP messages are at most 576 bytes unless option 57 says more.
const MAX_DATAGRAM: usize = 4096;
/// How often expired leases are reclaimed.
const RECLAIM_EVERY: Duration = Duration::from_secs(30);
/// A discovered MAC's record is refreshed at most this often.
const DISCOVERY_REFRESH: Duration = Duration::from_secs(60);
/// A sender that can make us log at will (a forged relay) gets one line per this.
const DISTRUST_LOG_EVERY: Duration = Duration::from_secs(10);
/// Addresses probed per DISCOVER before giving up (a subnet full of squatters).
const MAX_PROBES: u32 = 3;
/// Store look-ups per DISCOVER on a shared store (each may show the other gateway's lease
/// on the candidate); past this the offer goes out and a conflict at commit NAKs.
const MAX_STORE_CHECKS: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("cannot open DHCP socket on interface {iface} port {port}: {source}")]
    Bind {
        iface: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// What the DHCP server uses of the daemon (built by `app.rs`): its settings, the inventory
/// in force, the lease seam (IPAM), and sinks for events and unknown MACs. It never holds
/// the store itself.
pub struct DhcpContext {
    pub interfaces: Vec<Interface>,
    pub settings: DhcpSettings,
    /// The PXE boot files and the HTTP base iPXE chains to.
    pub boot: BootSettings,
    pub inventory: Snapshot,
    pub ipam: Arc<Ipam>,
    pub events: EventSink,
    pub discovery: DiscoverySink,
    /// Our RFC 3074 share of the clients while a peer gateway is alive.
    pub share: Arc<dyn ShareSource>,
}

/// One served interface.
struct Link {
    iface: Interface,
    /// 67, or 4011 (PXE boot-server requests for proxyDHCP).
    port: u16,
    socket: UdpSocket,
}

/// Opens the server socket on every configured interface.
fn bind(iface: &Interface, port: u16) -> Result<UdpSocket, DhcpError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| DhcpError::Bind {
        iface: iface.name.clone(),
        port,
        source,
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_broadcast(true).map_err(err)?;
    s.bind_device(Some(iface.name.as_bytes())).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())
        .map_err(err)?;
    UdpSocket::from_std(s.into()).map_err(err)
}

/// The DHCP service: shared by every interface's receive loop.
pub struct DhcpServer {
    ctx: DhcpContext,
    prober: probe::Prober,
    in_flight: Arc<Semaphore>,
    /// Per-MAC request counts in the current second (rate limit) and last discovery
    /// write, bounded by `[dhcp] max_tracked_clients`.
    clients: Mutex<ClientTracker>,
    /// Per subnet: ACKs this minute of addresses the client was never offered.
    unoffered: Mutex<UnofferedBudget>,
    /// Requests dropped for an unlisted relay are logged at most once per 10 s.
    distrust_log: Mutex<LogLimiter>,
}

/// One request's facts, as every step of [`DhcpServer::serve`] needs them.
struct Exchange<'a> {
    req: &'a Request,
    subnet: Option<&'a Subnet>,
    host: Option<&'a Host>,
    /// The host's reserved address on `subnet`.
    reservation: Option<Ipv4Addr>,
    client: ClientKey,
    now: Timestamp,
}

/// What deciding under the book's lock produced: the decision and, for a committing one,
/// the claim it replaced (to roll back to if the commit fails).
type Claimed = (Decision, Option<Option<Claim>>);

impl DhcpServer {
    pub fn new(ctx: DhcpContext) -> Arc<DhcpServer> {
        let permits = ctx.settings.max_in_flight;
        let prober = probe::Prober::new(ctx.settings.conflict_probe, ctx.settings.probe_timeout);
        Arc::new(DhcpServer {
            prober,
            in_flight: Arc::new(Semaphore::new(permits)),
            clients: Mutex::new(ClientTracker::new(ctx.settings.max_tracked_clients)),
            unoffered: Mutex::new(UnofferedBudget::new(ctx.settings.unoffered_acks_per_minute)),
            distrust_log: Mutex::new(LogLimiter::new(DISTRUST_LOG_EVERY)),
            ctx,
        })
    }

    /// Binds every interface (failing the start when one can't be bound) and returns the
    /// receive loops to spawn.
    pub fn start(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Result<(), DhcpError> {
        let mut links = Vec::new();
        for iface in &self.ctx.interfaces {
            for port in [SERVER_PORT, policy::PXE_PORT] {
                links.push(Arc::new(Link {
                    iface: iface.clone(),
                    port,
                    socket: bind(iface, port)?,
                }));
            }
        }
        for link in links {
            let this = self.clone();
            let cancel = cancel.clone();
            let tracker2 = tracker.clone();
            tracker.spawn(async move { this.receive(link, cancel, tracker2).await });
        }
        let this = self.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(RECLAIM_EVERY) => {}
                }
                // Forget rate-limit and discovery bookkeeping of MACs gone quiet.
                this.clients
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .forget_idle(Instant::now(), 2 * DISCOVERY_REFRESH);
                match this.ctx.ipam.reclaim().await {
                    Ok(n) if n > 0 => tracing::info!(expired = n, "reclaimed expired leases"),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "lease reclaim failed"),
                }
            }
        });
        Ok(())
    }

    async fn receive(
        self: Arc<Self>,
        link: Arc<Link>,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, peer) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = link.socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(iface = %link.iface.name, error = %e, "DHCP receive failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let SocketAddr::V4(peer) = peer else { continue };
            let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                metrics::counter!("bootgate_dhcp_dropped_total", "reason" => "overload")
                    .increment(1);
                continue;
            };
            let data = buf[..n].to_vec();
            let this = self.clone();
            let link = link.clone();
            tracker.spawn(async move {
                this.handle(&link, data, peer).await;
                drop(permit);
            });
        }
    }

    /// Whether `mac` is over its rate limit this second.
    fn rate_limited(&self, mac: MacAddr) -> bool {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rate_limited(mac, Instant::now())
    }

    async fn handle(&self, link: &Link, data: Vec<u8>, peer: SocketAddrV4) {
        let arrival = Arrival {
            iface: link.iface.name.clone(),
            local_ip: link.iface.address.addr(),
            local_port: link.port,
            peer,
        };
        let req = match request::decode(&data, arrival) {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!("bootgate_dhcp_dropped_total", "reason" => e.label())
                    .increment(1);
                tracing::debug!(iface = %link.iface.name, %peer, error = %e, "dropped undecodable datagram");
                return;
            }
        };
        let span = tracing::info_span!(
            "dhcp",
            mac = %req.mac,
            xid = format_args!("{:#010x}", req.xid),
            iface = %link.iface.name,
            msg_type = req.kind.as_str()
        );
        async {
            metrics::counter!("bootgate_dhcp_received_total", "type" => req.kind.as_str())
                .increment(1);
            if self.rate_limited(req.mac) {
                metrics::counter!("bootgate_dhcp_dropped_total", "reason" => "rate-limit")
                    .increment(1);
                return;
            }
            self.serve(link, req).await;
        }
        .instrument(span)
        .await
    }

    async fn serve(&self, link: &Link, mut req: Request) {
        let loaded = self.ctx.inventory.load();
        let inv = &loaded.inventory;
        if !self.vetted(inv, &mut req) {
            return;
        }
        let subnet = select_subnet(inv, &req);
        let found = subnet.and_then(|s| inv.reservation(&loaded.macs, req.mac, s));
        let x = Exchange {
            req: &req,
            subnet,
            host: found.map(|(h, _)| h),
            reservation: found.and_then(|(_, ip)| ip),
            client: policy::client_key(&req),
            now: Timestamp::now(),
        };
        // Before deciding: a stranger is recorded even when it gets no answer (degraded, or
        // its RFC 3074 bucket is the peer's); the writer queues sightings while degraded.
        if x.host.is_none() && subnet.is_some() {
            self.discovered(&req, inv);
        }
        let Some((decision, previous)) = self.decide_and_claim(&x).await else {
            return;
        };
        // Effects: leases are committed durably before the ACK is sent.
        let Some(decision) = self.commit(&x, inv, decision, previous).await else {
            return;
        };
        self.answer(link, &x, inv, decision).await;
    }

    /// Applies the relay trust rules ([`vet_relay`]) to `req`, counting and logging what
    /// they refuse. False: drop the request.
    fn vetted(&self, inv: &Inventory, req: &mut Request) -> bool {
        match vet_relay(inv, req) {
            Vetting::Believed => true,
            Vetting::Stripped(what) => {
                metrics::counter!("bootgate_dhcp_relay_info_ignored_total", "what" => what.as_str())
                    .increment(1);
                tracing::debug!(
                    what = what.as_str(),
                    "relay information from an untrusted sender ignored"
                );
                true
            }
            Vetting::Untrusted => {
                metrics::counter!("bootgate_dhcp_dropped_total", "reason" => "untrusted-relay")
                    .increment(1);
                let log = self
                    .distrust_log
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .allow(Instant::now());
                if let Some(suppressed) = log {
                    tracing::warn!(
                        giaddr = %req.giaddr,
                        peer = %req.arrival.peer,
                        suppressed,
                        "dropped a relayed request: giaddr is no subnet's relay_addresses"
                    );
                }
                false
            }
        }
    }

    /// Decides and claims under one lock: no other request can slip in between. A dynamic
    /// address offered for the first time is probed first (RFC 2131 §4.4.1: "the server
    /// SHOULD probe the reused address before allocating the address"); one that answers
    /// is quarantined and the decision is taken again. `None`: no answer at all.
    async fn decide_and_claim(&self, x: &Exchange<'_>) -> Option<Claimed> {
        let mut probes = 0;
        let mut store_checks = 0;
        loop {
            let (decision, previous, probe) = self.claim_once(x)?;
            // A shared store may know better than our book (the other gateway's leases):
            // ask it before offering a fresh address, and decide again if it does.
            if let (Some(ip), Some(s)) = (probe, x.subnet)
                && store_checks < MAX_STORE_CHECKS
            {
                store_checks += 1;
                match self.ctx.ipam.check_offer(s, ip, x.req.mac).await {
                    Ok(false) => {}
                    Ok(true) => continue,
                    Err(e) => {
                        self.ctx.ipam.book().withdraw(&x.client);
                        metrics::counter!("bootgate_dhcp_dropped_total", "reason" => "store-unavailable")
                            .increment(1);
                        tracing::warn!(error = %e, %ip, "cannot check the store before offering; no offer");
                        return None;
                    }
                }
            }
            let Some(ip) = probe.filter(|_| probes < MAX_PROBES) else {
                return Some((decision, previous));
            };
            probes += 1;
            match self.prober.in_use(&x.req.arrival.iface, ip).await {
                Ok(false) => return Some((decision, previous)),
                Ok(true) => self.conflict(ip, &x.client, x.req.mac, x.now).await,
                Err(e) => {
                    tracing::debug!(error = %e, %ip, "conflict probe failed; offering anyway");
                    return Some((decision, previous));
                }
            }
        }
    }

    /// One `decide` under the book's lock, with the claim it implies: an offer hold, the
    /// start of a commit, or a withdrawal. Returns the address to probe for a fresh offer;
    /// `None` when a degraded gateway must not offer.
    fn claim_once(
        &self,
        x: &Exchange<'_>,
    ) -> Option<(Decision, Option<Option<Claim>>, Option<Ipv4Addr>)> {
        // Degraded (the store is unreachable): known hosts and leases already in the book
        // are served; a fresh dynamic address is not offered (the other gateway could hand
        // it out too, and no store can tell us).
        let degraded = !self.ctx.ipam.health().is_up();
        let mut book = self.ctx.ipam.book();
        book.set_now(x.now);
        // The budget is read and spent under the book's lock, like the claim itself.
        let mut budget = self.unoffered.lock().unwrap_or_else(|p| p.into_inner());
        let instant = Instant::now();
        let view = View {
            now: x.now,
            server_id: x.req.arrival.local_ip,
            subnet: x.subnet,
            host: x.host.map(|h| h.name.as_str()),
            reservation: x.reservation,
            book: &*book,
            share: self.ctx.share.share(),
            unoffered_left: x.subnet.map_or(0, |s| budget.left(&s.name, instant)),
        };
        let decision = policy::decide(x.req, &view);
        if let (Decision::Ack { ip, .. }, Some(s)) = (&decision, x.subnet)
            && policy::unoffered(&view, s, &x.client, *ip)
        {
            budget.spend(&s.name, instant);
        }
        drop(budget);
        let mut previous: Option<Option<Claim>> = None;
        let mut probe = None;
        match (&decision, x.subnet) {
            (Decision::Offer { ip, .. }, Some(s)) => {
                let binding = book.binding_of(s, &x.client).filter(|b| b.ip == *ip);
                let known = x.reservation == Some(*ip) || binding.is_some();
                if degraded && x.reservation != Some(*ip) && binding.is_none_or(|b| b.offered) {
                    drop(book);
                    metrics::counter!("bootgate_dhcp_dropped_total", "reason" => "store-unavailable")
                        .increment(1);
                    tracing::debug!(%ip, "degraded: dynamic allocation paused");
                    return None;
                }
                if !known {
                    probe = Some(*ip);
                }
                let hold = self.ctx.settings.offer_hold;
                Ipam::hold_offer(&mut book, s, *ip, x.client.clone(), x.req.mac, hold)
            }
            (Decision::Ack { ip, .. } | Decision::Release { ip } | Decision::Decline { ip }, _) => {
                previous = Some(Ipam::begin_commit(
                    &mut book,
                    *ip,
                    x.client.clone(),
                    x.req.mac,
                ))
            }
            (Decision::Withdraw, _) => book.withdraw(&x.client),
            _ => {}
        }
        Some((decision, previous, probe))
    }

    /// Commits the lease a decision writes (durably, or queued where degraded mode allows)
    /// before anything is sent. Returns the decision to answer with (an ACK whose address
    /// was taken meanwhile becomes a NAK); `None`: no answer.
    async fn commit(
        &self,
        x: &Exchange<'_>,
        inv: &Inventory,
        decision: Decision,
        previous: Option<Option<Claim>>,
    ) -> Option<Decision> {
        let (Some(previous), Some(s)) = (previous, x.subnet) else {
            return Some(decision);
        };
        let host = x.host.map(|h| h.name.clone());
        let Some(lease) = lease_for(x.req, &decision, s, host, x.now, &self.ctx.settings) else {
            return Some(decision);
        };
        let event = located(lease_event(x.req, &decision, &lease), &lease, inv);
        // Without the store, only what no other gateway can hand out may be ACKed on a
        // promise to write it later: the host's reservation, giving an address back, and a
        // renewal of a lease the book already holds for this client, up to the end it holds
        // (never extended: the other gateway may still reach the store and hand the address
        // out once that end passes).
        let renewal = previous
            .as_ref()
            .filter(|c| c.client == x.client && c.kind == ClaimKind::Lease && c.until > x.now);
        let deferral = if x.reservation == Some(lease.ip)
            || matches!(
                decision,
                Decision::Release { .. } | Decision::Decline { .. }
            ) {
            Deferral::AsIs
        } else if let Some(c) = renewal {
            Deferral::UpTo(c.until)
        } else {
            Deferral::Never
        };
        let committed = self
            .ctx
            .ipam
            .commit_or_defer(&lease, x.client.clone(), previous, &event, deferral)
            .await;
        match committed {
            Ok(Committed::Durable) => Some(decision),
            Ok(Committed::Deferred { ends }) => {
                metrics::counter!("bootgate_dhcp_deferred_total").increment(1);
                tracing::info!(ip = %lease.ip, %ends, "degraded: ACK with the lease write queued");
                match decision {
                    Decision::Ack { ip, state, .. } if ends < lease.ends => {
                        // The renewal's remaining time, in whole seconds (option 51).
                        let left = ends.duration_since(x.now).as_secs();
                        (left > 0).then(|| Decision::Ack {
                            ip,
                            lease_time: std::time::Duration::from_secs(left as u64),
                            state,
                        })
                    }
                    other => Some(other),
                }
            }
            Err(StoreError::Conflict { holder, .. }) => {
                tracing::warn!(ip = %lease.ip, %holder, "address taken meanwhile; NAK");
                matches!(decision, Decision::Ack { .. }).then_some(Decision::Nak {
                    reason: policy::NakReason::Taken,
                })
            }
            Err(e @ StoreError::Unavailable { .. }) => {
                // Degraded and nothing that may wait: no ACK, the client retries.
                tracing::warn!(error = %e, ip = %lease.ip, "store unreachable; not answering");
                metrics::counter!("bootgate_dhcp_dropped_total", "reason" => "store-unavailable")
                    .increment(1);
                None
            }
            Err(e) => {
                // Not durable, so no ACK: the client retries.
                tracing::error!(error = %e, ip = %lease.ip, "lease commit failed; not answering");
                metrics::counter!("bootgate_dhcp_dropped_total", "reason" => "store-error")
                    .increment(1);
                None
            }
        }
    }

    /// Counts and records what the decision says, builds the reply and sends it.
    async fn answer(&self, link: &Link, x: &Exchange<'_>, inv: &Inventory, decision: Decision) {
        match &decision {
            Decision::Ignore(why) => {
                metrics::counter!("bootgate_dhcp_dropped_total", "reason" => why.as_str())
                    .increment(1);
                tracing::debug!(reason = why.as_str(), "no answer");
                return;
            }
            Decision::Nak { reason } => self.record_nak(x, *reason).await,
            _ => {}
        }
        let boot = x
            .subnet
            .and_then(|_| self.boot_info(x.req, x.host.and_then(|h| inv.boot_file(h))));
        let params = ReplyParams {
            server_id: x.req.arrival.local_ip,
            subnet: x.subnet,
            boot: boot.as_ref(),
        };
        let Some(msg) = reply::build(x.req, &decision, &params) else {
            return;
        };
        let bytes = match reply::encode(&msg) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode reply");
                return;
            }
        };
        let dest = reply_address(link, reply::destination(x.req, &msg));
        match link.socket.send_to(&bytes, dest).await {
            Ok(_) => {
                let kind = reply_kind(&decision);
                metrics::counter!("bootgate_dhcp_sent_total", "type" => kind).increment(1);
                tracing::debug!(%dest, kind, "reply sent");
            }
            Err(e) => tracing::warn!(%dest, error = %e, "sending reply failed"),
        }
    }

    async fn record_nak(&self, x: &Exchange<'_>, reason: policy::NakReason) {
        let req = x.req;
        metrics::counter!("bootgate_dhcp_naks_total", "reason" => reason.as_str()).increment(1);
        tracing::info!(reason = reason.as_str(), requested = ?req.requested_ip.or(Some(req.ciaddr)), "DHCPNAK");
        let mut ev = NewEvent::new(EventKind::DhcpNak, "dhcp")
            .mac(req.mac)
            .detail(serde_json::json!({"reason": reason.as_str(), "iface": req.arrival.iface}));
        if let Some(ip) = req
            .requested_ip
            .or((!req.ciaddr.is_unspecified()).then_some(req.ciaddr))
        {
            ev = ev.ip(ip);
        }
        if let Some(h) = x.host {
            ev = ev.host(h.name.clone());
        }
        self.ctx.events.record(ev).await;
    }

    /// Someone answers on `ip` although nobody holds it: keep it out of the pool for the
    /// quarantine time and say so.
    async fn conflict(&self, ip: Ipv4Addr, client: &ClientKey, mac: MacAddr, now: Timestamp) {
        let quarantine = self.ctx.settings.decline_quarantine;
        self.ctx.ipam.book().put(
            ip,
            Claim {
                client: client.clone(),
                mac,
                kind: ClaimKind::Quarantine,
                until: now + quarantine,
            },
        );
        metrics::counter!("bootgate_dhcp_conflicts_total").increment(1);
        tracing::warn!(%ip, "address answers a ping but nobody holds it: quarantined");
        let ev = NewEvent::new(EventKind::AddressConflict, "dhcp")
            .ip(ip)
            .detail(serde_json::json!({
                "probe": "icmp",
                "quarantined_for_s": quarantine.as_secs(),
                "while_offering_to": mac,
            }));
        self.ctx.events.record(ev).await;
    }

    /// PXE boot information for a network-boot client.
    fn boot_info(&self, req: &Request, override_file: Option<&str>) -> Option<BootInfo> {
        let boot = &self.ctx.boot;
        let ctx = pxe::BootContext {
            server: req.arrival.local_ip,
            http_base: &boot.http_base,
            files: &boot.files,
            override_file,
        };
        let t = pxe::boot_target(&req.pxe, req.mac, &ctx)?;
        Some(BootInfo {
            next_server: t.next_server,
            filename: t.filename,
            vendor_class: t.vendor_class,
            pxe_discovery_control: t.pxe_discovery_control,
            tftp_server_name: t.tftp_server_name,
        })
    }

    /// Notes an unknown MAC for the discovery writer (at most once a minute per MAC). Never
    /// waits: the DHCP path must not pay for the store write (see `crate::discovery`).
    fn discovered(&self, req: &Request, inv: &Inventory) {
        let due = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .discovery_due(req.mac, Instant::now(), DISCOVERY_REFRESH);
        if !due {
            return;
        }
        let now = Timestamp::now();
        let relay = req.relay.clone().unwrap_or_default();
        let circuit = relay.circuit_id.as_deref().map(super::printable);
        let remote = relay.remote_id.as_deref().map(super::printable);
        let place = circuit
            .as_deref()
            .and_then(|c| inv.locate(c, remote.as_deref()));
        let sighting = Sighting {
            mac: req.mac,
            rack: place.map(|(r, _)| r.name.clone()),
            spec: serde_json::json!({
                "arch": req.pxe.arch,
                "vendor_class": req.vendor_class,
                "uuid": req.pxe.uuid,
                "hostname": req.hostname,
                "iface": req.arrival.iface,
                "giaddr": (!req.giaddr.is_unspecified()).then_some(req.giaddr),
                "circuit_id": circuit,
                "remote_id": remote,
                "rack": place.map(|(r, _)| r.name.clone()),
                "position": place.map(|(_, p)| p),
                "first_seen": now,
                "last_seen": now,
            }),
            at: now,
        };
        self.ctx.discovery.offer(sighting);
    }
}

/// The subnet a request belongs to: RFC 3527 link selection, else giaddr (RFC 2131 §4.3.1:
/// "the server MUST select an address from the subnet of giaddr"), else the subnet served
/// on the arrival interface that holds our address there.
pub fn select_subnet<'a>(inv: &'a Inventory, req: &Request) -> Option<&'a Subnet> {
    let served = |s: &&Subnet| s.served != Served::NotServed && s.purpose != Purpose::Ipoib;
    if let Some(link) = req.relay.as_ref().and_then(|r| r.link_selection) {
        return inv
            .subnets
            .iter()
            .filter(served)
            .find(|s| s.cidr.contains(&link));
    }
    if req.relayed() {
        // The subnet that lists the relay; else (a relay on the arrival segment itself, see
        // vet_relay; nothing else gets here) the subnet holding giaddr, i.e. that segment's.
        let mut subnets = inv.subnets.iter().filter(served);
        return subnets
            .clone()
            .find(|s| matches!(&s.served, Served::Relays(r) if r.contains(&req.giaddr)))
            .or_else(|| subnets.find(|s| s.cidr.contains(&req.giaddr)));
    }
    inv.subnets.iter().filter(served).find(|s| {
        s.served == Served::Interface(req.arrival.iface.clone())
            && s.cidr.contains(&req.arrival.local_ip)
    })
}

/// What [`vet_relay`] made of a request's relay information.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vetting {
    /// No relay information, or it came from a listed relay (or a trusted switch): used.
    Believed,
    /// Relay information a sender may not give was removed; the request is served without.
    Stripped(Stripped),
    /// giaddr names no listed relay: the request is dropped.
    Untrusted,
}

/// What was removed from a request by [`vet_relay`] (a bounded metric label each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stripped {
    /// Option 82 on a request straight from the segment of a subnet without `trust_option82`.
    Option82,
    /// RFC 3527 link selection without a relay (a trusted switch's option 82 keeps the rest).
    LinkSelection,
}

impl Stripped {
    pub fn as_str(&self) -> &'static str {
        match self {
            Stripped::Option82 => "option82",
            Stripped::LinkSelection => "link-selection",
        }
    }
}

/// Relay trust. giaddr, RFC 3527 link selection and option 82 choose the subnet and the rack
/// position a MAC is recorded at, so they are believed only from the relays an operator
/// listed (a subnet's `relay_addresses`, like Kea's `relay.ip-addresses`):
///
/// * giaddr set but no subnet lists it: [`Vetting::Untrusted`] (dropped). A relay always
///   has an address, so a relayed request from source 0.0.0.0 is a client forging one and
///   is refused the same way. The source address of a listed relay is otherwise not
///   compared with giaddr: a relay sends from its server-facing address while giaddr is
///   its client-facing one (ISC dhcrelay, most switches), and the reply goes to giaddr
///   whoever sent the request (RFC 2131 §4.1), so a forger gains no answer from it.
/// * One exception: a giaddr inside the subnet served on the interface the request came in
///   on, sent from that very address (a relay agent on the served segment itself; Kea's
///   perfdhcp talks like that). It selects the subnet the segment gets anyway, so it is
///   served, as a client of that segment: its option 82 is dropped like any client's and
///   the reply goes to giaddr as RFC 2131 §4.1 says. From another source it is dropped
///   (it would point our replies at a third machine).
/// * giaddr 0 (straight from a served segment) with option 82: RFC 3046 §2.1 has a relay
///   "receiving a DHCP packet from an untrusted circuit with giaddr set to zero ... but
///   with a Relay Agent Information option already present" discard it, and allows that "a
///   trusted circuit may contain a trusted downstream (closer to client) network element
///   (bridge) between the relay agent and the client that MAY add a relay agent option but
///   not set the giaddr field". We are the first hop here, so the option is dropped from the
///   request (not recorded, not echoed) unless the subnet sets `trust_option82` for such a
///   switch; link selection is never taken without a relay (RFC 3527 §3 makes it a relay's
///   sub-option), trusted switch or not.
pub fn vet_relay(inv: &Inventory, req: &mut Request) -> Vetting {
    if req.relayed() {
        let listed = inv
            .subnets
            .iter()
            .any(|s| matches!(&s.served, Served::Relays(r) if r.contains(&req.giaddr)));
        if listed && !req.arrival.peer.ip().is_unspecified() {
            return Vetting::Believed;
        }
        let on_segment = *req.arrival.peer.ip() == req.giaddr
            && inv.subnets.iter().any(|s| {
                s.served == Served::Interface(req.arrival.iface.clone())
                    && s.cidr.contains(&req.arrival.local_ip)
                    && s.cidr.contains(&req.giaddr)
            });
        if !on_segment {
            return Vetting::Untrusted;
        }
        return match req.relay.take() {
            Some(_) => Vetting::Stripped(Stripped::Option82),
            None => Vetting::Believed,
        };
    }
    let Some(relay) = req.relay.as_mut() else {
        return Vetting::Believed;
    };
    let trusted = inv.subnets.iter().any(|s| {
        s.trust_option82
            && s.served == Served::Interface(req.arrival.iface.clone())
            && s.cidr.contains(&req.arrival.local_ip)
    });
    if !trusted {
        req.relay = None;
        return Vetting::Stripped(Stripped::Option82);
    }
    if relay.link_selection.take().is_some() {
        // The echo must not carry what we ignored: drop sub-option 5 from the raw bytes.
        relay.raw = without_sub_option(&relay.raw, 5);
        return Vetting::Stripped(Stripped::LinkSelection);
    }
    Vetting::Believed
}

/// Option 82's bytes without sub-option `code` (RFC 3046 §2.0 code/length/value walk; a
/// broken tail is kept as it was).
fn without_sub_option(raw: &[u8], code: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let [c, len, tail @ ..] = rest {
        let Some((value, next)) = tail.split_at_checked(usize::from(*len)) else {
            break;
        };
        if *c != code {
            out.extend_from_slice(&[*c, *len]);
            out.extend_from_slice(value);
        }
        rest = next;
    }
    out.extend_from_slice(rest);
    out
}

/// The lease row a committing decision writes.
fn lease_for(
    req: &Request,
    decision: &Decision,
    subnet: &Subnet,
    host: Option<String>,
    now: Timestamp,
    settings: &DhcpSettings,
) -> Option<Lease> {
    let (ip, state, ends) = match decision {
        Decision::Ack { ip, lease_time, .. } => (*ip, LeaseState::Active, now + *lease_time),
        Decision::Release { ip } => (*ip, LeaseState::Released, now),
        Decision::Decline { ip } => (*ip, LeaseState::Declined, now + settings.decline_quarantine),
        _ => return None,
    };
    let relay = req.relay.clone().unwrap_or_default();
    Some(Lease {
        ip,
        mac: req.mac,
        client_id: req.client_id.as_deref().map(super::hex),
        state,
        starts: now,
        ends,
        host,
        subnet: subnet.name.clone(),
        relay: RelayInfo {
            giaddr: req.relayed().then_some(req.giaddr),
            circuit_id: relay.circuit_id.as_deref().map(super::printable),
            remote_id: relay.remote_id.as_deref().map(super::printable),
        },
    })
}

fn lease_event(req: &Request, decision: &Decision, lease: &Lease) -> NewEvent {
    let kind = match decision {
        Decision::Release { .. } => EventKind::LeaseReleased,
        Decision::Decline { .. } => EventKind::LeaseDeclined,
        _ => EventKind::LeaseCommitted,
    };
    let how = match decision {
        Decision::Ack { state, .. } => serde_json::to_value(state).unwrap_or_default(),
        _ => serde_json::Value::Null,
    };
    let mut ev = NewEvent::new(kind, "dhcp")
        .ip(lease.ip)
        .mac(lease.mac)
        .detail(serde_json::json!({
            "state": how,
            "subnet": lease.subnet,
            "ends": lease.ends,
            "iface": req.arrival.iface,
            "giaddr": lease.relay.giaddr,
            "circuit_id": lease.relay.circuit_id,
            "remote_id": lease.relay.remote_id,
        }));
    if let Some(h) = &lease.host {
        ev = ev.host(h.clone());
    }
    ev
}

/// The event of a committed lease, with the rack position its relay's option 82 names.
fn located(mut event: NewEvent, lease: &Lease, inv: &Inventory) -> NewEvent {
    if let Some((rack, pos)) = lease
        .relay
        .circuit_id
        .as_deref()
        .and_then(|c| inv.locate(c, lease.relay.remote_id.as_deref()))
        && let Some(obj) = event.detail.as_object_mut()
    {
        obj.insert("rack".into(), rack.name.clone().into());
        obj.insert("position".into(), pos.into());
    }
    event
}

/// Where a reply goes, as a socket address on `link`.
fn reply_address(link: &Link, dest: Destination) -> SocketAddrV4 {
    match dest {
        Destination::Relay(a) | Destination::Unicast(a) => a,
        Destination::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT),
        // RFC 2131 §4.1: unicast "to the client's hardware address and 'yiaddr' address".
        // The client can't answer ARP yet, so we put its entry in the neighbour table first
        // (as dnsmasq does); if that fails, "the message MAY be sent as an IP broadcast".
        Destination::UnicastHw { ip, mac } => match arp::set_arp_entry(&link.iface.name, ip, mac) {
            Ok(()) => SocketAddrV4::new(ip, CLIENT_PORT),
            Err(e) => {
                tracing::debug!(error = %e, "no ARP entry; broadcasting instead");
                SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
            }
        },
    }
}

fn reply_kind(d: &Decision) -> &'static str {
    match d {
        Decision::Offer { .. } | Decision::ProxyOffer => "offer",
        Decision::Ack { .. } | Decision::InformAck | Decision::ProxyAck => "ack",
        Decision::Nak { .. } => "nak",
        _ => "none",
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use super::*;
    use crate::dhcp::{ClientMessage, PxeInfo, RelayAgent};
    use crate::inventory::IpRange;

    const RELAY: Ipv4Addr = Ipv4Addr::new(10, 250, 1, 1);

    fn subnet(name: &str, cidr: &str, served: Served, trust: bool) -> Subnet {
        Subnet {
            name: name.into(),
            cidr: cidr.parse().unwrap(),
            purpose: Purpose::Provisioning,
            gateway: None,
            dns: vec![],
            domain: None,
            lease_time: Duration::from_secs(3600),
            dynamic_ranges: vec![IpRange {
                start: "10.250.0.100".parse().unwrap(),
                end: "10.250.0.200".parse().unwrap(),
            }],
            known_hosts_only: false,
            proxy_dhcp: false,
            served,
            mtu: None,
            trust_option82: trust,
        }
    }

    fn inventory(trust: bool) -> Inventory {
        Inventory {
            subnets: vec![
                subnet(
                    "prov",
                    "10.250.0.0/24",
                    Served::Interface("gw0".into()),
                    trust,
                ),
                subnet("rack2", "10.250.1.0/24", Served::Relays(vec![RELAY]), false),
                subnet(
                    "other",
                    "10.250.2.0/24",
                    Served::Interface("gw1".into()),
                    false,
                ),
            ],
            site: crate::inventory::Site {
                name: "lab".into(),
                description: None,
                location: None,
                gateways: vec![],
                settings: Default::default(),
                bmc_ca_file: None,
            },
            racks: vec![],
            profiles: vec![],
            hosts: vec![],
            files: vec![],
        }
    }

    fn option82(link: Option<Ipv4Addr>) -> RelayAgent {
        let mut raw = vec![1, 4, b's', b'w', b'p', b'7'];
        if let Some(l) = link {
            raw.extend_from_slice(&[5, 4]);
            raw.extend_from_slice(&l.octets());
        }
        raw.extend_from_slice(&[2, 2, b'r', b'2']);
        RelayAgent {
            circuit_id: Some(b"swp7".to_vec()),
            remote_id: Some(b"r2".to_vec()),
            link_selection: link,
            raw,
        }
    }

    fn req(giaddr: &str, peer: &str, relay: Option<RelayAgent>) -> Request {
        Request {
            kind: ClientMessage::Discover,
            xid: 1,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            client_id: None,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: giaddr.parse().unwrap(),
            hops: 0,
            broadcast: false,
            requested_ip: None,
            server_id: None,
            hostname: None,
            vendor_class: None,
            params: vec![],
            max_message_size: None,
            relay,
            pxe: PxeInfo::default(),
            arrival: Arrival {
                iface: "gw0".into(),
                local_ip: Ipv4Addr::new(10, 250, 0, 1),
                local_port: 67,
                peer: SocketAddrV4::new(peer.parse().unwrap(), 67),
            },
        }
    }

    #[test]
    fn rfc3046_a_listed_relay_is_believed_whatever_its_source_address() {
        let inv = inventory(false);
        let mut r = req("10.250.1.1", "10.250.0.5", Some(option82(Some(RELAY))));
        assert_eq!(vet_relay(&inv, &mut r), Vetting::Believed);
        assert_eq!(r.relay, Some(option82(Some(RELAY))));
        assert_eq!(select_subnet(&inv, &r).unwrap().name, "rack2");
    }

    #[test]
    fn rfc3046_an_unlisted_giaddr_is_dropped() {
        let inv = inventory(false);
        // Another interface's subnet, an unknown network, a listed relay from 0.0.0.0.
        for (giaddr, peer) in [
            ("10.250.2.9", "10.250.2.9"),
            ("10.250.5.5", "10.250.0.66"),
            ("10.250.1.1", "0.0.0.0"),
        ] {
            let mut r = req(giaddr, peer, Some(option82(None)));
            assert_eq!(
                vet_relay(&inv, &mut r),
                Vetting::Untrusted,
                "{giaddr} from {peer}"
            );
        }
    }

    #[test]
    fn a_relay_on_the_served_segment_is_served_as_a_client_of_it() {
        let inv = inventory(true);
        // perfdhcp: giaddr = its own address on gw0's subnet.
        let mut r = req("10.250.0.3", "10.250.0.3", None);
        assert_eq!(vet_relay(&inv, &mut r), Vetting::Believed);
        assert_eq!(select_subnet(&inv, &r).unwrap().name, "prov");
        // Its option 82 is never believed, trusted switch or not.
        let mut r = req("10.250.0.3", "10.250.0.3", Some(option82(None)));
        assert_eq!(
            vet_relay(&inv, &mut r),
            Vetting::Stripped(Stripped::Option82)
        );
        assert_eq!(r.relay, None);
        // Pointing our replies at another machine of the segment: dropped.
        let mut r = req("10.250.0.3", "10.250.0.66", None);
        assert_eq!(vet_relay(&inv, &mut r), Vetting::Untrusted);
    }

    #[test]
    fn rfc3046_2_1_option82_from_the_segment_needs_a_trusted_switch() {
        let mut r = req("0.0.0.0", "0.0.0.0", Some(option82(Some(RELAY))));
        assert_eq!(
            vet_relay(&inventory(false), &mut r),
            Vetting::Stripped(Stripped::Option82)
        );
        assert_eq!(r.relay, None);
        assert_eq!(select_subnet(&inventory(false), &r).unwrap().name, "prov");
        // trust_option82: circuit and remote id kept, link selection never (RFC 3527 is a
        // relay's sub-option), and the echo leaves it out too.
        let mut r = req("0.0.0.0", "0.0.0.0", Some(option82(Some(RELAY))));
        assert_eq!(
            vet_relay(&inventory(true), &mut r),
            Vetting::Stripped(Stripped::LinkSelection)
        );
        let kept = r.relay.clone().unwrap();
        assert_eq!(kept.circuit_id.as_deref(), Some(&b"swp7"[..]));
        assert_eq!(kept.link_selection, None);
        assert_eq!(kept.raw, option82(None).raw);
        assert_eq!(select_subnet(&inventory(true), &r).unwrap().name, "prov");
        let mut r = req("0.0.0.0", "0.0.0.0", Some(option82(None)));
        assert_eq!(vet_relay(&inventory(true), &mut r), Vetting::Believed);
        assert_eq!(r.relay, Some(option82(None)));
    }
}
