//! rustls client configs for BMCs (ring provider, no aws-lc): verify against the system
//! roots by default, or only against a CA bundle the inventory names (per BMC or per
//! site), or — where the operator wrote `insecure = true` — accept any certificate and say
//! so once per BMC.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Where Debian, RHEL and Alpine keep the system CA bundle (what openssl-probe looks at).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("no system CA bundle found (looked in {}); install ca-certificates or set bmc.ca_file", SYSTEM_BUNDLES.join(", "))]
    NoSystemRoots,
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file into a root store.
pub fn roots_from_pem(path: &Path) -> Result<RootCertStore, TlsError> {
    let bad = |reason: String| TlsError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))?;
    let mut store = RootCertStore::empty();
    for cert in iter {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        store.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(bad("no PEM certificate in it".to_string()));
    }
    Ok(store)
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let path = SYSTEM_BUNDLES
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or(TlsError::NoSystemRoots)?;
    roots_from_pem(path)
}

/// A verifying config: the system roots, or only `ca_file`'s certificates.
pub fn verifying(ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let roots = match ca_file {
        Some(p) => roots_from_pem(p)?,
        None => system_roots()?,
    };
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A config that accepts any server certificate (signatures are still checked, so the
/// handshake is with whoever holds the key the certificate names). Warns once per BMC.
pub fn insecure() -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(AcceptAny {
        provider: Arc::clone(&provider),
        warned: Mutex::new(HashSet::new()),
    });
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// A config for plain-HTTP clients (reqwest still wants one; it is never used for http://).
pub fn plain() -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth())
}

#[derive(Debug)]
struct AcceptAny {
    provider: Arc<CryptoProvider>,
    /// BMCs already warned about (by server name), so a rack-wide poll logs each once.
    warned: Mutex<HashSet<String>>,
}

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = server_name.to_str().into_owned();
        let first = self
            .warned
            .lock()
            .map(|mut w| w.insert(name.clone()))
            .unwrap_or(false);
        if first {
            tracing::warn!(
                bmc = %name,
                "not verifying the BMC's TLS certificate (insecure = true in the inventory)"
            );
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
