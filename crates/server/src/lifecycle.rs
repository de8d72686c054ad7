//! The software lifecycle board over HTTP (`/v1/components`) and Backstage's
//! `catalog-info.yaml` in and out (`/v1/catalog/…`). The gates are pure
//! (`drover_oncall::lifecycle`); here the facts are gathered: the owner
//! team in `oncall.toml` and who is on call, what depends on the component
//! in the engine (services labelled `component=<name>`, images holding its
//! packages and the services on them), their states and restore tests.

use crate::auth::Caller;
use crate::error::{ApiError, Json, Path};
use crate::oncall::routes::blocking;
use crate::state::{AppState, Ready};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use drover_model::ServiceState;
use drover_oncall::lifecycle::{self, Attestation, Component, Facts, ItemState, Link, MoveError, Stage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A component with what depends on it and the gate to its next stage.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ComponentView {
    #[serde(flatten)]
    pub component: Component,
    /// Services that depend on it (by label or image), by name.
    pub services: Vec<String>,
    /// Images holding one of its packages.
    pub images: Vec<String>,
    /// The next stage and its checklist (none after sunset).
    pub next: Option<Gate>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Gate {
    pub to: Stage,
    pub items: Vec<ItemState>,
}

async fn facts(ready: &Ready, c: &Component) -> Result<Facts, ApiError> {
    let (name, packages) = (c.name.clone(), c.packages.clone());
    let deps = ready.engine.query(move |e| e.dependents(&name, &packages)).await?;
    let now = crate::actor::now();
    let team = ready.oncall.config.teams.iter().find(|t| t.name == c.owner);
    Ok(Facts {
        team_known: team.is_some(),
        team_on_call: team.is_some_and(|t| t.schedules.iter().any(|s| s.on_call(now).is_some())),
        services_not_ok: deps
            .services
            .iter()
            .filter(|(_, s, _)| *s != ServiceState::Available)
            .map(|(n, _, _)| n.clone())
            .collect(),
        backups_unverified: deps.services.iter().filter(|(_, _, v)| !v).map(|(n, _, _)| n.clone()).collect(),
        services: deps.services.into_iter().map(|(n, _, _)| n).collect(),
        images: deps.images,
    })
}

async fn view(ready: &Ready, c: Component) -> Result<ComponentView, ApiError> {
    let f = facts(ready, &c).await?;
    let next = Stage::ALL
        .iter()
        .copied()
        .find(|s| *s > c.stage)
        .map(|to| Gate { to, items: lifecycle::checklist(&c, to, &f) });
    Ok(ComponentView { services: f.services, images: f.images, next, component: c })
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "component name {name:?}: 1 to 63 letters, digits, '-', '_' or '.' (as in Backstage)"
        )))
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateComponent {
    /// 1 to 63 letters, digits, `-`, `_` or `.`.
    #[schema(min_length = 1, max_length = 63, pattern = r"^[A-Za-z0-9._-]+$")]
    pub name: String,
    /// The owner team (not blank).
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub owner: String,
    /// Where it stands when registered (default: prototype). Later moves go through the gates.
    #[serde(default)]
    pub stage: Option<Stage>,
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: String,
    #[serde(default)]
    pub links: Vec<Link>,
    #[serde(default)]
    pub packages: Vec<String>,
}

/// Every component of the lifecycle board, with its dependents and next gate.
#[utoipa::path(get, path = "/v1/components", tag = "lifecycle",
    responses((status = 200, description = "Components by name", body = Vec<ComponentView>)))]
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<Vec<ComponentView>>, ApiError> {
    let ready = state.ready()?;
    let store = ready.oncall.store.clone();
    let all = blocking(move || store.components()).await?;
    let mut out = Vec::with_capacity(all.len());
    for c in all {
        out.push(view(ready, c).await?);
    }
    Ok(Json(out))
}

/// Registers a component.
#[utoipa::path(post, path = "/v1/components", tag = "lifecycle", request_body = CreateComponent,
    responses((status = 201, description = "The component", body = ComponentView),
        (status = 400, body = crate::error::ErrorBody),
        (status = 409, description = "A component of that name exists", body = crate::error::ErrorBody)))]
pub(crate) async fn create(
    State(state): State<AppState>,
    Json(body): Json<CreateComponent>,
) -> Result<(StatusCode, Json<ComponentView>), ApiError> {
    let ready = state.ready()?;
    check_name(&body.name)?;
    if body.owner.trim().is_empty() || body.owner.chars().count() > 100 || body.description.chars().count() > 2000 {
        return Err(ApiError::bad_request("owner must be 1 to 100 characters, description at most 2000"));
    }
    let c = Component {
        name: body.name,
        owner: body.owner.trim().to_string(),
        description: body.description,
        stage: body.stage.unwrap_or(Stage::Prototype),
        links: body.links,
        packages: body.packages,
        attestations: Vec::new(),
        history: Vec::new(),
    };
    let store = ready.oncall.store.clone();
    let stored = c.clone();
    let created = blocking(move || {
        if store.component(&stored.name)?.is_some() {
            return Ok(false);
        }
        store.put_component(&stored)?;
        Ok(true)
    })
    .await?;
    if !created {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("a component named {:?} exists", c.name)));
    }
    Ok((StatusCode::CREATED, Json(view(ready, c).await?)))
}

async fn load(ready: &Ready, name: &str) -> Result<Component, ApiError> {
    let store = ready.oncall.store.clone();
    let n = name.to_string();
    blocking(move || store.component(&n)).await?.ok_or_else(|| ApiError::not_found(format!("no component {name:?}")))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveStage {
    pub to: Stage,
}

/// Moves a component one stage, through the gate's checklist; 409 with the
/// open items (`open`) when the gate is not met.
#[utoipa::path(post, path = "/v1/components/{name}/stage", tag = "lifecycle", request_body = MoveStage,
    params(("name" = String, Path, description = "Component name")),
    responses((status = 200, description = "The component in its new stage", body = ComponentView),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "Not one step, or the gate is not met: `error` and the open items in `open`", body = crate::error::ErrorBody)))]
pub(crate) async fn move_stage(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Json(body): Json<MoveStage>,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    let mut c = load(ready, &name).await?;
    let f = facts(ready, &c).await?;
    match lifecycle::move_stage(&mut c, body.to, &f, &caller.name, crate::actor::now()) {
        Ok(()) => {}
        Err(e @ MoveError::GateOpen { .. }) => {
            let open = match &e {
                MoveError::GateOpen { open, .. } => open.clone(),
                _ => Vec::new(),
            };
            return Ok((StatusCode::CONFLICT, axum::Json(serde_json::json!({"error": e.to_string(), "open": open})))
                .into_response());
        }
        Err(e) => return Err(ApiError::new(StatusCode::CONFLICT, e.to_string())),
    }
    let store = ready.oncall.store.clone();
    let stored = c.clone();
    blocking(move || store.put_component(&stored)).await?;
    Ok(axum::Json(view(ready, c).await?).into_response())
}

/// The checklist items a person attests.
#[derive(Clone, Copy, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttestedItem {
    Logging,
    Runbook,
    Successor,
    Celebrated,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attest {
    pub item: AttestedItem,
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub note: Option<String>,
}

/// A person attests a checklist item (recorded with their token's name).
#[utoipa::path(post, path = "/v1/components/{name}/attest", tag = "lifecycle", request_body = Attest,
    params(("name" = String, Path, description = "Component name")),
    responses((status = 200, description = "The component", body = ComponentView),
        (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn attest(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Json(body): Json<Attest>,
) -> Result<Json<ComponentView>, ApiError> {
    let ready = state.ready()?;
    if body.note.as_ref().is_some_and(|n| n.chars().count() > 2000) {
        return Err(ApiError::bad_request("note is longer than 2000 characters"));
    }
    let mut c = load(ready, &name).await?;
    let item = serde_json::to_value(body.item).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    debug_assert!(lifecycle::is_attestable(&item));
    c.attestations.push(Attestation { item, by: caller.name.clone(), at: crate::actor::now(), note: body.note });
    let store = ready.oncall.store.clone();
    let stored = c.clone();
    blocking(move || store.put_component(&stored)).await?;
    Ok(Json(view(ready, c).await?))
}

// ----------------------------------------------------------------------
// Backstage
// ----------------------------------------------------------------------

/// A Backstage catalog entity, as much of it as the board keeps.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entity {
    api_version: String,
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    spec: BTreeMap<String, serde_yaml_ng::Value>,
}

#[derive(Serialize, Deserialize)]
struct Metadata {
    name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    links: Vec<EntityLink>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct EntityLink {
    url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    title: String,
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    kind: String,
}

/// The annotation that carries a component's Debian packages.
const PACKAGES: &str = "drover.dev/packages";

fn to_entity(c: &Component) -> Entity {
    let mut spec = BTreeMap::new();
    spec.insert("type".to_string(), serde_yaml_ng::Value::String("service".into()));
    spec.insert("lifecycle".to_string(), serde_yaml_ng::Value::String(c.stage.as_str().into()));
    spec.insert("owner".to_string(), serde_yaml_ng::Value::String(c.owner.clone()));
    let mut annotations = BTreeMap::new();
    if !c.packages.is_empty() {
        annotations.insert(PACKAGES.to_string(), c.packages.join(","));
    }
    Entity {
        api_version: "backstage.io/v1alpha1".into(),
        kind: "Component".into(),
        metadata: Metadata {
            name: c.name.clone(),
            description: c.description.clone(),
            links: c
                .links
                .iter()
                .map(|l| EntityLink { url: l.url.clone(), title: l.title.clone(), kind: l.kind.clone() })
                .collect(),
            annotations,
        },
        spec,
    }
}

fn from_entity(e: Entity) -> Result<Option<Component>, String> {
    if !e.kind.eq_ignore_ascii_case("component") {
        return Ok(None); // Systems, APIs, groups…: not the board's.
    }
    let text = |key: &str| e.spec.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let name = e.metadata.name;
    let lifecycle = text("lifecycle").ok_or_else(|| format!("component {name:?} has no spec.lifecycle"))?;
    let stage = Stage::from_lifecycle(&lifecycle)
        .ok_or_else(|| format!("component {name:?}: lifecycle {lifecycle:?} is not a stage (prototype, development, production, deprecated, deactivated, sunset; or experimental)"))?;
    let owner = text("owner").ok_or_else(|| format!("component {name:?} has no spec.owner"))?;
    // Backstage owners are entity refs (`group:default/platform`): the board keeps the team's name.
    let owner = owner.rsplit(['/', ':']).next().unwrap_or(&owner).to_string();
    let packages = e
        .metadata
        .annotations
        .get(PACKAGES)
        .map(|p| p.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    Ok(Some(Component {
        name,
        owner,
        description: e.metadata.description,
        stage,
        links: e.metadata.links.into_iter().map(|l| Link { title: l.title, url: l.url, kind: l.kind }).collect(),
        packages,
        attestations: Vec::new(),
        history: Vec::new(),
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogImport {
    /// The text of a Backstage `catalog-info.yaml` (one or more documents).
    #[schema(max_length = 1000000)]
    pub yaml: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ImportOutcome {
    /// Components created.
    pub created: Vec<String>,
    /// Components that existed: owner, stage, description, links and
    /// packages taken from the file; attestations and history kept.
    pub updated: Vec<String>,
    /// Entities that are not components (systems, APIs, groups…).
    pub skipped: usize,
}

/// Imports Backstage `catalog-info.yaml` entities of kind Component.
#[utoipa::path(post, path = "/v1/catalog/import", tag = "lifecycle", request_body = CatalogImport,
    responses((status = 200, description = "What was imported", body = ImportOutcome),
        (status = 400, description = "Not YAML, or an entity without what the board needs", body = crate::error::ErrorBody)))]
pub(crate) async fn import(
    State(state): State<AppState>,
    Json(body): Json<CatalogImport>,
) -> Result<Json<ImportOutcome>, ApiError> {
    let ready = state.ready()?;
    let mut components = Vec::new();
    let mut skipped = 0;
    for (k, doc) in serde_yaml_ng::Deserializer::from_str(&body.yaml).enumerate() {
        let value = serde_yaml_ng::Value::deserialize(doc)
            .map_err(|e| ApiError::bad_request(format!("document {}: not YAML: {e}", k + 1)))?;
        if value.is_null() {
            continue;
        }
        let entity: Entity = serde_yaml_ng::from_value(value)
            .map_err(|e| ApiError::bad_request(format!("document {}: not a catalog entity: {e}", k + 1)))?;
        match from_entity(entity).map_err(|e| ApiError::bad_request(format!("document {}: {e}", k + 1)))? {
            Some(c) => {
                check_name(&c.name)?;
                components.push(c);
            }
            None => skipped += 1,
        }
    }
    let store = ready.oncall.store.clone();
    let (created, updated) = blocking(move || {
        let (mut created, mut updated) = (Vec::new(), Vec::new());
        for mut c in components {
            match store.component(&c.name)? {
                Some(old) => {
                    c.attestations = old.attestations;
                    c.history = old.history;
                    updated.push(c.name.clone());
                }
                None => created.push(c.name.clone()),
            }
            store.put_component(&c)?;
        }
        Ok((created, updated))
    })
    .await?;
    Ok(Json(ImportOutcome { created, updated, skipped }))
}

/// Every component as Backstage `catalog-info.yaml` (one document each).
#[utoipa::path(get, path = "/v1/catalog/export", tag = "lifecycle",
    responses((status = 200, description = "Backstage catalog-info.yaml", content_type = "application/yaml", body = String)))]
pub(crate) async fn export(State(state): State<AppState>) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    let store = ready.oncall.store.clone();
    let all = blocking(move || store.components()).await?;
    let mut out = String::new();
    for c in &all {
        let doc = serde_yaml_ng::to_string(&to_entity(c)).map_err(|e| ApiError::internal(e.to_string()))?;
        out.push_str("---\n");
        out.push_str(&doc);
    }
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/yaml; charset=utf-8"))], out).into_response())
}
