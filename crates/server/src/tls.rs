//! TLS for the API (rustls with the ring provider): a certificate chain and
//! key from PEM files, or a self-signed pair generated into the data dir for
//! a quick local start. Clients verify it: `drover --ca-cert PATH`, or the
//! data dir's generated certificate by default (docs/configuration.md).

use anyhow::{anyhow, bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// The generated certificate, in the data dir (what clients trust).
pub const SELF_SIGNED_CERT: &str = "tls-cert.pem";
/// Its private key, mode 0600.
pub const SELF_SIGNED_KEY: &str = "tls-key.pem";

/// Where the API's certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsSource {
    /// A PEM certificate chain (leaf first) and its PEM private key.
    Files { cert: PathBuf, key: PathBuf },
    /// [`SELF_SIGNED_CERT`] and [`SELF_SIGNED_KEY`] in the data dir, made on
    /// first use and kept, so clients that trust it keep trusting it.
    SelfSigned,
}

/// Makes ring the process's rustls provider (reqwest is built without one
/// and panics building a client otherwise). Calling it again does nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The acceptor for `source`; generates the self-signed pair if asked and
/// missing. Returns the certificate's path too, for the log.
pub fn acceptor(source: &TlsSource, data_dir: &Path, listen: SocketAddr) -> anyhow::Result<(TlsAcceptor, PathBuf)> {
    let (cert, key) = match source {
        TlsSource::Files { cert, key } => (cert.clone(), key.clone()),
        TlsSource::SelfSigned => self_signed(data_dir, listen)?,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .with_context(|| format!("cannot read the TLS certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("the TLS certificate {} is not valid PEM: {e}", cert.display()))?;
    if chain.is_empty() {
        bail!("the TLS certificate file {} holds no certificate", cert.display());
    }
    let private_key = PrivateKeyDer::from_pem_file(&key)
        .map_err(|e| anyhow!("cannot read a PEM private key from {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("the TLS provider supports no protocol version")?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| anyhow!("the TLS key {} does not fit the certificate {}: {e}", key.display(), cert.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), cert))
}

/// The data dir's self-signed pair, generated when either file is missing.
/// Names: localhost, 127.0.0.1, ::1, this host's name and the listen
/// address when it is a specific one.
pub fn self_signed(data_dir: &Path, listen: SocketAddr) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert_path = data_dir.join(SELF_SIGNED_CERT);
    let key_path = data_dir.join(SELF_SIGNED_KEY);
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() && !names.iter().any(|n| n == host) {
            names.push(host.to_string());
        }
    }
    let ip = listen.ip();
    if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
        names.push(ip.to_string());
    }
    let generated = rcgen::generate_simple_self_signed(names).context("cannot generate a self-signed certificate")?;
    // The key first: a certificate without its key would be reused as is.
    write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())?;
    write_private(&cert_path, generated.cert.pem().as_bytes())?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed TLS certificate; clients trust it with --ca-cert");
    Ok((cert_path, key_path))
}

/// Writes `bytes` to `path` (mode 0600) through a temporary file and a
/// rename, so a crash never leaves half a key.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("pem.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(bytes).and_then(|_| file.sync_all()).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    Ok(())
}
