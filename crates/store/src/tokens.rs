//! The `tokens` table of `drover.db`: API tokens as their SHA-256 and
//! metadata, never the secret. Writes are rare (create, revoke, a
//! `last_used` at most once a minute per token), so this keeps a connection
//! of its own beside the engine's writer; SQLite serializes the two.

use crate::StoreError;
use drover_model::{Timestamp, TokenRecord, TokenRole};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// A stored token: its record and the hex SHA-256 of its secret.
#[derive(Clone, Debug)]
pub struct StoredToken {
    pub record: TokenRecord,
    pub hash: String,
}

/// Why a token could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("a live token named {0:?} exists; revoke it first or pick another name")]
    NameTaken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct TokenStore {
    conn: Mutex<Connection>,
}

fn db(operation: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Database { operation, source }
}

const COLUMNS: &str = "id, name, role, team, host, hash, created_at, expires_at, revoked_at, last_used";

fn row_to_token(row: &rusqlite::Row<'_>) -> rusqlite::Result<(StoredToken, String)> {
    let role: String = row.get(2)?;
    let ts = |i: usize| -> rusqlite::Result<Option<Timestamp>> { Ok(row.get::<_, Option<i64>>(i)?.map(Timestamp)) };
    let record = TokenRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        // Checked by the caller: an unknown role reads as viewer here and
        // is reported as corrupt below.
        role: TokenRole::parse(&role).unwrap_or(TokenRole::Viewer),
        team: row.get(3)?,
        host: row.get(4)?,
        created_at: Timestamp(row.get(6)?),
        expires_at: ts(7)?,
        revoked_at: ts(8)?,
        last_used: ts(9)?,
    };
    Ok((StoredToken { record, hash: row.get(5)? }, role))
}

impl TokenStore {
    /// Opens `drover.db` (the migrations must have run: open it with
    /// [`crate::SqliteStore::open`] first).
    pub fn open(path: &Path) -> Result<TokenStore, StoreError> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db("setting the token store's busy timeout"))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(db("setting synchronous=FULL"))?;
        Ok(TokenStore { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every token, revoked and expired ones too, oldest first.
    pub fn all(&self) -> Result<Vec<StoredToken>, StoreError> {
        let read = db("reading tokens");
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM tokens ORDER BY created_at, id")).map_err(&read)?;
        let rows = stmt.query_map([], row_to_token).map_err(&read)?;
        let mut out = Vec::new();
        for row in rows {
            let (token, role) = row.map_err(&read)?;
            if TokenRole::parse(&role).is_none() {
                return Err(StoreError::CorruptColumn {
                    table: "tokens",
                    id: token.record.id,
                    column: "role",
                    detail: format!("unknown role {role:?}"),
                });
            }
            out.push(token);
        }
        Ok(out)
    }

    /// Stores a new token; refused if a live token (at `now`) has its name.
    pub fn insert(&self, token: &StoredToken, now: Timestamp) -> Result<(), TokenError> {
        let write = db("creating a token");
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(&write)?;
        let taken: Option<String> = tx
            .query_row(
                "SELECT id FROM tokens WHERE name = ?1 AND revoked_at IS NULL
                 AND (expires_at IS NULL OR expires_at > ?2) LIMIT 1",
                rusqlite::params![token.record.name, now.0],
                |r| r.get(0),
            )
            .optional()
            .map_err(&write)?;
        if taken.is_some() {
            return Err(TokenError::NameTaken(token.record.name.clone()));
        }
        let r = &token.record;
        tx.execute(
            &format!("INSERT INTO tokens ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
            rusqlite::params![
                r.id,
                r.name,
                r.role.as_str(),
                r.team,
                r.host,
                token.hash,
                r.created_at.0,
                r.expires_at.map(|t| t.0),
                r.revoked_at.map(|t| t.0),
                r.last_used.map(|t| t.0),
            ],
        )
        .map_err(&write)?;
        tx.commit().map_err(&write)?;
        Ok(())
    }

    /// Revokes a token (a no-op if it already is); `None` if no such id.
    pub fn revoke(&self, id: &str, now: Timestamp) -> Result<Option<TokenRecord>, StoreError> {
        let write = db("revoking a token");
        let conn = self.conn();
        conn.execute(
            "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            rusqlite::params![id, now.0],
        )
        .map_err(&write)?;
        let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM tokens WHERE id = ?1")).map_err(&write)?;
        let token = stmt.query_row([id], row_to_token).optional().map_err(&write)?;
        Ok(token.map(|(t, _)| t.record))
    }

    /// Records that a token was used.
    pub fn touch(&self, id: &str, at: Timestamp) -> Result<(), StoreError> {
        self.conn()
            .execute("UPDATE tokens SET last_used = ?2 WHERE id = ?1", rusqlite::params![id, at.0])
            .map_err(db("recording a token's use"))?;
        Ok(())
    }
}
