//! The declarative inventory an operator keeps in git: sites, subnets, racks, profiles and
//! hosts in `inventory/<site>/*.toml`. `load` parses and validates it into a [`model::Inventory`];
//! `sync` reconciles it into the store.

use std::fmt;
use std::path::PathBuf;

pub mod load;
pub mod model;
pub mod sync;

pub use model::*;

/// One thing wrong with a config or inventory file, precise enough to fix without reading
/// code: `file: entry: field: reason`, e.g.
/// `inventory/lab/hosts.toml: host "vm1": macs[0]: MAC 52:54:00:… is also on host "vm0"`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub file: PathBuf,
    /// The entry, e.g. `host "vm1"`, `subnet "prov"`, `site`, or `-` for the whole file.
    pub entry: String,
    /// The field path inside the entry, e.g. `macs[0]`, `bmc.vendor`, or `-`.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}: {}",
            self.file.display(),
            self.entry,
            self.field,
            self.reason
        )
    }
}

/// A config or inventory that failed validation: every problem found, not just the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} problem(s):\n{}", .0.len(), .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct Invalid(pub Vec<Problem>);
