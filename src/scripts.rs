//! Serving a host its boot script, for both transports: HTTP (`/ipxe/mac/{mac}`) and TFTP
//! (the generated file `hosts/{mac}.ipxe`). Choosing and rendering are pure
//! (`crate::boot::plan`, `crate::boot::render`); this is the edge around them: the host's
//! state from the store, the per-boot token written to the store before the script leaves,
//! the state move, the event.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use crate::boot::Plan;
use crate::events::EventSink;
use crate::identity::{self, BOOT_KEY_NAME, BootKey, Proof, RefusalBudget};
use crate::inventory::Host;
use crate::model::{BootPurpose, BootToken, EventKind, NewEvent, Store, StoreError};
use crate::snapshot::{Loaded, Snapshot, Whois};
use crate::types::{HostState, MacAddr};

/// How long a per-boot token stays valid: an install (image download, partitioning, package
/// installation) on a slow mirror can take hours; a day-old boot is over in any case.
pub const BOOT_TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

/// Why a script could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The script carries a token and `source` does not hold `mac`'s lease.
    #[error("the script of {mac} is not served to {from}: {reason}")]
    Refused {
        mac: MacAddr,
        from: Ipv4Addr,
        reason: &'static str,
    },
    #[error("rendering the {template} script for {mac}: {source}")]
    Render {
        template: &'static str,
        mac: MacAddr,
        source: minijinja::Error,
    },
}

/// Which transport fetched the script (the event's actor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Http,
    Tftp,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Http => "http",
            Via::Tftp => "tftp",
        }
    }
}

/// A rendered script and the template it came from.
#[derive(Debug, Clone)]
pub struct Served {
    pub template: &'static str,
    pub text: String,
}

/// Which token purpose a plan needs (pure): install and rescue boots phone home.
pub fn token_purpose(plan: &Plan) -> Option<BootPurpose> {
    match plan {
        Plan::Install { .. } => Some(BootPurpose::Install),
        Plan::Rescue { image: Some(_) } => Some(BootPurpose::Rescue),
        _ => None,
    }
}

/// What serving scripts uses of the daemon (built by `app.rs`, shared by the HTTP and TFTP
/// listeners): the inventory in force, the host and boot-token seams of the store, who
/// holds which address, the event sink, the base URL scripts chain to, and the cache of
/// token-less scripts.
pub struct ScriptService {
    pub inventory: Snapshot,
    pub store: Arc<dyn Store>,
    /// Who holds an address: the first proof of a boot's identity ([`crate::identity`]).
    pub whois: Whois,
    pub events: EventSink,
    /// `[boot] http_base`: where iPXE fetches kernels, initrds and the next script.
    pub http_base: String,
    pub cache: ScriptCache,
    /// The site's boot-token key, read from (or created in) the store at first use.
    pub key: tokio::sync::OnceCell<BootKey>,
    /// How many refusals (scripts and phone-homes) may write events.
    pub refusals: RefusalBudget,
}

impl ScriptService {
    pub fn new(
        inventory: Snapshot,
        store: Arc<dyn Store>,
        whois: Whois,
        events: EventSink,
        http_base: String,
    ) -> ScriptService {
        ScriptService {
            inventory,
            store,
            whois,
            events,
            http_base,
            cache: ScriptCache::default(),
            key: tokio::sync::OnceCell::new(),
            refusals: RefusalBudget::default(),
        }
    }

    /// Chooses, renders and records the script for `mac`, fetched from `source`. An install
    /// or rescue script carries the boot's token and is served only to the address that
    /// holds the MAC's lease (else [`ServeError::Refused`]); the token is derived from the
    /// lease's binding, so a re-fetch within the boot gets the same one, and it is stored
    /// (durably) before the script is returned; an install also moves the host to
    /// `provisioning`.
    pub async fn serve(
        &self,
        mac: MacAddr,
        via: Via,
        source: Ipv4Addr,
    ) -> Result<Served, ServeError> {
        let loaded = self.inventory.load();
        let inv = &loaded.inventory;
        let host = inv.host_by_boot_mac(&loaded.macs, mac);
        let record = self.store.host_by_mac(mac).await?;
        let state = record.as_ref().map_or(HostState::Unknown, |r| r.state);
        let profile = host.and_then(|h| inv.profile(h));
        let plan = crate::boot::plan(state, profile, &loaded.boot);
        let template = plan.template();
        let (token, holder) = match (token_purpose(&plan), host) {
            (Some(purpose), Some(h)) => match self.proof(mac, source).await? {
                Proof::Holder { binding } => {
                    let token = self
                        .issue_token(mac, &h.name, purpose, binding, state, via)
                        .await?;
                    (Some(token), true)
                }
                refused @ Proof::NotHolder { .. } => {
                    let reason = refused.reason();
                    self.refuse(
                        NewEvent::new(EventKind::BootScriptRefused, via.as_str())
                            .mac(mac)
                            .host(h.name.clone())
                            .detail(serde_json::json!({
                                "template": template,
                                "source": source,
                                "reason": reason,
                            })),
                        "script",
                        source,
                    )
                    .await;
                    return Err(ServeError::Refused {
                        mac,
                        from: source,
                        reason,
                    });
                }
            },
            _ => (
                None,
                self.whois.lease_holder(source).map(|(m, _)| m) == Some(mac),
            ),
        };
        let text = self.render(&loaded, &plan, mac, host, state, token.as_deref())?;
        metrics::counter!("bootgate_ipxe_scripts_total", "template" => template, "via" => via.as_str())
            .increment(1);
        // Fetches by the lease holder are all recorded; anyone else's (a token-less script
        // for a MAC it does not hold) only within the refusal budget.
        if holder || self.refusals.admit(source, std::time::Instant::now()) {
            let mut ev = NewEvent::new(EventKind::BootScriptServed, via.as_str())
                .mac(mac)
                .detail(serde_json::json!({
                    "template": template,
                    "state": state,
                    "source": source,
                    "reason": match &plan { Plan::Broken { reason } => Some(reason.clone()), _ => None },
                }));
            if let Some(h) = host {
                ev = ev.host(h.name.clone());
            }
            self.events.record(ev).await;
        }
        Ok(Served { template, text })
    }

    /// Whether `source` speaks for `mac`: it holds the MAC's lease in this gateway's book or,
    /// when the book does not say so (the other gateway bound it a moment ago), in the
    /// store.
    pub async fn proof(&self, mac: MacAddr, source: Ipv4Addr) -> Result<Proof, StoreError> {
        let in_book = identity::proof(mac, self.whois.lease_holder(source));
        if matches!(in_book, Proof::Holder { .. }) {
            return Ok(in_book);
        }
        let now = Timestamp::now();
        let stored = self
            .store
            .get_lease(source)
            .await?
            .filter(|l| l.state == crate::model::LeaseState::Active && l.ends > now);
        Ok(match stored {
            Some(l) => identity::proof(mac, Some((l.mac, l.ends))),
            None => in_book,
        })
    }

    /// Records a refusal: always counted (`bootgate_refused_total{what}`), written as an
    /// event (and logged) only within the budget of its source.
    pub async fn refuse(&self, event: NewEvent, what: &'static str, source: Ipv4Addr) {
        metrics::counter!("bootgate_refused_total", "what" => what).increment(1);
        if self.refusals.admit(source, std::time::Instant::now()) {
            tracing::warn!(%source, what, detail = %event.detail, "refused");
            self.events.record(event).await;
            self.events.flush().await;
        } else {
            metrics::counter!("bootgate_refused_unrecorded_total", "what" => what).increment(1);
        }
    }

    /// Stores the boot's token for `mac` (durably, before the script leaves; the same token
    /// again for a re-fetch, which changes nothing) and, for an install, moves the host to
    /// `provisioning`.
    async fn issue_token(
        &self,
        mac: MacAddr,
        host: &str,
        purpose: BootPurpose,
        binding: Timestamp,
        state: HostState,
        via: Via,
    ) -> Result<String, ServeError> {
        let key = self
            .key
            .get_or_try_init(|| async {
                let secret = self
                    .store
                    .site_key(BOOT_KEY_NAME, &BootKey::candidate())
                    .await?;
                Ok::<_, StoreError>(BootKey::new(&secret))
            })
            .await?;
        let token = key.token(mac, host, purpose, binding);
        let issued = Timestamp::now();
        let expires = issued.checked_add(BOOT_TOKEN_TTL).unwrap_or(Timestamp::MAX);
        self.store
            .issue_boot_token(&BootToken {
                mac,
                host: host.to_string(),
                token: token.clone(),
                purpose,
                issued,
                expires,
            })
            .await?;
        if purpose == BootPurpose::Install && state != HostState::Provisioning {
            let moved = self
                .store
                .set_host_state(
                    host,
                    Some(state),
                    HostState::Provisioning,
                    via.as_str(),
                    serde_json::json!({"reason": "install script served"}),
                )
                .await;
            match moved {
                Ok(_) | Err(StoreError::StateMismatch { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(token)
    }

    /// Renders the plan's script. A script without a token is a pure function of the
    /// loaded inventory and assets, the MAC and the host's state: rendered once per
    /// (generation, MAC, state).
    fn render(
        &self,
        loaded: &Loaded,
        plan: &Plan<'_>,
        mac: MacAddr,
        host: Option<&Host>,
        state: HostState,
        token: Option<&str>,
    ) -> Result<String, ServeError> {
        let key = ScriptKey {
            generation: loaded.generation,
            mac,
            state,
        };
        if token.is_none()
            && let Some(text) = self.cache.get(&key)
        {
            return Ok(text);
        }
        let inv = &loaded.inventory;
        let text = crate::boot::render(&loaded.boot, plan, &self.http_base, mac, host, inv, token)
            .map_err(|source| ServeError::Render {
                template: plan.template(),
                mac,
                source,
            })?;
        if token.is_none() {
            self.cache.put(key, text.clone());
        }
        Ok(text)
    }
}

/// What a token-less script depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScriptKey {
    generation: u64,
    mac: MacAddr,
    state: HostState,
}

/// Entries kept at most; past this the cache starts over.
const SCRIPT_CACHE_ENTRIES: usize = 16_384;

/// Rendered token-less scripts (discovery, local disk, rescue shell, broken), so a client
/// re-fetching its script costs no template run. Install and rescue-image scripts carry
/// their boot's token and are never cached. A reload (new generation) or a state move
/// changes the key, so nothing stale is served.
#[derive(Default)]
pub struct ScriptCache {
    entries: std::sync::Mutex<std::collections::HashMap<ScriptKey, String>>,
}

impl ScriptCache {
    fn get(&self, key: &ScriptKey) -> Option<String> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(key).cloned()
    }

    fn put(&self, key: ScriptKey, text: String) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= SCRIPT_CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(key, text);
    }
}

/// The TFTP name of a host's script: `hosts/<mac>.ipxe` (any MAC spelling the daemon
/// parses: `52:54:00:…` as iPXE's `${mac}` expands, or with dashes). Pure.
pub fn tftp_script_mac(path: &str) -> Option<MacAddr> {
    path.strip_prefix("hosts/")?
        .strip_suffix(".ipxe")?
        .parse()
        .ok()
}

/// The TFTP server's generated files: per-host iPXE scripts, rendered exactly as over
/// HTTP.
pub struct TftpScripts(pub Arc<ScriptService>);

#[async_trait::async_trait]
impl crate::tftp::Generated for TftpScripts {
    async fn get(&self, path: &str, client: SocketAddrV4) -> Option<Vec<u8>> {
        let mac = tftp_script_mac(path)?;
        match self.0.serve(mac, Via::Tftp, *client.ip()).await {
            Ok(s) => Some(s.text.into_bytes()),
            // Counted and (within its budget) recorded by `serve`.
            Err(ServeError::Refused { .. }) => None,
            Err(e) => {
                // Not found is what the client sees; the reason goes to the log.
                tracing::error!(%mac, %client, error = %e, "TFTP script not served");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tftp_script_names() {
        let mac: MacAddr = "52:54:00:d7:8e:1d".parse().unwrap();
        assert_eq!(tftp_script_mac("hosts/52:54:00:d7:8e:1d.ipxe"), Some(mac));
        assert_eq!(tftp_script_mac("hosts/52-54-00-d7-8e-1d.ipxe"), Some(mac));
        assert_eq!(tftp_script_mac("hosts/52:54:00:d7:8e:1d"), None);
        assert_eq!(tftp_script_mac("other/52:54:00:d7:8e:1d.ipxe"), None);
        assert_eq!(tftp_script_mac("hosts/nope.ipxe"), None);
    }

    #[test]
    fn install_and_rescue_boots_get_tokens() {
        assert_eq!(token_purpose(&Plan::Local), None);
        assert_eq!(token_purpose(&Plan::Discovery), None);
        assert_eq!(token_purpose(&Plan::Rescue { image: None }), None);
        let image = crate::boot::Image {
            name: "i".into(),
            kernel: "k".into(),
            initrd: "r".into(),
            cmdline: String::new(),
        };
        assert_eq!(
            token_purpose(&Plan::Rescue {
                image: Some(&image)
            }),
            Some(BootPurpose::Rescue)
        );
        assert_eq!(
            token_purpose(&Plan::Install { image: &image }),
            Some(BootPurpose::Install)
        );
    }
}
