//! Drover's secrets at rest.
//!
//! One 256-bit key, kept outside the store: `DROVER_SECRET_KEY` (64 hex
//! digits) when set, else the key file `secret.key` in the data dir (mode
//! 0600, created on first start). Values are sealed with XChaCha20-Poly1305
//! under a random 192-bit nonce, bound to a context string (what the value
//! is, e.g. `service/orders/password`) so a sealed value cannot be moved to
//! another field and opened there. A sealed value is text:
//! `sealed:v1:` + base64url(nonce ‖ ciphertext ‖ tag).
//!
//! Files that hold secrets are written with [`write_private`] (0600 from the
//! first byte, fsync, rename) in directories made by [`private_dir`] (0700).
//! Keys for other purposes (the on-call link-signing key) are derived from
//! the one key with a labelled HMAC ([`SecretKey::derive`]), so they need no
//! file of their own. [`datadir`] holds the data dir's lock (one control
//! plane per data dir) and the narrowing of files an older version left
//! readable by others.

pub mod datadir;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The key file's name in the data dir.
pub const KEY_FILE: &str = "secret.key";
/// The environment variable that carries the key instead of the file.
pub const KEY_ENV: &str = "DROVER_SECRET_KEY";
const PREFIX: &str = "sealed:v1:";
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{KEY_ENV} must be 64 hex digits (a 256-bit key)")]
    BadEnvKey,
    #[error("the key file {0} must hold 64 hex digits (a 256-bit key); it was changed or truncated")]
    BadKeyFile(PathBuf),
    #[error("the key file {path} is readable by other users (mode {mode:o}); make it 0600")]
    KeyFileTooOpen { path: PathBuf, mode: u32 },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("not a sealed value (it does not start with {PREFIX})")]
    NotSealed,
    #[error("a sealed value for {0} is damaged or was sealed under another key")]
    CannotOpen(String),
}

/// Where the key came from, for the start-up log (never the key itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    Env,
    File(PathBuf),
    CreatedFile(PathBuf),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env => write!(f, "from {KEY_ENV}"),
            KeySource::File(p) => write!(f, "from {}", p.display()),
            KeySource::CreatedFile(p) => write!(f, "created {} (mode 0600)", p.display()),
        }
    }
}

/// The key that seals and opens secrets. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct SecretKey {
    cipher: XChaCha20Poly1305,
    /// The key itself, for [`SecretKey::derive`] only.
    raw: [u8; 32],
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(…)")
    }
}

impl SecretKey {
    /// A fresh random key (the OS's randomness).
    pub fn generate() -> Self {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        Self::from_bytes(&key.into())
    }

    fn from_bytes(bytes: &[u8; 32]) -> Self {
        SecretKey { cipher: XChaCha20Poly1305::new(bytes.into()), raw: *bytes }
    }

    /// A 256-bit key for one purpose, derived from this key:
    /// HMAC-SHA256(key, "drover-derive-v1\n" ‖ label). The same key and
    /// label always give the same bytes; different labels are independent.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.raw).expect("HMAC takes keys of any length");
        mac.update(b"drover-derive-v1\n");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn parse_hex(text: &str) -> Option<Self> {
        let bytes = hex::decode(text.trim()).ok()?;
        let bytes: [u8; 32] = bytes.try_into().ok()?;
        Some(Self::from_bytes(&bytes))
    }

    /// The key from `DROVER_SECRET_KEY`, else from `data_dir/secret.key`,
    /// created there (0600) when neither exists.
    pub fn load_or_create(data_dir: &Path) -> Result<(Self, KeySource), SecretError> {
        if let Ok(text) = std::env::var(KEY_ENV) {
            return Self::parse_hex(&text).map(|k| (k, KeySource::Env)).ok_or(SecretError::BadEnvKey);
        }
        let path = data_dir.join(KEY_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let mode = fs::metadata(&path)
                    .map_err(|source| SecretError::Io { what: format!("reading {}", path.display()), source })?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(SecretError::KeyFileTooOpen { path, mode: mode & 0o777 });
                }
                let key = Self::parse_hex(&text).ok_or_else(|| SecretError::BadKeyFile(path.clone()))?;
                Ok((key, KeySource::File(path)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let bytes = XChaCha20Poly1305::generate_key(&mut OsRng);
                let text = format!("{}\n", hex::encode(bytes));
                match create_private(&path, text.as_bytes()) {
                    Ok(()) => Ok((Self::from_bytes(&bytes.into()), KeySource::CreatedFile(path))),
                    // Another part of the same start-up made it first: use theirs.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::load_or_create(data_dir),
                    Err(source) => Err(SecretError::Io { what: format!("creating {}", path.display()), source }),
                }
            }
            Err(source) => Err(SecretError::Io { what: format!("reading {}", path.display()), source }),
        }
    }

    /// Seals `plaintext` for `context` (what the value is).
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> String {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
            .encrypt(&nonce, Payload { msg: plaintext, aad: context.as_bytes() })
            .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(out))
    }

    /// Opens what [`SecretKey::seal`] sealed for the same `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, SecretError> {
        let body = sealed.strip_prefix(PREFIX).ok_or(SecretError::NotSealed)?;
        let cannot = || SecretError::CannotOpen(context.to_string());
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| cannot())?;
        if bytes.len() < NONCE_LEN {
            return Err(cannot());
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: context.as_bytes() })
            .map_err(|_| cannot())
    }

    pub fn seal_str(&self, context: &str, plaintext: &str) -> String {
        self.seal(context, plaintext.as_bytes())
    }

    pub fn open_str(&self, context: &str, sealed: &str) -> Result<String, SecretError> {
        String::from_utf8(self.open(context, sealed)?).map_err(|_| SecretError::CannotOpen(context.to_string()))
    }
}

/// Whether `text` is a sealed value (as opposed to a value in clear).
pub fn is_sealed(text: &str) -> bool {
    text.starts_with(PREFIX)
}

/// A secret in memory: `Debug` and `Display` print `***`, so it never
/// reaches a log by accident; [`Secret::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Self {
        Secret(text.into())
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

/// Read from configuration files as a plain string; there is deliberately
/// no `Serialize`, so a secret is never written back by accident.
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Creates `path` with mode 0600 from its first byte; fails if it exists.
pub fn create_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    sync_parent(path)
}

/// Writes `path` atomically with mode 0600: a temporary file created 0600,
/// fsync, rename over `path`, fsync of the directory.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!(
        "{}tmp",
        path.extension().map(|e| format!("{}.", e.to_string_lossy())).unwrap_or_default()
    ));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    sync_parent(path)
}

/// Makes `path` (and missing parents) a directory only its owner can enter
/// (0700); an existing directory is narrowed to 0700.
pub fn private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(path)?;
    let mode = fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_context() {
        let key = SecretKey::generate();
        let sealed = key.seal_str("service/a/password", "hunter2");
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("hunter2"));
        assert_eq!(key.open_str("service/a/password", &sealed).unwrap(), "hunter2");
        assert!(matches!(key.open_str("service/b/password", &sealed), Err(SecretError::CannotOpen(_))));
        assert!(matches!(
            SecretKey::generate().open_str("service/a/password", &sealed),
            Err(SecretError::CannotOpen(_))
        ));
        assert!(matches!(key.open_str("x", "hunter2"), Err(SecretError::NotSealed)));
        // Two seals of the same value differ (random nonce).
        assert_ne!(sealed, key.seal_str("service/a/password", "hunter2"));
    }

    #[test]
    fn the_key_file_is_created_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (key, source) = SecretKey::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        assert_eq!(source, KeySource::CreatedFile(path.clone()));
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let sealed = key.seal_str("c", "v");
        let (again, source) = SecretKey::load_or_create(dir.path()).unwrap();
        assert_eq!(source, KeySource::File(path.clone()));
        assert_eq!(again.open_str("c", &sealed).unwrap(), "v");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(SecretKey::load_or_create(dir.path()), Err(SecretError::KeyFileTooOpen { .. })));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "not hex").unwrap();
        assert!(matches!(SecretKey::load_or_create(dir.path()), Err(SecretError::BadKeyFile(_))));
    }

    #[test]
    fn private_files_and_dirs_are_closed_to_others() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        private_dir(&sub).unwrap();
        assert_eq!(fs::metadata(&sub).unwrap().permissions().mode() & 0o777, 0o700);
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&sub).unwrap();
        assert_eq!(fs::metadata(&sub).unwrap().permissions().mode() & 0o777, 0o700);
        let file = sub.join("f.json");
        write_private(&file, b"one").unwrap();
        write_private(&file, b"two").unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"two");
        assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(&sub).unwrap().count(), 1, "no temporary file left behind");
        assert!(create_private(&file, b"x").is_err(), "create_private never overwrites");
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(format!("{:?}", SecretKey::generate()), "SecretKey(…)");
        let s: Secret = serde_json::from_str("\"hunter2\"").unwrap();
        assert_eq!(format!("{s:?}"), "***");
    }

    #[test]
    fn derived_keys_are_stable_per_label_and_independent() {
        let key = SecretKey::generate();
        assert_eq!(key.derive("a"), key.derive("a"));
        assert_ne!(key.derive("a"), key.derive("b"));
        assert_ne!(key.derive("a"), SecretKey::generate().derive("a"));
        // Known answer: HMAC-SHA256 with the all-zero key.
        let zero = SecretKey::from_bytes(&[0; 32]);
        let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(&[0; 32]).unwrap();
        hmac::Mac::update(&mut mac, b"drover-derive-v1\nlabel");
        let expected: [u8; 32] = hmac::Mac::finalize(mac).into_bytes().into();
        assert_eq!(zero.derive("label"), expected);
    }

    proptest! {
        #[test]
        fn any_value_round_trips_and_any_text_opens_without_panic(v in ".*", junk in ".*") {
            let key = SecretKey::generate();
            prop_assert_eq!(key.open_str("ctx", &key.seal_str("ctx", &v)).unwrap(), v);
            let _ = key.open_str("ctx", &format!("{PREFIX}{junk}"));
        }
    }
}
