//! RFC 2347 option negotiation, pure: the client's option list plus our limits and the
//! file's size in, the transfer parameters and the OACK's contents out. Only options we
//! accept are echoed (RFC 2347 §3); an empty echo list means "no OACK, start with DATA 1".

use std::time::Duration;

/// RFC 1350's fixed block size, used when the client does not negotiate one.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// RFC 2348 §2: valid blksize values are 8..=65464.
pub const MIN_BLKSIZE: u16 = 8;
pub const MAX_BLKSIZE: u16 = 65464;
/// RFC 7440 §2 allows 1..=65535; we never hold more than this many blocks per session.
pub const MAX_WINDOWSIZE: u16 = 64;

/// What the server is willing to grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_blksize: u16,
    pub max_windowsize: u16,
}

/// The transfer parameters after negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    pub windowsize: u16,
    /// RFC 2349 timeout the client asked for (the retransmit interval it expects from us);
    /// None: the server picks (adaptive, see the session).
    pub timeout: Option<Duration>,
    /// Options to echo in the OACK, in the client's order and spelling.
    pub oack: Vec<(String, String)>,
}

/// An option value: ASCII decimal only (no sign, no spaces); absurdly long numbers saturate.
fn number(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(value.parse::<u64>().unwrap_or(u64::MAX))
}

/// Decides every option of one RRQ. `size` is the file's length when known (RFC 2349 tsize).
pub fn negotiate(options: &[(String, String)], limits: Limits, size: Option<u64>) -> Negotiated {
    let mut n = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        windowsize: 1,
        timeout: None,
        oack: Vec::new(),
    };
    let mut seen: Vec<&'static str> = Vec::new();
    for (name, value) in options {
        let key = name.to_ascii_lowercase();
        let key: &'static str = match key.as_str() {
            "blksize" => "blksize",
            "tsize" => "tsize",
            "timeout" => "timeout",
            "windowsize" => "windowsize",
            _ => continue, // RFC 2347 §3: unknown options are ignored, not refused
        };
        if seen.contains(&key) {
            continue; // a repeated option: the first one counts
        }
        seen.push(key);
        let Some(v) = number(value) else { continue };
        let granted = match key {
            // RFC 2348: 8..=65464; the server may answer with a smaller value.
            "blksize" if v >= u64::from(MIN_BLKSIZE) => {
                let cap = limits.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE);
                let b = v.min(u64::from(cap)) as u16;
                n.blksize = b;
                Some(b.to_string())
            }
            // RFC 2349 §4: in an RRQ the client sends 0 and the server answers with the size;
            // without a known size the option is simply not acknowledged.
            "tsize" => size.map(|s| s.to_string()),
            // RFC 2349 §3: 1..=255 seconds, and the server must echo the same value.
            "timeout" if (1..=255).contains(&v) => {
                n.timeout = Some(Duration::from_secs(v));
                Some(v.to_string())
            }
            // RFC 7440 §3: the server may answer with a smaller window.
            "windowsize" if v >= 1 => {
                let cap = limits.max_windowsize.clamp(1, MAX_WINDOWSIZE);
                let w = v.min(u64::from(cap)) as u16;
                n.windowsize = w;
                Some(w.to_string())
            }
            _ => None,
        };
        if let Some(g) = granted {
            n.oack.push((name.clone(), g));
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_blksize: 1468,
        max_windowsize: 64,
    };

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// (request options, file size) → (blksize, windowsize, timeout s, echoed options).
    #[test]
    fn rfc2347_negotiation_table() {
        type Row<'a> = (
            &'a [(&'a str, &'a str)],
            Option<u64>,
            u16,
            u16,
            Option<u64>,
            &'a [(&'a str, &'a str)],
        );
        let table: &[Row] = &[
            // no options: no OACK
            (&[], Some(10), 512, 1, None, &[]),
            // iPXE's request (lab pitfall 7)
            (
                &[("blksize", "1432"), ("tsize", "0")],
                Some(1000),
                1432,
                1,
                None,
                &[("blksize", "1432"), ("tsize", "1000")],
            ),
            // rfc2348: capped at our maximum (MTU - 32)
            (
                &[("blksize", "65464")],
                None,
                1468,
                1,
                None,
                &[("blksize", "1468")],
            ),
            (
                &[("blksize", "99999999999999999999999")],
                None,
                1468,
                1,
                None,
                &[("blksize", "1468")],
            ),
            // rfc2348: below 8 is invalid and ignored; 8 itself is fine
            (&[("blksize", "7")], None, 512, 1, None, &[]),
            (&[("blksize", "8")], None, 8, 1, None, &[("blksize", "8")]),
            // not a number
            (&[("blksize", "-1")], None, 512, 1, None, &[]),
            (&[("blksize", "")], None, 512, 1, None, &[]),
            (&[("blksize", " 512")], None, 512, 1, None, &[]),
            // rfc2349 tsize: echoed with the real size, dropped when unknown
            (&[("tsize", "0")], Some(0), 512, 1, None, &[("tsize", "0")]),
            (&[("tsize", "0")], None, 512, 1, None, &[]),
            // rfc2349 timeout 1..=255
            (
                &[("timeout", "3")],
                None,
                512,
                1,
                Some(3),
                &[("timeout", "3")],
            ),
            (&[("timeout", "0")], None, 512, 1, None, &[]),
            (&[("timeout", "256")], None, 512, 1, None, &[]),
            (
                &[("timeout", "255")],
                None,
                512,
                1,
                Some(255),
                &[("timeout", "255")],
            ),
            // rfc7440 windowsize, capped
            (
                &[("windowsize", "16")],
                None,
                512,
                16,
                None,
                &[("windowsize", "16")],
            ),
            (
                &[("windowsize", "1000")],
                None,
                512,
                64,
                None,
                &[("windowsize", "64")],
            ),
            (&[("windowsize", "0")], None, 512, 1, None, &[]),
            // case-insensitive names, echoed in the client's spelling; unknown ignored;
            // duplicates: first wins
            (
                &[
                    ("BlkSize", "1024"),
                    ("multicast", ""),
                    ("blksize", "8"),
                    ("TSIZE", "0"),
                ],
                Some(5),
                1024,
                1,
                None,
                &[("BlkSize", "1024"), ("TSIZE", "5")],
            ),
        ];
        for (req, size, blk, win, tmo, echo) in table {
            let n = negotiate(&opts(req), LIMITS, *size);
            assert_eq!(n.blksize, *blk, "{req:?}");
            assert_eq!(n.windowsize, *win, "{req:?}");
            assert_eq!(n.timeout, tmo.map(Duration::from_secs), "{req:?}");
            assert_eq!(n.oack, opts(echo), "{req:?}");
        }
    }

    #[test]
    fn caps_come_from_limits() {
        let limits = Limits {
            max_blksize: 512,
            max_windowsize: 4,
        };
        let n = negotiate(
            &opts(&[("blksize", "1468"), ("windowsize", "16")]),
            limits,
            None,
        );
        assert_eq!((n.blksize, n.windowsize), (512, 4));
        // Nonsense limits are clamped into the RFC ranges, never below them.
        let n = negotiate(
            &opts(&[("blksize", "1468"), ("windowsize", "16")]),
            Limits {
                max_blksize: 0,
                max_windowsize: 0,
            },
            None,
        );
        assert_eq!((n.blksize, n.windowsize), (8, 1));
    }
}
