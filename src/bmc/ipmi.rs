//! IPMI fallback: `ipmitool -I lanplus` as a process edge, for BMCs the inventory marks as
//! IPMI. The password goes through the `IPMI_PASSWORD` environment variable (`-E`), never
//! argv (which any local user can read in /proc). Each run has a deadline and is killed when
//! it passes; outputs are parsed by the pure functions at the bottom.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::Command;

use super::{BmcError, BmcSettings, BmcTarget, BootSource, OverrideMode, PowerState, ResetType};

/// What `chassis power` can do, as Redfish reset types. IPMI has no graceful restart and
/// no power-button press.
pub const RESET_TYPES: &[ResetType] = &[
    ResetType::On,
    ResetType::ForceOff,
    ResetType::GracefulShutdown,
    ResetType::ForceRestart,
    ResetType::PowerCycle,
    ResetType::Nmi,
];

/// RMCP+ cipher suite 3 (RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128): the one every BMC
/// since IPMI 2.0 implements (MAAS defaults to it too). ipmitool's default, 17, is not
/// answered by older firmware (nor by OpenIPMI's ipmi_sim), which looks like a timeout.
pub const CIPHER_SUITE: u8 = 3;

/// Bytes of stderr kept for an error.
const STDERR_TAIL: usize = 400;

pub struct Ipmitool {
    program: PathBuf,
    settings: BmcSettings,
}

impl Ipmitool {
    pub fn new(settings: BmcSettings) -> Ipmitool {
        Ipmitool {
            program: PathBuf::from("ipmitool"),
            settings,
        }
    }

    pub fn program(mut self, program: PathBuf) -> Ipmitool {
        self.program = program;
        self
    }

    /// The argv (without the program) for `args` against `t`; no secret in it.
    pub fn argv(&self, t: &BmcTarget, args: &[&str]) -> Vec<String> {
        // ipmitool's own retransmission (-N seconds, -R tries) must fit our deadline.
        let tries = self.settings.retries + 1;
        let per_try = (self.settings.timeout.as_secs() / u64::from(tries)).max(1);
        let mut v: Vec<String> = [
            "-I",
            "lanplus",
            "-H",
            &t.address.to_string(),
            "-p",
            &t.port.to_string(),
            "-U",
            &t.credential.username,
            "-E",
            "-C",
            &CIPHER_SUITE.to_string(),
            "-N",
            &per_try.to_string(),
            "-R",
            &tries.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// Runs ipmitool; stdout on success.
    async fn run(&self, t: &BmcTarget, args: &[&str]) -> Result<String, BmcError> {
        let command = args.join(" ");
        let mut cmd = Command::new(&self.program);
        cmd.args(self.argv(t, args))
            .env("IPMI_PASSWORD", t.credential.password.expose())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| BmcError::Ipmi {
            host: t.host.clone(),
            bmc: t.bmc_label(),
            command: command.clone(),
            status: "not started".to_string(),
            stderr: format!("cannot run {}: {e}", self.program.display()),
        })?;
        // Dropping the future on timeout drops the child, which kills it (kill_on_drop).
        let deadline = self.settings.timeout + std::time::Duration::from_secs(1);
        let out = match tokio::time::timeout(deadline, child.wait_with_output()).await {
            Err(_) => {
                return Err(BmcError::Timeout {
                    host: t.host.clone(),
                    bmc: t.bmc_label(),
                    url: format!("ipmitool {command}"),
                    deadline,
                });
            }
            Ok(Err(e)) => {
                return Err(BmcError::Ipmi {
                    host: t.host.clone(),
                    bmc: t.bmc_label(),
                    command,
                    status: "wait failed".to_string(),
                    stderr: e.to_string(),
                });
            }
            Ok(Ok(out)) => out,
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if is_auth_failure(&stderr) {
            return Err(BmcError::Unauthorized {
                host: t.host.clone(),
                bmc: t.bmc_label(),
                url: format!("ipmi {command}"),
                user: t.credential.username.clone(),
            });
        }
        let mut stderr = tail(&stderr);
        if stderr.contains("Unable to establish IPMI v2") {
            // ipmitool cannot tell a wrong password from a BMC that ignores the cipher suite.
            stderr.push_str(&format!(
                " (check the password of user {:?} in the secrets file, and that the BMC takes RMCP+ cipher suite {CIPHER_SUITE})",
                t.credential.username
            ));
        }
        Err(BmcError::Ipmi {
            host: t.host.clone(),
            bmc: t.bmc_label(),
            command,
            status: out.status.to_string(),
            stderr,
        })
    }

    pub async fn power_state(&self, t: &BmcTarget) -> Result<PowerState, BmcError> {
        let out = self.run(t, &["chassis", "power", "status"]).await?;
        parse_power_status(&out).ok_or_else(|| BmcError::Protocol {
            host: t.host.clone(),
            url: t.bmc_label(),
            reason: format!("unexpected `chassis power status` output {:?}", out.trim()),
        })
    }

    pub async fn reset(&self, t: &BmcTarget, kind: ResetType) -> Result<(), BmcError> {
        let Some(verb) = power_verb(kind) else {
            return Err(BmcError::UnsupportedReset {
                host: t.host.clone(),
                bmc: t.bmc_label(),
                kind,
                allowed: RESET_TYPES.to_vec(),
            });
        };
        tracing::info!(host = %t.host, reset = %kind, "IPMI chassis power {verb}");
        self.run(t, &["chassis", "power", verb]).await.map(|_| ())
    }

    /// `chassis bootdev pxe options=efiboot`: the boot flags are valid for the next boot
    /// only (IPMI boot options parameter 5 without the persistent bit).
    pub async fn set_boot_override(
        &self,
        t: &BmcTarget,
        source: BootSource,
    ) -> Result<OverrideMode, BmcError> {
        if source != BootSource::Pxe {
            return Err(BmcError::Unsupported {
                host: t.host.clone(),
                bmc: t.bmc_label(),
                what: format!("boot from {source} over IPMI (only pxe)"),
            });
        }
        self.run(t, &["chassis", "bootdev", "pxe", "options=efiboot"])
            .await?;
        Ok(OverrideMode::Once)
    }

    pub async fn clear_boot_override(&self, t: &BmcTarget) -> Result<(), BmcError> {
        self.run(t, &["chassis", "bootdev", "none", "options=efiboot"])
            .await
            .map(|_| ())
    }
}

/// The `chassis power` verb for a reset type.
pub fn power_verb(kind: ResetType) -> Option<&'static str> {
    match kind {
        ResetType::On => Some("on"),
        ResetType::ForceOff => Some("off"),
        ResetType::GracefulShutdown => Some("soft"),
        ResetType::ForceRestart => Some("reset"),
        ResetType::PowerCycle => Some("cycle"),
        ResetType::Nmi => Some("diag"),
        ResetType::GracefulRestart | ResetType::PushPowerButton => None,
    }
}

/// `Chassis Power is on` / `Chassis Power is off`.
pub fn parse_power_status(out: &str) -> Option<PowerState> {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("Chassis Power is"))?;
    match line.trim().trim_start_matches("Chassis Power is").trim() {
        "on" => Some(PowerState::On),
        "off" => Some(PowerState::Off),
        _ => Some(PowerState::Unknown),
    }
}

/// ipmitool's words for a rejected login (RAKP failures, unknown user).
pub fn is_auth_failure(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("unauthorized name")
        || s.contains("rakp 2 hmac is invalid")
        || s.contains("rakp 2 message indicates an error")
        || s.contains("invalid user name")
        || s.contains("incorrect password")
        || s.contains("insufficient privilege")
}

fn tail(s: &str) -> String {
    let t = s.trim();
    if t.len() <= STDERR_TAIL {
        return t.to_string();
    }
    let mut start = t.len() - STDERR_TAIL;
    while !t.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &t[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_status_lines() {
        assert_eq!(
            parse_power_status("Chassis Power is on\n"),
            Some(PowerState::On)
        );
        assert_eq!(
            parse_power_status("Chassis Power is off\n"),
            Some(PowerState::Off)
        );
        assert_eq!(parse_power_status("garbage"), None);
    }

    #[test]
    fn every_advertised_reset_has_a_verb() {
        for r in RESET_TYPES {
            assert!(power_verb(*r).is_some(), "{r}");
        }
        assert_eq!(power_verb(ResetType::GracefulRestart), None);
    }

    #[test]
    fn auth_failures() {
        assert!(is_auth_failure(
            "Error in open session response message : invalid user name\n"
        ));
        assert!(is_auth_failure("> RAKP 2 HMAC is invalid\n"));
        assert!(!is_auth_failure(
            "Unable to establish IPMI v2 / RMCP+ session\n"
        ));
    }
}
