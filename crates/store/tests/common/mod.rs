//! Shared by the store's tests (each test file uses a part of it).
#![allow(dead_code)]

use drover_store::{PgStore, SqliteStore, Store, StoreError};
use pg::PgServer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A fresh directory under cargo's per-target temp dir, removed on drop.
pub struct TempDir(pub PathBuf);
impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn db(&self) -> PathBuf {
        self.0.join("drover.db")
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub mod fleet;
pub mod pg;

/// The database of the test's PostgreSQL server the store uses.
pub const DB: &str = "postgres";

/// Where a case runs: a SQLite file, or a real PostgreSQL started for it.
pub enum Backend {
    Sqlite(TempDir),
    Postgres(PgServer),
}

impl Backend {
    pub fn sqlite(name: &str) -> Backend {
        Backend::Sqlite(TempDir::new(name))
    }
    pub fn postgres() -> Backend {
        Backend::Postgres(PgServer::start())
    }
    /// What `open_spec` opens: the file's path, or the server's URL.
    pub fn spec(&self) -> String {
        match self {
            Backend::Sqlite(dir) => format!("sqlite:{}", dir.db().display()),
            Backend::Postgres(pg) => pg.url(DB),
        }
    }
    pub fn try_open(&self) -> Result<Arc<dyn Store>, StoreError> {
        open_spec(&self.spec())
    }
    /// Opens (again) the same store.
    pub fn open(&self) -> Arc<dyn Store> {
        self.try_open().unwrap()
    }
    /// Runs raw SQL on the store's database, behind the store's back.
    pub fn raw(&self, sql: &str) {
        match self {
            Backend::Sqlite(dir) => rusqlite::Connection::open(dir.db()).unwrap().execute_batch(sql).unwrap(),
            Backend::Postgres(pg) => {
                pg.psql(DB, sql);
            }
        }
    }
}

pub fn open_spec(spec: &str) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match spec.strip_prefix("sqlite:") {
        Some(path) => Arc::new(SqliteStore::open(Path::new(path))?),
        None => Arc::new(PgStore::connect(spec)?),
    })
}

/// A SQL string literal.
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Each case as two tests, `sqlite::NAME` and `postgres::NAME`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                super::$name(&super::Backend::sqlite(stringify!($name)));
            })*
        }
        mod postgres {
            $(#[test]
            fn $name() {
                super::$name(&super::Backend::postgres());
            })*
        }
    };
}
