//! The whole site an operator declares, as one check: the inventory directory and the boot
//! assets, loaded together and checked against this config and each other.

use crate::boot::BootAssets;
use crate::inventory::{Invalid, Inventory, Problem, load};

use super::Config;

/// Loads the inventory named by the config and the boot assets, and checks them against
/// the config and each other.
pub fn load_inventory(config: &Config) -> Result<(Inventory, BootAssets), Invalid> {
    let inv = load::load_dir(&config.inventory_dir);
    let boot = crate::boot::load(&config.boot_images_dir);
    let (inv, boot) = match (inv, boot) {
        (Ok(i), Ok(b)) => (i, b),
        (i, b) => {
            let mut all = i.err().map(|Invalid(p)| p).unwrap_or_default();
            all.extend(b.err().unwrap_or_default());
            return Err(Invalid(all));
        }
    };
    let mut problems = super::check_inventory(&inv, config);
    // Every profile's image must be in the manifest.
    for p in &inv.profiles {
        if let Some(img) = &p.image
            && boot.image(img).is_none()
        {
            problems.push(Problem {
                file: config.inventory_dir.clone(),
                entry: format!("profile {:?}", p.name),
                field: "image".into(),
                reason: format!(
                    "no image {img:?} in {}",
                    config.boot_images_dir.join("images.toml").display()
                ),
            });
        }
    }
    if problems.is_empty() {
        Ok((inv, boot))
    } else {
        Err(Invalid(problems))
    }
}
