//! The hot paths' point reads (the host behind a MAC, once per iPXE script request; a new
//! MAC's host by name, once per DHCP discovery): a statement on the caller's thread through
//! a small pool of read-only rusqlite connections, plus the host-by-MAC answer cache.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::super::{HostRecord, StoreError};
use super::{open_error, open_rusqlite};
use crate::types::MacAddr;

/// Idle point-read connections kept at most (more are opened under a burst, then closed).
const POINT_READERS: usize = 4;

/// A small pool of read-only rusqlite connections, opened on first use. A read takes one
/// (or opens one), runs its statement on the caller's thread and puts it back: under WAL a
/// reader sees the last commit and never waits for the writer, so this does not block an
/// async task for longer than the statement itself.
pub(super) struct PointReaders {
    path: PathBuf,
    idle: std::sync::Mutex<Vec<rusqlite::Connection>>,
}

impl PointReaders {
    pub(super) fn new(path: &Path) -> PointReaders {
        PointReaders {
            path: path.to_path_buf(),
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub(super) fn with<T>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_point_reader(&self.path)
                .map_err(|e| open_error(&self.path, format!("opening a read connection: {e}")))?,
        };
        let out = read(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POINT_READERS {
            idle.push(conn);
        }
        out
    }
}

fn open_point_reader(path: &Path) -> Result<rusqlite::Connection, rusqlite::Error> {
    let conn = open_rusqlite(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.set_prepared_statement_cache_capacity(16);
    Ok(conn)
}

/// How long a cached host-by-MAC answer is trusted without a write of this process in
/// between. Writes of this process (DHCP discovery, phone-home, inventory reloads, API
/// calls) invalidate at once; this bounds what another process writing the same file
/// (`bootgate rack onboard`, `bootgate power` run locally) can leave stale: well under the
/// time a machine takes to power-cycle into PXE.
const HOST_CACHE_TTL: Duration = Duration::from_millis(500);

/// Entries kept at most; past this the cache starts over (a storm of unknown MACs).
const HOST_CACHE_ENTRIES: usize = 65_536;

/// A cached answer: the generation before the read, when it was read, what it found.
type CachedHost = (u64, Instant, Option<HostRecord>);

/// The host behind a MAC as last read, for the iPXE script path (one lookup per request).
/// Each entry carries the write generation current *before* its read: a host write bumps
/// the generation after it commits, so an answer read before (or during) that write is
/// never served after it.
#[derive(Default)]
pub(super) struct HostCache {
    generation: std::sync::atomic::AtomicU64,
    entries: std::sync::Mutex<std::collections::HashMap<MacAddr, CachedHost>>,
}

impl HostCache {
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(super) fn invalidate(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub(super) fn get(&self, mac: MacAddr, generation: u64) -> Option<Option<HostRecord>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (g, at, found) = entries.get(&mac)?;
        (*g == generation && at.elapsed() < HOST_CACHE_TTL).then(|| found.clone())
    }

    pub(super) fn put(&self, mac: MacAddr, generation: u64, found: Option<HostRecord>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= HOST_CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(mac, (generation, Instant::now(), found));
    }
}
