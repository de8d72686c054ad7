//! How Drover's clients (the agent, the CLI) reach an HTTPS control plane:
//! rustls with the ring provider, trusting the CA certificate they are
//! given (`--ca-cert`, `DROVER_CA_CERT`) or else the data dir's generated
//! certificate when the server URL is https, or else the system's roots.
//! Never an "accept invalid certificates" mode.
//!
//! Every reqwest client of the workspace is built from [`client_builder`]
//! (or [`builder`]), which hands reqwest a complete rustls `ClientConfig`
//! made with the ring provider: nothing depends on a process-wide provider
//! being installed first (reqwest is built with `rustls-no-provider`, and
//! a plain `reqwest::Client::new()` panics without one).

use rustls::pki_types::{pem::PemObject, CertificateDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The self-signed certificate `drover serve --tls-self-signed` writes into
/// its data dir (the server's `tls::SELF_SIGNED_CERT`).
pub const DATA_DIR_CERT: &str = "tls-cert.pem";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the CA certificate {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the CA certificate {path} is not a PEM certificate")]
    Parse { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("the CA certificate {path} cannot be trusted")]
    Trust { path: PathBuf, source: rustls::Error },
    #[error("the CA certificate file {0} holds no certificate")]
    Empty(PathBuf),
}

/// Makes ring the process's rustls provider, for code that builds rustls
/// configurations of its own without naming a provider. Drover's HTTP
/// clients do not need it ([`client_config`] names ring). Calling it again
/// does nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The CA certificate to trust for `server`: the one given, else the data
/// dir's generated certificate when `server` is https and the file exists.
pub fn ca_cert_for(server: &str, given: Option<PathBuf>, data_dir: &Path) -> Option<PathBuf> {
    given.or_else(|| {
        let generated = data_dir.join(DATA_DIR_CERT);
        (server.starts_with("https://") && generated.is_file()).then_some(generated)
    })
}

/// The rustls configuration of Drover's HTTP clients: the ring provider,
/// TLS 1.2 and 1.3, and the certificates it trusts: only those of
/// `ca_cert` when given, else the system's roots (as reqwest's own default
/// does, through rustls-platform-verifier). A system without any root
/// certificate still gets a client (plain http works; https to a public
/// server is refused as untrusted).
pub fn client_config(ca_cert: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions");
    let Some(path) = ca_cert else {
        let config = match rustls_platform_verifier::Verifier::new(provider) {
            Ok(verifier) => builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)),
            Err(error) => {
                tracing::warn!(%error, "no system root certificates: https servers will not be trusted");
                builder.with_root_certificates(rustls::RootCertStore::empty())
            }
        };
        return Ok(config.with_no_client_auth());
    };
    let pem = std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Parse { path: path.to_path_buf(), source })?;
    if certs.is_empty() {
        return Err(TlsError::Empty(path.to_path_buf()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|source| TlsError::Trust { path: path.to_path_buf(), source })?;
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// A reqwest client builder that trusts only `ca_cert` when given (the
/// system's roots otherwise), with its TLS configuration made here
/// ([`client_config`]): building the client never needs a process-wide
/// rustls provider.
pub fn client_builder(ca_cert: Option<&Path>) -> Result<reqwest::ClientBuilder, TlsError> {
    Ok(reqwest::Client::builder().tls_backend_preconfigured(client_config(ca_cert)?))
}

/// [`client_builder`] trusting the system's roots (cannot fail): the one
/// way to make a reqwest client that talks to anything but Drover's own
/// server given a CA certificate.
pub fn builder() -> reqwest::ClientBuilder {
    client_builder(None).expect("the system roots' configuration reads no file")
}

/// `builder().build()`: what `reqwest::Client::new()` would be.
pub fn client() -> reqwest::Client {
    builder().build().expect("a client with a preconfigured TLS backend builds")
}

/// The TLS certificate error somewhere in `error`'s chain (a server whose
/// certificate the client does not trust), if that is what went wrong.
pub fn certificate_error(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)) =
            e.downcast_ref::<rustls::Error>()
        {
            return Some(tls.to_string());
        }
        // An io::Error's `source` skips the error it wraps: look inside.
        next = match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_dirs_certificate_is_trusted_by_default_only_for_https() {
        let dir = std::env::temp_dir().join(format!("drover-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(ca_cert_for("https://a:1", None, &dir), None, "no file, no default");
        std::fs::write(dir.join(DATA_DIR_CERT), "x").unwrap();
        assert_eq!(ca_cert_for("https://a:1", None, &dir), Some(dir.join(DATA_DIR_CERT)));
        assert_eq!(ca_cert_for("http://a:1", None, &dir), None);
        let given = PathBuf::from("/etc/ca.pem");
        assert_eq!(ca_cert_for("https://a:1", Some(given.clone()), &dir), Some(given));
        let e = client_builder(Some(&dir.join(DATA_DIR_CERT))).unwrap_err();
        assert!(matches!(e, TlsError::Empty(_) | TlsError::Parse { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
