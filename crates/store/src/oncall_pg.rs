//! The pager's tables in the PostgreSQL store (issue 16): the same rows
//! and the same answers as `oncall.db`, shared by every node. Each
//! function is one of [`crate::oncall::OncallStore`]'s methods for that
//! backend; a batch of pager outputs is one transaction, as in SQLite.

use crate::oncall::{FeedRecord, NotificationRecord, OncallStoreError};
use crate::{PgStore, StoreError};
use drover_model::{IncidentId, Timestamp};
use drover_oncall::lifecycle::Component;
use drover_oncall::status::{ComponentState, Incident, UptimeDay};
use drover_oncall::{FeedPost, Outputs, Page, PageId, Transition};
use std::collections::HashMap;
use tokio_postgres::types::ToSql;

/// Owned query parameters as the references `tokio_postgres` takes.
fn refs(params: &[Box<dyn ToSql + Send + Sync>]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()
}

fn pg_error(operation: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::Postgres { operation, detail: crate::pg::pg_detail(&e) }
}

fn corrupt(e: serde_json::Error) -> OncallStoreError {
    OncallStoreError::Corrupt(e.to_string())
}

fn bodies<T: serde::de::DeserializeOwned>(rows: Vec<String>) -> Result<Vec<T>, OncallStoreError> {
    rows.iter().map(|b| serde_json::from_str(b).map_err(corrupt)).collect()
}

/// `SELECT body …` with owned parameters: the rows' first column.
fn body_rows(
    pg: &PgStore,
    operation: &'static str,
    sql: String,
    params: Vec<Box<dyn ToSql + Send + Sync>>,
) -> Result<Vec<String>, StoreError> {
    pg.with_client(move |client| async move {
        let refs = refs(&params);
        let rows = client.query(&sql, &refs).await.map_err(pg_error(operation))?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    })
}

type PageRow = (String, String, String, String, i64, i64, String);

pub(crate) fn commit(pg: &PgStore, out: &Outputs) -> Result<Vec<i64>, OncallStoreError> {
    let mut latest: HashMap<PageId, &Page> = HashMap::new();
    for p in &out.pages {
        latest.insert(p.id, p);
    }
    let mut pages: Vec<PageRow> = Vec::with_capacity(latest.len());
    for p in latest.values() {
        let updated = p.resolved_at.or(p.acknowledged_at).unwrap_or(p.opened_at);
        pages.push((
            p.id.to_string(),
            p.team.clone(),
            p.status.name().to_string(),
            p.dedup_key.clone(),
            p.opened_at.0,
            updated.0,
            serde_json::to_string(p).map_err(corrupt)?,
        ));
    }
    let transitions = out
        .transitions
        .iter()
        .map(|t| Ok((t.page.to_string(), t.at.0, serde_json::to_string(t).map_err(corrupt)?)))
        .collect::<Result<Vec<_>, OncallStoreError>>()?;
    let notifications = out
        .notifications
        .iter()
        .map(|n| {
            let page = n.page.map(|p| p.to_string()).unwrap_or_default();
            Ok((n.id.to_string(), page, n.at.0, serde_json::to_string(n).map_err(corrupt)?))
        })
        .collect::<Result<Vec<_>, OncallStoreError>>()?;
    let feed: Vec<(i64, Option<String>, Option<String>, String)> =
        out.feed.iter().map(|f| (f.at.0, f.page.map(|p| p.to_string()), f.team.clone(), f.text.clone())).collect();
    let holder = pg.holder();
    let seqs = pg.with_client(move |mut client| async move {
        let write = pg_error("storing pager outputs");
        let tx = client.transaction().await.map_err(&write)?;
        crate::pg::check_lease(&tx, holder.as_ref()).await?;
        for (id, team, status, dedup, opened, updated, body) in &pages {
            tx.execute(
                "INSERT INTO pages (id, team, status, dedup_key, opened_at, updated_at, body) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at, \
                 body = excluded.body",
                &[id, team, status, dedup, opened, updated, body],
            )
            .await
            .map_err(&write)?;
        }
        for (page, at, body) in &transitions {
            tx.execute("INSERT INTO page_transitions (page, at, body) VALUES ($1, $2, $3)", &[page, at, body])
                .await
                .map_err(&write)?;
        }
        for (id, page, at, body) in &notifications {
            tx.execute(
                "INSERT INTO notifications (id, page, at, state, body) VALUES ($1, $2, $3, 'pending', $4)",
                &[id, page, at, body],
            )
            .await
            .map_err(&write)?;
        }
        let mut seqs = Vec::with_capacity(feed.len());
        for (at, page, team, text) in &feed {
            let row = tx
                .query_one(
                    "INSERT INTO feed (at, page, team, text, state) VALUES ($1, $2, $3, $4, 'pending') RETURNING seq",
                    &[at, page, team, text],
                )
                .await
                .map_err(&write)?;
            seqs.push(row.get::<_, i64>(0));
        }
        tx.commit().await.map_err(&write)?;
        Ok(seqs)
    })?;
    Ok(seqs)
}

pub(crate) fn add_feed(pg: &PgStore, post: &FeedPost) -> Result<i64, OncallStoreError> {
    let (at, page, team, text) = (post.at.0, post.page.map(|p| p.to_string()), post.team.clone(), post.text.clone());
    let holder = pg.holder();
    Ok(pg.with_client(move |mut client| async move {
        let write = pg_error("adding a feed post");
        let tx = client.transaction().await.map_err(&write)?;
        crate::pg::check_lease(&tx, holder.as_ref()).await?;
        let row = tx
            .query_one(
                "INSERT INTO feed (at, page, team, text, state) VALUES ($1, $2, $3, $4, 'pending') RETURNING seq",
                &[&at, &page, &team, &text],
            )
            .await
            .map_err(&write)?;
        tx.commit().await.map_err(&write)?;
        Ok(row.get::<_, i64>(0))
    })?)
}

pub(crate) fn execute(
    pg: &PgStore,
    operation: &'static str,
    sql: &'static str,
    params: Vec<Box<dyn ToSql + Send + Sync>>,
) -> Result<u64, OncallStoreError> {
    let holder = pg.holder();
    Ok(pg.with_client(move |mut client| async move {
        let write = pg_error(operation);
        let tx = client.transaction().await.map_err(&write)?;
        crate::pg::check_lease(&tx, holder.as_ref()).await?;
        let refs = refs(&params);
        let changed = tx.execute(sql, &refs).await.map_err(&write)?;
        tx.commit().await.map_err(&write)?;
        Ok(changed)
    })?)
}

pub(crate) fn pages_where(
    pg: &PgStore,
    sql: &str,
    params: Vec<Box<dyn ToSql + Send + Sync>>,
) -> Result<Vec<Page>, OncallStoreError> {
    bodies(body_rows(pg, "reading pages", format!("SELECT body FROM pages {sql}"), params)?)
}

pub(crate) fn page(pg: &PgStore, id: PageId) -> Result<Option<Page>, OncallStoreError> {
    let rows =
        body_rows(pg, "reading a page", "SELECT body FROM pages WHERE id = $1".into(), vec![Box::new(id.to_string())])?;
    Ok(bodies(rows)?.into_iter().next())
}

pub(crate) fn transitions(pg: &PgStore, id: PageId) -> Result<Vec<Transition>, OncallStoreError> {
    bodies(body_rows(
        pg,
        "reading a page's transitions",
        "SELECT body FROM page_transitions WHERE page = $1 ORDER BY seq".into(),
        vec![Box::new(id.to_string())],
    )?)
}

pub(crate) fn notifications_where(
    pg: &PgStore,
    sql: &str,
    params: Vec<Box<dyn ToSql + Send + Sync>>,
) -> Result<Vec<NotificationRecord>, OncallStoreError> {
    let sql = format!("SELECT body, state, attempts, channel, error, delivered_at FROM notifications {sql}");
    let rows = pg.with_client(move |client| async move {
        let refs = refs(&params);
        let rows = client.query(&sql, &refs).await.map_err(pg_error("reading notifications"))?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, i64>(2),
                    r.get::<_, Option<String>>(3),
                    r.get::<_, Option<String>>(4),
                    r.get::<_, Option<i64>>(5),
                )
            })
            .collect::<Vec<_>>())
    })?;
    rows.into_iter()
        .map(|(body, state, attempts, channel, error, delivered_at)| {
            Ok(NotificationRecord {
                notification: serde_json::from_str(&body).map_err(corrupt)?,
                state,
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                channel,
                error,
                delivered_at: delivered_at.map(Timestamp),
            })
        })
        .collect()
}

pub(crate) fn feed_where(
    pg: &PgStore,
    sql: &str,
    params: Vec<Box<dyn ToSql + Send + Sync>>,
) -> Result<Vec<FeedRecord>, OncallStoreError> {
    let sql = format!("SELECT seq, at, page, team, text, state FROM feed {sql}");
    let rows = pg.with_client(move |client| async move {
        let refs = refs(&params);
        let rows = client.query(&sql, &refs).await.map_err(pg_error("reading the feed"))?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, i64>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, Option<String>>(2),
                    r.get::<_, Option<String>>(3),
                    r.get::<_, String>(4),
                    r.get::<_, String>(5),
                )
            })
            .collect::<Vec<_>>())
    })?;
    rows.into_iter()
        .map(|(seq, at, page, team, text, state)| {
            let page =
                page.map(|p| p.parse::<PageId>().map_err(|e| OncallStoreError::Corrupt(e.to_string()))).transpose()?;
            Ok(FeedRecord { seq, post: FeedPost { at: Timestamp(at), page, team, text }, state })
        })
        .collect()
}

pub(crate) fn put_incident(pg: &PgStore, incident: &Incident) -> Result<(), OncallStoreError> {
    let body = serde_json::to_string(incident).map_err(corrupt)?;
    let params: Vec<Box<dyn ToSql + Send + Sync>> = vec![
        Box::new(incident.id.to_string()),
        Box::new(incident.created_at.0),
        Box::new(incident.resolved_at.map(|t| t.0)),
        Box::new(body),
    ];
    execute(
        pg,
        "storing an incident",
        "INSERT INTO incidents (id, created_at, resolved_at, body) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO UPDATE SET resolved_at = excluded.resolved_at, body = excluded.body",
        params,
    )?;
    Ok(())
}

/// Read, change and write in one transaction, the row locked meanwhile:
/// two updates through two nodes at once each get their own turn.
pub(crate) fn update_incident<R: Send + 'static>(
    pg: &PgStore,
    id: IncidentId,
    f: impl FnOnce(&mut Incident) -> R + Send + 'static,
) -> Result<Option<(Incident, R)>, OncallStoreError> {
    let id = id.to_string();
    let holder = pg.holder();
    let done = pg.with_client(move |mut client| async move {
        let write = pg_error("updating an incident");
        let tx = client.transaction().await.map_err(&write)?;
        crate::pg::check_lease(&tx, holder.as_ref()).await?;
        let row = tx.query_opt("SELECT body FROM incidents WHERE id = $1 FOR UPDATE", &[&id]).await.map_err(&write)?;
        let Some(row) = row else { return Ok(None) };
        let mut incident: Incident = match serde_json::from_str(&row.get::<_, String>(0)) {
            Ok(incident) => incident,
            Err(e) => return Ok(Some(Err(e.to_string()))),
        };
        let r = f(&mut incident);
        let body = match serde_json::to_string(&incident) {
            Ok(body) => body,
            Err(e) => return Ok(Some(Err(e.to_string()))),
        };
        tx.execute(
            "UPDATE incidents SET resolved_at = $2, body = $3 WHERE id = $1",
            &[&id, &incident.resolved_at.map(|t| t.0), &body],
        )
        .await
        .map_err(&write)?;
        tx.commit().await.map_err(&write)?;
        Ok(Some(Ok((incident, r))))
    })?;
    match done {
        None => Ok(None),
        Some(Ok(updated)) => Ok(Some(updated)),
        Some(Err(e)) => Err(OncallStoreError::Corrupt(e)),
    }
}

pub(crate) fn incident(pg: &PgStore, id: IncidentId) -> Result<Option<Incident>, OncallStoreError> {
    let rows = body_rows(
        pg,
        "reading an incident",
        "SELECT body FROM incidents WHERE id = $1".into(),
        vec![Box::new(id.to_string())],
    )?;
    Ok(bodies(rows)?.into_iter().next())
}

pub(crate) fn incidents(pg: &PgStore, since: Timestamp, limit: usize) -> Result<Vec<Incident>, OncallStoreError> {
    bodies(body_rows(
        pg,
        "reading incidents",
        "SELECT body FROM incidents WHERE resolved_at IS NULL OR created_at >= $1 \
         ORDER BY created_at DESC, id DESC LIMIT $2"
            .into(),
        vec![Box::new(since.0), Box::new(limit as i64)],
    )?)
}

pub(crate) fn add_component_samples(
    pg: &PgStore,
    day: &str,
    samples: &[(String, ComponentState)],
) -> Result<(), OncallStoreError> {
    let day = day.to_string();
    let rows: Vec<(String, i64, i64, i64)> = samples
        .iter()
        .map(|(component, state)| {
            let (d, p, m) = match state {
                ComponentState::Operational => (0, 0, 0),
                ComponentState::DegradedPerformance => (1, 0, 0),
                ComponentState::PartialOutage => (0, 1, 0),
                ComponentState::MajorOutage => (0, 0, 1),
            };
            (component.clone(), d, p, m)
        })
        .collect();
    let holder = pg.holder();
    pg.with_client(move |mut client| async move {
        let write = pg_error("counting status samples");
        let tx = client.transaction().await.map_err(&write)?;
        crate::pg::check_lease(&tx, holder.as_ref()).await?;
        for (component, d, p, m) in &rows {
            tx.execute(
                "INSERT INTO component_days (component, day, samples, degraded, partial, major) \
                 VALUES ($1, $2, 1, $3, $4, $5) \
                 ON CONFLICT (component, day) DO UPDATE SET samples = component_days.samples + 1, \
                 degraded = component_days.degraded + excluded.degraded, \
                 partial = component_days.partial + excluded.partial, major = component_days.major + excluded.major",
                &[component, &day, d, p, m],
            )
            .await
            .map_err(&write)?;
        }
        tx.commit().await.map_err(&write)
    })?;
    Ok(())
}

pub(crate) fn component_days(
    pg: &PgStore,
    component: &str,
    first_day: &str,
) -> Result<Vec<UptimeDay>, OncallStoreError> {
    let (component, first_day) = (component.to_string(), first_day.to_string());
    Ok(pg.with_client(move |client| async move {
        let rows = client
            .query(
                "SELECT day, samples, degraded, partial, major FROM component_days \
                 WHERE component = $1 AND day >= $2 ORDER BY day",
                &[&component, &first_day],
            )
            .await
            .map_err(pg_error("reading status samples"))?;
        Ok(rows
            .iter()
            .map(|r| UptimeDay {
                day: r.get(0),
                samples: r.get::<_, i64>(1) as u64,
                degraded: r.get::<_, i64>(2) as u64,
                partial: r.get::<_, i64>(3) as u64,
                major: r.get::<_, i64>(4) as u64,
            })
            .collect())
    })?)
}

pub(crate) fn put_component(pg: &PgStore, c: &Component) -> Result<(), OncallStoreError> {
    let body = serde_json::to_string(c).map_err(corrupt)?;
    execute(
        pg,
        "storing a component",
        "INSERT INTO components (name, body) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET body = excluded.body",
        vec![Box::new(c.name.clone()), Box::new(body)],
    )?;
    Ok(())
}

pub(crate) fn component(pg: &PgStore, name: &str) -> Result<Option<Component>, OncallStoreError> {
    let rows = body_rows(
        pg,
        "reading a component",
        "SELECT body FROM components WHERE name = $1".into(),
        vec![Box::new(name.to_string())],
    )?;
    Ok(bodies(rows)?.into_iter().next())
}

pub(crate) fn components(pg: &PgStore) -> Result<Vec<Component>, OncallStoreError> {
    bodies(body_rows(pg, "reading components", "SELECT body FROM components ORDER BY name".into(), Vec::new())?)
}
