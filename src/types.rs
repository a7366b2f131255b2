//! Small typed values shared by every module: MAC addresses, host states and roles.
//! They parse from and print to the text forms operators type, and are stored as text
//! (with SQL CHECK constraints) so the database stays readable with `sqlite3`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An Ethernet hardware address. Printed lower-case, colon separated (`52:54:00:ab:cd:ef`),
/// the form dnsmasq, Kea and `ip link` print, so operators can grep across tools.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// Why a MAC address string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {input:?}: expected six hex octets like 52:54:00:ab:cd:ef")]
pub struct MacParseError {
    /// The text that failed to parse, echoed back so the operator sees the typo.
    pub input: String,
}

impl MacAddr {
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    /// Accepts `aa:bb:cc:dd:ee:ff` and `aa-bb-cc-dd-ee-ff` (any case), the two forms switch
    /// and BMC vendors print.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError {
            input: s.to_string(),
        };
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split(sep) {
            if n == 6 || part.len() != 2 {
                return Err(err());
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| err())?;
            n += 1;
        }
        if n != 6 {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Declares a text-backed enum: serde, `FromStr` and `Display` all use the same kebab-case
/// names, which are also what the SQL CHECK constraints list.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::serde::Serialize, ::serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order (for help texts and CHECK constraints).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::types::UnknownVariant;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::types::UnknownVariant {
                        what: stringify!($name),
                        input: s.to_string(),
                        expected: vec![$($text),+],
                    }),
                }
            }
        }
    };
}
pub(crate) use text_enum;

/// A string did not name any value of a text-backed enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {input:?}, expected one of: {}", expected.join(", "))]
pub struct UnknownVariant {
    pub what: &'static str,
    pub input: String,
    pub expected: Vec<&'static str>,
}

text_enum!(
    /// Where a host is in its life. Inventory hosts start `registered`; unknown MACs seen on
    /// the wire become `discovered`. Every change is recorded as an event.
    HostState {
        Unknown => "unknown",
        Discovered => "discovered",
        Registered => "registered",
        Provisioning => "provisioning",
        Provisioned => "provisioned",
        Configuring => "configuring",
        Ready => "ready",
        Failed => "failed",
        Maintenance => "maintenance",
    }
);

text_enum!(
    /// What a host is for; drives boot profile defaults, Ansible groups and Kubernetes labels.
    Role {
        Gpu => "gpu",
        Storage => "storage",
        ControlPlane => "control-plane",
        Login => "login",
        Switch => "switch",
        Gateway => "gateway",
    }
);

/// A duration as operators write it: `90s`, `15m`, `2h`, `1d`, `1h30m` (jiff's friendly
/// format; days are 24 hours). For CLI flags and API parameters.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let span: jiff::Span = s.parse().map_err(|e: jiff::Error| {
        format!("invalid duration {s:?} ({e}); expected e.g. 90s, 15m, 2h")
    })?;
    let d = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|_| format!("invalid duration {s:?}: months and years have no fixed length"))?;
    std::time::Duration::try_from(d).map_err(|_| format!("invalid duration {s:?}: negative"))
}

/// Bytes as lower-case hex without separators (client ids, discovered-host names).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_both_separators() {
        let a: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        let b: MacAddr = "52-54-00-ab-CD-0F".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "52:54:00:ab:cd:0f");
    }

    #[test]
    fn mac_rejects_malformed() {
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:ef:01",
            "5:54:00:ab:cd:ef",
            "zz:54:00:ab:cd:ef",
            "52:54:00-ab:cd:ef",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn text_enums_round_trip() {
        for s in HostState::ALL {
            assert_eq!(s.as_str().parse::<HostState>().unwrap(), *s);
        }
        assert_eq!("control-plane".parse::<Role>().unwrap(), Role::ControlPlane);
        let e = "gpux".parse::<Role>().unwrap_err().to_string();
        assert!(e.contains("gpu, storage"), "{e}");
    }
}
