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
    backend: Backend,
}

enum Backend {
    /// The data dir's `drover.db` (one node).
    Sqlite(Mutex<Connection>),
    /// The PostgreSQL store the nodes of a fleet share: its `tokens` table
    /// (a token made through one node is good on every node).
    Postgres(std::sync::Arc<crate::PgStore>),
}

fn db(operation: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Database { operation, source }
}

const COLUMNS: &str = "id, name, role, team, host, hash, created_at, expires_at, revoked_at, last_used";

/// A SQLite row's token, refused if its role is none Drover knows.
fn checked((token, role): (StoredToken, String)) -> Result<StoredToken, StoreError> {
    match TokenRole::parse(&role) {
        Some(_) => Ok(token),
        None => Err(unknown_role(token.record.id, &role)),
    }
}

fn unknown_role(id: String, role: &str) -> StoreError {
    StoreError::CorruptColumn { table: "tokens", id, column: "role", detail: format!("unknown role {role:?}") }
}

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
        Ok(TokenStore { backend: Backend::Sqlite(Mutex::new(conn)) })
    }

    /// The tokens of the PostgreSQL store `store` (its migrations made the
    /// table); no SQLite file is opened.
    pub fn postgres(store: std::sync::Arc<crate::PgStore>) -> TokenStore {
        TokenStore { backend: Backend::Postgres(store) }
    }

    /// The SQLite connection, locked, or the PostgreSQL store.
    fn sqlite(&self) -> Result<std::sync::MutexGuard<'_, Connection>, &crate::PgStore> {
        match &self.backend {
            Backend::Sqlite(conn) => Ok(conn.lock().unwrap_or_else(|p| p.into_inner())),
            Backend::Postgres(pg) => Err(pg),
        }
    }

    /// Every token, revoked and expired ones too, oldest first.
    pub fn all(&self) -> Result<Vec<StoredToken>, StoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => return pg_all(pg),
        };
        let read = db("reading tokens");
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM tokens ORDER BY created_at, id")).map_err(&read)?;
        let rows = stmt.query_map([], row_to_token).map_err(&read)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(checked(row.map_err(&read)?)?);
        }
        Ok(out)
    }

    /// The token whose secret hashes to `hash` (hex SHA-256), revoked and
    /// expired ones too, by the column's unique index: one row read, where
    /// [`Self::all`] reads every token (a standby checking one caller).
    pub fn find(&self, hash: &str) -> Result<Option<StoredToken>, StoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => return pg_find(pg, hash),
        };
        let read = db("reading a token");
        let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM tokens WHERE hash = ?1")).map_err(&read)?;
        stmt.query_row([hash], row_to_token).optional().map_err(&read)?.map(checked).transpose()
    }

    /// Stores a new token; refused if a live token (at `now`) has its name.
    pub fn insert(&self, token: &StoredToken, now: Timestamp) -> Result<(), TokenError> {
        let mut conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => return pg_insert(pg, token, now),
        };
        let write = db("creating a token");
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
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => return pg_revoke(pg, id, now),
        };
        let write = db("revoking a token");
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
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => {
                let id = id.to_string();
                return pg.with_client(move |client| async move {
                    client
                        .execute("UPDATE tokens SET last_used = $2 WHERE id = $1", &[&id, &at.0])
                        .await
                        .map_err(pg_error("recording a token's use"))?;
                    Ok(())
                });
            }
        };
        conn.execute("UPDATE tokens SET last_used = ?2 WHERE id = ?1", rusqlite::params![id, at.0])
            .map_err(db("recording a token's use"))?;
        Ok(())
    }
}

fn pg_error(operation: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::Postgres { operation, detail: crate::pg::pg_detail(&e) }
}

fn pg_row(row: &tokio_postgres::Row) -> Result<StoredToken, StoreError> {
    let role: String = row.get(2);
    let id: String = row.get(0);
    let role = TokenRole::parse(&role).ok_or_else(|| unknown_role(id.clone(), &role))?;
    let ts = |i: usize| row.get::<_, Option<i64>>(i).map(Timestamp);
    Ok(StoredToken {
        record: TokenRecord {
            id,
            name: row.get(1),
            role,
            team: row.get(3),
            host: row.get(4),
            created_at: Timestamp(row.get(6)),
            expires_at: ts(7),
            revoked_at: ts(8),
            last_used: ts(9),
        },
        hash: row.get(5),
    })
}

fn pg_all(pg: &crate::PgStore) -> Result<Vec<StoredToken>, StoreError> {
    pg.with_client(|client| async move {
        let rows = client
            .query(&format!("SELECT {COLUMNS} FROM tokens ORDER BY created_at, id"), &[])
            .await
            .map_err(pg_error("reading tokens"))?;
        rows.iter().map(pg_row).collect()
    })
}

fn pg_find(pg: &crate::PgStore, hash: &str) -> Result<Option<StoredToken>, StoreError> {
    let hash = hash.to_string();
    pg.with_client(move |client| async move {
        let row = client
            .query_opt(&format!("SELECT {COLUMNS} FROM tokens WHERE hash = $1"), &[&hash])
            .await
            .map_err(pg_error("reading a token"))?;
        row.as_ref().map(pg_row).transpose()
    })
}

fn pg_insert(pg: &crate::PgStore, token: &StoredToken, now: Timestamp) -> Result<(), TokenError> {
    let token = token.clone();
    let name = token.record.name.clone();
    let taken = pg.with_client(move |mut client| async move {
        let write = pg_error("creating a token");
        let tx = client.transaction().await.map_err(&write)?;
        // One name check at a time, whichever node asks.
        tx.execute("LOCK TABLE tokens IN SHARE ROW EXCLUSIVE MODE", &[]).await.map_err(&write)?;
        let taken = tx
            .query_opt(
                "SELECT id FROM tokens WHERE name = $1 AND revoked_at IS NULL \
                 AND (expires_at IS NULL OR expires_at > $2) LIMIT 1",
                &[&token.record.name, &now.0],
            )
            .await
            .map_err(&write)?;
        if taken.is_some() {
            return Ok(true);
        }
        let r = &token.record;
        tx.execute(
            &format!("INSERT INTO tokens ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"),
            &[
                &r.id,
                &r.name,
                &r.role.as_str(),
                &r.team,
                &r.host,
                &token.hash,
                &r.created_at.0,
                &r.expires_at.map(|t| t.0),
                &r.revoked_at.map(|t| t.0),
                &r.last_used.map(|t| t.0),
            ],
        )
        .await
        .map_err(&write)?;
        tx.commit().await.map_err(&write)?;
        Ok(false)
    })?;
    if taken {
        return Err(TokenError::NameTaken(name));
    }
    Ok(())
}

fn pg_revoke(pg: &crate::PgStore, id: &str, now: Timestamp) -> Result<Option<TokenRecord>, StoreError> {
    let id = id.to_string();
    pg.with_client(move |client| async move {
        let write = pg_error("revoking a token");
        client
            .execute("UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL", &[&id, &now.0])
            .await
            .map_err(&write)?;
        let row =
            client.query_opt(&format!("SELECT {COLUMNS} FROM tokens WHERE id = $1"), &[&id]).await.map_err(&write)?;
        row.as_ref().map(pg_row).transpose().map(|t| t.map(|t| t.record))
    })
}

/// A dashboard session as stored: the token it acts with (sealed by the
/// caller), its CSRF token, and until when it lasts (microseconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSession {
    pub token_sealed: String,
    pub csrf: String,
    pub until: i64,
}

/// At most this many sessions are kept: the ones ending soonest go first.
pub const MAX_SESSIONS: i64 = 10_000;

impl TokenStore {
    /// Stores a session under `id_hash` (the SHA-256 of its id); drops
    /// the sessions ended by `now`, and the oldest beyond [`MAX_SESSIONS`].
    pub fn open_session(&self, id_hash: &str, session: &StoredSession, now: i64) -> Result<(), StoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => {
                let (id_hash, s) = (id_hash.to_string(), session.clone());
                return pg.with_client(move |client| async move {
                    let write = pg_error("storing a dashboard session");
                    client.execute("DELETE FROM ui_sessions WHERE until <= $1", &[&now]).await.map_err(&write)?;
                    client
                        .execute(
                            "DELETE FROM ui_sessions WHERE id_hash IN (SELECT id_hash FROM ui_sessions \
                             ORDER BY until DESC OFFSET $1)",
                            &[&(MAX_SESSIONS - 1)],
                        )
                        .await
                        .map_err(&write)?;
                    client
                        .execute(
                            "INSERT INTO ui_sessions (id_hash, token_sealed, csrf, until) VALUES ($1, $2, $3, $4)",
                            &[&id_hash, &s.token_sealed, &s.csrf, &s.until],
                        )
                        .await
                        .map_err(&write)?;
                    Ok(())
                });
            }
        };
        let write = db("storing a dashboard session");
        conn.execute("DELETE FROM ui_sessions WHERE until <= ?1", [now]).map_err(&write)?;
        conn.execute(
            "DELETE FROM ui_sessions WHERE id_hash IN (SELECT id_hash FROM ui_sessions ORDER BY until DESC \
             LIMIT -1 OFFSET ?1)",
            [MAX_SESSIONS - 1],
        )
        .map_err(&write)?;
        conn.execute(
            "INSERT INTO ui_sessions (id_hash, token_sealed, csrf, until) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![id_hash, session.token_sealed, session.csrf, session.until],
        )
        .map_err(&write)?;
        Ok(())
    }

    /// The session stored under `id_hash`, if it lasts past `now`.
    pub fn session(&self, id_hash: &str, now: i64) -> Result<Option<StoredSession>, StoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => {
                let id_hash = id_hash.to_string();
                return pg.with_client(move |client| async move {
                    let row = client
                        .query_opt(
                            "SELECT token_sealed, csrf, until FROM ui_sessions WHERE id_hash = $1 AND until > $2",
                            &[&id_hash, &now],
                        )
                        .await
                        .map_err(pg_error("reading a dashboard session"))?;
                    Ok(row.map(|r| StoredSession { token_sealed: r.get(0), csrf: r.get(1), until: r.get(2) }))
                });
            }
        };
        let read = db("reading a dashboard session");
        let mut stmt = conn
            .prepare_cached("SELECT token_sealed, csrf, until FROM ui_sessions WHERE id_hash = ?1 AND until > ?2")
            .map_err(&read)?;
        stmt.query_row(rusqlite::params![id_hash, now], |r| {
            Ok(StoredSession { token_sealed: r.get(0)?, csrf: r.get(1)?, until: r.get(2)? })
        })
        .optional()
        .map_err(&read)
    }

    /// Ends the session stored under `id_hash` (logout), on every node.
    pub fn close_session(&self, id_hash: &str) -> Result<(), StoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => {
                let id_hash = id_hash.to_string();
                return pg.with_client(move |client| async move {
                    client
                        .execute("DELETE FROM ui_sessions WHERE id_hash = $1", &[&id_hash])
                        .await
                        .map_err(pg_error("ending a dashboard session"))?;
                    Ok(())
                });
            }
        };
        conn.execute("DELETE FROM ui_sessions WHERE id_hash = ?1", [id_hash])
            .map_err(db("ending a dashboard session"))?;
        Ok(())
    }
}
