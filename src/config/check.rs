//! The daemon config checked against the inventory it serves: the two files are written
//! apart, so an interface the inventory names can be missing from the config or sit on
//! another subnet. The config knows the inventory, never the other way round.

use super::Config;
use crate::diag::Problem;
use crate::inventory::{Inventory, Served};

/// Checks the inventory against the daemon config: every subnet served on an interface
/// needs that interface in the config, with an address inside the subnet (it becomes the
/// DHCP server identifier there). Problems name the config file.
pub fn check_inventory(inv: &Inventory, cfg: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut problem = |entry: String, field: &str, reason: String| {
        problems.push(Problem {
            file: cfg.path.clone(),
            entry,
            field: field.to_string(),
            reason,
        });
    };
    for subnet in &inv.subnets {
        let Served::Interface(name) = &subnet.served else {
            continue;
        };
        let Some(iface) = cfg.interfaces.iter().find(|i| &i.name == name) else {
            problem(
                "-".to_string(),
                "interface",
                format!(
                    "no [[interface]] named {name:?}, but inventory subnet {:?} ({}) is served on it",
                    subnet.name, subnet.cidr
                ),
            );
            continue;
        };
        let entry = format!("interface {name:?}");
        if !subnet.cidr.contains(&iface.address.addr()) {
            problem(
                entry,
                "address",
                format!(
                    "{} is not inside subnet {:?} ({}), which the inventory serves on this interface",
                    iface.address.addr(),
                    subnet.name,
                    subnet.cidr
                ),
            );
        } else if iface.address.prefix_len() != subnet.cidr.prefix_len() {
            problem(
                entry,
                "address",
                format!(
                    "prefix /{} differs from subnet {:?} ({}), which the inventory serves on this interface",
                    iface.address.prefix_len(),
                    subnet.name,
                    subnet.cidr
                ),
            );
        }
    }
    problems
}
