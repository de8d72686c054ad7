//! How Drover's clients (the agent, the CLI) reach an HTTPS control plane:
//! rustls with the ring provider, trusting the CA certificate they are
//! given (`--ca-cert`, `DROVER_CA_CERT`) or else the data dir's generated
//! certificate when the server URL is https, or else the system's roots.
//! Never an "accept invalid certificates" mode.

use std::path::{Path, PathBuf};

/// The self-signed certificate `drover serve --tls-self-signed` writes into
/// its data dir (the server's `tls::SELF_SIGNED_CERT`).
pub const DATA_DIR_CERT: &str = "tls-cert.pem";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the CA certificate {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the CA certificate {path} is not a PEM certificate")]
    Parse { path: PathBuf, source: reqwest::Error },
    #[error("the CA certificate file {0} holds no certificate")]
    Empty(PathBuf),
}

/// Makes ring the process's rustls provider (reqwest is built without one
/// and panics building a client otherwise). Calling it again does nothing.
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

/// A reqwest client builder that trusts only `ca_cert` when given (the
/// system's roots otherwise).
pub fn client_builder(ca_cert: Option<&Path>) -> Result<reqwest::ClientBuilder, TlsError> {
    install_crypto_provider();
    let builder = reqwest::Client::builder();
    let Some(path) = ca_cert else { return Ok(builder) };
    let pem = std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|source| TlsError::Parse { path: path.to_path_buf(), source })?;
    if certs.is_empty() {
        return Err(TlsError::Empty(path.to_path_buf()));
    }
    Ok(builder.tls_certs_only(certs))
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
