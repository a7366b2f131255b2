//! The TFTP wire format (RFC 1350 §5, RFC 2347 §2 for the option list and OACK): a pure
//! decoder that turns any byte string into a typed [`Packet`] or a [`PacketError`] (never a
//! panic), and encoders that write into a caller's buffer so the data path allocates once.

use std::fmt;

/// RFC 1350 §5 opcodes, plus RFC 2347's OACK.
pub const OP_RRQ: u16 = 1;
pub const OP_WRQ: u16 = 2;
pub const OP_DATA: u16 = 3;
pub const OP_ACK: u16 = 4;
pub const OP_ERROR: u16 = 5;
pub const OP_OACK: u16 = 6;

/// RFC 1350 appendix error codes (8 is RFC 2347's "option negotiation refused").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    DiskFull = 3,
    IllegalOperation = 4,
    UnknownTid = 5,
    FileExists = 6,
    NoSuchUser = 7,
    OptionRefused = 8,
}

impl ErrorCode {
    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        Some(match code {
            0 => ErrorCode::NotDefined,
            1 => ErrorCode::FileNotFound,
            2 => ErrorCode::AccessViolation,
            3 => ErrorCode::DiskFull,
            4 => ErrorCode::IllegalOperation,
            5 => ErrorCode::UnknownTid,
            6 => ErrorCode::FileExists,
            7 => ErrorCode::NoSuchUser,
            8 => ErrorCode::OptionRefused,
            _ => return None,
        })
    }
}

/// RFC 1350 §1 transfer modes. "mail" is obsolete (and write-only) and so never accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Octet,
    /// Accepted, but served byte-for-byte like octet: everything we serve (NBPs, kernels,
    /// iPXE scripts) is consumed as bytes, and converting would make tsize lie.
    Netascii,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        if s.eq_ignore_ascii_case("octet") {
            Some(Mode::Octet)
        } else if s.eq_ignore_ascii_case("netascii") {
            Some(Mode::Netascii)
        } else {
            None
        }
    }
}

/// A read or write request: RFC 1350 §5 plus RFC 2347 options in the order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub filename: String,
    pub mode: Mode,
    /// (name, value) as sent; names are matched case-insensitively by the negotiator.
    pub options: Vec<(String, String)>,
}

/// One decoded datagram. Borrowed where the payload can be large (DATA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Rrq(Request),
    Wrq(Request),
    Data { block: u16, data: &'a [u8] },
    Ack { block: u16 },
    Error { code: u16, message: String },
    Oack { options: Vec<(String, String)> },
}

/// Why a datagram could not be decoded; the server answers these with ERROR 4.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet shorter than its opcode ({0} bytes)")]
    TooShort(usize),
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("{field} is not NUL-terminated")]
    Unterminated { field: &'static str },
    #[error("{field} is not valid UTF-8")]
    NotUtf8 { field: &'static str },
    #[error("empty file name")]
    EmptyFilename,
    #[error("unsupported transfer mode {0:?}")]
    BadMode(String),
    #[error("{0} packet has the wrong length")]
    BadLength(&'static str),
}

impl PacketError {
    /// A bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            PacketError::UnknownOpcode(_) => "unknown_opcode",
            PacketError::BadMode(_) => "bad_mode",
            PacketError::TooShort(_)
            | PacketError::Unterminated { .. }
            | PacketError::NotUtf8 { .. }
            | PacketError::EmptyFilename
            | PacketError::BadLength(_) => "malformed",
        }
    }
}

/// Splits off one NUL-terminated string.
fn take_str<'a>(buf: &'a [u8], field: &'static str) -> Result<(&'a str, &'a [u8]), PacketError> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(PacketError::Unterminated { field })?;
    let s = std::str::from_utf8(&buf[..end]).map_err(|_| PacketError::NotUtf8 { field })?;
    Ok((s, &buf[end + 1..]))
}

/// RFC 2347 §2: `opt1 \0 value1 \0 ...`. Lenient where real clients are sloppy: trailing
/// NUL padding and a final name without a value are ignored; an unterminated string is not.
fn parse_options(mut rest: &[u8]) -> Result<Vec<(String, String)>, PacketError> {
    let mut options = Vec::new();
    while !rest.is_empty() {
        let (name, after) = take_str(rest, "option name")?;
        rest = after;
        if name.is_empty() {
            continue; // NUL padding
        }
        if rest.is_empty() {
            break; // a name with no value: nothing to negotiate
        }
        let (value, after) = take_str(rest, "option value")?;
        rest = after;
        options.push((name.to_string(), value.to_string()));
    }
    Ok(options)
}

fn parse_request(body: &[u8]) -> Result<Request, PacketError> {
    let (filename, rest) = take_str(body, "file name")?;
    if filename.is_empty() {
        return Err(PacketError::EmptyFilename);
    }
    let (mode, rest) = take_str(rest, "mode")?;
    let mode = Mode::parse(mode).ok_or_else(|| PacketError::BadMode(mode.to_string()))?;
    Ok(Request {
        filename: filename.to_string(),
        mode,
        options: parse_options(rest)?,
    })
}

/// Decodes one datagram.
pub fn parse(buf: &[u8]) -> Result<Packet<'_>, PacketError> {
    if buf.len() < 2 {
        return Err(PacketError::TooShort(buf.len()));
    }
    let op = u16::from_be_bytes([buf[0], buf[1]]);
    let body = &buf[2..];
    match op {
        OP_RRQ => Ok(Packet::Rrq(parse_request(body)?)),
        OP_WRQ => Ok(Packet::Wrq(parse_request(body)?)),
        OP_DATA => {
            if body.len() < 2 {
                return Err(PacketError::BadLength("DATA"));
            }
            Ok(Packet::Data {
                block: u16::from_be_bytes([body[0], body[1]]),
                data: &body[2..],
            })
        }
        OP_ACK => {
            // Some stacks pad short frames; the block number is all that matters.
            if body.len() < 2 {
                return Err(PacketError::BadLength("ACK"));
            }
            Ok(Packet::Ack {
                block: u16::from_be_bytes([body[0], body[1]]),
            })
        }
        OP_ERROR => {
            if body.len() < 2 {
                return Err(PacketError::BadLength("ERROR"));
            }
            let code = u16::from_be_bytes([body[0], body[1]]);
            // A missing terminator or odd bytes in the message must not lose the fact that
            // the peer gave up: keep what is readable.
            let msg = &body[2..];
            let end = msg.iter().position(|&b| b == 0).unwrap_or(msg.len());
            Ok(Packet::Error {
                code,
                message: String::from_utf8_lossy(&msg[..end]).into_owned(),
            })
        }
        OP_OACK => Ok(Packet::Oack {
            options: parse_options(body)?,
        }),
        other => Err(PacketError::UnknownOpcode(other)),
    }
}

/// Writes a DATA header; the caller appends the payload.
pub fn encode_data_header(out: &mut Vec<u8>, block: u16) {
    out.clear();
    out.extend_from_slice(&OP_DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
}

pub fn encode_ack(block: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(4);
    out.extend_from_slice(&OP_ACK.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out
}

pub fn encode_error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.extend_from_slice(&OP_ERROR.to_be_bytes());
    out.extend_from_slice(&(code as u16).to_be_bytes());
    // A NUL inside the message would truncate it on the wire; our messages have none.
    out.extend(message.bytes().filter(|&b| b != 0));
    out.push(0);
    out
}

pub fn encode_oack(options: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&OP_OACK.to_be_bytes());
    for (name, value) in options {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

/// Encodes a request (used by tests and tools that play the client).
pub fn encode_request(op: u16, req: &Request) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&op.to_be_bytes());
    out.extend_from_slice(req.filename.as_bytes());
    out.push(0);
    out.extend_from_slice(match req.mode {
        Mode::Octet => b"octet",
        Mode::Netascii => b"netascii",
    });
    out.push(0);
    for (name, value) in &req.options {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Octet => "octet",
            Mode::Netascii => "netascii",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rrq(bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 1];
        v.extend_from_slice(bytes);
        v
    }

    #[test]
    fn rfc2347_rrq_with_options() {
        let buf = rrq(b"pxelinux.0\0octet\0blksize\x001432\0tsize\x000\0");
        let Ok(Packet::Rrq(req)) = parse(&buf) else {
            panic!("not an RRQ: {:?}", parse(&buf));
        };
        assert_eq!(req.filename, "pxelinux.0");
        assert_eq!(req.mode, Mode::Octet);
        assert_eq!(
            req.options,
            vec![
                ("blksize".to_string(), "1432".to_string()),
                ("tsize".to_string(), "0".to_string())
            ]
        );
    }

    #[test]
    fn rfc1350_mode_is_case_insensitive_and_netascii_accepted() {
        for (mode, want) in [
            (&b"OCTET"[..], Mode::Octet),
            (b"NetAscii", Mode::Netascii),
            (b"netascii", Mode::Netascii),
        ] {
            let mut body = b"f\0".to_vec();
            body.extend_from_slice(mode);
            body.push(0);
            let Ok(Packet::Rrq(req)) = parse(&rrq(&body)) else {
                panic!("mode {mode:?} rejected");
            };
            assert_eq!(req.mode, want);
            assert!(req.options.is_empty());
        }
    }

    #[test]
    fn round_trips() {
        let req = Request {
            filename: "a/b".into(),
            mode: Mode::Octet,
            options: vec![("windowsize".into(), "16".into())],
        };
        assert_eq!(
            parse(&encode_request(OP_RRQ, &req)),
            Ok(Packet::Rrq(req.clone()))
        );
        assert_eq!(
            parse(&encode_request(OP_WRQ, &req)),
            Ok(Packet::Wrq(req.clone()))
        );
        assert_eq!(parse(&encode_ack(65535)), Ok(Packet::Ack { block: 65535 }));
        assert_eq!(
            parse(&encode_error(ErrorCode::FileNotFound, "nope")),
            Ok(Packet::Error {
                code: 1,
                message: "nope".into()
            })
        );
        let opts = vec![("tsize".to_string(), "123".to_string())];
        assert_eq!(
            parse(&encode_oack(&opts)),
            Ok(Packet::Oack { options: opts })
        );
        let mut data = Vec::new();
        encode_data_header(&mut data, 7);
        data.extend_from_slice(b"xyz");
        assert_eq!(
            parse(&data),
            Ok(Packet::Data {
                block: 7,
                data: b"xyz"
            })
        );
    }

    #[test]
    fn lenient_option_tails() {
        // NUL padding after the options, and a dangling name without value.
        let Ok(Packet::Rrq(req)) = parse(&rrq(b"f\0octet\0tsize\x000\0\0\0")) else {
            panic!()
        };
        assert_eq!(req.options.len(), 1);
        let Ok(Packet::Rrq(req)) = parse(&rrq(b"f\0octet\0tsize\0")) else {
            panic!()
        };
        assert!(req.options.is_empty());
    }

    #[test]
    fn malformed_packets_are_errors() {
        let table: &[(&[u8], PacketError)] = &[
            (b"", PacketError::TooShort(0)),
            (b"\0", PacketError::TooShort(1)),
            (b"\0\x09", PacketError::UnknownOpcode(9)),
            (b"\0\0", PacketError::UnknownOpcode(0)),
            (
                b"\0\x01file",
                PacketError::Unterminated { field: "file name" },
            ),
            (b"\0\x01\0octet\0", PacketError::EmptyFilename),
            (
                b"\0\x01f\0octet",
                PacketError::Unterminated { field: "mode" },
            ),
            (b"\0\x01f\0mail\0", PacketError::BadMode("mail".into())),
            (b"\0\x01f\0\0", PacketError::BadMode(String::new())),
            (
                b"\0\x01f\xff\0octet\0",
                PacketError::NotUtf8 { field: "file name" },
            ),
            (
                b"\0\x01f\0octet\0blksize\x001432",
                PacketError::Unterminated {
                    field: "option value",
                },
            ),
            (b"\0\x03\0", PacketError::BadLength("DATA")),
            (b"\0\x04\0", PacketError::BadLength("ACK")),
            (b"\0\x05", PacketError::BadLength("ERROR")),
        ];
        for (bytes, want) in table {
            assert_eq!(parse(bytes).as_ref(), Err(want), "{bytes:?}");
        }
    }

    #[test]
    fn error_without_terminator_still_decodes() {
        assert_eq!(
            parse(b"\0\x05\0\x00TFTP Aborted"),
            Ok(Packet::Error {
                code: 0,
                message: "TFTP Aborted".into()
            })
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn arbitrary_requests_never_panic(
            op in 0u16..8,
            body in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..200),
        ) {
            let mut buf = op.to_be_bytes().to_vec();
            buf.extend_from_slice(&body);
            let _ = parse(&buf);
        }

        #[test]
        fn requests_round_trip(
            name in "[a-zA-Z0-9./_-]{1,40}",
            opts in proptest::collection::vec(("[a-z]{1,10}", "[0-9]{1,6}"), 0..5),
        ) {
            let req = Request { filename: name, mode: Mode::Octet, options: opts };
            let bytes = encode_request(OP_RRQ, &req);
            prop_assert_eq!(parse(&bytes), Ok(Packet::Rrq(req.clone())));
        }
    }
}
