//! Inventory + host states → the Ansible inventory the playbooks read (pure). The contract
//! with `playbooks/` (group names, host and group variables) is fixed: see the hand-off
//! issue. Maps are BTreeMaps so the output is byte-for-byte stable (golden tests).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::{HandoffError, io_err};
use crate::inventory::{Host, Inventory, Purpose};
use crate::types::{HostState, Role};

/// Default taint on GPU nodes (the NVIDIA device plugin's convention).
pub const DEFAULT_GPU_TAINT: &str = "nvidia.com/gpu=present:NoSchedule";

/// The rendered inventory directory: `hosts.yml` and `group_vars/all.yml`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rendered {
    pub hosts: HostsFile,
    pub group_vars: GroupVars,
}

/// `hosts.yml`: `all: {hosts: {...vars}, children: {...groups}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostsFile {
    pub all: AllGroup,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AllGroup {
    /// Every host with its variables (groups below list members only).
    pub hosts: BTreeMap<String, HostVars>,
    pub children: BTreeMap<String, Group>,
}

/// A group: its member hosts (no variables; those live on the hosts and in group_vars).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Group {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, Empty>,
}

/// `{}` in YAML: a group member without per-group variables.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Empty {}

/// The per-host variables of the contract; always all present, neutral when not applicable.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostVars {
    pub ansible_host: String,
    pub bootgate_host: String,
    pub bootgate_site: String,
    pub bootgate_rack: String,
    pub bootgate_position: u32,
    pub bootgate_role: String,
    pub bootgate_state: String,
    pub bootgate_provisioning_ip: String,
    pub bootgate_bmc_ip: String,
    pub bootgate_addresses: BTreeMap<String, String>,
    pub bootgate_ipoib: Vec<Ipoib>,
    pub bootgate_gpu_model: String,
    pub bootgate_gpu_count: u32,
    pub bootgate_nvswitch: bool,
    pub bootgate_ib_hca_count: u32,
    pub bootgate_ib_rate_gbps: u32,
    pub bootgate_ib_subnet_manager: bool,
    pub bootgate_labels: BTreeMap<String, String>,
}

/// One IPoIB interface the `infiniband` role configures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ipoib {
    pub device: String,
    pub subnet: String,
    pub address: String,
    pub prefix: u8,
}

/// `group_vars/all.yml`: the site-wide settings, defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupVars {
    pub bootgate_domain: String,
    pub bootgate_ntp_servers: Vec<String>,
    pub bootgate_users: Vec<UserVars>,
    pub bootgate_hosts_entries: Vec<HostsEntry>,
    pub bootgate_nvidia_repo_url: String,
    pub bootgate_nvidia_driver_branch: String,
    pub bootgate_nvidia_container_toolkit_repo_url: String,
    pub bootgate_doca_repo_url: String,
    pub bootgate_kubernetes_version: String,
    pub bootgate_kubernetes_repo_url: String,
    pub bootgate_kube_api_endpoint: String,
    pub bootgate_kube_gpu_taint: String,
    pub bootgate_oidc_client_id: String,
    pub bootgate_oidc_issuer_url: String,
    pub bootgate_oidc_username_claim: String,
    pub bootgate_oidc_groups_claim: String,
    pub bootgate_oidc_admins: Vec<String>,
    pub bootgate_oidc_viewers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserVars {
    pub name: String,
    pub ssh_keys: Vec<String>,
    pub sudo: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostsEntry {
    pub name: String,
    pub address: String,
}

/// Groups every rendering has, even when empty: plays and templates may name them
/// (`groups['kube_control_plane']`) on any site.
pub const FIXED_GROUPS: &[&str] = &[
    "gpu_nodes",
    "infiniband",
    "ib_subnet_managers",
    "kube_control_plane",
    "kube_workers",
];

/// An Ansible-safe group name: lowercase, every character outside `[a-z0-9_]` becomes `_`.
pub fn group_name(prefix: &str, raw: &str) -> String {
    let tail: String = raw
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}_{tail}")
}

/// The address Ansible connects to: the provisioning address, else the first address (in
/// subnet declaration order), else the host name.
pub fn connect_address(inv: &Inventory, host: &Host) -> String {
    inv.provisioning_ip(host)
        .or_else(|| {
            inv.subnets
                .iter()
                .find_map(|s| host.addresses.get(&s.name).copied())
        })
        .map_or_else(|| host.name.clone(), |ip| ip.to_string())
}

/// Renders the inventory. `states` holds the store's state per host; a host the store does
/// not know yet is `registered` (what the inventory sync will make it).
pub fn render(
    inv: &Inventory,
    states: &BTreeMap<String, HostState>,
) -> Result<Rendered, HandoffError> {
    let mut hosts = BTreeMap::new();
    let mut groups: BTreeMap<String, Group> = FIXED_GROUPS
        .iter()
        .map(|g| (g.to_string(), Group::default()))
        .collect();
    // Which raw name produced each derived group, to refuse two names mapping to one group.
    let mut sources: BTreeMap<String, String> = BTreeMap::new();
    let mut join = |group: String, raw: &str, host: &str| -> Result<(), HandoffError> {
        match sources.get(&group) {
            Some(first) if first != raw => {
                return Err(HandoffError::GroupCollision {
                    group,
                    first: first.clone(),
                    second: raw.to_string(),
                });
            }
            Some(_) => {}
            None => {
                sources.insert(group.clone(), raw.to_string());
            }
        }
        groups
            .entry(group)
            .or_default()
            .hosts
            .insert(host.to_string(), Empty {});
        Ok(())
    };

    for h in &inv.hosts {
        let state = states
            .get(&h.name)
            .copied()
            .unwrap_or(HostState::Registered);
        let vars = host_vars(inv, h, state);
        let name = h.name.as_str();
        join(group_name("site", &inv.site.name), &inv.site.name, name)?;
        if let Some(rack) = &h.rack {
            join(group_name("rack", rack), rack, name)?;
        }
        join(group_name("role", h.role.as_str()), h.role.as_str(), name)?;
        join(group_name("state", state.as_str()), state.as_str(), name)?;
        if let Some(g) = &h.hardware.gpus {
            join(group_name("gpu", &g.model), &g.model, name)?;
            join("gpu_nodes".into(), "gpu_nodes", name)?;
        }
        if let Some(ib) = &h.hardware.infiniband {
            join("infiniband".into(), "infiniband", name)?;
            if ib.subnet_manager {
                join("ib_subnet_managers".into(), "ib_subnet_managers", name)?;
            }
        }
        match h.role {
            Role::ControlPlane => join("kube_control_plane".into(), "kube_control_plane", name)?,
            Role::Gpu | Role::Storage | Role::Login => {
                join("kube_workers".into(), "kube_workers", name)?
            }
            Role::Switch | Role::Gateway => {}
        }
        hosts.insert(h.name.clone(), vars);
    }
    Ok(Rendered {
        hosts: HostsFile {
            all: AllGroup {
                hosts,
                children: groups,
            },
        },
        group_vars: group_vars(inv),
    })
}

fn host_vars(inv: &Inventory, h: &Host, state: HostState) -> HostVars {
    let ipoib = inv
        .subnets
        .iter()
        .filter(|s| s.purpose == Purpose::Ipoib)
        .filter_map(|s| h.addresses.get(&s.name).map(|ip| (s, ip)))
        .enumerate()
        .map(|(i, (s, ip))| Ipoib {
            device: format!("ib{i}"),
            subnet: s.name.clone(),
            address: ip.to_string(),
            prefix: s.cidr.prefix_len(),
        })
        .collect();
    let gpus = h.hardware.gpus.as_ref();
    let ib = h.hardware.infiniband.as_ref();
    HostVars {
        ansible_host: connect_address(inv, h),
        bootgate_host: h.name.clone(),
        bootgate_site: inv.site.name.clone(),
        bootgate_rack: h.rack.clone().unwrap_or_default(),
        bootgate_position: h.position.unwrap_or(0),
        bootgate_role: h.role.as_str().to_string(),
        bootgate_state: state.as_str().to_string(),
        bootgate_provisioning_ip: inv
            .provisioning_ip(h)
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
        bootgate_bmc_ip: h
            .bmc
            .as_ref()
            .map(|b| b.address.to_string())
            .unwrap_or_default(),
        bootgate_addresses: h
            .addresses
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
        bootgate_ipoib: ipoib,
        bootgate_gpu_model: gpus.map(|g| g.model.clone()).unwrap_or_default(),
        bootgate_gpu_count: gpus.map_or(0, |g| g.count),
        bootgate_nvswitch: gpus.is_some_and(|g| g.nvswitch),
        bootgate_ib_hca_count: ib.map_or(0, |i| i.hca_count),
        bootgate_ib_rate_gbps: ib.map_or(0, |i| i.rate_gbps),
        bootgate_ib_subnet_manager: ib.is_some_and(|i| i.subnet_manager),
        bootgate_labels: h.labels.clone(),
    }
}

fn group_vars(inv: &Inventory) -> GroupVars {
    let s = &inv.site.settings;
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let oidc = s.oidc.as_ref();
    GroupVars {
        bootgate_domain: text(&s.domain),
        bootgate_ntp_servers: s.ntp_servers.clone(),
        bootgate_users: s
            .users
            .iter()
            .map(|u| UserVars {
                name: u.name.clone(),
                ssh_keys: u.ssh_keys.clone(),
                sudo: u.sudo,
            })
            .collect(),
        bootgate_hosts_entries: inv
            .hosts
            .iter()
            .filter_map(|h| {
                inv.provisioning_ip(h).map(|ip| HostsEntry {
                    name: h.name.clone(),
                    address: ip.to_string(),
                })
            })
            .collect(),
        bootgate_nvidia_repo_url: text(&s.packages.nvidia_repo_url),
        bootgate_nvidia_driver_branch: text(&s.packages.nvidia_driver_branch),
        bootgate_nvidia_container_toolkit_repo_url: text(
            &s.packages.nvidia_container_toolkit_repo_url,
        ),
        bootgate_doca_repo_url: text(&s.packages.doca_repo_url),
        bootgate_kubernetes_version: text(&s.kubernetes.version),
        bootgate_kubernetes_repo_url: text(&s.packages.kubernetes_repo_url),
        bootgate_kube_api_endpoint: text(&s.kubernetes.api_endpoint),
        bootgate_kube_gpu_taint: s
            .kubernetes
            .gpu_taint
            .clone()
            .unwrap_or_else(|| DEFAULT_GPU_TAINT.to_string()),
        bootgate_oidc_client_id: oidc.map(|o| o.client_id.clone()).unwrap_or_default(),
        bootgate_oidc_issuer_url: oidc.map_or_else(
            || "https://accounts.google.com".to_string(),
            |o| o.issuer_url.clone(),
        ),
        bootgate_oidc_username_claim: oidc
            .map_or_else(|| "email".to_string(), |o| o.username_claim.clone()),
        bootgate_oidc_groups_claim: oidc
            .map_or_else(|| "groups".to_string(), |o| o.groups_claim.clone()),
        bootgate_oidc_admins: oidc.map(|o| o.admins.clone()).unwrap_or_default(),
        bootgate_oidc_viewers: oidc.map(|o| o.viewers.clone()).unwrap_or_default(),
    }
}

/// YAML as Ansible reads it: YAML 1.1 look-alikes (`yes`, `12:30`, `2024-01-01`, `0x10`)
/// are quoted so they stay strings; long strings (SSH keys) stay on one line.
pub fn to_yaml<T: Serialize>(value: &T) -> Result<String, HandoffError> {
    let mut opt = serde_saphyr::SerializerOptions::default();
    opt.prefer_block_scalars = false;
    let body = serde_saphyr::to_string_with_options(value, opt)
        .map_err(|e| HandoffError::Yaml(e.to_string()))?;
    Ok(format!(
        "# Generated by `bootgate playbook render`; edit the inventory, not this file.\n---\n{body}"
    ))
}

impl Rendered {
    /// The files of the inventory directory, relative path → content.
    pub fn files(&self) -> Result<Vec<(&'static str, String)>, HandoffError> {
        Ok(vec![
            ("hosts.yml", to_yaml(&self.hosts)?),
            ("group_vars/all.yml", to_yaml(&self.group_vars)?),
        ])
    }

    /// Writes `hosts.yml` and `group_vars/all.yml` into `dir`, replacing what was there as a
    /// whole: the files are written to a sibling temporary directory, which is then renamed
    /// into place (a concurrent `ansible-playbook` sees the old or the new inventory).
    pub fn write_dir(&self, dir: &Path) -> Result<(), HandoffError> {
        let files = self.files()?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "inventory".into());
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        for (rel, text) in &files {
            let path = tmp.join(rel);
            if let Some(p) = path.parent() {
                std::fs::create_dir_all(p).map_err(io_err(p))?;
            }
            std::fs::write(&path, text).map_err(io_err(&path))?;
        }
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        let had_old = dir.exists();
        if had_old {
            std::fs::rename(dir, &old).map_err(io_err(dir))?;
        }
        std::fs::rename(&tmp, dir).map_err(io_err(dir))?;
        if had_old {
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_are_ansible_safe() {
        assert_eq!(group_name("gpu", "H100-SXM5-80GB"), "gpu_h100_sxm5_80gb");
        assert_eq!(group_name("role", "control-plane"), "role_control_plane");
        assert_eq!(group_name("rack", "lab-r1"), "rack_lab_r1");
        assert_eq!(group_name("rack", "Row A/1.2"), "rack_row_a_1_2");
    }

    #[test]
    fn yaml_quotes_yaml11_lookalikes() {
        let mut m = BTreeMap::new();
        for v in [
            "yes",
            "no",
            "on",
            "off",
            "y",
            "12:30",
            "2024-01-01",
            "0x10",
            "1e3",
            "~",
            "null",
            "true",
            ".inf",
            "0o17",
            "010",
        ] {
            m.insert(format!("k-{v}"), v.to_string());
        }
        let y = to_yaml(&m).unwrap();
        for line in y.lines().skip(2) {
            let (_, v) = line.split_once(": ").unwrap();
            assert!(
                v.starts_with('\'') || v.starts_with('"'),
                "unquoted: {line}"
            );
        }
    }
}
