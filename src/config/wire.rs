//! Wire structs for bootgate.toml (owned by the config/inventory work; stub).
use std::path::Path;

use super::Config;
use crate::inventory::Invalid;

pub(super) fn load(_path: &Path) -> Result<Config, Invalid> {
    Err(Invalid(vec![]))
}
