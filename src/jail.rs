//! The path jail, shared by the TFTP server and the HTTP `/images/` tree: a requested name
//! becomes a regular file under the root, or a refusal. Two steps: a pure lexical check
//! ([`normalize`]: no NUL, no `..`, leading `/` stripped) and a filesystem check
//! ([`resolve`]: canonicalize, must stay under the canonical root, must be a regular file);
//! [`open`] adds opening it without following a last-moment symlink.

use std::path::{Path, PathBuf};

/// Why a name was refused; each protocol maps these to its own answer (TFTP error codes
/// 1 and 2, HTTP 404 and 403).
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// No such regular file under the root (also: a directory, an empty name).
    #[error("file not found: {path:?}")]
    NotFound { path: String },
    /// The name climbs out (lexically or through a symlink) or is not a regular file.
    #[error("access violation: {path:?}: {reason}")]
    Refused { path: String, reason: &'static str },
    /// A local I/O error while resolving or opening.
    #[error("reading {path:?}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// The lexical jail. Returns the cleaned relative path (`a/b`, no empty or `.` components),
/// which is also what the TFTP generated-file hook sees.
///
/// Absolute names are taken relative to the root (`/pxelinux.0` and `pxelinux.0` are the
/// same file), as tftpd-hpa `-s` and dnsmasq do; `..` is refused outright rather than
/// resolved, so no name can climb out lexically.
pub fn normalize(requested: &str) -> Result<String, JailError> {
    let refuse = |reason| JailError::Refused {
        path: requested.to_string(),
        reason,
    };
    if requested.contains('\0') {
        return Err(refuse("NUL in file name"));
    }
    let mut parts = Vec::new();
    for part in requested.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(refuse("'..' in file name")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(JailError::NotFound {
            path: requested.to_string(),
        });
    }
    Ok(parts.join("/"))
}

/// The filesystem jail, without opening: resolves `rel` (from [`normalize`]) under `root`
/// (already canonical) and returns the canonical path of the regular file it names, or
/// refuses symlink escapes and anything but a regular file. Blocking (a few `stat`s): call
/// it from a blocking context, or use [`open`].
///
/// For a server that opens the file itself afterwards (HTTP's `ServeDir`), the name it
/// opens may be swapped between this check and that open; as with the residual race in
/// [`open`], only a local writer of the root could do that.
pub fn resolve(root: &Path, rel: &str) -> Result<PathBuf, JailError> {
    let canon = std::fs::canonicalize(root.join(rel)).map_err(|e| io_refusal(rel, e))?;
    if !canon.starts_with(root) {
        return Err(JailError::Refused {
            path: rel.to_string(),
            reason: "resolves outside the root",
        });
    }
    // Check the kind before anyone opens it: opening a FIFO would block until a writer
    // appears.
    let meta = std::fs::metadata(&canon).map_err(|e| io_refusal(rel, e))?;
    check_kind(rel, &meta)?;
    Ok(canon)
}

/// The filesystem jail: [`resolve`], then open the file. Returns the file and its length.
///
/// Residual race: a directory inside the root swapped for a symlink between canonicalize
/// and open is not caught (openat2 RESOLVE_BENEATH would be); the root belongs to the
/// operator, not to clients, so only a local writer could exploit it. The final component
/// is opened with O_NOFOLLOW and re-checked with fstat.
pub async fn open(root: &Path, rel: &str) -> Result<(tokio::fs::File, u64), JailError> {
    let canon = {
        let (root, owned) = (root.to_path_buf(), rel.to_string());
        tokio::task::spawn_blocking(move || resolve(&root, &owned))
            .await
            .map_err(|e| JailError::Io {
                path: rel.to_string(),
                source: std::io::Error::other(e),
            })??
    };
    let file = open_nofollow(&canon)
        .await
        .map_err(|e| io_refusal(rel, e))?;
    let meta = file.metadata().await.map_err(|e| io_refusal(rel, e))?;
    check_kind(rel, &meta)?;
    Ok((file, meta.len()))
}

async fn open_nofollow(path: &Path) -> std::io::Result<tokio::fs::File> {
    // O_NONBLOCK: should a FIFO be swapped in after the kind check, open must not hang.
    tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .await
}

fn check_kind(rel: &str, meta: &std::fs::Metadata) -> Result<(), JailError> {
    if meta.is_dir() {
        return Err(JailError::NotFound {
            path: rel.to_string(),
        });
    }
    if !meta.is_file() {
        return Err(JailError::Refused {
            path: rel.to_string(),
            reason: "not a regular file",
        });
    }
    Ok(())
}

fn io_refusal(rel: &str, e: std::io::Error) -> JailError {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::NotFound | ErrorKind::NotADirectory => JailError::NotFound {
            path: rel.to_string(),
        },
        ErrorKind::PermissionDenied => JailError::Refused {
            path: rel.to_string(),
            reason: "permission denied",
        },
        // ELOOP from O_NOFOLLOW: the last component became a symlink after canonicalize.
        _ if e.raw_os_error() == Some(nix::libc::ELOOP) => JailError::Refused {
            path: rel.to_string(),
            reason: "symlink swapped in",
        },
        _ => JailError::Io {
            path: rel.to_string(),
            source: e,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: &Result<String, JailError>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(JailError::NotFound { .. }) => "not_found",
            Err(JailError::Refused { .. }) => "access_violation",
            Err(_) => "other",
        }
    }

    #[test]
    fn lexical_jail_table() {
        let table = [
            ("pxelinux.0", "ok", "pxelinux.0"),
            ("/pxelinux.0", "ok", "pxelinux.0"),
            ("//a//b/./c", "ok", "a/b/c"),
            ("./a", "ok", "a"),
            ("a/b/", "ok", "a/b"),
            ("..", "access_violation", ""),
            ("../etc/passwd", "access_violation", ""),
            ("/../etc/passwd", "access_violation", ""),
            ("a/../../etc/passwd", "access_violation", ""),
            ("a/..", "access_violation", ""),
            ("a/b/../c", "access_violation", ""),
            ("a\0b", "access_violation", ""),
            ("", "not_found", ""),
            ("/", "not_found", ""),
            ("/./", "not_found", ""),
            // not separators on Linux: a plain (odd) file name inside the root
            ("..\\..\\etc\\passwd", "ok", "..\\..\\etc\\passwd"),
            ("...", "ok", "..."),
        ];
        for (req, want, cleaned) in table {
            let r = normalize(req);
            assert_eq!(code(&r), want, "{req:?}");
            if let Ok(c) = r {
                assert_eq!(c, cleaned, "{req:?}");
            }
        }
    }

    fn kind(r: Result<(tokio::fs::File, u64), JailError>) -> &'static str {
        code(&r.map(|_| String::new()))
    }

    #[tokio::test]
    async fn filesystem_jail_table() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("ok.bin"), b"hello").unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/inner"), b"x").unwrap();
        let link = |target: &Path, name: &str| {
            std::os::unix::fs::symlink(target, root.join(name)).unwrap();
        };
        link(&outside.path().join("secret"), "escape");
        link(outside.path(), "escape-dir");
        link(Path::new("../"), "up");
        link(&root.join("ok.bin"), "inside-link");
        link(Path::new("sub/inner"), "relative-inside");
        link(Path::new("/dev/null"), "devnull");
        link(Path::new("missing"), "dangling");
        let fifo = std::process::Command::new("mkfifo")
            .arg(root.join("fifo"))
            .status()
            .unwrap();
        assert!(fifo.success());

        let table = [
            ("ok.bin", "ok"),
            ("sub/inner", "ok"),
            ("inside-link", "ok"),
            ("relative-inside", "ok"),
            ("missing", "not_found"),
            ("ok.bin/x", "not_found"),
            ("sub", "not_found"),
            ("dangling", "not_found"),
            ("escape", "access_violation"),
            ("escape-dir/secret", "access_violation"),
            ("up", "not_found"), // a directory (outside, but the kind check is moot)
            ("devnull", "access_violation"),
            ("fifo", "access_violation"),
        ];
        for (rel, want) in table {
            let got = tokio::time::timeout(std::time::Duration::from_secs(2), open(&root, rel))
                .await
                .unwrap_or_else(|_| panic!("{rel}: open blocked"));
            let got = kind(got);
            // The check alone (what HTTP runs before ServeDir) answers as open does.
            let checked = code(&resolve(&root, rel).map(|_| String::new()));
            assert_eq!(checked, got, "{rel}: resolve and open disagree");
            // "up" resolves outside: either refusal is acceptable, never "ok".
            if rel == "up" {
                assert_ne!(got, "ok");
                continue;
            }
            assert_eq!(got, want, "{rel}");
        }
        let (_, len) = open(&root, "ok.bin").await.unwrap();
        assert_eq!(len, 5);
    }
}
