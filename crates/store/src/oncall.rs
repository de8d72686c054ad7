//! `oncall.db`: pages, transitions, notifications and the feed, in SQLite
//! (WAL, synchronous=FULL). The pager actor commits each batch of outputs
//! in one transaction before anyone is told or notified, so a kill -9
//! loses nothing that was acknowledged, and undelivered notifications are
//! sent again after a restart.

use drover_model::Timestamp;
use drover_oncall::{FeedPost, Notification, Outputs, Page, PageId, PageStatus, Transition};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

mod embedded {
    refinery::embed_migrations!("migrations_oncall");
}

#[derive(Debug, thiserror::Error)]
pub enum OncallStoreError {
    #[error("cannot open the on-call store {path}: {detail}")]
    Open { path: String, detail: String },
    #[error("on-call store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("on-call store holds a record it cannot read: {0}")]
    Corrupt(String),
    /// The shared PostgreSQL store's tables (several nodes).
    #[error("on-call store: {0}")]
    Shared(#[from] crate::StoreError),
}

pub struct OncallStore {
    backend: Backend,
}

enum Backend {
    Sqlite(Mutex<Connection>),
    /// The pager's tables in the shared PostgreSQL store (`oncall_pg`).
    Postgres(Arc<crate::PgStore>),
}

type PgParams = Vec<Box<dyn tokio_postgres::types::ToSql + Send + Sync>>;

/// A notification as stored, with how its delivery went.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct NotificationRecord {
    #[serde(flatten)]
    pub notification: Notification,
    /// `pending`, `delivered`, `failed`.
    pub state: String,
    pub attempts: u32,
    /// The channel that delivered it (`slack`, `webhook`, `email`, `feed`).
    pub channel: Option<String>,
    pub error: Option<String>,
    pub delivered_at: Option<Timestamp>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct FeedRecord {
    pub seq: i64,
    #[serde(flatten)]
    pub post: FeedPost,
    pub state: String,
}

fn corrupt(e: serde_json::Error) -> OncallStoreError {
    OncallStoreError::Corrupt(e.to_string())
}

impl OncallStore {
    pub fn open(path: &Path) -> Result<OncallStore, OncallStoreError> {
        let fail = |detail: String| OncallStoreError::Open { path: path.display().to_string(), detail };
        let mut conn = Connection::open(path).map_err(|e| fail(e.to_string()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| fail(e.to_string()))?;
        let mode: String =
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(|e| fail(e.to_string()))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(fail(format!("SQLite kept journal mode {mode:?}; use a local disk")));
        }
        // FULL: a page we acknowledged to Alertmanager must survive power loss too.
        conn.pragma_update(None, "synchronous", "FULL").map_err(|e| fail(e.to_string()))?;
        embedded::migrations::runner().run(&mut conn).map_err(|e| fail(format!("migrations failed: {e}")))?;
        Ok(OncallStore { backend: Backend::Sqlite(Mutex::new(conn)) })
    }

    /// The pager's tables in the PostgreSQL store `store` (its migrations
    /// made them): every node sharing the store pages from the same rows.
    pub fn postgres(store: Arc<crate::PgStore>) -> OncallStore {
        OncallStore { backend: Backend::Postgres(store) }
    }

    /// The SQLite connection, or the PostgreSQL store.
    pub(crate) fn sqlite(&self) -> Result<std::sync::MutexGuard<'_, Connection>, &crate::PgStore> {
        match &self.backend {
            Backend::Sqlite(conn) => Ok(conn.lock().unwrap_or_else(|p| p.into_inner())),
            Backend::Postgres(pg) => Err(pg),
        }
    }

    /// Persists one batch of pager outputs in one transaction. Returns the
    /// feed sequence numbers, in order.
    pub fn commit(&self, out: &Outputs) -> Result<Vec<i64>, OncallStoreError> {
        let mut conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => return crate::oncall_pg::commit(pg, out),
        };
        let tx = conn.transaction()?;
        // Later versions of a page win; write each page once.
        let mut latest: HashMap<PageId, &Page> = HashMap::new();
        for p in &out.pages {
            latest.insert(p.id, p);
        }
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO pages (id, team, status, dedup_key, opened_at, updated_at, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at, body = excluded.body",
            )?;
            for p in latest.values() {
                let updated = p.resolved_at.or(p.acknowledged_at).unwrap_or(p.opened_at);
                upsert.execute(params![
                    p.id.to_string(),
                    p.team,
                    p.status.name(),
                    p.dedup_key,
                    p.opened_at.0,
                    updated.0,
                    serde_json::to_string(p).map_err(corrupt)?
                ])?;
            }
            let mut transition =
                tx.prepare_cached("INSERT INTO page_transitions (page, at, body) VALUES (?1, ?2, ?3)")?;
            for t in &out.transitions {
                transition.execute(params![t.page.to_string(), t.at.0, serde_json::to_string(t).map_err(corrupt)?])?;
            }
            let mut notification = tx.prepare_cached(
                "INSERT INTO notifications (id, page, at, state, body) VALUES (?1, ?2, ?3, 'pending', ?4)",
            )?;
            for n in &out.notifications {
                notification.execute(params![
                    n.id.to_string(),
                    // An announcement has no page: '' (the column predates them).
                    n.page.map(|p| p.to_string()).unwrap_or_default(),
                    n.at.0,
                    serde_json::to_string(n).map_err(corrupt)?
                ])?;
            }
        }
        let mut seqs = Vec::with_capacity(out.feed.len());
        {
            let mut feed =
                tx.prepare_cached("INSERT INTO feed (at, page, team, text, state) VALUES (?1, ?2, ?3, ?4, 'pending')")?;
            for f in &out.feed {
                feed.execute(params![f.at.0, f.page.map(|p| p.to_string()), f.team, f.text])?;
                seqs.push(tx.last_insert_rowid());
            }
        }
        tx.commit()?;
        Ok(seqs)
    }

    /// Adds a feed post outside a pager batch (delivery reports).
    pub fn add_feed(&self, post: &FeedPost) -> Result<i64, OncallStoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => return crate::oncall_pg::add_feed(pg, post),
        };
        conn.execute(
            "INSERT INTO feed (at, page, team, text, state) VALUES (?1, ?2, ?3, ?4, 'pending')",
            params![post.at.0, post.page.map(|p| p.to_string()), post.team, post.text],
        )?;
        Ok(conn.last_insert_rowid())
    }

    pub fn mark_feed(&self, seq: i64, state: &str) -> Result<(), OncallStoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => {
                let params: PgParams = vec![Box::new(seq), Box::new(state.to_string())];
                let sql = "UPDATE feed SET state = $2 WHERE seq = $1";
                return crate::oncall_pg::execute(pg, "marking a feed post", sql, params).map(drop);
            }
        };
        conn.execute("UPDATE feed SET state = ?2 WHERE seq = ?1", params![seq, state])?;
        Ok(())
    }

    pub fn mark_notification(
        &self,
        id: &str,
        state: &str,
        attempts: u32,
        channel: Option<&str>,
        error: Option<&str>,
        at: Timestamp,
    ) -> Result<(), OncallStoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => {
                let params: PgParams = vec![
                    Box::new(id.to_string()),
                    Box::new(state.to_string()),
                    Box::new(i64::from(attempts)),
                    Box::new(channel.map(str::to_string)),
                    Box::new(error.map(str::to_string)),
                    Box::new(at.0),
                ];
                let sql = "UPDATE notifications SET state = $2, attempts = $3, channel = $4, error = $5, \
                           delivered_at = CASE WHEN $2 = 'delivered' THEN $6 ELSE delivered_at END WHERE id = $1";
                return crate::oncall_pg::execute(pg, "marking a notification", sql, params).map(drop);
            }
        };
        conn.execute(
            "UPDATE notifications SET state = ?2, attempts = ?3, channel = ?4, error = ?5, delivered_at = CASE WHEN ?2 = 'delivered' THEN ?6 ELSE delivered_at END WHERE id = ?1",
            params![id, state, attempts, channel, error, at.0],
        )?;
        Ok(())
    }

    pub fn open_pages(&self) -> Result<Vec<Page>, OncallStoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => {
                return crate::oncall_pg::pages_where(pg, "WHERE status != 'resolved'", Vec::new());
            }
        };
        pages_where(&conn, "WHERE status != 'resolved'", &[])
    }

    pub fn pages_opened_since(&self, since: Timestamp) -> Result<Vec<Page>, OncallStoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => {
                return crate::oncall_pg::pages_where(pg, "WHERE opened_at >= $1", vec![Box::new(since.0)]);
            }
        };
        pages_where(&conn, "WHERE opened_at >= ?1", &[&since.0])
    }

    pub fn team_pages_since(&self, team: &str, since: Timestamp) -> Result<Vec<Page>, OncallStoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => {
                let params: PgParams = vec![Box::new(team.to_string()), Box::new(since.0)];
                return crate::oncall_pg::pages_where(pg, "WHERE team = $1 AND opened_at >= $2", params);
            }
        };
        pages_where(&conn, "WHERE team = ?1 AND opened_at >= ?2", &[&team, &since.0])
    }

    /// Newest first.
    pub fn pages(
        &self,
        status: Option<PageStatus>,
        team: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Page>, OncallStoreError> {
        let status = status.map(|s| s.name().to_string());
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => {
                let params: PgParams =
                    vec![Box::new(status), Box::new(team.map(str::to_string)), Box::new(limit as i64)];
                return crate::oncall_pg::pages_where(
                    pg,
                    "WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR team = $2) \
                     ORDER BY opened_at DESC, id DESC LIMIT $3",
                    params,
                );
            }
        };
        pages_where(
            &conn,
            "WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR team = ?2) ORDER BY opened_at DESC, id DESC LIMIT ?3",
            &[&status, &team, &(limit as i64)],
        )
    }

    pub fn page(&self, id: PageId) -> Result<Option<Page>, OncallStoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => return crate::oncall_pg::page(pg, id),
        };
        let body: Option<String> =
            conn.query_row("SELECT body FROM pages WHERE id = ?1", params![id.to_string()], |r| r.get(0)).optional()?;
        body.map(|b| serde_json::from_str(&b).map_err(corrupt)).transpose()
    }

    pub fn transitions(&self, id: PageId) -> Result<Vec<Transition>, OncallStoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => return crate::oncall_pg::transitions(pg, id),
        };
        let mut stmt = conn.prepare("SELECT body FROM page_transitions WHERE page = ?1 ORDER BY seq")?;
        let rows = stmt.query_map(params![id.to_string()], |r| r.get::<_, String>(0))?;
        rows.map(|r| serde_json::from_str(&r?).map_err(corrupt)).collect()
    }

    pub fn notifications(&self, page: PageId) -> Result<Vec<NotificationRecord>, OncallStoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => {
                let params: PgParams = vec![Box::new(page.to_string())];
                return crate::oncall_pg::notifications_where(pg, "WHERE page = $1 ORDER BY at, id", params);
            }
        };
        notifications_where(&conn, "WHERE page = ?1 ORDER BY at, id", &[&page.to_string()])
    }

    pub fn pending_notifications(&self) -> Result<Vec<NotificationRecord>, OncallStoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => {
                return crate::oncall_pg::notifications_where(
                    pg,
                    "WHERE state = 'pending' ORDER BY at, id",
                    Vec::new(),
                );
            }
        };
        notifications_where(&conn, "WHERE state = 'pending' ORDER BY at, id", &[])
    }

    /// Newest first.
    pub fn feed(&self, limit: usize, after: Option<i64>) -> Result<Vec<FeedRecord>, OncallStoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => {
                let params: PgParams = vec![Box::new(after.unwrap_or(0)), Box::new(limit as i64)];
                return crate::oncall_pg::feed_where(pg, "WHERE seq > $1 ORDER BY seq DESC LIMIT $2", params);
            }
        };
        feed_where(&conn, "WHERE seq > ?1 ORDER BY seq DESC LIMIT ?2", &[&after.unwrap_or(0), &(limit as i64)])
    }

    /// [`Self::feed`] limited to one team's posts.
    pub fn team_feed(&self, team: &str, limit: usize, after: Option<i64>) -> Result<Vec<FeedRecord>, OncallStoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => {
                let params: PgParams =
                    vec![Box::new(after.unwrap_or(0)), Box::new(limit as i64), Box::new(team.to_string())];
                return crate::oncall_pg::feed_where(
                    pg,
                    "WHERE seq > $1 AND team = $3 ORDER BY seq DESC LIMIT $2",
                    params,
                );
            }
        };
        feed_where(
            &conn,
            "WHERE seq > ?1 AND team = ?3 ORDER BY seq DESC LIMIT ?2",
            &[&after.unwrap_or(0), &(limit as i64), &team],
        )
    }

    pub fn pending_feed(&self) -> Result<Vec<FeedRecord>, OncallStoreError> {
        let conn = match self.sqlite() {
            Ok(conn) => conn,
            Err(pg) => {
                return crate::oncall_pg::feed_where(pg, "WHERE state = 'pending' ORDER BY seq", Vec::new());
            }
        };
        feed_where(&conn, "WHERE state = 'pending' ORDER BY seq", &[])
    }
}

/// The pages a `WHERE …` clause of SQLite picks.
fn pages_where(conn: &Connection, sql: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<Page>, OncallStoreError> {
    let mut stmt = conn.prepare(&format!("SELECT body FROM pages {sql}"))?;
    let rows = stmt.query_map(args, |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(serde_json::from_str(&row?).map_err(corrupt)?);
    }
    Ok(out)
}

/// The notifications a `WHERE …` clause of SQLite picks.
fn notifications_where(
    conn: &Connection,
    sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<NotificationRecord>, OncallStoreError> {
    let mut stmt =
        conn.prepare(&format!("SELECT body, state, attempts, channel, error, delivered_at FROM notifications {sql}"))?;
    let rows = stmt.query_map(args, |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, u32>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, Option<i64>>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (body, state, attempts, channel, error, delivered_at) = row?;
        out.push(NotificationRecord {
            notification: serde_json::from_str(&body).map_err(corrupt)?,
            state,
            attempts,
            channel,
            error,
            delivered_at: delivered_at.map(Timestamp),
        });
    }
    Ok(out)
}

/// The feed posts a `WHERE …` clause of SQLite picks.
fn feed_where(
    conn: &Connection,
    sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<FeedRecord>, OncallStoreError> {
    let mut stmt = conn.prepare(&format!("SELECT seq, at, page, team, text, state FROM feed {sql}"))?;
    let rows = stmt.query_map(args, |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, at, page, team, text, state) = row?;
        let page =
            page.map(|p| p.parse::<PageId>().map_err(|e| OncallStoreError::Corrupt(e.to_string()))).transpose()?;
        out.push(FeedRecord { seq, post: FeedPost { at: Timestamp(at), page, team, text }, state });
    }
    Ok(out)
}
