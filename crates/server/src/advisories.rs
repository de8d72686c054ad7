//! The CVE audit's routes: import OSV advisories, the database's state,
//! and the audit of every registered image (`drover-advisories` decides).

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, Json, Query};
use crate::http::blocking;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use drover_advisories::{DatabaseStatus, Finding, ImageUse, Record, Records};
use drover_model::{ImageId, Timestamp};
use drover_store::breakglass::{AdvisoryRow, BreakGlassStore};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// When the records were fetched from their source (RFC 3339). Default:
    /// the newest `modified` among them, the freshest they can be.
    fetched_at: Option<String>,
}

/// What an import did.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportReport {
    pub imported: u64,
    /// Of those, withdrawn records (kept, matched against nothing).
    pub withdrawn: u64,
    /// Of those, records of neither `Debian:12` nor `crates.io` (kept,
    /// matched against nothing).
    pub other_ecosystems: u64,
    pub fetched_at: String,
    /// The fetch time is older than the staleness limit.
    pub stale: bool,
}

/// Import OSV advisories (ecosystems `Debian:12` and `crates.io`): one
/// record or an array.
/// A record already held (same id) is replaced.
#[utoipa::path(post, path = "/v1/advisories", tag = "advisories", params(ImportQuery), request_body = Records,
    responses((status = 201, body = ImportReport), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn import(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(query): Query<ImportQuery>,
    // axum's extractor, not ours: the body may be an array.
    body: Result<axum::Json<Records>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<ImportReport>), ApiError> {
    let ready = state.ready()?;
    let axum::Json(records) = body?;
    let records = records.into_vec();
    if records.is_empty() {
        return Err(ApiError::bad_request("no records to import: send one OSV record or a non-empty array"));
    }
    if records.len() > drover_advisories::MAX_RECORDS_PER_IMPORT {
        return Err(ApiError::bad_request(format!(
            "{} records in one import; at most {} (split the file)",
            records.len(),
            drover_advisories::MAX_RECORDS_PER_IMPORT
        )));
    }
    let mut rows = Vec::with_capacity(records.len());
    let (mut withdrawn, mut other) = (0, 0);
    let mut newest = Timestamp(i64::MIN);
    for (i, r) in records.iter().enumerate() {
        drover_advisories::validate(i, r).map_err(|e| ApiError::bad_request(e.to_string()))?;
        // validate checked both times.
        let modified = drover_advisories::parse_time(&r.modified).unwrap_or(Timestamp(0));
        newest = newest.max(modified);
        let withdrawn_at = r.withdrawn.as_deref().and_then(drover_advisories::parse_time);
        withdrawn += u64::from(withdrawn_at.is_some());
        other += u64::from(!r.affected.iter().any(|a| {
            a.package.ecosystem == drover_advisories::ECOSYSTEM || a.package.ecosystem == drover_advisories::CRATES_IO
        }));
        let record =
            serde_json::to_string(r).map_err(|e| ApiError::internal(format!("cannot encode {}: {e}", r.id)))?;
        rows.push(AdvisoryRow { id: r.id.clone(), modified, withdrawn: withdrawn_at, record });
    }
    let now = crate::runtime::now();
    let fetched_at = match &query.fetched_at {
        Some(t) => drover_advisories::parse_time(t)
            .ok_or_else(|| ApiError::bad_request(format!("fetched_at {t:?} is not an RFC 3339 time")))?,
        None => newest,
    };
    if fetched_at.0 > now.0 + 300_000_000 {
        return Err(ApiError::bad_request("fetched_at is in the future; send when the data was downloaded"));
    }
    let store = ready.breakglass.clone();
    let (actor, count) = (caller.name.clone(), rows.len() as u64);
    blocking(move || store.import_advisories(&rows, fetched_at, now, &actor)).await?;
    ready.advisory_cache.invalidate();
    tracing::info!(records = count, fetched_at = fetched_at.0, "advisories imported");
    Ok((
        StatusCode::CREATED,
        Json(ImportReport {
            imported: count,
            withdrawn,
            other_ecosystems: other,
            fetched_at: drover_advisories::format_time(fetched_at),
            stale: drover_advisories::is_stale(Some(fetched_at), now),
        }),
    ))
}

/// The advisory database: how many records, and whether its data is stale
/// (a stale database is a finding of its own: the audit cannot know what
/// was published since).
#[utoipa::path(get, path = "/v1/advisories", tag = "advisories",
    responses((status = 200, body = DatabaseStatus)))]
pub(crate) async fn status(State(state): State<AppState>) -> Result<Json<DatabaseStatus>, ApiError> {
    let ready = state.ready()?;
    let store = ready.breakglass.clone();
    let c = blocking(move || store.advisory_counts()).await?;
    Ok(Json(DatabaseStatus {
        records: c.records,
        withdrawn: c.withdrawn,
        fetched_at: c.fetched_at.map(drover_advisories::format_time),
        imported_at: c.imported_at.map(drover_advisories::format_time),
        stale: drover_advisories::is_stale(c.fetched_at, crate::runtime::now()),
        stale_after_seconds: drover_advisories::STALE_AFTER.as_secs(),
    }))
}

/// Every advisory that affects a registered image: the images, the
/// services and instances on them, their owners. An advisory that affects
/// nothing is not listed. The header `Drover-Advisories-Stale: true` says
/// the database itself is stale (see `GET /v1/advisories`).
#[utoipa::path(get, path = "/v1/advisories/audit", tag = "advisories",
    responses((status = 200, body = Vec<Finding>)))]
pub(crate) async fn audit(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<([(&'static str, &'static str); 1], Json<Vec<Finding>>), ApiError> {
    let ready = state.ready()?;
    let records = ready.advisory_cache.records(&ready.breakglass).await?;
    let (images, views) = ready.engine.query(|engine| (engine.images(), engine.service_views())).await?;
    let mut usage: BTreeMap<ImageId, ImageUse> = BTreeMap::new();
    // A team's token counts only its team's services.
    for v in views.into_iter().filter(|v| caller.sees_team(Some(&v.team))) {
        for i in &v.instances {
            let u = usage.entry(ImageId(i.image.clone())).or_default();
            u.services.insert(v.name.clone());
            u.owners.insert(v.team.clone());
            u.instances += 1;
        }
    }
    let store = ready.breakglass.clone();
    let counts = blocking(move || store.advisory_counts()).await?;
    let stale = drover_advisories::is_stale(counts.fetched_at, crate::runtime::now());
    let findings = tokio::task::spawn_blocking(move || drover_advisories::audit(&records, &images, &usage))
        .await
        .map_err(|e| ApiError::internal(format!("the audit task failed: {e}")))?;
    Ok(([("drover-advisories-stale", if stale { "true" } else { "false" })], Json(findings)))
}

/// The records, parsed once per import rather than per audit: an import
/// through this node bumps the generation, and one through another node of
/// a split fleet changes the store's counts (read with every audit: one
/// small query), so a read parses again when its copy is older.
#[derive(Default)]
pub struct AdvisoryCache {
    generation: std::sync::atomic::AtomicU64,
    records: std::sync::Mutex<Option<(CacheKey, Arc<Vec<Record>>)>>,
}

/// This node's generation, and the store's counts and newest import.
type CacheKey = (u64, u64, u64, Option<i64>);

impl AdvisoryCache {
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    pub async fn records(&self, store: &Arc<BreakGlassStore>) -> Result<Arc<Vec<Record>>, ApiError> {
        let counting = store.clone();
        let counts = blocking(move || counting.advisory_counts()).await?;
        let generation = (
            self.generation.load(std::sync::atomic::Ordering::SeqCst),
            counts.records,
            counts.withdrawn,
            counts.imported_at.map(|t| t.0),
        );
        {
            let held = self.records.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((g, r)) = held.as_ref() {
                if *g == generation {
                    return Ok(r.clone());
                }
            }
        }
        let store = store.clone();
        let texts = blocking(move || store.advisories()).await?;
        let mut records = Vec::with_capacity(texts.len());
        for t in texts {
            match serde_json::from_str::<Record>(&t) {
                Ok(r) => records.push(r),
                Err(e) => tracing::warn!(error = %e, "a stored advisory cannot be read; skipped"),
            }
        }
        let records = Arc::new(records);
        *self.records.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, records.clone()));
        Ok(records)
    }
}
