//! What a network-booting client boots: from its PXE identity (option 93 architecture,
//! option 60 vendor class, iPXE user class / option 175) to a [`BootTarget`] the DHCP reply
//! builder turns into siaddr, `file`/option 67, option 66, option 60 and option 43.
//! Pure: no sockets, no store, no logging; the caller logs what it refuses.

use std::net::Ipv4Addr;

use serde::Serialize;

use crate::types::MacAddr;

mod settings;
pub use settings::BootSettings;

/// A client's PXE identity (RFC 4578 options 93/94/97, option 60 vendor class, option 77
/// user class, iPXE's option 175).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PxeInfo {
    /// Option 93 client system architecture (first entry): 0 BIOS, 7/9 x86-64 UEFI,
    /// 11 arm64 UEFI, 16 x86-64 UEFI HTTP, 19 arm64 UEFI HTTP.
    pub arch: Option<u16>,
    /// Option 60 starts with `PXEClient` (a firmware PXE client).
    pub pxe_client: bool,
    /// Option 60 starts with `HTTPClient` (UEFI HTTP boot).
    pub http_client: bool,
    /// Already running iPXE: option 77 user-class `iPXE` or option 175 present.
    pub ipxe: bool,
    /// Option 97 client machine identifier (SMBIOS UUID), lower-case hyphenated.
    pub uuid: Option<String>,
}

/// RFC 4578 §2.1 option 93 values, as maintained by IANA ("Processor Architecture Types",
/// dhcpv6-parameters registry). RFC 4578 as published has 7 = "EFI BC" and 9 = "EFI x86-64";
/// erratum 4624 swapped them and IANA follows the erratum, but firmware in the field sends
/// either for x86-64, so both are treated as x64 UEFI.
///
/// ```text
///  0 x86 BIOS                  11 ARM 64-bit UEFI          22 ARM 64-bit uboot
///  1 NEC/PC98 (deprecated)     12 PowerPC Open Firmware    23 ARM 32-bit uboot HTTP
///  2 Itanium                   13 PowerPC ePAPR            24 ARM 64-bit uboot HTTP
///  3 DEC Alpha (deprecated)    14 POWER OPAL v3            25 RISC-V 32-bit UEFI
///  4 Arc x86 (deprecated)      15 x86 UEFI HTTP            26 RISC-V 32-bit UEFI HTTP
///  5 Intel Lean Client (depr.) 16 x64 UEFI HTTP            27 RISC-V 64-bit UEFI
///  6 x86 UEFI (32-bit)         17 EBC UEFI HTTP            28 RISC-V 64-bit UEFI HTTP
///  7 x64 UEFI                  18 ARM 32-bit UEFI HTTP     29 RISC-V 128-bit UEFI
///  8 EFI Xscale (deprecated)   19 ARM 64-bit UEFI HTTP     30 RISC-V 128-bit UEFI HTTP
///  9 EBC (x64 firmware too)    20 PC/AT BIOS HTTP          ...
/// 10 ARM 32-bit UEFI           21 ARM 32-bit uboot
/// ```
///
/// Only the architectures a gateway's racks actually contain get a boot file; everything
/// else is [`Firmware::Unknown`] and is answered as plain DHCP.
mod arch {
    pub const X86_BIOS: u16 = 0;
    pub const X64_UEFI: u16 = 7;
    pub const EBC_OR_X64_UEFI: u16 = 9;
    pub const ARM64_UEFI: u16 = 11;
    pub const X64_UEFI_HTTP: u16 = 16;
    pub const ARM64_UEFI_HTTP: u16 = 19;
}

/// RFC 2131 §2: `file` is a 128-byte, NUL-terminated field.
const FILE_FIELD_LEN: usize = 128;

/// Boot file names per firmware, from the daemon config. TFTP names are relative to the TFTP
/// root; the HTTP ones are relative to the HTTP base (or full `http://` URLs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    /// Legacy BIOS PXE ROMs: an iPXE that drives the ROM's UNDI (works on every NIC).
    pub bios: String,
    /// x64 UEFI PXE over TFTP; `snponly.efi` where iPXE's own drivers misbehave on a NIC.
    pub uefi_x64: String,
    /// arm64 UEFI PXE over TFTP.
    pub uefi_arm64: String,
    /// x64 UEFI HTTP boot: fetched by the firmware over HTTP, so no TFTP at all.
    pub uefi_http_x64: String,
    /// arm64 UEFI HTTP boot.
    pub uefi_http_arm64: String,
}

impl Default for BootFiles {
    fn default() -> Self {
        BootFiles {
            bios: "undionly.kpxe".to_string(),
            uefi_x64: "ipxe.efi".to_string(),
            uefi_arm64: "ipxe-arm64.efi".to_string(),
            uefi_http_x64: "ipxe.efi".to_string(),
            uefi_http_arm64: "ipxe-arm64.efi".to_string(),
        }
    }
}

/// Everything besides the client's identity that decides its boot target.
#[derive(Debug, Clone, Copy)]
pub struct BootContext<'a> {
    /// Our address as the client reaches it: siaddr (next-server) and option 66.
    pub server: Ipv4Addr,
    /// Base URL of our HTTP server, e.g. `http://10.250.0.1:8080` (trailing `/` tolerated).
    pub http_base: &'a str,
    /// Per-firmware defaults from the daemon config.
    pub files: &'a BootFiles,
    /// Per-host or per-profile boot file from the inventory. Replaces the firmware-stage file
    /// only: a client already running iPXE always gets its script, or it would chainload
    /// itself forever.
    pub override_file: Option<&'a str>,
}

/// Which boot stage a client is in, from its option 93 and class identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Firmware {
    /// Legacy BIOS PXE ROM (arch 0, or `PXEClient` without option 93).
    Bios,
    /// x86-64 UEFI PXE (arch 7 or 9).
    UefiX64,
    /// arm64 UEFI PXE (arch 11).
    UefiArm64,
    /// x86-64 UEFI HTTP boot (arch 16).
    UefiHttpX64,
    /// arm64 UEFI HTTP boot (arch 19).
    UefiHttpArm64,
    /// Already running iPXE (user class `iPXE` or option 175), whatever the architecture.
    Ipxe,
    /// An option 93 value we have no boot file for.
    Unknown(u16),
}

impl Firmware {
    /// A fixed label for logs and metrics (bounded: `Unknown(n)` is just "unknown").
    pub fn as_str(&self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::UefiX64 => "uefi-x64",
            Firmware::UefiArm64 => "uefi-arm64",
            Firmware::UefiHttpX64 => "uefi-http-x64",
            Firmware::UefiHttpArm64 => "uefi-http-arm64",
            Firmware::Ipxe => "ipxe",
            Firmware::Unknown(_) => "unknown",
        }
    }
}

/// What to put in the reply so the client boots the right thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootTarget {
    pub firmware: Firmware,
    /// siaddr. Always our server, even for HTTP stages (harmless, and some ROMs insist).
    pub next_server: Ipv4Addr,
    /// The `file` field and/or option 67: a TFTP path, or a full `http://` URL.
    pub filename: String,
    /// Option 60 to echo: `PXEClient` for PXE ROMs, `HTTPClient` for UEFI HTTP boot (its
    /// firmware ignores offers without it); none for iPXE.
    pub vendor_class: Option<&'static str>,
    /// Send option 43 sub-option 6 (PXE_DISCOVERY_CONTROL) = 8: boot the file named in the
    /// offer without boot-server discovery (PXE 2.1 §2.2.5). Every PXEClient stage needs it:
    /// BIOS ROMs otherwise wait for a boot server, and EDK2/OVMF treats a PXEClient offer
    /// without option 43 as a BINL offer and asks port 4011 instead of booting the file
    /// (seen with OVMF 2022.11: DHCP ACK, then REQUESTs to :4011, then "PXE-E16").
    pub pxe_discovery_control: bool,
    /// Option 66 (TFTP server name) for TFTP stages; none for HTTP stages.
    pub tftp_server_name: Option<String>,
}

impl BootTarget {
    /// Whether `filename` fits the BOOTP `file` field with its terminating NUL (RFC 2131
    /// §2). If not, the reply must carry it only as option 67 (long script URLs can exceed
    /// it); nothing is refused here.
    pub fn fits_file_field(&self) -> bool {
        self.filename.len() < FILE_FIELD_LEN && !self.filename.contains('\0')
    }
}

/// Classifies a client. `None`: not a network-boot client (no option 93, neither
/// `PXEClient` nor `HTTPClient`, not iPXE), so it gets plain DHCP. iPXE wins over the
/// architecture because the firmware stage is already done.
///
/// `HTTPClient` without option 93 is also `None`: the UEFI spec makes option 93 mandatory
/// for HTTP boot and without it we cannot tell an x64 binary from an arm64 one.
pub fn firmware(pxe: &PxeInfo) -> Option<Firmware> {
    if pxe.ipxe {
        return Some(Firmware::Ipxe);
    }
    let fw = match pxe.arch {
        Some(arch::X86_BIOS) => Firmware::Bios,
        Some(arch::X64_UEFI | arch::EBC_OR_X64_UEFI) => Firmware::UefiX64,
        Some(arch::ARM64_UEFI) => Firmware::UefiArm64,
        Some(arch::X64_UEFI_HTTP) => Firmware::UefiHttpX64,
        Some(arch::ARM64_UEFI_HTTP) => Firmware::UefiHttpArm64,
        Some(other) => Firmware::Unknown(other),
        // Pre-RFC 4578 BIOS PXE ROMs send `PXEClient:Arch:00000:...` but no option 93.
        None if pxe.pxe_client => Firmware::Bios,
        None => return None,
    };
    Some(fw)
}

/// The boot target for a client, or `None` when it should get plain DHCP (not a boot
/// client, or an architecture we have nothing for: see [`firmware`] to tell them apart).
pub fn boot_target(pxe: &PxeInfo, mac: MacAddr, ctx: &BootContext) -> Option<BootTarget> {
    let firmware = firmware(pxe)?;
    // An empty override is no override (the inventory validator should refuse it anyway).
    let overridden = |default: &str| {
        ctx.override_file
            .filter(|f| !f.is_empty())
            .unwrap_or(default)
            .to_string()
    };
    let tftp = |filename: String| BootTarget {
        firmware,
        next_server: ctx.server,
        filename,
        vendor_class: Some("PXEClient"),
        pxe_discovery_control: true,
        tftp_server_name: Some(ctx.server.to_string()),
    };
    let http = |filename: String, vendor_class: Option<&'static str>| BootTarget {
        firmware,
        next_server: ctx.server,
        filename,
        vendor_class,
        pxe_discovery_control: false,
        tftp_server_name: None,
    };
    let http_file = |default: &str| http_url(ctx.http_base, &overridden(default));
    let target = match firmware {
        Firmware::Ipxe => http(ipxe_script_url(ctx.http_base, mac), None),
        Firmware::Bios => tftp(overridden(&ctx.files.bios)),
        Firmware::UefiX64 => tftp(overridden(&ctx.files.uefi_x64)),
        Firmware::UefiArm64 => tftp(overridden(&ctx.files.uefi_arm64)),
        Firmware::UefiHttpX64 => http(http_file(&ctx.files.uefi_http_x64), Some("HTTPClient")),
        Firmware::UefiHttpArm64 => http(http_file(&ctx.files.uefi_http_arm64), Some("HTTPClient")),
        Firmware::Unknown(_) => return None,
    };
    Some(target)
}

/// The per-host iPXE script the HTTP server serves: `{http_base}/ipxe/mac/aa:bb:cc:dd:ee:ff`.
pub fn ipxe_script_url(http_base: &str, mac: MacAddr) -> String {
    format!("{}/ipxe/mac/{mac}", http_base.trim_end_matches('/'))
}

/// A full URL as is; anything else joined to the HTTP base with exactly one `/`.
fn http_url(http_base: &str, file: &str) -> String {
    let lower = file.get(..8).unwrap_or(file).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        file.to_string()
    } else {
        format!(
            "{}/{}",
            http_base.trim_end_matches('/'),
            file.trim_start_matches('/')
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
    const BASE: &str = "http://10.250.0.1:8080";
    const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
    const SCRIPT: &str = "http://10.250.0.1:8080/ipxe/mac/52:54:00:ab:cd:ef";

    /// A PxeInfo as the decoder builds it from option 93, option 60 and the iPXE markers.
    fn client(arch: Option<u16>, vendor_class: &str, ipxe: bool) -> PxeInfo {
        PxeInfo {
            arch,
            pxe_client: vendor_class.starts_with("PXEClient"),
            http_client: vendor_class.starts_with("HTTPClient"),
            ipxe,
            uuid: None,
        }
    }

    enum Want {
        /// `firmware()` is None, and so is `boot_target()`.
        NotNetboot,
        /// `firmware()` says this, `boot_target()` is None.
        Refused(Firmware),
        /// TFTP stage: filename (always with option 43 discovery control).
        Tftp(Firmware, &'static str),
        /// HTTP stage: URL, option 60.
        Http(Firmware, &'static str, Option<&'static str>),
    }

    struct Case {
        name: &'static str,
        pxe: PxeInfo,
        override_file: Option<&'static str>,
        files: BootFiles,
        want: Want,
    }

    fn case(name: &'static str, pxe: PxeInfo, want: Want) -> Case {
        Case {
            name,
            pxe,
            override_file: None,
            files: BootFiles::default(),
            want,
        }
    }

    fn cases() -> Vec<Case> {
        use Firmware::*;
        use Want::*;
        vec![
            case(
                "seabios_ipxe_rom",
                client(Some(0), "PXEClient:Arch:00000:UNDI:002001", true),
                Http(Ipxe, SCRIPT, None),
            ),
            case(
                "bios_pxe_rom",
                client(Some(0), "PXEClient:Arch:00000:UNDI:002001", false),
                Tftp(Bios, "undionly.kpxe"),
            ),
            case(
                "ovmf_pxe_arch7",
                client(Some(7), "PXEClient:Arch:00007:UNDI:003000", false),
                Tftp(UefiX64, "ipxe.efi"),
            ),
            case(
                "uefi_x64_arch9",
                client(Some(9), "PXEClient:Arch:00009:UNDI:003016", false),
                Tftp(UefiX64, "ipxe.efi"),
            ),
            case(
                "uefi_arm64_arch11",
                client(Some(11), "PXEClient:Arch:00011:UNDI:003000", false),
                Tftp(UefiArm64, "ipxe-arm64.efi"),
            ),
            case(
                "uefi_http_x64_arch16",
                client(Some(16), "HTTPClient:Arch:00016:UNDI:003001", false),
                Http(
                    UefiHttpX64,
                    "http://10.250.0.1:8080/ipxe.efi",
                    Some("HTTPClient"),
                ),
            ),
            case(
                "uefi_http_arm64_arch19",
                client(Some(19), "HTTPClient:Arch:00019:UNDI:003001", false),
                Http(
                    UefiHttpArm64,
                    "http://10.250.0.1:8080/ipxe-arm64.efi",
                    Some("HTTPClient"),
                ),
            ),
            case(
                "ipxe_efi_arch7",
                client(Some(7), "PXEClient:Arch:00007:UNDI:003010", true),
                Http(Ipxe, SCRIPT, None),
            ),
            // Option 175 alone (no user class, no option 93) still marks iPXE.
            case(
                "ipxe_option175_only",
                client(None, "", true),
                Http(Ipxe, SCRIPT, None),
            ),
            case(
                "pxeclient_without_option93_is_bios",
                client(None, "PXEClient:Arch:00000:UNDI:002001", false),
                Tftp(Bios, "undionly.kpxe"),
            ),
            case(
                "httpclient_without_option93_is_not_guessed",
                client(None, "HTTPClient:Arch:00016:UNDI:003001", false),
                NotNetboot,
            ),
            case(
                "plain_dhcp_client",
                client(None, "udhcp 1.35.0", false),
                NotNetboot,
            ),
            case(
                "unknown_arch_99",
                client(Some(99), "PXEClient:Arch:00099:UNDI:003000", false),
                Refused(Unknown(99)),
            ),
            case(
                "arm32_uefi_http_arch18_unsupported",
                client(Some(18), "HTTPClient:Arch:00018:UNDI:003001", false),
                Refused(Unknown(18)),
            ),
            Case {
                override_file: Some("custom/undionly-x.kpxe"),
                ..case(
                    "override_bios",
                    client(Some(0), "PXEClient:Arch:00000:UNDI:002001", false),
                    Tftp(Bios, "custom/undionly-x.kpxe"),
                )
            },
            Case {
                override_file: Some("snponly.efi"),
                ..case(
                    "override_uefi_x64",
                    client(Some(7), "PXEClient:Arch:00007:UNDI:003000", false),
                    Tftp(UefiX64, "snponly.efi"),
                )
            },
            Case {
                override_file: Some("/efi/snponly.efi"),
                ..case(
                    "override_http_relative_joined",
                    client(Some(16), "HTTPClient:Arch:00016:UNDI:003001", false),
                    Http(
                        UefiHttpX64,
                        "http://10.250.0.1:8080/efi/snponly.efi",
                        Some("HTTPClient"),
                    ),
                )
            },
            Case {
                override_file: Some("https://images.example/ipxe-arm64.efi"),
                ..case(
                    "override_http_full_url_kept",
                    client(Some(19), "HTTPClient:Arch:00019:UNDI:003001", false),
                    Http(
                        UefiHttpArm64,
                        "https://images.example/ipxe-arm64.efi",
                        Some("HTTPClient"),
                    ),
                )
            },
            Case {
                override_file: Some("snponly.efi"),
                ..case(
                    "override_ignored_for_ipxe_stage",
                    client(Some(7), "PXEClient:Arch:00007:UNDI:003010", true),
                    Http(Ipxe, SCRIPT, None),
                )
            },
            Case {
                override_file: Some(""),
                ..case(
                    "empty_override_ignored",
                    client(Some(0), "PXEClient:Arch:00000:UNDI:002001", false),
                    Tftp(Bios, "undionly.kpxe"),
                )
            },
            Case {
                files: BootFiles {
                    uefi_x64: "snponly.efi".to_string(),
                    ..BootFiles::default()
                },
                ..case(
                    "snponly_from_boot_files",
                    client(Some(7), "PXEClient:Arch:00007:UNDI:003000", false),
                    Tftp(UefiX64, "snponly.efi"),
                )
            },
        ]
    }

    #[test]
    fn boot_target_per_client_kind() {
        for c in cases() {
            let ctx = BootContext {
                server: SERVER,
                http_base: BASE,
                files: &c.files,
                override_file: c.override_file,
            };
            let got_fw = firmware(&c.pxe);
            let got = boot_target(&c.pxe, MAC, &ctx);
            let name = c.name;
            match c.want {
                Want::NotNetboot => {
                    assert_eq!(got_fw, None, "{name}");
                    assert_eq!(got, None, "{name}");
                }
                Want::Refused(fw) => {
                    assert_eq!(got_fw, Some(fw), "{name}");
                    assert_eq!(got, None, "{name}");
                }
                Want::Tftp(fw, file) => {
                    let want = BootTarget {
                        firmware: fw,
                        next_server: SERVER,
                        filename: file.to_string(),
                        vendor_class: Some("PXEClient"),
                        pxe_discovery_control: true,
                        tftp_server_name: Some("10.250.0.1".to_string()),
                    };
                    assert_eq!(got_fw, Some(fw), "{name}");
                    assert_eq!(got, Some(want), "{name}");
                }
                Want::Http(fw, url, vendor_class) => {
                    let want = BootTarget {
                        firmware: fw,
                        next_server: SERVER,
                        filename: url.to_string(),
                        vendor_class,
                        pxe_discovery_control: false,
                        tftp_server_name: None,
                    };
                    assert_eq!(got_fw, Some(fw), "{name}");
                    assert_eq!(got, Some(want), "{name}");
                }
            }
        }
    }

    #[test]
    fn ipxe_script_url_format() {
        assert_eq!(ipxe_script_url(BASE, MAC), SCRIPT);
        assert_eq!(ipxe_script_url("http://10.250.0.1:8080/", MAC), SCRIPT);
        let upper = MacAddr([0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF]);
        assert_eq!(
            ipxe_script_url("http://gw:80", upper),
            "http://gw:80/ipxe/mac/aa:bb:cc:dd:ee:ff"
        );
    }

    #[test]
    fn http_base_trailing_slash_joins_once() {
        let files = BootFiles::default();
        let ctx = BootContext {
            server: SERVER,
            http_base: "http://10.250.0.1:8080/",
            files: &files,
            override_file: None,
        };
        let got = boot_target(&client(Some(16), "HTTPClient", false), MAC, &ctx);
        assert_eq!(
            got.map(|t| t.filename).as_deref(),
            Some("http://10.250.0.1:8080/ipxe.efi")
        );
    }

    #[test]
    fn rfc2131_2_file_field_holds_127_bytes_and_nul() {
        let target = |filename: String| BootTarget {
            firmware: Firmware::Ipxe,
            next_server: SERVER,
            filename,
            vendor_class: None,
            pxe_discovery_control: false,
            tftp_server_name: None,
        };
        assert!(target("a".repeat(127)).fits_file_field());
        assert!(!target("a".repeat(128)).fits_file_field());
        assert!(!target("a\0b".to_string()).fits_file_field());
        assert!(target(SCRIPT.to_string()).fits_file_field());
    }

    #[test]
    fn firmware_labels_are_bounded() {
        assert_eq!(Firmware::Unknown(99).as_str(), "unknown");
        assert_eq!(Firmware::UefiHttpArm64.as_str(), "uefi-http-arm64");
    }
}
