//! Who may call the API, and for what.
//!
//! - Every route is in [`permissions::TABLE`]; [`authorize`] runs after
//!   routing and BEFORE any handler reads the body: it takes the bearer
//!   token from the `Authorization` header only (never a cookie or a query
//!   parameter), checks it against [`Tokens`], checks the route's permission,
//!   refuses cross-site requests (a foreign `Origin`, a body that is not
//!   JSON), and records every refusal in the audit trail under the token's
//!   name (`anonymous` without one, `invalid token` for one it does not
//!   know). Failed authentication is rate-limited per client address, so
//!   refusals cannot flood the audit trail.
//! - The handlers read the caller as [`Caller`] (the [`Identity`] the
//!   middleware put in the request's extensions).
//! - [`tokens`]: the tokens API (`/v1/tokens`).

pub mod permissions;
pub mod tokens;

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use drover_model::{AuditEntry, Changes, Timestamp, TokenRecord, TokenRole};
use drover_store::tokens::{StoredToken, TokenError, TokenStore};
use drover_store::Store;
use permissions::{Audited, Permission, Rule};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// Where the first admin token is written, in the data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The name of that token.
pub const ADMIN_TOKEN_NAME: &str = "admin";
/// Every token starts with this, so a leaked one is easy to recognise (and
/// to grep for).
pub const TOKEN_PREFIX: &str = "drv_";
/// `last_used` is written at most this often per token.
const TOUCH_EVERY_MICROS: i64 = 60_000_000;

/// Who is calling: the token's holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub token_id: String,
    pub name: String,
    pub role: TokenRole,
    /// Limits the token to this team's services.
    pub team: Option<String>,
    /// For an agent token: its host.
    pub host: Option<String>,
}

impl Identity {
    fn of(record: &TokenRecord) -> Identity {
        Identity {
            token_id: record.id.clone(),
            name: record.name.clone(),
            role: record.role,
            team: record.team.clone(),
            host: record.host.clone(),
        }
    }

    /// Whether the token sees a service (or page) of `team`.
    pub fn sees_team(&self, team: Option<&str>) -> bool {
        match &self.team {
            None => true,
            Some(mine) => team == Some(mine.as_str()),
        }
    }

    /// A command of this caller, as the engine's input (audited under the
    /// token's name and role).
    pub fn command(&self, command: drover_engine::Command) -> drover_engine::Input {
        drover_engine::Input::Command { actor: self.name.clone(), role: Some(self.role.as_str().to_string()), command }
    }

    /// Whether this role may connect to services, and so see their URLs
    /// with the password.
    pub fn may_connect(&self) -> bool {
        matches!(self.role, TokenRole::Operator | TokenRole::Admin)
    }
}

/// The caller of a handler behind [`authorize`].
pub struct Caller(pub Identity);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Identity>().cloned().map(Caller).ok_or_else(|| {
            ApiError::internal("this route has no authenticated caller; it is missing from the permission table")
        })
    }
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Identity>().cloned().map(Caller))
    }
}

/// The hex SHA-256 of a token: what the store keeps.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new token: the prefix and 32 bytes (256 bits) from the OS's CSPRNG, hex.
pub fn generate() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("cannot read the OS random source: {e}"))?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a bearer token was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Malformed,
    Unknown,
    Expired(String),
    Revoked(String),
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Refused {
        Refused { status: StatusCode::UNAUTHORIZED, message: refusal.message(), actor: refusal.actor(), role: None }
    }
}

impl Refusal {
    /// The name the audit trail records.
    fn actor(&self) -> String {
        match self {
            Refusal::Missing => "anonymous".into(),
            Refusal::Malformed | Refusal::Unknown => "invalid token".into(),
            Refusal::Expired(name) | Refusal::Revoked(name) => name.clone(),
        }
    }
    pub(crate) fn message(&self) -> String {
        match self {
            Refusal::Missing => "this route needs `Authorization: Bearer <token>`; `drover tokens create` makes one (the first admin token is in the data dir's admin.token)".into(),
            Refusal::Malformed => "the Authorization header must be `Bearer <token>`".into(),
            Refusal::Unknown => "this token is not valid".into(),
            Refusal::Expired(name) => format!("token {name:?} has expired"),
            Refusal::Revoked(name) => format!("token {name:?} was revoked"),
        }
    }
}

/// The tokens: the store's table, and all of it in memory (a few rows)
/// so a request costs one SHA-256 and one map lookup. Create and revoke
/// write the store first, then the cache: revocation takes effect at once.
pub struct Tokens {
    store: TokenStore,
    by_hash: RwLock<HashMap<String, TokenRecord>>,
    touched: Mutex<HashMap<String, i64>>,
}

/// What `POST /v1/tokens` asks for, checked.
#[derive(Clone, Debug)]
pub struct NewToken {
    pub name: String,
    pub role: TokenRole,
    pub team: Option<String>,
    pub host: Option<String>,
    pub expires_at: Option<Timestamp>,
}

/// The hex SHA-256 a presented token is looked up by, unless it cannot
/// be one of ours.
fn digest_of(token: &str) -> Result<String, Refusal> {
    if !token.starts_with(TOKEN_PREFIX) || token.len() > 200 {
        return Err(Refusal::Unknown);
    }
    Ok(hash(token))
}

/// Whether the token stored under `stored` (found for `digest`) lets its
/// caller in at `now`.
fn judge(stored: &str, record: &TokenRecord, digest: &str, now: Timestamp) -> Result<Identity, Refusal> {
    if !constant_time_eq(stored.as_bytes(), digest.as_bytes()) {
        return Err(Refusal::Unknown);
    }
    if record.revoked_at.is_some() {
        return Err(Refusal::Revoked(record.name.clone()));
    }
    if !record.is_live(now) {
        return Err(Refusal::Expired(record.name.clone()));
    }
    Ok(Identity::of(record))
}

impl Tokens {
    pub fn open(db: &Path) -> anyhow::Result<Tokens> {
        Tokens::with_store(TokenStore::open(db)?)
    }

    /// The tokens of `store` (the data dir's, or a PostgreSQL store's).
    pub fn with_store(store: TokenStore) -> anyhow::Result<Tokens> {
        let all = store.all()?;
        let by_hash = all.into_iter().map(|t| (t.hash, t.record)).collect();
        Ok(Tokens { store, by_hash: RwLock::new(by_hash), touched: Mutex::new(HashMap::new()) })
    }

    /// Reads every token from the store again: on a fleet split between
    /// nodes, each node creates and revokes tokens in the shared store, and
    /// the others learn them here (`held`: every second).
    pub fn refresh(&self) -> Result<(), drover_store::StoreError> {
        let all = self.store.all()?;
        let by_hash = all.into_iter().map(|t| (t.hash, t.record)).collect();
        *self.by_hash.write().unwrap_or_else(|p| p.into_inner()) = by_hash;
        Ok(())
    }

    /// [`Tokens::authenticate`], and for a token this node does not know
    /// yet, its row in the store (a token another node just created): found
    /// there, it is kept.
    pub async fn authenticate_or_read(this: &Arc<Tokens>, token: &str, now: Timestamp) -> Result<Identity, Refusal> {
        match this.authenticate(token, now) {
            Err(Refusal::Unknown) if digest_of(token).is_ok() => {
                let (tokens, digest) = (Arc::clone(this), hash(token));
                let found = tokio::task::spawn_blocking(move || tokens.store.find(&digest)).await;
                let Ok(Ok(Some(found))) = found else { return Err(Refusal::Unknown) };
                this.by_hash.write().unwrap_or_else(|p| p.into_inner()).insert(found.hash, found.record);
                this.authenticate(token, now)
            }
            other => other,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, TokenRecord>> {
        self.by_hash.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Every token, oldest first (no secrets, no hashes).
    pub fn list(&self) -> Vec<TokenRecord> {
        let mut v: Vec<TokenRecord> = self.read().values().cloned().collect();
        v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        v
    }

    /// Checks a presented token at `now`.
    /// The store the tokens (and the dashboard's sessions) are kept in.
    pub fn store(&self) -> &TokenStore {
        &self.store
    }

    pub fn authenticate(&self, token: &str, now: Timestamp) -> Result<Identity, Refusal> {
        let digest = digest_of(token)?;
        let map = self.read();
        let (stored, record) = map.get_key_value(&digest).ok_or(Refusal::Unknown)?;
        judge(stored, record, &digest, now)
    }

    /// Checks a presented token at `now` against `store` itself, reading
    /// only its row: for a standby, which keeps no copy of the tokens.
    /// Blocking. `Err` when the store cannot be read.
    pub fn authenticate_in(
        store: &TokenStore,
        token: &str,
        now: Timestamp,
    ) -> Result<Result<Identity, Refusal>, drover_store::StoreError> {
        let digest = match digest_of(token) {
            Ok(digest) => digest,
            Err(refusal) => return Ok(Err(refusal)),
        };
        Ok(match store.find(&digest)? {
            Some(found) => judge(&found.hash, &found.record, &digest, now),
            None => Err(Refusal::Unknown),
        })
    }

    /// Whether `last_used` of token `id` is due for a write at `now` (the
    /// last is older than a minute); if so, counts it as written. In memory
    /// and cheap: called inline on every request, so only a due write costs
    /// a blocking task ([`Self::record_use`]).
    pub fn touch_due(&self, id: &str, now: Timestamp) -> bool {
        let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = touched.get_mut(id) {
            if now.0.saturating_sub(*last) < TOUCH_EVERY_MICROS {
                return false;
            }
            *last = now.0;
        } else {
            touched.insert(id.to_string(), now.0);
        }
        true
    }

    /// Stores `last_used` of token `id` (after [`Self::touch_due`]). Blocking.
    pub fn record_use(&self, id: &str, now: Timestamp) {
        if let Err(e) = self.store.touch(id, now) {
            tracing::warn!(error = %e, "cannot record a token's last use");
            return;
        }
        let mut map = self.by_hash.write().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = map.values_mut().find(|r| r.id == id) {
            r.last_used = Some(now);
        }
    }

    /// Creates a token; returns its record and the secret (shown once). Blocking.
    pub fn create(&self, new: NewToken, now: Timestamp) -> Result<(TokenRecord, String), TokenError> {
        let secret = generate().map_err(|e| {
            TokenError::Store(drover_store::StoreError::Setup {
                path: PathBuf::new(),
                step: "generating a token",
                detail: e.to_string(),
            })
        })?;
        let record = TokenRecord {
            id: uuid::Uuid::now_v7().to_string(),
            name: new.name,
            role: new.role,
            team: new.team,
            host: new.host,
            created_at: now,
            expires_at: new.expires_at,
            revoked_at: None,
            last_used: None,
        };
        let stored = StoredToken { record: record.clone(), hash: hash(&secret) };
        self.store.insert(&stored, now)?;
        self.by_hash.write().unwrap_or_else(|p| p.into_inner()).insert(stored.hash, record.clone());
        Ok((record, secret))
    }

    /// Revokes a token at once. `None` if no such id. Blocking.
    pub fn revoke(&self, id: &str, now: Timestamp) -> Result<Option<TokenRecord>, drover_store::StoreError> {
        let Some(record) = self.store.revoke(id, now)? else { return Ok(None) };
        let mut map = self.by_hash.write().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = map.values_mut().find(|r| r.id == id) {
            *r = record.clone();
        }
        Ok(Some(record))
    }

    /// Live tokens named `name`.
    fn live_named(&self, name: &str, now: Timestamp) -> Vec<String> {
        self.read().values().filter(|r| r.name == name && r.is_live(now)).map(|r| r.id.clone()).collect()
    }
}

/// First start (no token at all): creates the `admin` token and writes it
/// to `DATA_DIR/admin.token` (0600). With `reset`, revokes the live `admin`
/// tokens and does the same (the way back in when admin.token is lost).
/// Otherwise says where the token is, or how to get one. Blocking.
pub fn ensure_admin_token(data_dir: &Path, tokens: &Tokens, reset: bool, now: Timestamp) -> anyhow::Result<()> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if !tokens.is_empty() && !reset {
        if path.exists() {
            tracing::info!(path = %path.display(), "the admin token is in {}", path.display());
        } else {
            tracing::info!(
                "{} is gone (only its hash is stored); `drover tokens create` with an admin token makes new tokens, or restart with `drover serve --reset-admin-token` to revoke the `admin` token and write a new one",
                path.display()
            );
        }
        return Ok(());
    }
    for id in tokens.live_named(ADMIN_TOKEN_NAME, now) {
        tokens.revoke(&id, now)?;
        tracing::warn!(token = %id, "the admin token was revoked (--reset-admin-token)");
    }
    let new =
        NewToken { name: ADMIN_TOKEN_NAME.into(), role: TokenRole::Admin, team: None, host: None, expires_at: None };
    let (record, secret) = tokens.create(new, now)?;
    write_secret_file(&path, &secret)?;
    tracing::info!(token = %record.id, "admin token written to {}", path.display());
    Ok(())
}

/// The admin token of a data dir (its `admin.token`).
pub fn read_admin_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    Ok(text.trim().to_string())
}

/// An HTTP client that sends a data dir's admin token (benchmarks, tools).
pub fn admin_client(data_dir: &Path) -> anyhow::Result<reqwest::Client> {
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", read_admin_token(data_dir)?))?;
    value.set_sensitive(true);
    Ok(drover_agent::tls::builder()
        .default_headers(reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, value)]))
        .build()?)
}

/// Writes a secret to a new file created with mode 0600 (never chmod
/// after: the secret is never readable by others, not even for a moment).
fn write_secret_file(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::anyhow!("cannot replace {}: {e}", path.display())),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    file.write_all(format!("{secret}\n").as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

/// Failed authentication per client address: a token bucket of
/// [`FAIL_BURST`] refusals refilled at [`FAIL_PER_SEC`]. Over it, refusals
/// (still 401/403) are not recorded one by one (the one that emptied the
/// bucket says so): the audit trail cannot be flooded.
pub struct FailureLimiter {
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

pub const FAIL_BURST: f64 = 20.0;
pub const FAIL_PER_SEC: f64 = 2.0;
const MAX_TRACKED: usize = 100_000;

impl Default for FailureLimiter {
    fn default() -> Self {
        FailureLimiter { buckets: Mutex::new(HashMap::new()) }
    }
}

impl FailureLimiter {
    fn level(entry: &mut (f64, Instant), now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(entry.1).as_secs_f64();
        entry.0 = (entry.0 + elapsed * FAIL_PER_SEC).min(FAIL_BURST);
        entry.1 = now;
        entry.0
    }
    /// Whether `ip` may still fail (without charging it).
    fn allows(&self, ip: IpAddr) -> bool {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        match b.get_mut(&ip) {
            None => true,
            Some(entry) => Self::level(entry, Instant::now()) >= 1.0,
        }
    }
    /// Charges one failure; says whether it was the one that emptied the bucket.
    fn charge(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() >= MAX_TRACKED && !b.contains_key(&ip) {
            // Forget the addresses whose bucket is full again.
            b.retain(|_, e| Self::level(e, now) < FAIL_BURST);
        }
        let entry = b.entry(ip).or_insert((FAIL_BURST, now));
        Self::level(entry, now);
        entry.0 = (entry.0 - 1.0).max(0.0);
        entry.0 < 1.0
    }
}

fn client_ip(req: &Request) -> Option<IpAddr> {
    req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

/// The bearer token of a request: `Authorization: Bearer <token>` only.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, Refusal> {
    let value = headers.get(header::AUTHORIZATION).ok_or(Refusal::Missing)?;
    let text = value.to_str().map_err(|_| Refusal::Malformed)?;
    let (scheme, token) = text.split_once(' ').ok_or(Refusal::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(Refusal::Malformed);
    }
    Ok(token.trim())
}

/// Whether the request carries a body (a length above zero, or chunked).
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|essence| essence.trim().to_ascii_lowercase())
        .is_some_and(|m| m == "application/json" || (m.starts_with("application/") && m.ends_with("+json")))
}

/// A browser's `Origin` that is not this server's own (the `Host` it was
/// reached at): a page of another site is making the request.
pub(crate) fn foreign_origin(headers: &HeaderMap) -> Option<String> {
    let origin = headers.get(header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or("(not text)");
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let authority = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
    if !host.is_empty() && authority.eq_ignore_ascii_case(host) {
        return None;
    }
    Some(origin.to_string())
}

/// A refusal: its answer, and the audit entry to record.
pub(crate) struct Refused {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    actor: String,
    role: Option<TokenRole>,
}

/// What an authenticated caller must also pass to send `command` (matched
/// by `rule`): its token's role, and no foreign web page behind it. Shared
/// by the middleware and a standby keeping a command (`deferred`).
pub(crate) fn admit(rule: &Rule, command: &str, id: Identity, headers: &HeaderMap) -> Result<Identity, Refused> {
    if !rule.permission.allows(id.role) {
        return Err(Refused {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "token {:?} has role {}; {command} needs one of: {}",
                id.name,
                id.role,
                rule.permission.roles().iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
            ),
            actor: id.name,
            role: Some(id.role),
        });
    }
    if let Some(origin) = foreign_origin(headers) {
        return Err(Refused {
            status: StatusCode::FORBIDDEN,
            message: format!("cross-site request from {origin:?} refused; the API is not for web pages of other sites"),
            actor: id.name,
            role: Some(id.role),
        });
    }
    Ok(id)
}

/// Records `refused` in the audit trail (unless `ip` refused too often
/// lately: the same answer then, without a record, so the trail cannot be
/// flooded; a valid token from the same address is still served) and
/// returns its answer. Shared by the middleware and a standby keeping a
/// command (`deferred`): a refusal is audited on whichever node made it.
pub(crate) async fn refuse_and_record(
    store: &Arc<dyn Store>,
    failures: &FailureLimiter,
    ip: Option<IpAddr>,
    refused: Refused,
    command: String,
    path: String,
    detail: serde_json::Value,
) -> ApiError {
    if ip.is_some_and(|ip| !failures.allows(ip)) {
        return ApiError::new(refused.status, refused.message);
    }
    let over = ip.is_some_and(|ip| failures.charge(ip));
    let outcome = if over {
        format!(
            "refused ({}): {}; further refusals from this address are not recorded one by one until it slows down",
            refused.status.as_u16(),
            refused.message
        )
    } else {
        format!("refused ({}): {}", refused.status.as_u16(), refused.message)
    };
    record(store, entry(refused.actor, refused.role, command, path, detail, outcome)).await;
    ApiError::new(refused.status, refused.message)
}

/// Records one audit entry now (awaited: a refused caller reading the
/// audit trail right after sees its refusal).
pub(crate) async fn record(store: &Arc<dyn Store>, entry: AuditEntry) {
    let store = store.clone();
    let changes = Changes { audit: vec![entry], ..Changes::default() };
    match tokio::task::spawn_blocking(move || store.commit(changes)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot record an audit entry"),
        Err(e) => tracing::error!(error = %e, "audit task failed"),
    }
}

/// An audit entry of an HTTP request (not an engine command).
pub(crate) fn entry(
    actor: String,
    role: Option<TokenRole>,
    command: String,
    target: String,
    detail: serde_json::Value,
    outcome: String,
) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at: crate::actor::now(),
        actor,
        role: role.map(|r| r.as_str().to_string()),
        command,
        target: Some(target),
        detail,
        outcome,
    }
}

/// The auth middleware (a `route_layer`: it runs once a route matched,
/// before its handler reads anything).
pub async fn authorize(state: axum::extract::State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_string();
    let template = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string());
    let path = request.uri().path().to_string();
    let template = template.unwrap_or_else(|| path.clone());
    let Some(rule) = permissions::lookup(&method, &template) else {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{method} {template} is not in the permission table; refused"),
        )
        .into_response();
    };
    if rule.permission.is_open() {
        return next.run(request).await;
    }
    let Some(ready) = state.0.ready.get() else {
        return ApiError::unavailable("Drover is starting; retry in a moment").into_response();
    };
    let command = format!("{method} {template}");
    // A forwarded request's caller, as the standby vouched; else the peer.
    let ip = crate::forward::vouched_ip(&state.0.key, request.headers()).or_else(|| client_ip(&request));
    let detail =
        |status: StatusCode| serde_json::json!({"status": status.as_u16(), "client": ip.map(|i| i.to_string())});
    let now = crate::actor::now();
    // Events API v2 senders put the token in the body's routing_key; the
    // handler authenticates it (the body is bounded like every body).
    let body_auth = template == "/v1/integrations/events-v2" && !request.headers().contains_key(header::AUTHORIZATION);
    let outcome: Result<Option<Identity>, Refused> = if body_auth {
        Ok(None)
    } else {
        let authenticated = match bearer(request.headers()) {
            Ok(token) => Tokens::authenticate_or_read(&ready.auth, token, now).await,
            Err(refusal) => Err(refusal),
        };
        match authenticated {
            Err(refusal) => Err(refusal.into()),
            Ok(id) => admit(rule, &command, id, request.headers()).map(Some),
        }
    };
    let identity = match outcome {
        Ok(identity) => identity,
        Err(refused) => {
            let detail = detail(refused.status);
            return refuse_and_record(&ready.store, &state.0.failures, ip, refused, command, path, detail)
                .await
                .into_response();
        }
    };
    // (An Events API body is checked by its handler, once its key is.)
    if !body_auth && has_body(request.headers()) && !is_json(request.headers()) {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected a request body with `Content-Type: application/json`",
        )
        .into_response();
    }
    let mut request = request;
    if let Some(id) = &identity {
        // At most once a minute per token: a task only when a write is due.
        if ready.auth.touch_due(&id.token_id, now) {
            let auth = ready.auth.clone();
            let token = id.token_id.clone();
            tokio::task::spawn_blocking(move || auth.record_use(&token, now));
        }
        request.extensions_mut().insert(id.clone());
    }
    let response = next.run(request).await;
    if rule.audited == Audited::Here {
        if let Some(id) = identity {
            let status = response.status();
            let outcome = if status.is_success() { "ok".to_string() } else { format!("answered {}", status.as_u16()) };
            record(&ready.store, entry(id.name, Some(id.role), command, path, detail(status), outcome)).await;
        }
    }
    response
}

/// Authenticates a token given in a body (the Events API's `routing_key`)
/// for `permission`, recording a refusal like the middleware does.
pub(crate) async fn authenticate_key(
    state: &AppState,
    token: &str,
    permission: Permission,
    command: &str,
    target: &str,
) -> Result<Identity, ApiError> {
    let ready = state.ready()?;
    let now = crate::actor::now();
    let (status, message, actor, role) = match Tokens::authenticate_or_read(&ready.auth, token, now).await {
        Ok(id) if permission.allows(id.role) => return Ok(id),
        Ok(id) => (
            StatusCode::FORBIDDEN,
            format!("token {:?} has role {}; this needs an integration token", id.name, id.role),
            id.name,
            Some(id.role),
        ),
        Err(r) => (
            StatusCode::UNAUTHORIZED,
            match &r {
                Refusal::Unknown => "routing_key is not a valid integration token (team names are no longer accepted; `drover tokens create --role integration --team TEAM` makes one)".to_string(),
                other => other.message(),
            },
            r.actor(),
            None,
        ),
    };
    record(
        &ready.store,
        entry(
            actor,
            role,
            command.to_string(),
            target.to_string(),
            serde_json::json!({"status": status.as_u16()}),
            format!("refused ({}): {message}", status.as_u16()),
        ),
    )
    .await;
    Err(ApiError::new(status, message))
}

/// Records a refusal a handler makes after the middleware let the request
/// in (a forged heartbeat, a team the token may not touch).
pub(crate) async fn refuse(
    state: &AppState,
    caller: &Identity,
    command: &str,
    target: &str,
    error: ApiError,
) -> ApiError {
    if let Ok(ready) = state.ready() {
        record(
            &ready.store,
            entry(
                caller.name.clone(),
                Some(caller.role),
                command.to_string(),
                target.to_string(),
                serde_json::json!({"status": error.status.as_u16()}),
                format!("refused ({}): {}", error.status.as_u16(), error.message),
            ),
        )
        .await;
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_used_is_due_at_most_once_a_minute_per_token() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("drover.db");
        drop(drover_store::SqliteStore::open(&db).unwrap()); // its migrations make the tokens table
        let tokens = Tokens::open(&db).unwrap();
        let t0 = Timestamp(1_800_000_000_000_000);
        assert!(tokens.touch_due("a", t0), "the first use is written");
        assert!(!tokens.touch_due("a", Timestamp(t0.0 + 1_000_000)));
        assert!(tokens.touch_due("b", Timestamp(t0.0 + 1_000_000)), "per token");
        assert!(!tokens.touch_due("a", Timestamp(t0.0 + TOUCH_EVERY_MICROS - 1)));
        assert!(tokens.touch_due("a", Timestamp(t0.0 + TOUCH_EVERY_MICROS)));
    }
}
