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
/// group/other permission bits (`mode & 0o077 == 0`). The checks use the opened file's
/// own metadata, so a swap between check and read cannot slip past. Errors name the path
/// and mode, never the content.
pub fn read_private_file(path: &Path) -> Result<String, SecretsError> {
    let read_err = |source| SecretsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretsError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let uid = current_uid().map_err(read_err)?;
    if meta.uid() != uid {
        return Err(SecretsError::Owner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            uid,
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read_err)?;
    Ok(text)
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
