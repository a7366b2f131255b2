//! The declarative inventory an operator keeps in git: sites, subnets, racks, profiles and
//! hosts in `inventory/<site>/*.toml`. `load` parses and validates it into a [`model::Inventory`];
//! `sync` reconciles it into the store.

pub mod load;
pub mod model;
pub mod sync;

pub use model::*;

// Shared with the daemon config (they live in `crate::diag`); re-exported so callers can
// name them next to the inventory they describe.
pub use crate::diag::{Invalid, Problem};
