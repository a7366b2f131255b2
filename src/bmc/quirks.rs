//! Vendor quirks, in one place: what each BMC family does differently from the DMTF schema
//! for the few operations bootgate needs (reset types, boot override PATCH shape, ETags,
//! 503 while busy). The Redfish client asks these pure functions; it has no vendor `if`s.
//!
//! Sources: DMTF DSP0266/DSP8010 (ComputerSystem, Resource.ResetType, Boot), the vendors'
//! Redfish API references, and the behaviour other open-source clients work around
//! (community.general redfish_utils, Redfishtool, ironcore metal-operator, NVIDIA libredfish).
//! The fixtures in tests/fixtures/redfish/<vendor>/ show each shape.

use std::time::Duration;

use serde_json::{Value, json};

use super::{BootSource, OverrideMode, ResetType};
use crate::inventory::BmcVendor;

/// How one BMC family departs from the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quirks {
    pub vendor: BmcVendor,
    /// Reset types assumed when the system advertises none (no AllowableValues, no
    /// ActionInfo): what this family's firmware is documented to accept.
    pub assumed_reset_types: &'static [ResetType],
    /// Reset types the firmware lists but does not carry out as specified; dropped from the
    /// advertised list so escalation never picks them.
    pub broken_reset_types: &'static [ResetType],
    /// PATCH needs `If-Match` with the resource's ETag, else 428/412 (Lenovo XCC, OpenBMC
    /// bmcweb, AMI MegaRAC). Any vendor answering 428 gets a second try with If-Match.
    pub patch_if_match: bool,
    /// The boot override PATCH must carry `BootSourceOverrideMode: "UEFI"`: the firmware
    /// otherwise resets the mode to its default (Supermicro, AMI MegaRAC).
    pub override_mode_uefi: bool,
    /// Clearing must keep a real target next to `Disabled` (HPE iLO rejects `Disabled`
    /// while the target is `None` or absent).
    pub clear_keeps_target: bool,
    /// Targets this family accepts only with `Continuous` (the PATCH with `Once` is refused).
    pub continuous_only: &'static [BootSource],
    /// Wait after a 503 without `Retry-After` (BMC busy, or the host is off/POSTing and the
    /// system resource is not ready).
    pub busy_backoff: Duration,
}

use ResetType::*;

/// DMTF's common set; what a generic service most likely takes.
const COMMON: &[ResetType] = &[
    On,
    ForceOff,
    GracefulShutdown,
    GracefulRestart,
    ForceRestart,
];

static GENERIC: Quirks = Quirks {
    vendor: BmcVendor::Generic,
    assumed_reset_types: COMMON,
    broken_reset_types: &[],
    patch_if_match: false,
    override_mode_uefi: false,
    clear_keeps_target: false,
    continuous_only: &[],
    busy_backoff: Duration::from_secs(1),
};

/// iDRAC 9: lists its reset types inline; PowerCycle since firmware 4.x; no ETag needed.
static DELL: Quirks = Quirks {
    vendor: BmcVendor::Dell,
    assumed_reset_types: &[
        On,
        ForceOff,
        ForceRestart,
        GracefulRestart,
        GracefulShutdown,
        PushPowerButton,
        Nmi,
        PowerCycle,
    ],
    broken_reset_types: &[],
    patch_if_match: false,
    override_mode_uefi: false,
    clear_keeps_target: false,
    continuous_only: &[],
    busy_backoff: Duration::from_secs(2),
};

/// iLO 5/6: no PowerCycle (iLO 5 has no GracefulRestart either); BootSourceOverrideMode is
/// read-only on some models (never send it); Disabled needs a target kept.
static HPE: Quirks = Quirks {
    vendor: BmcVendor::Hpe,
    assumed_reset_types: &[
        On,
        ForceOff,
        GracefulShutdown,
        ForceRestart,
        Nmi,
        PushPowerButton,
    ],
    broken_reset_types: &[],
    patch_if_match: false,
    override_mode_uefi: false,
    clear_keeps_target: true,
    continuous_only: &[],
    busy_backoff: Duration::from_secs(2),
};

/// XClarity Controller: ETag validation on PATCH (412 "The ETag supplied did not match"),
/// 503 while the XCC is still starting.
static LENOVO: Quirks = Quirks {
    vendor: BmcVendor::Lenovo,
    assumed_reset_types: &[
        On,
        ForceOff,
        GracefulShutdown,
        GracefulRestart,
        ForceRestart,
        Nmi,
        PowerCycle,
    ],
    broken_reset_types: &[],
    patch_if_match: true,
    override_mode_uefi: false,
    clear_keeps_target: false,
    continuous_only: &[],
    busy_backoff: Duration::from_secs(3),
};

/// Supermicro X11-X13/H12-H13: reset types in an ActionInfo; the boot override falls back
/// to Legacy mode unless the PATCH names UEFI.
static SUPERMICRO: Quirks = Quirks {
    vendor: BmcVendor::Supermicro,
    assumed_reset_types: &[
        On,
        ForceOff,
        GracefulShutdown,
        GracefulRestart,
        ForceRestart,
        Nmi,
    ],
    broken_reset_types: &[],
    patch_if_match: false,
    override_mode_uefi: true,
    clear_keeps_target: false,
    continuous_only: &[],
    busy_backoff: Duration::from_secs(2),
};

/// NVIDIA DGX/HGX (OpenBMC bmcweb): PATCH on the system with If-Match, 503 + Retry-After
/// while the BMC is busy (e.g. during host power transitions).
static NVIDIA: Quirks = Quirks {
    vendor: BmcVendor::Nvidia,
    assumed_reset_types: &[
        On,
        ForceOff,
        GracefulShutdown,
        GracefulRestart,
        ForceRestart,
        PowerCycle,
        Nmi,
    ],
    broken_reset_types: &[],
    patch_if_match: true,
    override_mode_uefi: false,
    clear_keeps_target: false,
    continuous_only: &[],
    busy_backoff: Duration::from_secs(2),
};

/// AMI MegaRAC: ActionInfo for reset types, If-Match on PATCH, mode UEFI in the override,
/// UefiHttp only as Continuous, 503 on the system resource while the host is off/POSTing.
static AMI: Quirks = Quirks {
    vendor: BmcVendor::Ami,
    assumed_reset_types: &[
        On,
        ForceOff,
        GracefulShutdown,
        GracefulRestart,
        ForceRestart,
        Nmi,
    ],
    broken_reset_types: &[],
    patch_if_match: true,
    override_mode_uefi: true,
    clear_keeps_target: false,
    continuous_only: &[BootSource::UefiHttp],
    busy_backoff: Duration::from_secs(3),
};

/// The quirks of a vendor.
pub fn quirks(vendor: BmcVendor) -> &'static Quirks {
    match vendor {
        BmcVendor::Dell => &DELL,
        BmcVendor::Hpe => &HPE,
        BmcVendor::Lenovo => &LENOVO,
        BmcVendor::Supermicro => &SUPERMICRO,
        BmcVendor::Nvidia => &NVIDIA,
        BmcVendor::Ami => &AMI,
        BmcVendor::Generic => &GENERIC,
    }
}

impl Quirks {
    /// The reset types to offer: what the BMC advertised (or, when it advertised nothing,
    /// what this family is known to take), minus the ones known not to work.
    pub fn reset_types(&self, advertised: Option<Vec<ResetType>>) -> Vec<ResetType> {
        let mut list = match advertised {
            Some(list) if !list.is_empty() => list,
            _ => self.assumed_reset_types.to_vec(),
        };
        list.retain(|r| !self.broken_reset_types.contains(r));
        let mut seen = Vec::with_capacity(list.len());
        list.retain(|r| {
            let new = !seen.contains(r);
            seen.push(*r);
            new
        });
        list
    }

    /// The mode to ask for first: Once, unless the BMC's AllowableValues lack it or the
    /// family only takes Continuous for this target.
    pub fn first_mode(
        &self,
        source: BootSource,
        allowed_enabled: Option<&[String]>,
    ) -> OverrideMode {
        let once_listed = allowed_enabled.is_none_or(|v| v.iter().any(|s| s == "Once"));
        if once_listed && !self.continuous_only.contains(&source) {
            OverrideMode::Once
        } else {
            OverrideMode::Continuous
        }
    }

    /// The PATCH body that sets a boot override.
    pub fn boot_patch(&self, source: BootSource, mode: OverrideMode) -> Value {
        let mut boot = json!({
            "BootSourceOverrideTarget": source.redfish_name(),
            "BootSourceOverrideEnabled": mode.redfish_name(),
        });
        if self.override_mode_uefi {
            boot["BootSourceOverrideMode"] = json!("UEFI");
        }
        json!({ "Boot": boot })
    }

    /// The PATCH body that clears it. `current_target` is what the system reports now.
    pub fn clear_patch(&self, current_target: Option<&str>) -> Value {
        let mut boot = json!({ "BootSourceOverrideEnabled": "Disabled" });
        if self.clear_keeps_target {
            let keep = current_target
                .filter(|t| *t != "None" && !t.is_empty())
                .unwrap_or("Pxe");
            boot["BootSourceOverrideTarget"] = json!(keep);
        }
        if self.override_mode_uefi {
            boot["BootSourceOverrideMode"] = json!("UEFI");
        }
        json!({ "Boot": boot })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vendor_has_its_own_table() {
        for v in BmcVendor::ALL {
            assert_eq!(quirks(*v).vendor, *v);
            assert!(quirks(*v).assumed_reset_types.contains(&On), "{v}");
            assert!(quirks(*v).assumed_reset_types.contains(&ForceOff), "{v}");
        }
    }

    #[test]
    fn advertised_list_wins_over_assumed() {
        let q = quirks(BmcVendor::Dell);
        assert_eq!(q.reset_types(Some(vec![On, ForceOff, On])), [On, ForceOff]);
        assert_eq!(q.reset_types(None).len(), 8);
        assert_eq!(q.reset_types(Some(vec![])), q.assumed_reset_types);
    }

    #[test]
    fn patch_shapes() {
        let sm = quirks(BmcVendor::Supermicro).boot_patch(BootSource::Pxe, OverrideMode::Once);
        assert_eq!(sm["Boot"]["BootSourceOverrideMode"], "UEFI");
        let g = quirks(BmcVendor::Generic).boot_patch(BootSource::UefiHttp, OverrideMode::Once);
        assert_eq!(
            g,
            json!({"Boot":{"BootSourceOverrideTarget":"UefiHttp","BootSourceOverrideEnabled":"Once"}})
        );
        let hpe = quirks(BmcVendor::Hpe).clear_patch(Some("None"));
        assert_eq!(hpe["Boot"]["BootSourceOverrideTarget"], "Pxe");
        let generic = quirks(BmcVendor::Generic).clear_patch(Some("Pxe"));
        assert_eq!(
            generic,
            json!({"Boot":{"BootSourceOverrideEnabled":"Disabled"}})
        );
    }

    #[test]
    fn first_mode() {
        let g = quirks(BmcVendor::Generic);
        assert_eq!(g.first_mode(BootSource::Pxe, None), OverrideMode::Once);
        let only = ["Disabled".to_string(), "Continuous".to_string()];
        assert_eq!(
            g.first_mode(BootSource::Pxe, Some(&only)),
            OverrideMode::Continuous
        );
        assert_eq!(
            quirks(BmcVendor::Ami).first_mode(BootSource::UefiHttp, None),
            OverrideMode::Continuous
        );
    }
}
