//! Parsing of API query parameters and CLI filters, shared so both accept the same forms
//! and give the same precise errors.

use std::fmt::Display;
use std::str::FromStr;

use jiff::{Span, SpanRelativeTo, Timestamp};

use super::ApiError;

/// Parses an optional parameter, naming it in the error.
pub fn parse_opt<T>(name: &str, value: Option<&str>) -> Result<Option<T>, ApiError>
where
    T: FromStr,
    T::Err: Display,
{
    value
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<T>()
                .map_err(|e| ApiError::BadRequest(format!("parameter {name}={v:?}: {e}")))
        })
        .transpose()
}

/// A point in time: RFC 3339 (`2026-11-25T08:00:00Z`) or an age before `now` (`90m`, `2h`,
/// `7d`, `1h30m`), which is what operators type when they ask "since when".
pub fn parse_time(name: &str, value: &str, now: Timestamp) -> Result<Timestamp, ApiError> {
    if let Ok(t) = value.parse::<Timestamp>() {
        return Ok(t);
    }
    let bad = |why: String| {
        ApiError::BadRequest(format!(
            "parameter {name}={value:?}: {why}; expected RFC 3339 (2026-11-25T08:00:00Z) or an age like 90m, 2h, 7d"
        ))
    };
    let span: Span = value.parse().map_err(|e| bad(format!("{e}")))?;
    let age = span
        .to_duration(SpanRelativeTo::days_are_24_hours())
        .map_err(|e| bad(format!("{e}")))?;
    now.checked_sub(age.abs()).map_err(|e| bad(format!("{e}")))
}

/// Items a list endpoint returns when the request names no `limit`.
pub const DEFAULT_LIMIT: u32 = 500;
/// The largest `limit` a list endpoint accepts; more is a 400 naming the field.
pub const MAX_LIMIT: u32 = 10_000;

/// `limit=`: [`DEFAULT_LIMIT`] when absent, at most [`MAX_LIMIT`].
pub fn parse_limit(value: Option<&str>) -> Result<u32, ApiError> {
    let limit = parse_opt::<u32>("limit", value)?.unwrap_or(DEFAULT_LIMIT);
    if limit > MAX_LIMIT {
        metrics::counter!("bootgate_api_limit_refused_total").increment(1);
        return Err(ApiError::BadRequest(format!(
            "parameter limit={limit}: at most {MAX_LIMIT} (follow the Link rel=\"next\" header for more)"
        )));
    }
    Ok(limit)
}

/// The RFC 8288 `Link` header value of the next page: `path` with the request's own query
/// (`raw`), its `after` and `limit` replaced by the cursor and the limit in force.
pub fn next_link(path: &str, raw: Option<&str>, after: &str, limit: u32) -> String {
    let mut query: Vec<String> = raw
        .unwrap_or("")
        .split('&')
        .filter(|kv| {
            let key = kv.split('=').next().unwrap_or("");
            !kv.is_empty() && key != "after" && key != "limit"
        })
        .map(str::to_string)
        .collect();
    query.push(format!("after={}", encode(after)));
    query.push(format!("limit={limit}"));
    format!("<{path}?{}>; rel=\"next\"", query.join("&"))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The target of a `Link: <…>; rel="next"` header value, if it has one.
pub fn link_next(header: &str) -> Option<&str> {
    header.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().trim_start_matches("rel=").trim_matches('"') == "next");
        is_next.then(|| target.trim().trim_start_matches('<').trim_end_matches('>'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_default_and_refuse_over_the_max_by_name() {
        assert_eq!(parse_limit(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(parse_limit(Some("10000")).unwrap(), 10_000);
        let e = parse_limit(Some("10001")).unwrap_err().to_string();
        assert!(e.starts_with("parameter limit=10001"), "{e}");
    }

    #[test]
    fn next_links_keep_the_filters_and_replace_the_cursor() {
        let l = next_link(
            "/api/v1/events",
            Some("kind=host-added&after=3&limit=2"),
            "7",
            2,
        );
        assert_eq!(
            l,
            "</api/v1/events?kind=host-added&after=7&limit=2>; rel=\"next\""
        );
        assert_eq!(
            link_next(&l),
            Some("/api/v1/events?kind=host-added&after=7&limit=2")
        );
        let l = next_link("/api/v1/hosts", None, "rack a/1", 500);
        assert_eq!(
            l,
            "</api/v1/hosts?after=rack%20a%2F1&limit=500>; rel=\"next\""
        );
        assert_eq!(link_next("<x>; rel=\"prev\""), None);
    }

    #[test]
    fn times_parse_absolute_and_relative() {
        let now: Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
        assert_eq!(
            parse_time("since", "2026-11-25T08:00:00Z", now).unwrap(),
            "2026-11-25T08:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            parse_time("since", "2h", now).unwrap(),
            "2026-11-25T08:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            parse_time("since", "1d", now).unwrap(),
            "2026-11-24T10:00:00Z".parse::<Timestamp>().unwrap()
        );
        let e = parse_time("since", "yesterday-ish", now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("since") && e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn bad_parameters_are_named() {
        let e = parse_opt::<crate::types::MacAddr>("mac", Some("zz"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("parameter mac=\"zz\""), "{e}");
        assert_eq!(parse_opt::<u32>("limit", Some("")).unwrap(), None);
    }
}

/// `--subnet` / `?subnet=`: an inventory subnet name or a CIDR (`10.250.0.0/24`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubnetSel {
    Name(String),
    Cidr(ipnet::Ipv4Net),
}

impl std::str::FromStr for SubnetSel {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.parse::<ipnet::Ipv4Net>() {
            Ok(net) => SubnetSel::Cidr(net),
            Err(_) => SubnetSel::Name(s.to_string()),
        })
    }
}

impl std::fmt::Display for SubnetSel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubnetSel::Name(n) => f.write_str(n),
            SubnetSel::Cidr(c) => write!(f, "{c}"),
        }
    }
}

/// Which leases to show: the store filters by name, MAC and state; CIDR and IP are
/// applied here.
#[derive(Debug, Clone, Default)]
pub struct LeaseSelect {
    pub subnet: Option<SubnetSel>,
    pub mac: Option<crate::types::MacAddr>,
    pub state: Option<crate::model::LeaseState>,
    pub ip: Option<std::net::Ipv4Addr>,
}

impl LeaseSelect {
    pub fn store_filter(&self) -> crate::model::LeaseFilter {
        crate::model::LeaseFilter {
            subnet: match &self.subnet {
                Some(SubnetSel::Name(n)) => Some(n.clone()),
                _ => None,
            },
            mac: self.mac,
            state: self.state,
        }
    }

    pub fn matches(&self, l: &crate::model::Lease) -> bool {
        let in_cidr = match &self.subnet {
            Some(SubnetSel::Cidr(c)) => c.contains(&l.ip),
            _ => true,
        };
        in_cidr && self.ip.is_none_or(|ip| ip == l.ip)
    }
}
