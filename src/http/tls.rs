//! The optional TLS listener's server config (`[http] tls_cert` / `tls_key`): PEM files
//! read once at start (a new certificate takes a restart; reload does not re-read them).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate or key cannot be used; `field()` names the config key at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate {}: {reason}", path.display())]
    Cert { path: PathBuf, reason: String },
    #[error("private key {}: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("private key {} does not match certificate {}: {reason}", key.display(), cert.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

impl TlsError {
    /// The `[http]` key a config problem is reported under.
    pub fn field(&self) -> &'static str {
        match self {
            TlsError::Cert { .. } => "tls_cert",
            TlsError::Key { .. } | TlsError::Mismatch { .. } => "tls_key",
        }
    }
}

/// Reads the chain and key and checks that they go together (rustls compares the key's
/// public half with the leaf's); HTTP/1.1 only, like the plain listener.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let bad_cert = |reason: String| TlsError::Cert {
        path: cert.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad_cert(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_cert(e.to_string()))?;
    if chain.is_empty() {
        return Err(bad_cert("no CERTIFICATE block".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad_cert(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| TlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_files_name_their_field() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = server_config(&missing, &missing).unwrap_err();
        assert_eq!(e.field(), "tls_cert");
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = server_config(&empty, &missing).unwrap_err();
        assert_eq!(e.field(), "tls_cert");
        assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
    }
}
