//! Problems with the files an operator writes (the daemon config and the inventory): where
//! each one is (file, entry, field) and why. Both loaders parse a file to a TOML table first
//! and deserialize each entry on its own with [`deserialize_collecting`], so every field error
//! is reported, not just serde's first; the value parsers they share (`lease_time`) live here.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserializer;
use serde::de::DeserializeOwned;

/// One thing wrong with a config or inventory file, precise enough to fix without reading
/// code: `file: entry: field: reason`, e.g.
/// `inventory/lab/hosts.toml: host "vm1": macs[0]: MAC 52:54:00:… is also on host "vm0"`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub file: PathBuf,
    /// The entry, e.g. `host "vm1"`, `subnet "prov"`, `site`, or `-` for the whole file.
    pub entry: String,
    /// The field path inside the entry, e.g. `macs[0]`, `bmc.vendor`, or `-`.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}: {}",
            self.file.display(),
            self.entry,
            self.field,
            self.reason
        )
    }
}

/// A config or inventory that failed validation: every problem found, not just the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} problem(s):\n{}", .0.len(), .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct Invalid(pub Vec<Problem>);

/// Linux IFNAMSIZ is 16 including the terminating NUL.
pub(crate) const MAX_IFNAME_LEN: usize = 15;

/// `lease_time`: either integer seconds, or a string in jiff's "friendly" (`30m`, `12h`,
/// `1d`, `1h 30m`, `2 days`) or ISO 8601 (`PT12H`) duration format, with days and weeks
/// taken as 24 h and 7 d. Must be a whole, positive number of seconds that fits DHCP
/// option 51 (u32).
pub(crate) fn lease_time<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration like \"30m\", \"12h\" or \"1d\", or integer seconds")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            lease_secs(i128::from(v)).map_err(E::custom)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            lease_secs(i128::from(v)).map_err(E::custom)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            let bad = |why: String| {
                E::custom(format!(
                    "invalid duration {v:?} ({why}); expected e.g. \"30m\", \"12h\", \"1d\" or integer seconds"
                ))
            };
            let d = crate::types::parse_duration(v).map_err(|e| {
                E::custom(format!(
                    "{e}; expected e.g. \"30m\", \"12h\", \"1d\" or integer seconds"
                ))
            })?;
            if d.subsec_nanos() != 0 {
                return Err(bad("not a whole number of seconds".to_string()));
            }
            lease_secs(i128::from(d.as_secs())).map_err(E::custom)
        }
    }
    d.deserialize_any(Visitor)
}

fn lease_secs(secs: i128) -> Result<Duration, String> {
    match u32::try_from(secs) {
        Ok(0) => Err("lease time must be positive".to_string()),
        Ok(s) => Ok(Duration::from_secs(u64::from(s))),
        Err(_) => Err(format!(
            "lease time {secs}s is out of range (1s ..= {}s, DHCP option 51 is 32 bits)",
            u32::MAX
        )),
    }
}

/// One field of an entry that failed to deserialize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    /// Path inside the entry (`bmc.vendor`, `macs[1]`), or `-` for the entry as a whole.
    pub field: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn path_string(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if out.is_empty() { "-".to_string() } else { out }
}

/// serde stops at the first error, so to report them all we drop the offending key and
/// try again (bounded). A required key we dropped then comes back as "missing field": that
/// one is not reported twice. A bad array element drops the whole array, so later
/// elements keep their indices in the messages that were already recorded.
pub(crate) fn deserialize_collecting<T: DeserializeOwned>(
    value: &toml::Value,
) -> Result<T, Vec<FieldError>> {
    const MAX_ATTEMPTS: usize = 32;
    let mut value = value.clone();
    let mut errors = Vec::new();
    let mut removed: Vec<Vec<Seg>> = Vec::new();
    for _ in 0..MAX_ATTEMPTS {
        let err = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) if errors.is_empty() => return Ok(t),
            Ok(_) => return Err(errors),
            Err(e) => e,
        };
        let mut path: Vec<Seg> = err
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                _ => None,
            })
            .collect();
        let message = err.inner().message();
        if let Some(missing) = missing_field(message) {
            let mut full = path.clone();
            full.push(Seg::Key(missing.to_string()));
            if !removed.contains(&full) {
                errors.push(FieldError {
                    field: path_string(&full),
                    reason: "missing (required)".to_string(),
                });
            }
        } else {
            let raw = value_at(&value, &path);
            errors.push(FieldError {
                field: path_string(&path),
                reason: humane_reason(message, raw),
            });
        }
        // Drop the smallest thing that removes this error: the key itself, or the whole
        // array for an array element, or the incomplete table for a missing field.
        while matches!(path.last(), Some(Seg::Index(_))) {
            path.pop();
        }
        if path.is_empty() || !remove_at(&mut value, &path) {
            return Err(errors);
        }
        removed.push(path);
    }
    Err(errors)
}

fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
}

fn value_at<'a>(value: &'a toml::Value, path: &[Seg]) -> Option<&'a toml::Value> {
    let mut v = value;
    for seg in path {
        v = match seg {
            Seg::Key(k) => v.as_table()?.get(k)?,
            Seg::Index(i) => v.as_array()?.get(*i)?,
        };
    }
    Some(v)
}

fn remove_at(value: &mut toml::Value, path: &[Seg]) -> bool {
    let Some((Seg::Key(last), parents)) = path.split_last() else {
        return false;
    };
    let mut v = value;
    for seg in parents {
        let next = match seg {
            Seg::Key(k) => v.as_table_mut().and_then(|t| t.get_mut(k)),
            Seg::Index(i) => v.as_array_mut().and_then(|a| a.get_mut(*i)),
        };
        match next {
            Some(n) => v = n,
            None => return false,
        }
    }
    v.as_table_mut().and_then(|t| t.remove(last)).is_some()
}

/// Turns serde's messages into the house form: `unknown field, expected one of: a, b`, and
/// echoes the offending string (std's IP parser does not say what it was given).
fn humane_reason(message: &str, raw: Option<&toml::Value>) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let expected: Vec<&str> = rest
            .split_once('`')
            .map(|(_, tail)| tail)
            .unwrap_or_default()
            .split('`')
            .skip(1)
            .step_by(2)
            .collect();
        return if expected.is_empty() {
            "unknown field, this table takes no fields".to_string()
        } else {
            format!("unknown field, expected one of: {}", expected.join(", "))
        };
    }
    match raw {
        Some(toml::Value::String(s)) if !message.contains(s.as_str()) => {
            format!("{message}: {s:?}")
        }
        _ => message.to_string(),
    }
}

/// A TOML syntax error as a problem, with the line and column the parser stopped at.
pub(crate) fn syntax_problem(file: &Path, source: &str, err: &toml::de::Error) -> Problem {
    let reason = match err.span() {
        Some(span) => {
            let (line, col) = line_col(source, span.start);
            format!(
                "TOML syntax error at line {line}, column {col}: {}",
                err.message()
            )
        }
        None => format!("TOML syntax error: {}", err.message()),
    };
    Problem {
        file: file.to_path_buf(),
        entry: "-".to_string(),
        field: "-".to_string(),
        reason,
    }
}

fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_have_line_and_column() {
        let src = "a = 1\nb = [1,\nc = 2\n";
        let e = src.parse::<toml::Table>().unwrap_err();
        let p = syntax_problem(Path::new("x.toml"), src, &e);
        assert!(
            p.reason
                .starts_with("TOML syntax error at line 3, column 3"),
            "{p}"
        );
    }
}
