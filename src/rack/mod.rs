//! Onboarding racks: manifests (`manifest`), `bootgate rack plan` (`plan`, pure),
//! discovered machines matched to rack positions and adopted into the inventory (`adopt`),
//! and `bootgate rack onboard` (`onboard`).
//! The functions here are the effectful edges: read files and the store, write the new
//! inventory file, validate, undo on failure.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::inventory::{Invalid, Inventory};
use crate::store::{
    self, EventKind, HostRecord, HostSource, Lease, LeaseFilter, NewEvent, Store, StoreError,
    StoreUrl,
};
use crate::types::MacAddr;

pub mod adopt;
pub mod manifest;
pub mod onboard;
pub mod plan;

use manifest::{CsvRackArgs, ManifestError};
use plan::{Conflict, Plan};

/// Everything rack planning and adoption can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RackError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{} conflict(s) with the inventory; nothing written:\n{}", .0.len(), .0.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("\n"))]
    Conflicts(Vec<Conflict>),
    #[error("the inventory in {dir} is invalid; fix it first:\n{problems}")]
    Inventory { dir: PathBuf, problems: Invalid },
    #[error(
        "refusing to overwrite {0}: the rack was written before (remove the file to plan it again)"
    )]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot edit: {reason}")]
    Edit {
        path: PathBuf,
        reason: adopt::EditError,
    },
    #[error("the inventory with {path} is invalid, so the change was undone:\n{problems}")]
    WrittenInvalid { path: PathBuf, problems: Invalid },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(
        "MAC {mac} is already the {what} of host {host:?} ({}); nothing to adopt",
        file.display()
    )]
    MacTaken {
        mac: MacAddr,
        what: &'static str,
        host: String,
        file: PathBuf,
    },
    #[error("host name {name:?} is already taken by {holder}")]
    NameTaken { name: String, holder: String },
    #[error("{0}")]
    Refused(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RackError + '_ {
    move |source| RackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Which inventory file declares each host and rack (the validated inventory does not
/// keep it; conflict messages need it).
#[derive(Debug, Clone, Default)]
pub struct Origins {
    hosts: HashMap<String, PathBuf>,
    racks: HashMap<String, PathBuf>,
}

impl Origins {
    /// Reads the inventory's files again for the names of their `[[host]]`s and `[[rack]]`s.
    pub fn scan(inv: &Inventory) -> Origins {
        let mut o = Origins::default();
        for file in &inv.files {
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            let Ok(table) = text.parse::<toml::Table>() else {
                continue;
            };
            for (key, map) in [("host", &mut o.hosts), ("rack", &mut o.racks)] {
                let entries = table.get(key).and_then(|v| v.as_array());
                for e in entries.into_iter().flatten() {
                    if let Some(name) = e.get("name").and_then(|n| n.as_str()) {
                        map.insert(name.to_string(), file.clone());
                    }
                }
            }
        }
        o
    }
    pub fn host(&self, name: &str) -> Option<&Path> {
        self.hosts.get(name).map(PathBuf::as_path)
    }
    pub fn rack(&self, name: &str) -> Option<&Path> {
        self.racks.get(name).map(PathBuf::as_path)
    }
    /// For tests and callers that build an inventory in memory.
    pub fn insert_host(&mut self, name: &str, file: PathBuf) {
        self.hosts.insert(name.to_string(), file);
    }
    pub fn insert_rack(&mut self, name: &str, file: PathBuf) {
        self.racks.insert(name.to_string(), file);
    }
}

/// A DNS label (RFC 1123): what host and rack names must be.
pub(crate) fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The validated inventory the config names (with the same checks as `check-config`).
pub fn load_inventory(config: &Config) -> Result<Inventory, RackError> {
    crate::config::load_inventory(config)
        .map(|(inv, _)| inv)
        .map_err(|problems| RackError::Inventory {
            dir: config.inventory_dir.clone(),
            problems,
        })
}

/// The store, if there is one yet (an SQLite file not created yet means "empty"); read-only
/// for SQLite so planning never takes the daemon's write lock.
async fn open_store(
    config: &Config,
    write: bool,
) -> Result<Option<std::sync::Arc<dyn Store>>, RackError> {
    Ok(match &config.store {
        StoreUrl::Sqlite(path) if !path.exists() && !write => None,
        StoreUrl::Sqlite(path) if !write => Some(std::sync::Arc::new(
            store::sqlite::SqliteStore::open_read_only(path).await?,
        )),
        other => Some(store::open_with(other, &config.store_options()).await?),
    })
}

/// What the store knows that planning needs: leases holding an address now, and the
/// discovered hosts.
pub struct Live {
    pub leases: Vec<Lease>,
    pub discovered: Vec<HostRecord>,
}

async fn read_live(store: Option<&dyn Store>) -> Result<Live, RackError> {
    let Some(store) = store else {
        return Ok(Live {
            leases: Vec::new(),
            discovered: Vec::new(),
        });
    };
    let now = jiff::Timestamp::now();
    let leases = store
        .list_leases(&LeaseFilter::default())
        .await?
        .into_iter()
        .filter(|l| l.state.holds_address() && l.ends > now)
        .collect();
    let discovered = store
        .list_hosts()
        .await?
        .into_iter()
        .filter(|h| h.source == HostSource::Discovered)
        .collect();
    Ok(Live { leases, discovered })
}

fn gateway_addresses(config: &Config) -> Vec<Ipv4Addr> {
    config.interfaces.iter().map(|i| i.address.addr()).collect()
}

/// `bootgate rack plan`.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    pub manifest: PathBuf,
    /// Rack defaults for a CSV manifest.
    pub csv: CsvRackArgs,
    /// Write `<inventory>/rack-<name>.toml`.
    pub write: bool,
}

/// A plan, and the file written when `--write` was given.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanOutcome {
    #[serde(flatten)]
    pub plan: Plan,
    pub written: Option<PathBuf>,
}

/// Plans a manifest against the configured site; with `write`, adds the rack to the
/// inventory as one new file, validated with the whole inventory (and removed again if
/// that fails).
pub async fn plan_command(config: &Config, req: &PlanRequest) -> Result<PlanOutcome, RackError> {
    let m = manifest::read(&req.manifest, &req.csv)?;
    let target = config
        .inventory_dir
        .join(format!("rack-{}.toml", m.rack.name));
    if req.write && target.exists() {
        return Err(RackError::Exists(target));
    }
    let inv = load_inventory(config)?;
    let origins = Origins::scan(&inv);
    let store = open_store(config, false).await?;
    let live = read_live(store.as_deref()).await?;
    let gateways = gateway_addresses(config);
    let site = plan::Site {
        inventory: &inv,
        origins: &origins,
        leases: &live.leases,
        discovered: &live.discovered,
        gateway_addresses: &gateways,
    };
    let plan = plan::plan(&m, &site).map_err(RackError::Conflicts)?;
    if !req.write {
        return Ok(PlanOutcome {
            plan,
            written: None,
        });
    }
    let text = plan::render_toml(&plan, &req.manifest.display().to_string());
    write_new(&target, &text)?;
    if let Err(RackError::Inventory { problems, .. }) = load_inventory(config) {
        let _ = std::fs::remove_file(&target);
        return Err(RackError::WrittenInvalid {
            path: target,
            problems,
        });
    }
    if let Some(store) = open_store(config, true).await? {
        let ev = NewEvent::new(EventKind::RackPlanned, "cli:rack-plan").detail(serde_json::json!({
            "rack": plan.rack.name,
            "file": target,
            "manifest": req.manifest,
            "hosts": plan.hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(),
        }));
        store.append(&ev).await?;
    }
    Ok(PlanOutcome {
        plan,
        written: Some(target),
    })
}

/// The JSON an `--output json` caller gets for a refusal: the conflicts or manifest
/// problems as data, else the message.
pub fn error_json(e: &RackError) -> serde_json::Value {
    match e {
        RackError::Conflicts(c) => serde_json::json!({"ok": false, "conflicts": c}),
        RackError::Manifest(ManifestError(p)) => serde_json::json!({"ok": false, "problems": p}),
        RackError::Inventory { problems, .. } | RackError::WrittenInvalid { problems, .. } => {
            serde_json::json!({"ok": false, "error": e.to_string(), "problems": problems.0})
        }
        other => serde_json::json!({"ok": false, "error": other.to_string()}),
    }
}

/// Creates `path` with `text`, refusing to replace an existing file; durable before it
/// returns (the operator is told it was written).
fn write_new(path: &Path, text: &str) -> Result<(), RackError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                RackError::Exists(path.to_path_buf())
            } else {
                io(path)(e)
            }
        })?;
    f.write_all(text.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// The shipped site `inventory/<site>` and where each of its hosts and racks is declared
/// (unit tests of planning and adoption).
#[cfg(test)]
pub(crate) fn test_inventory(site: &str) -> (Inventory, Origins) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("inventory")
        .join(site);
    let inv = crate::inventory::load::load_dir(&dir).unwrap();
    let origins = Origins::scan(&inv);
    (inv, origins)
}
