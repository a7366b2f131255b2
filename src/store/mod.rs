//! The store backends behind the traits of [`crate::model`]: SQLite (`sqlite/`) is the
//! embedded default; PostgreSQL (`postgres.rs`) implements the same traits for two gateways
//! sharing state. `tests/store_contract.rs` runs one battery against every backend, so
//! callers may rely on what the model's docs promise, whatever the backend. Only `app.rs`
//! and the CLI open a backend; everything else holds the model's traits.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use jiff::Timestamp;
use serde::Serialize;

// The records and traits lived here before `crate::model`; the backends and the CLI still
// name them through this path.
pub use crate::model::*;

pub mod postgres;
mod rows;
pub mod sqlite;
mod writes;

/// Where the state lives, parsed from the config's `store` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite:/var/lib/bootgate/bootgate.db` (embedded, the default).
    Sqlite(PathBuf),
    /// `postgres://user@host/db`: the shared store of a two-gateway deployment.
    Postgres(String),
}

impl Serialize for StoreUrl {
    /// As displayed: a PostgreSQL password never reaches JSON output.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The URL is neither `sqlite:PATH` nor `postgres://…`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported store URL {0:?}: expected sqlite:PATH or postgres://USER@HOST/DB")]
pub struct BadStoreUrl(pub String);

impl FromStr for StoreUrl {
    type Err = BadStoreUrl;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(BadStoreUrl(s.to_string()));
            }
            Ok(StoreUrl::Sqlite(PathBuf::from(path)))
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(StoreUrl::Postgres(s.to_string()))
        } else {
            Err(BadStoreUrl(s.to_string()))
        }
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            // never print a password that may sit in the URL
            StoreUrl::Postgres(u) => match (u.find("://"), u.rfind('@')) {
                (Some(s), Some(at)) if at > s => write!(f, "{}://***{}", &u[..s], &u[at..]),
                _ => f.write_str(u),
            },
        }
    }
}

/// The stored form of a token: hex SHA-256.
pub fn boot_token_hash(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares two stored hashes without an early exit on the first difference.
pub(crate) fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The decision `check_boot_token` makes from the stored row (pure; shared by backends).
pub(crate) fn decide_token(
    row: Option<rows::TokenRow>,
    offered: &str,
    now: Timestamp,
) -> TokenCheck {
    match row {
        None => TokenCheck::NoBoot,
        Some(row) => {
            if !hashes_equal(&row.hash, &boot_token_hash(offered)) {
                TokenCheck::Wrong
            } else if let Some(at) = row.consumed {
                TokenCheck::Used { at }
            } else if row.expires <= now {
                TokenCheck::Expired { at: row.expires }
            } else {
                TokenCheck::Accepted {
                    host: row.host,
                    purpose: row.purpose,
                }
            }
        }
    }
}

/// Opens (creating and migrating when needed) the store a URL names, with default pool
/// options.
pub async fn open(url: &StoreUrl) -> Result<Arc<dyn Store>, StoreError> {
    open_with(url, &postgres::PgOptions::default()).await
}

/// Opens the store a URL names; `pg` sets the pool of a `postgres://` store (the config's
/// `[postgres]`), and is ignored for SQLite.
pub async fn open_with(
    url: &StoreUrl,
    pg: &postgres::PgOptions,
) -> Result<Arc<dyn Store>, StoreError> {
    match url {
        StoreUrl::Sqlite(path) => Ok(Arc::new(sqlite::SqliteStore::open(path).await?)),
        StoreUrl::Postgres(raw) => Ok(Arc::new(postgres::PostgresStore::open(raw, pg).await?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse() {
        assert_eq!(
            "sqlite:/var/lib/bootgate/b.db".parse::<StoreUrl>().unwrap(),
            StoreUrl::Sqlite("/var/lib/bootgate/b.db".into())
        );
        assert_eq!(
            "sqlite://rel/b.db".parse::<StoreUrl>().unwrap(),
            StoreUrl::Sqlite("rel/b.db".into())
        );
        let pg: StoreUrl = "postgres://bg:secret@db1/bootgate".parse().unwrap();
        assert_eq!(pg.to_string(), "postgres://***@db1/bootgate");
        assert!("mysql://x".parse::<StoreUrl>().is_err());
        assert!("sqlite:".parse::<StoreUrl>().is_err());
    }
}
