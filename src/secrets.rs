//! Root-only secrets: the BMC credentials file (`secrets = "/etc/bootgate/secrets.toml"` or
//! `secrets = "credential:NAME"` for systemd's `LoadCredential=`), read only when it is
//! private to the daemon's user. Secret values live in [`Secret`], whose `Debug`/`Display`
//! print `***`, so no log line, event, API answer or error message can carry one.
//!
//! File format (unknown keys refused):
//! ```toml
//! [bmc.dell-prod]
//! username = "bootgate"
//! password = "…"
//!
//! [postgres]            # the password of a `postgres://user@host/db` store
//! password = "…"
//! ```

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The `credential:` prefix of `secrets = "credential:NAME"` in bootgate.toml.
pub const CREDENTIAL_PREFIX: &str = "credential:";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: mode {mode:04o} lets group or others read it; a secrets file must be private (chmod 600 {path})"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "{path}: owned by uid {owner}, not by the daemon's uid {uid}; a secrets file must belong to the user reading it"
    )]
    Owner { path: PathBuf, owner: u32, uid: u32 },
    /// The message comes from the TOML parser, which quotes positions, never values
    /// (the span is reported as line/column only).
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error(
        "secrets = \"{CREDENTIAL_PREFIX}{name}\" needs $CREDENTIALS_DIRECTORY, which systemd sets for a unit with LoadCredential={name}:…; it is not set here (outside systemd, give the file's path instead)"
    )]
    NoCredentialsDirectory { name: String },
    #[error(
        "secrets = \"{CREDENTIAL_PREFIX}{name}\": a credential name is one file name (no '/', not empty)"
    )]
    BadCredentialName { name: String },
}

/// A secret value. Never printed: `Debug` and `Display` show `***`. Read it with
/// [`Secret::expose`] only where it goes on the wire (an HTTP header, a child's environment).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// A BMC login, as `[bmc.NAME]` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BmcLogin {
    pub username: String,
    pub password: Secret,
}

/// The parsed secrets file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    /// Credential name (what `bmc.credential` in the inventory says) → login.
    #[serde(default)]
    bmc: BTreeMap<String, BmcLogin>,
    /// The PostgreSQL store's password, so that the store URL in bootgate.toml (a
    /// world-readable file) carries none.
    #[serde(default)]
    postgres: Option<PostgresLogin>,
}

/// `[postgres]`: the store's login. The user name stays in the URL (it is no secret).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresLogin {
    pub password: Secret,
}

impl Secrets {
    /// Reads a private secrets file (see [`read_private_file`]) and parses it.
    pub fn load(path: &Path) -> Result<Secrets, SecretsError> {
        let text = read_private_file(path)?;
        Secrets::parse(path, &text)
    }

    /// Parses secrets text; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Secrets, SecretsError> {
        toml::from_str::<Secrets>(text).map_err(|e| SecretsError::Parse {
            path: path.to_path_buf(),
            reason: parse_reason(text, &e),
        })
    }

    /// The login for credential `name`, if the file has one.
    pub fn bmc(&self, name: &str) -> Option<&BmcLogin> {
        self.bmc.get(name)
    }

    /// The credential names present (for messages: never the values).
    pub fn bmc_names(&self) -> impl Iterator<Item = &str> {
        self.bmc.keys().map(String::as_str)
    }

    /// The PostgreSQL store's password (`[postgres] password`), if the file has one.
    pub fn postgres_password(&self) -> Option<&Secret> {
        self.postgres.as_ref().map(|p| &p.password)
    }

    /// Secrets built in code (tests, tools).
    pub fn with_postgres_password(mut self, password: &str) -> Secrets {
        self.postgres = Some(PostgresLogin {
            password: Secret::new(password),
        });
        self
    }

    /// Secrets built in code (tests, tools).
    pub fn with_bmc(mut self, name: &str, username: &str, password: &str) -> Secrets {
        self.bmc.insert(
            name.to_string(),
            BmcLogin {
                username: username.to_string(),
                password: Secret::new(password),
            },
        );
        self
    }
}

/// A TOML error without the source excerpt `toml` would print (it could quote a password
/// on the offending line): just the position and the parser's message.
fn parse_reason(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message();
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("TOML error at line {line}, column {col}: {msg}")
        }
        None => format!("TOML error: {msg}"),
    }
}

/// Reads a root-only file: refuses it unless it is owned by the current user and has no
/// group/other permission bits (`mode & 0o077 == 0`). A file systemd handed over as a
/// credential (directly in `$CREDENTIALS_DIRECTORY`) is judged by [`private_enough`]'s
/// credential rule instead. The checks use the opened file's own metadata, so a swap
/// between check and read cannot slip past. Errors name the path and mode, never the
/// content.
pub fn read_private_file(path: &Path) -> Result<String, SecretsError> {
    let read_err = |source| SecretsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    let uid = current_uid().map_err(read_err)?;
    let credentials_dir = std::env::var_os("CREDENTIALS_DIRECTORY");
    let is_credential = credentials_dir
        .as_deref()
        .is_some_and(|d| !d.is_empty() && path.parent() == Some(Path::new(d)));
    private_enough(path, meta.mode() & 0o7777, meta.uid(), uid, is_credential)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read_err)?;
    Ok(text)
}

/// Whether a file of `mode` owned by `owner` is private enough for the daemon (uid `uid`)
/// to take secrets from it (pure: the caller passes the opened file's metadata).
///
/// An ordinary file must be the daemon's own with no group/other bits. A systemd
/// credential (`LoadCredential=`) of a service with `User=` is, depending on the file
/// system systemd put the credentials on, either chowned to that user (mode 0400) or left
/// root's with an ACL granting that user read (`ls -l` then shows the ACL mask as group
/// bits, e.g. 0440); systemd makes the directory itself private to the unit and read-only.
/// So for a credential: owner the daemon's user or root, and no bits for others.
pub fn private_enough(
    path: &Path,
    mode: u32,
    owner: u32,
    uid: u32,
    is_credential: bool,
) -> Result<(), SecretsError> {
    let forbidden = if is_credential { 0o007 } else { 0o077 };
    if mode & forbidden != 0 {
        return Err(SecretsError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if owner != uid && !(is_credential && owner == 0) {
        return Err(SecretsError::Owner {
            path: path.to_path_buf(),
            owner,
            uid,
        });
    }
    Ok(())
}

/// The effective uid of this process: the owner of `/proc/self` (Linux), which avoids a
/// libc dependency for one call.
fn current_uid() -> std::io::Result<u32> {
    Ok(std::fs::metadata("/proc/self")?.uid())
}

/// Where bootgate.toml's `secrets` points: a file, or a systemd credential.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretsSource {
    /// A path (already made absolute relative to the config's directory).
    File(PathBuf),
    /// `credential:NAME`: `$CREDENTIALS_DIRECTORY/NAME` (systemd `LoadCredential=NAME:…`).
    Credential(String),
}

impl SecretsSource {
    /// Parses the config value: `credential:NAME`, else a path (returned as given).
    pub fn parse(value: &str) -> Result<SecretsSource, SecretsError> {
        match value.strip_prefix(CREDENTIAL_PREFIX) {
            Some(name) if name.is_empty() || name.contains('/') || name == "." || name == ".." => {
                Err(SecretsError::BadCredentialName {
                    name: name.to_string(),
                })
            }
            Some(name) => Ok(SecretsSource::Credential(name.to_string())),
            None => Ok(SecretsSource::File(PathBuf::from(value))),
        }
    }

    /// The file to read, given the value of `$CREDENTIALS_DIRECTORY` (pure: tests pass it).
    pub fn path_with(&self, credentials_dir: Option<&OsStr>) -> Result<PathBuf, SecretsError> {
        match self {
            SecretsSource::File(p) => Ok(p.clone()),
            SecretsSource::Credential(name) => match credentials_dir {
                Some(dir) if !dir.is_empty() => Ok(Path::new(dir).join(name)),
                _ => Err(SecretsError::NoCredentialsDirectory { name: name.clone() }),
            },
        }
    }

    /// The file to read, taking `$CREDENTIALS_DIRECTORY` from the environment systemd gave us.
    pub fn path(&self) -> Result<PathBuf, SecretsError> {
        self.path_with(std::env::var_os("CREDENTIALS_DIRECTORY").as_deref())
    }

    /// Resolves and loads the secrets.
    pub fn load(&self) -> Result<Secrets, SecretsError> {
        Secrets::load(&self.path()?)
    }
}

impl fmt::Display for SecretsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretsSource::File(p) => write!(f, "{}", p.display()),
            SecretsSource::Credential(n) => write!(f, "{CREDENTIAL_PREFIX}{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "***");
        let login = BmcLogin {
            username: "admin".into(),
            password: s.clone(),
        };
        assert!(!format!("{login:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&login).unwrap().contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn parse_errors_do_not_quote_values() {
        let text = "[bmc.a]\nusername = \"u\"\npassword = \"hunter2\"\ncolour = \"hunter2\"\n";
        let e = Secrets::parse(Path::new("/s.toml"), text).unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains("/s.toml"), "{shown}");
        assert!(shown.contains("line 4"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn unknown_top_level_table_refused() {
        let e = Secrets::parse(Path::new("s"), "[tokens]\na = 1\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn postgres_password_is_read_and_never_printed() {
        let s = Secrets::parse(Path::new("s"), "[postgres]\npassword = \"pg-hunter2\"\n").unwrap();
        assert_eq!(s.postgres_password().unwrap().expose(), "pg-hunter2");
        assert!(!format!("{s:?}").contains("pg-hunter2"));
        assert!(Secrets::default().postgres_password().is_none());
        let e = Secrets::parse(Path::new("s"), "[postgres]\nuser = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn a_plain_file_must_be_ours_and_private() {
        let p = Path::new("/etc/bootgate/secrets.toml");
        assert!(private_enough(p, 0o600, 998, 998, false).is_ok());
        assert!(private_enough(p, 0o400, 998, 998, false).is_ok());
        let e = private_enough(p, 0o640, 998, 998, false).unwrap_err();
        assert!(
            matches!(e, SecretsError::Permissions { mode: 0o640, .. }),
            "{e}"
        );
        let e = private_enough(p, 0o600, 0, 998, false).unwrap_err();
        assert!(
            matches!(
                e,
                SecretsError::Owner {
                    owner: 0,
                    uid: 998,
                    ..
                }
            ),
            "{e}"
        );
    }

    /// What systemd leaves in `$CREDENTIALS_DIRECTORY` for a `User=` service: a file
    /// chowned to the user (0400), or root's with a read ACL for it (mask shown as 0440).
    #[test]
    fn a_systemd_credential_may_be_roots_with_an_acl_but_never_others() {
        let p = Path::new("/run/credentials/bootgate.service/secrets.toml");
        assert!(private_enough(p, 0o400, 998, 998, true).is_ok());
        assert!(private_enough(p, 0o440, 0, 998, true).is_ok());
        assert!(private_enough(p, 0o444, 0, 998, true).is_err());
        assert!(private_enough(p, 0o440, 1000, 998, true).is_err());
    }

    #[test]
    fn credential_source() {
        let s = SecretsSource::parse("credential:bootgate-secrets").unwrap();
        assert_eq!(
            s.path_with(Some(OsStr::new("/run/credentials/bootgate.service")))
                .unwrap(),
            PathBuf::from("/run/credentials/bootgate.service/bootgate-secrets")
        );
        let e = s.path_with(None).unwrap_err().to_string();
        assert!(e.contains("CREDENTIALS_DIRECTORY"), "{e}");
        assert!(e.contains("credential:bootgate-secrets"), "{e}");
        assert!(SecretsSource::parse("credential:").is_err());
        assert!(SecretsSource::parse("credential:../x").is_err());
        assert_eq!(
            SecretsSource::parse("/etc/bootgate/secrets.toml").unwrap(),
            SecretsSource::File("/etc/bootgate/secrets.toml".into())
        );
    }
}
