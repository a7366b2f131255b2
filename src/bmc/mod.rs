//! BMC power control behind one small seam, [`PowerControl`]: power state, reset, one-time
//! boot override. [`Bmcs`] is the production implementation: Redfish (typed client over
//! reqwest, vendor quirks in one place) or `ipmitool` for BMCs the inventory marks as IPMI,
//! with a per-gateway concurrency bound, timeouts on every call and bounded retries.
//!
//! Credentials come from the secrets file by name ([`BmcTarget::resolve`]) and never appear
//! in any message: errors name the host, BMC URL and user, never the password.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;

use crate::inventory::{BmcProtocol, BmcScheme, BmcVendor, Host, Inventory};
use crate::secrets::{Secret, Secrets};
use crate::types::text_enum;

pub mod ipmi;
pub mod quirks;
pub mod redfish;
pub mod tls;

text_enum!(
    /// A system's power state as the BMC reports it.
    PowerState {
        On => "on",
        Off => "off",
        PoweringOn => "powering-on",
        PoweringOff => "powering-off",
        /// Reported as something else (`Paused`, absent, an OEM value).
        Unknown => "unknown",
    }
);

impl PowerState {
    /// Maps Redfish `PowerState` (Resource.PowerState: On, Off, PoweringOn, PoweringOff,
    /// Paused); anything else is `Unknown`.
    pub fn from_redfish(s: &str) -> PowerState {
        match s {
            "On" => PowerState::On,
            "Off" => PowerState::Off,
            "PoweringOn" => PowerState::PoweringOn,
            "PoweringOff" => PowerState::PoweringOff,
            _ => PowerState::Unknown,
        }
    }
}

text_enum!(
    /// `ComputerSystem.Reset` ResetType values (Resource.ResetType), spelled as Redfish does.
    ResetType {
        On => "On",
        ForceOff => "ForceOff",
        GracefulShutdown => "GracefulShutdown",
        GracefulRestart => "GracefulRestart",
        ForceRestart => "ForceRestart",
        PowerCycle => "PowerCycle",
        Nmi => "Nmi",
        PushPowerButton => "PushPowerButton",
    }
);

text_enum!(
    /// What to boot from once.
    BootSource {
        /// PXE on the boot NIC (`BootSourceOverrideTarget: Pxe`).
        Pxe => "pxe",
        /// UEFI HTTP boot (`BootSourceOverrideTarget: UefiHttp`).
        UefiHttp => "uefi-http",
    }
);

impl BootSource {
    /// The `BootSourceOverrideTarget` value.
    pub fn redfish_name(&self) -> &'static str {
        match self {
            BootSource::Pxe => "Pxe",
            BootSource::UefiHttp => "UefiHttp",
        }
    }
}

text_enum!(
    /// The boot override a BMC actually applied.
    OverrideMode {
        /// Next boot only.
        Once => "once",
        /// Every boot until cleared: the caller must clear it after the boot it wanted.
        Continuous => "continuous",
    }
);

impl OverrideMode {
    pub fn redfish_name(&self) -> &'static str {
        match self {
            OverrideMode::Once => "Once",
            OverrideMode::Continuous => "Continuous",
        }
    }
}

/// How to trust a BMC's HTTPS certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsPolicy {
    /// `http` scheme, or IPMI: no TLS.
    Plain,
    /// Verify against the system roots, or only against this CA bundle (PEM) when given.
    Verify { ca_file: Option<PathBuf> },
    /// Accept any certificate (`insecure = true` in the inventory); warned once per BMC.
    Insecure,
}

/// The login for one BMC. `Debug` shows the password as `***`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The credential's name in the secrets file (what the inventory references).
    pub name: String,
    pub username: String,
    pub password: Secret,
}

/// Everything needed to reach one host's BMC, resolved from inventory + secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmcTarget {
    /// The inventory host this BMC powers (named in every error).
    pub host: String,
    /// Redfish: the base URL (`https://10.21.0.11:443/`); IPMI: `ipmi://ADDR:PORT/`.
    pub endpoint: Url,
    pub address: Ipv4Addr,
    pub port: u16,
    /// Redfish system Id or Name when the BMC manages several systems.
    pub system: Option<String>,
    pub vendor: BmcVendor,
    pub protocol: BmcProtocol,
    pub credential: Credential,
    pub tls: TlsPolicy,
}

impl BmcTarget {
    /// The BMC of `host` as the inventory declares it, with its login from `secrets`.
    /// `inv` supplies the site-wide CA (`[site] bmc_ca_file`).
    pub fn resolve(host: &Host, inv: &Inventory, secrets: &Secrets) -> Result<BmcTarget, BmcError> {
        let Some(bmc) = &host.bmc else {
            return Err(BmcError::NoBmc {
                host: host.name.clone(),
            });
        };
        let Some(login) = secrets.bmc(&bmc.credential) else {
            return Err(BmcError::UnknownCredential {
                host: host.name.clone(),
                credential: bmc.credential.clone(),
            });
        };
        let (scheme, default_port) = match (bmc.protocol, bmc.scheme) {
            (BmcProtocol::Ipmi, _) => ("ipmi", 623),
            (BmcProtocol::Redfish, BmcScheme::Https) => ("https", 443),
            (BmcProtocol::Redfish, BmcScheme::Http) => ("http", 80),
        };
        let port = bmc.port.unwrap_or(default_port);
        let endpoint = Url::parse(&format!("{scheme}://{}:{port}/", bmc.address)).map_err(|e| {
            BmcError::Config {
                host: host.name.clone(),
                reason: format!("BMC address {}:{port}: {e}", bmc.address),
            }
        })?;
        let tls = match (bmc.protocol, bmc.scheme) {
            (BmcProtocol::Ipmi, _) | (_, BmcScheme::Http) => TlsPolicy::Plain,
            _ if bmc.insecure => TlsPolicy::Insecure,
            _ => TlsPolicy::Verify {
                ca_file: bmc.ca_file.clone().or_else(|| inv.site.bmc_ca_file.clone()),
            },
        };
        Ok(BmcTarget {
            host: host.name.clone(),
            endpoint,
            address: bmc.address,
            port,
            system: bmc.system.clone(),
            vendor: bmc.vendor,
            protocol: bmc.protocol,
            credential: Credential {
                name: bmc.credential.clone(),
                username: login.username.clone(),
                password: login.password.clone(),
            },
            tls,
        })
    }

    /// `https://10.0.0.1:443` (no trailing slash), for messages.
    pub fn bmc_label(&self) -> String {
        self.endpoint.as_str().trim_end_matches('/').to_string()
    }
}

/// Why a BMC call failed. Every variant names the host; none carries a password.
#[derive(Debug, thiserror::Error)]
pub enum BmcError {
    #[error("{host}: no bmc in the inventory")]
    NoBmc { host: String },
    #[error(
        "{host}: bmc.credential {credential:?} is not in the secrets file (add [bmc.{credential}] with username and password)"
    )]
    UnknownCredential { host: String, credential: String },
    #[error("{host}: {reason}")]
    Config { host: String, reason: String },
    #[error(
        "{host}: {url}: HTTP {status}{}{}",
        fmt_messages(messages),
        fmt_excerpt(messages, body)
    )]
    Http {
        host: String,
        method: String,
        url: String,
        status: u16,
        /// `@Message.ExtendedInfo[].Message` (and `error.message`) from the body.
        messages: Vec<String>,
        /// The first few hundred bytes of the body.
        body: String,
    },
    #[error(
        "{host}: BMC {bmc} refused the login of user {user:?} (HTTP 401 at {url}); check the credential in the secrets file"
    )]
    Unauthorized {
        host: String,
        bmc: String,
        url: String,
        user: String,
    },
    #[error("{host}: BMC {bmc} did not answer {url} within {}", fmt_duration(*deadline))]
    Timeout {
        host: String,
        bmc: String,
        url: String,
        deadline: Duration,
    },
    #[error("{host}: cannot reach BMC {bmc} ({url}): {reason}")]
    Connect {
        host: String,
        bmc: String,
        url: String,
        reason: String,
    },
    #[error("{host}: TLS with BMC {bmc}: {reason}")]
    Tls {
        host: String,
        bmc: String,
        reason: String,
    },
    #[error("{host}: BMC {url}: unexpected answer: {reason}")]
    Protocol {
        host: String,
        url: String,
        reason: String,
    },
    #[error("{host}: BMC {url} manages several systems ({}); set bmc.system in the inventory to one of them", systems.join(", "))]
    AmbiguousSystem {
        host: String,
        url: String,
        systems: Vec<String>,
    },
    #[error("{host}: BMC {url} has no system with Id or Name {wanted:?}; it has: {}", systems.join(", "))]
    NoSuchSystem {
        host: String,
        url: String,
        wanted: String,
        systems: Vec<String>,
    },
    #[error("{host}: BMC {bmc} does not offer reset type {kind}; it offers: {}", allowed.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", "))]
    UnsupportedReset {
        host: String,
        bmc: String,
        kind: ResetType,
        allowed: Vec<ResetType>,
    },
    #[error("{host}: BMC {bmc} cannot {what}")]
    Unsupported {
        host: String,
        bmc: String,
        what: String,
    },
    #[error("{host}: task {url} ended {state}{}", fmt_messages(messages))]
    TaskFailed {
        host: String,
        url: String,
        state: String,
        messages: Vec<String>,
    },
    #[error("{host}: task {url} still running after {}", fmt_duration(*deadline))]
    TaskTimeout {
        host: String,
        url: String,
        deadline: Duration,
    },
    /// A link (`@odata.id`, a task monitor or session `Location`, a redirect) that leaves
    /// the BMC's origin (scheme, host, port): nothing is sent there, so the BMC's login and
    /// session token reach the BMC only.
    #[error(
        "{host}: BMC {bmc} pointed to {link}, which is not on the BMC; refused (the BMC's credentials are only ever sent to {bmc})"
    )]
    OffBmc {
        host: String,
        bmc: String,
        link: String,
    },
    #[error("{host}: ipmitool {command} against {bmc} failed ({status}): {stderr}")]
    Ipmi {
        host: String,
        bmc: String,
        command: String,
        status: String,
        /// The end of ipmitool's stderr.
        stderr: String,
    },
}

impl BmcError {
    /// A bounded label for metrics and events (one per variant).
    pub fn kind(&self) -> &'static str {
        match self {
            BmcError::NoBmc { .. } => "no_bmc",
            BmcError::UnknownCredential { .. } => "unknown_credential",
            BmcError::Config { .. } => "config",
            BmcError::Http { .. } => "http",
            BmcError::Unauthorized { .. } => "unauthorized",
            BmcError::Timeout { .. } => "timeout",
            BmcError::Connect { .. } => "connect",
            BmcError::Tls { .. } => "tls",
            BmcError::Protocol { .. } => "protocol",
            BmcError::AmbiguousSystem { .. } => "ambiguous_system",
            BmcError::NoSuchSystem { .. } => "no_such_system",
            BmcError::UnsupportedReset { .. } => "unsupported_reset",
            BmcError::Unsupported { .. } => "unsupported",
            BmcError::TaskFailed { .. } => "task_failed",
            BmcError::TaskTimeout { .. } => "task_timeout",
            BmcError::OffBmc { .. } => "off_bmc",
            BmcError::Ipmi { .. } => "ipmi",
        }
    }

    /// The HTTP status, when the BMC answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            BmcError::Http { status, .. } => Some(*status),
            BmcError::Unauthorized { .. } => Some(401),
            _ => None,
        }
    }
}

fn fmt_messages(messages: &[String]) -> String {
    if messages.is_empty() {
        String::new()
    } else {
        format!(": {}", messages.join("; "))
    }
}

fn fmt_excerpt(messages: &[String], body: &str) -> String {
    if messages.is_empty() && !body.trim().is_empty() {
        format!(": {}", body.trim())
    } else {
        String::new()
    }
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// BMC power control: the seam the CLI, API and reset orchestration use.
#[async_trait::async_trait]
pub trait PowerControl: Send + Sync {
    async fn power_state(&self, t: &BmcTarget) -> Result<PowerState, BmcError>;
    /// The ResetType values this system advertises (Redfish: ResetType@Redfish.AllowableValues
    /// or the ActionInfo; quirks fill gaps).
    async fn reset_types(&self, t: &BmcTarget) -> Result<Vec<ResetType>, BmcError>;
    /// Issues the reset; follows a 202 task monitor to completion (bounded).
    async fn reset(&self, t: &BmcTarget, kind: ResetType) -> Result<(), BmcError>;
    /// One-time boot override; returns the mode actually applied (Once, or Continuous on
    /// BMCs that ignore Once).
    async fn set_boot_override(
        &self,
        t: &BmcTarget,
        source: BootSource,
    ) -> Result<OverrideMode, BmcError>;
    async fn clear_boot_override(&self, t: &BmcTarget) -> Result<(), BmcError>;
}

/// Tunables for [`Bmcs`] (`[bmc]` in bootgate.toml).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BmcSettings {
    /// Deadline for each request to a BMC (and for each ipmitool run).
    pub timeout: Duration,
    /// Extra attempts for idempotent requests after a connection error or a 503.
    pub retries: u32,
    /// BMC operations in flight at once from this gateway.
    pub concurrency: usize,
    /// How long a 202 task monitor may run before we give up.
    pub task_timeout: Duration,
}

impl Default for BmcSettings {
    fn default() -> Self {
        BmcSettings {
            timeout: Duration::from_secs(10),
            retries: 2,
            concurrency: 32,
            task_timeout: Duration::from_secs(120),
        }
    }
}

/// The production [`PowerControl`]: Redfish targets go to the Redfish client, IPMI targets
/// to ipmitool. At most `concurrency` operations run at once (the rest wait for a permit);
/// no lock is held across a BMC call.
pub struct Bmcs {
    settings: BmcSettings,
    /// Bounds BMC operations from this gateway (a rack-wide `power status` must not open
    /// hundreds of TLS sessions at once, and BMCs limit their own sessions).
    permits: Arc<tokio::sync::Semaphore>,
    redfish: redfish::Redfish,
    ipmi: ipmi::Ipmitool,
}

impl Bmcs {
    pub fn new(settings: BmcSettings) -> Self {
        Bmcs {
            permits: Arc::new(tokio::sync::Semaphore::new(settings.concurrency.max(1))),
            redfish: redfish::Redfish::new(settings.clone()),
            ipmi: ipmi::Ipmitool::new(settings.clone()),
            settings,
        }
    }

    /// Like [`Bmcs::new`] but running `program` instead of `ipmitool` from PATH.
    pub fn with_ipmitool(settings: BmcSettings, program: PathBuf) -> Self {
        let mut b = Bmcs::new(settings);
        b.ipmi = b.ipmi.program(program);
        b
    }

    pub fn settings(&self) -> &BmcSettings {
        &self.settings
    }

    async fn permit(&self) -> tokio::sync::OwnedSemaphorePermit {
        // The semaphore is never closed.
        Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("BMC semaphore closed")
    }
}

#[async_trait::async_trait]
impl PowerControl for Bmcs {
    #[tracing::instrument(skip_all, fields(host = %t.host, bmc = %t.bmc_label()))]
    async fn power_state(&self, t: &BmcTarget) -> Result<PowerState, BmcError> {
        let _p = self.permit().await;
        match t.protocol {
            BmcProtocol::Redfish => self.redfish.power_state(t).await,
            BmcProtocol::Ipmi => self.ipmi.power_state(t).await,
        }
    }

    #[tracing::instrument(skip_all, fields(host = %t.host, bmc = %t.bmc_label()))]
    async fn reset_types(&self, t: &BmcTarget) -> Result<Vec<ResetType>, BmcError> {
        let _p = self.permit().await;
        match t.protocol {
            BmcProtocol::Redfish => self.redfish.reset_types(t).await,
            BmcProtocol::Ipmi => Ok(ipmi::RESET_TYPES.to_vec()),
        }
    }

    #[tracing::instrument(skip_all, fields(host = %t.host, bmc = %t.bmc_label()))]
    async fn reset(&self, t: &BmcTarget, kind: ResetType) -> Result<(), BmcError> {
        let _p = self.permit().await;
        match t.protocol {
            BmcProtocol::Redfish => self.redfish.reset(t, kind).await,
            BmcProtocol::Ipmi => self.ipmi.reset(t, kind).await,
        }
    }

    #[tracing::instrument(skip_all, fields(host = %t.host, bmc = %t.bmc_label(), %source))]
    async fn set_boot_override(
        &self,
        t: &BmcTarget,
        source: BootSource,
    ) -> Result<OverrideMode, BmcError> {
        let _p = self.permit().await;
        match t.protocol {
            BmcProtocol::Redfish => self.redfish.set_boot_override(t, source).await,
            BmcProtocol::Ipmi => self.ipmi.set_boot_override(t, source).await,
        }
    }

    #[tracing::instrument(skip_all, fields(host = %t.host, bmc = %t.bmc_label()))]
    async fn clear_boot_override(&self, t: &BmcTarget) -> Result<(), BmcError> {
        let _p = self.permit().await;
        match t.protocol {
            BmcProtocol::Redfish => self.redfish.clear_boot_override(t).await,
            BmcProtocol::Ipmi => self.ipmi.clear_boot_override(t).await,
        }
    }
}

/// Polls `power_state` every `every` until it is `want` or `deadline` passes; returns the
/// last state seen. BMCs apply power changes asynchronously (a reset's 204 means "accepted").
pub async fn wait_for_power(
    pc: &dyn PowerControl,
    t: &BmcTarget,
    want: PowerState,
    deadline: Duration,
    every: Duration,
) -> Result<PowerState, BmcError> {
    let start = tokio::time::Instant::now();
    loop {
        let now = pc.power_state(t).await?;
        if now == want || start.elapsed() >= deadline {
            return Ok(now);
        }
        tokio::time::sleep(every).await;
    }
}
