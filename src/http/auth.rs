//! API authentication: bearer tokens from a root-only tokens file, each with a scope.
//!
//! ```toml
//! # /etc/bootgate/tokens.toml (mode 0600): entries come from `bootgate token new NAME`
//! [[token]]
//! name = "ops-alice"
//! scope = "admin"          # or "read"
//! sha256 = "…64 hex…"      # of the token; the token itself is never stored
//! ```
//! Every mutating endpoint needs an `admin` token; read endpoints need a `read` (or
//! `admin`) token unless `[http] open_reads = true`. The boot path (iPXE scripts, images,
//! phone-home with its per-boot token) is never behind a bearer token: firmware can't send one.
//! A missing or unknown token is 401 with `WWW-Authenticate: Bearer`; a valid token
//! without the scope is 403 (RFC 6750 §3.1: `invalid_token` vs `insufficient_scope`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::types::text_enum;

text_enum!(
    /// What a token may do.
    Scope {
        /// GET endpoints only.
        Read => "read",
        /// Everything, including power, reset, lease release and reload.
        Admin => "admin",
    }
);

impl Scope {
    fn allows(self, needed: Scope) -> bool {
        self == Scope::Admin || needed == Scope::Read
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error(transparent)]
    Private(crate::secrets::SecretsError),
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: token {name:?}: {reason}")]
    Entry {
        path: PathBuf,
        name: String,
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensWire {
    #[serde(default)]
    token: Vec<TokenWire>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenWire {
    name: String,
    scope: String,
    sha256: String,
}

/// One accepted token: its name (the event actor is `api:<name>`), scope and digest.
#[derive(Clone)]
struct Entry {
    name: String,
    scope: Scope,
    digest: [u8; 32],
}

/// The tokens the API accepts. Empty when no tokens file is configured: then every
/// mutating request is refused (401) and reads are open only if the config says so.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|e| e.name.as_str()).collect();
        f.debug_struct("Tokens").field("names", &names).finish()
    }
}

/// Who made an authorized request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub scope: Scope,
}

impl Caller {
    /// The event actor for this caller: `api:<token name>`, or `api` for an open read.
    pub fn actor(caller: Option<&Caller>) -> String {
        caller.map_or_else(|| "api".to_string(), |c| format!("api:{}", c.name))
    }
}

impl Tokens {
    /// Reads the tokens file; refuses one that group or others can read or that another
    /// user owns (it lets its holder power-cycle the datacenter).
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        // The secrets error already names the path.
        let text = crate::secrets::read_private_file(path).map_err(TokensError::Private)?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Tokens, TokensError> {
        let wire: TokensWire = toml::from_str(text).map_err(|e| TokensError::File {
            path: path.to_path_buf(),
            reason: e.message().to_string(),
        })?;
        let mut entries: Vec<Entry> = Vec::new();
        for t in wire.token {
            let bad = |reason: String| TokensError::Entry {
                path: path.to_path_buf(),
                name: t.name.clone(),
                reason,
            };
            if t.name.is_empty() || !t.name.chars().all(|c| c.is_ascii_graphic()) {
                return Err(bad("name must be non-empty printable ASCII".into()));
            }
            let scope: Scope = t
                .scope
                .parse()
                .map_err(|_| bad(format!("scope {:?}: expected read or admin", t.scope)))?;
            let digest = parse_digest(&t.sha256)
                .ok_or_else(|| bad("sha256 must be 64 hex digits".into()))?;
            if entries.iter().any(|e| e.name == t.name) {
                return Err(bad("defined twice".into()));
            }
            entries.push(Entry {
                name: t.name,
                scope,
                digest,
            });
        }
        Ok(Tokens { entries })
    }

    /// The caller a presented token belongs to. Every entry is compared (in constant time
    /// per entry), so timing tells nothing about which digest came close.
    pub fn check(&self, presented: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for e in &self.entries {
            if constant_time_eq(&e.digest, &digest) {
                found = Some(Caller {
                    name: e.name.clone(),
                    scope: e.scope,
                });
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new random token and the tokens-file entry that accepts it.
pub fn new_token(name: &str, scope: Scope) -> Result<(String, String), getrandom::Error> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw)?;
    let token = format!("bgt_{}", hex(&raw));
    let digest = hex(&Sha256::digest(token.as_bytes()));
    let entry = format!("[[token]]\nname = {name:?}\nscope = \"{scope}\"\nsha256 = \"{digest}\"\n");
    Ok((token, entry))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header (401).
    Missing,
    /// A token that no entry accepts (401).
    Unknown,
    /// A valid token without the needed scope (403).
    Scope { caller: String, needed: Scope },
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, challenge, msg) = match &self {
            Refusal::Missing => (
                StatusCode::UNAUTHORIZED,
                "Bearer realm=\"bootgate\"",
                "authentication required: send Authorization: Bearer <token> (see `bootgate token new`)".to_string(),
            ),
            Refusal::Unknown => (
                StatusCode::UNAUTHORIZED,
                "Bearer realm=\"bootgate\", error=\"invalid_token\"",
                "invalid token".to_string(),
            ),
            Refusal::Scope { caller, needed } => (
                StatusCode::FORBIDDEN,
                "Bearer realm=\"bootgate\", error=\"insufficient_scope\"",
                format!("token {caller:?} lacks the {needed} scope"),
            ),
        };
        let mut resp = (status, axum::Json(serde_json::json!({"error": msg}))).into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        resp
    }
}

/// The decision for one request (pure: headers in, caller or refusal out).
pub fn authorize(
    tokens: &Tokens,
    authorization: Option<&str>,
    needed: Scope,
    open_reads: bool,
) -> Result<Option<Caller>, Refusal> {
    let presented = authorization.and_then(|v| {
        let (scheme, token) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    match presented {
        None if needed == Scope::Read && open_reads => Ok(None),
        None => Err(Refusal::Missing),
        Some(t) => {
            let caller = tokens.check(t).ok_or(Refusal::Unknown)?;
            if caller.scope.allows(needed) {
                Ok(Some(caller))
            } else {
                Err(Refusal::Scope {
                    caller: caller.name,
                    needed,
                })
            }
        }
    }
}

/// What the API's guards check a request against (built by `app.rs`; the tokens are
/// swapped on reload).
#[derive(Clone)]
pub struct Access {
    pub tokens: Arc<arc_swap::ArcSwap<Tokens>>,
    /// `[http] open_reads`: read endpoints without a token.
    pub open_reads: bool,
}

async fn guard(access: &Access, needed: Scope, mut req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let tokens = access.tokens.load();
    match authorize(&tokens, header, needed, access.open_reads) {
        Ok(caller) => {
            if let Some(c) = caller {
                req.extensions_mut().insert(c);
            }
            next.run(req).await
        }
        Err(refusal) => {
            metrics::counter!("bootgate_api_refused_total", "status" => match refusal {
                Refusal::Scope { .. } => "403",
                _ => "401",
            })
            .increment(1);
            tracing::warn!(path = %req.uri().path(), refusal = ?refusal, "API request refused");
            refusal.into_response()
        }
    }
}

/// Middleware for read endpoints.
pub async fn require_read(State(access): State<Access>, req: Request, next: Next) -> Response {
    guard(&access, Scope::Read, req, next).await
}

/// Middleware for mutating endpoints.
pub async fn require_admin(State(access): State<Access>, req: Request, next: Next) -> Response {
    guard(&access, Scope::Admin, req, next).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> (Tokens, String, String) {
        let (admin, a) = new_token("ops", Scope::Admin).unwrap();
        let (read, r) = new_token("grafana", Scope::Read).unwrap();
        let t = Tokens::parse(Path::new("t.toml"), &format!("{a}\n{r}")).unwrap();
        (t, admin, read)
    }

    #[test]
    fn admin_token_may_do_everything() {
        let (t, admin, _) = tokens();
        let h = format!("Bearer {admin}");
        let c = authorize(&t, Some(&h), Scope::Admin, false)
            .unwrap()
            .unwrap();
        assert_eq!(c.name, "ops");
        assert!(
            authorize(&t, Some(&h), Scope::Read, false)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn read_token_is_forbidden_to_mutate() {
        let (t, _, read) = tokens();
        let h = format!("bearer {read}");
        assert_eq!(
            authorize(&t, Some(&h), Scope::Admin, true),
            Err(Refusal::Scope {
                caller: "grafana".into(),
                needed: Scope::Admin
            })
        );
        assert!(authorize(&t, Some(&h), Scope::Read, false).is_ok());
    }

    #[test]
    fn missing_and_unknown_tokens_are_unauthorized() {
        let (t, _, _) = tokens();
        assert_eq!(
            authorize(&t, None, Scope::Admin, true),
            Err(Refusal::Missing)
        );
        assert_eq!(
            authorize(&t, None, Scope::Read, false),
            Err(Refusal::Missing)
        );
        assert_eq!(authorize(&t, None, Scope::Read, true), Ok(None));
        assert_eq!(
            authorize(&t, Some("Bearer bgt_nope"), Scope::Read, false),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            authorize(&t, Some("Basic YWRtaW46cGFzc3dvcmQ="), Scope::Admin, false),
            Err(Refusal::Missing)
        );
    }

    #[test]
    fn an_empty_file_accepts_nothing() {
        let t = Tokens::parse(Path::new("t.toml"), "").unwrap();
        assert!(t.is_empty());
        assert_eq!(
            authorize(&t, Some("Bearer x"), Scope::Read, false),
            Err(Refusal::Unknown)
        );
    }

    #[test]
    fn bad_entries_name_the_token_and_field() {
        let e = Tokens::parse(
            Path::new("/etc/bootgate/tokens.toml"),
            "[[token]]\nname = \"ops\"\nscope = \"root\"\nsha256 = \"00\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/etc/bootgate/tokens.toml") && e.contains("\"ops\""),
            "{e}"
        );
        assert!(e.contains("scope \"root\""), "{e}");
        let e = Tokens::parse(
            Path::new("t.toml"),
            "[[token]]\nname = \"ops\"\nscope = \"read\"\nsha256 = \"zz\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("64 hex"), "{e}");
        let e = Tokens::parse(
            Path::new("t.toml"),
            "[[token]]\nname = \"ops\"\npassword = \"x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("password"), "{e}");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let (_, a) = new_token("ops", Scope::Admin).unwrap();
        let (_, b) = new_token("ops", Scope::Read).unwrap();
        let e = Tokens::parse(Path::new("t.toml"), &format!("{a}\n{b}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("defined twice"), "{e}");
    }

    #[test]
    fn debug_shows_names_not_digests() {
        let (t, admin, _) = tokens();
        let d = format!("{t:?}");
        assert!(d.contains("ops") && !d.contains(&admin[4..12]), "{d}");
    }
}
