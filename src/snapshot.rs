//! The inventory in force, as every server reads it: one immutable [`Loaded`] (inventory,
//! MAC index, boot assets, generation) swapped whole on a reload, so a reader never blocks
//! and never sees half of an edit. `app.rs` is the only writer; servers get a [`Snapshot`].

use std::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use jiff::Timestamp;

use crate::boot::BootAssets;
use crate::inventory::{Inventory, MacIndex};
use crate::ipam::Ipam;
use crate::types::MacAddr;

/// The inventory in force and how it got there.
#[derive(Debug)]
pub struct Loaded {
    pub inventory: Inventory,
    /// Bumped on every successful (re)load; shown by /healthz and `bootgate reload`.
    pub generation: u64,
    pub loaded_at: Timestamp,
    /// MAC → host, for the DHCP path.
    pub macs: MacIndex,
    /// Image manifest and iPXE templates, reloaded with the inventory.
    pub boot: BootAssets,
}

impl Loaded {
    pub fn new(inventory: Inventory, boot: BootAssets, generation: u64) -> Loaded {
        for w in &boot.warnings {
            tracing::warn!("{w}");
        }
        Loaded {
            boot,
            macs: inventory.mac_index(),
            inventory,
            generation,
            loaded_at: Timestamp::now(),
        }
    }

    /// The inventory host whose boot NIC is `mac`.
    pub fn host_of(&self, mac: MacAddr) -> Option<String> {
        self.inventory
            .host_by_boot_mac(&self.macs, mac)
            .map(|h| h.name.clone())
    }
}

/// A shared handle on the inventory in force: cheap to clone, cheap to read.
#[derive(Clone)]
pub struct Snapshot(Arc<ArcSwap<Loaded>>);

impl Snapshot {
    pub fn new(loaded: Loaded) -> Snapshot {
        Snapshot(Arc::new(ArcSwap::from_pointee(loaded)))
    }

    /// The inventory in force now (never blocks a reload).
    pub fn load(&self) -> Arc<Loaded> {
        self.0.load_full()
    }

    /// Puts a newly loaded inventory in force (the reload's last step).
    pub fn replace(&self, loaded: Loaded) {
        self.0.store(Arc::new(loaded));
    }
}

/// Who holds an address right now, to attribute TFTP and HTTP fetches (which carry only
/// the client's address) to a MAC and an inventory host.
#[derive(Clone)]
pub struct Whois {
    pub ipam: Arc<Ipam>,
    pub inventory: Snapshot,
}

impl Whois {
    /// The MAC holding `ip` (lease or offer) and its inventory host.
    pub fn who_has(&self, ip: Ipv4Addr) -> Option<(MacAddr, Option<String>)> {
        let mac = self.ipam.book().claim(ip).map(|c| c.mac)?;
        Some((mac, self.inventory.load().host_of(mac)))
    }

    /// The MAC and lease end of the committed lease on `ip` in this gateway's book (not an
    /// offer: an offer proves nothing yet), if any.
    pub fn lease_holder(&self, ip: Ipv4Addr) -> Option<(MacAddr, jiff::Timestamp)> {
        let book = self.ipam.book();
        let claim = book.claim(ip)?;
        (claim.kind == crate::ipam::ClaimKind::Lease).then_some((claim.mac, claim.until))
    }
}
