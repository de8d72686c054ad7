//! The `tokens` table on both stores: a token stored through one handle
//! is found by the hash of its secret through another (on PostgreSQL, two
//! nodes: a standby checks a caller by that one row), revoked ones too.

mod common;
use common::pg::PgServer;
use common::TempDir;
use drover_model::{Timestamp, TokenRecord, TokenRole};
use drover_store::tokens::{StoredToken, TokenStore};
use drover_store::{PgStore, SqliteStore};
use std::sync::Arc;

fn token(id: &str, name: &str, hash: &str) -> StoredToken {
    StoredToken {
        record: TokenRecord {
            id: id.into(),
            name: name.into(),
            role: TokenRole::Agent,
            team: None,
            host: Some("h01".into()),
            created_at: Timestamp(10),
            expires_at: Some(Timestamp(1_000)),
            revoked_at: None,
            last_used: None,
        },
        hash: hash.into(),
    }
}

/// `a` and `b` are two handles on the same table (two nodes, or one).
fn exercise(a: &TokenStore, b: &TokenStore) {
    assert!(b.find("ab12").unwrap().is_none(), "an empty table finds nothing");
    a.insert(&token("tok-1", "agent-h01", "ab12"), Timestamp(10)).unwrap();
    a.insert(&token("tok-2", "agent-h02", "cd34"), Timestamp(11)).unwrap();

    let found = b.find("ab12").unwrap().expect("stored through the other handle");
    assert_eq!(found.hash, "ab12");
    assert_eq!(found.record, token("tok-1", "agent-h01", "ab12").record, "every column read back");
    assert_eq!(b.find("cd34").unwrap().map(|t| t.record.id), Some("tok-2".to_string()));
    assert!(b.find("AB12").unwrap().is_none(), "a hash matches exactly");
    assert!(b.find("").unwrap().is_none());
    assert!(b.find("ab12' OR '1'='1").unwrap().is_none(), "a bound parameter, not SQL");

    a.revoke("tok-1", Timestamp(20)).unwrap();
    let revoked = b.find("ab12").unwrap().expect("a revoked token is still found, to say so");
    assert_eq!(revoked.record.revoked_at, Some(Timestamp(20)));

    // A dashboard session opened through one node is good on the other
    // until it ends or is closed there.
    use drover_store::tokens::StoredSession;
    let session = |csrf: &str, until| StoredSession { token_sealed: "sealed:x".into(), csrf: csrf.into(), until };
    a.open_session("h1", &session("c1", 1_000), 100).unwrap();
    a.open_session("h2", &session("c2", 150), 100).unwrap();
    assert_eq!(b.session("h1", 200).unwrap(), Some(session("c1", 1_000)));
    assert_eq!(b.session("h2", 200).unwrap(), None, "ended");
    assert_eq!(b.session("nope", 200).unwrap(), None);
    assert_eq!(b.session("h1' OR '1'='1", 200).unwrap(), None, "a bound parameter");
    b.close_session("h1").unwrap();
    assert_eq!(a.session("h1", 200).unwrap(), None, "closed through the other node");
    // Opening one drops those that ended.
    a.open_session("h3", &session("c3", 2_000), 500).unwrap();
    assert_eq!(a.session("h2", 120).unwrap(), None, "dropped once ended, whatever the reader's clock");
}

#[test]
fn on_sqlite() {
    let dir = TempDir::new("tokens");
    SqliteStore::open(&dir.db()).unwrap();
    let a = TokenStore::open(&dir.db()).unwrap();
    let b = TokenStore::open(&dir.db()).unwrap();
    exercise(&a, &b);
}

#[test]
fn on_postgres_shared_by_two_nodes() {
    let pg = PgServer::start();
    let url = pg.url(common::DB);
    let a = TokenStore::postgres(Arc::new(PgStore::connect(&url).unwrap()));
    let b = TokenStore::postgres(Arc::new(PgStore::connect(&url).unwrap()));
    exercise(&a, &b);
}
