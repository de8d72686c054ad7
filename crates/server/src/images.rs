//! The image catalog: register an image (its version and package manifest
//! default to this host's), list them, and show one with what runs on it.

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, Json, Path};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use drover_engine::{Command, Reply};
use drover_model::{EngineKind, Image, ImageId, InstanceId, Package};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest setting name or value accepted: PostgreSQL's own names are
/// under 64 bytes; a longer one is a mistake, not a setting.
const MAX_SETTING_BYTES: usize = 1024;
/// Settings in one image: PostgreSQL has about 350 parameters.
const MAX_SETTINGS: usize = 512;

/// A new image: an engine, optionally its version, and the settings every
/// instance built from it gets.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateImage {
    pub engine: EngineKind,
    /// Default: the version of the newest image of this engine (the host's
    /// binaries when the local provider runs).
    #[serde(default)]
    pub version: Option<String>,
    /// Engine settings (`{"work_mem": "8MB"}`).
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Default: this host's packages as `dpkg-query` lists them (for
    /// `kafka`, with the pinned tansu crate, ecosystem `crates.io`).
    #[serde(default)]
    pub manifest: Option<Vec<Package>>,
}

/// An image with the services and instances on it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ImageDetail {
    #[serde(flatten)]
    pub image: Image,
    /// Names of the services built from it or running an instance of it.
    pub services: Vec<String>,
    /// Live instances running it.
    #[schema(value_type = Vec<String>)]
    pub instances: Vec<InstanceId>,
}

/// Checks names the way the local provider does: plain parameter names.
fn check_settings(settings: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if settings.len() > MAX_SETTINGS {
        return Err(ApiError::bad_request(format!("{} settings; at most {MAX_SETTINGS}", settings.len())));
    }
    for (name, value) in settings {
        let plain = !name.is_empty()
            && name.len() <= MAX_SETTING_BYTES
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !plain {
            return Err(ApiError::bad_request(format!(
                "setting name {name:?} is not a parameter name (letters, digits, `_` and `.`)"
            )));
        }
        if value.len() > MAX_SETTING_BYTES || value.contains(['\n', '\r', '\0']) {
            return Err(ApiError::bad_request(format!("the value of setting {name:?} is too long or spans lines")));
        }
    }
    Ok(())
}

/// This host's package manifest (empty if dpkg is not there).
pub async fn host_manifest() -> Vec<Package> {
    let output = tokio::process::Command::new("dpkg-query")
        .args(["-W", "-f=${binary:Package}\\t${Version}\\t${source:Package}\\t${source:Version}\\n"])
        .output()
        .await;
    match output {
        Ok(o) if o.status.success() => Package::parse_dpkg_query(&String::from_utf8_lossy(&o.stdout)),
        Ok(o) => {
            tracing::warn!(status = %o.status, "dpkg-query failed: the image has no package manifest");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, "dpkg-query cannot run: the image has no package manifest");
            Vec::new()
        }
    }
}

/// The manifest of what a Kafka service runs on this host: its packages
/// (the storage PostgreSQL's among them) and the pinned tansu broker, a
/// binary built from crates.io.
pub fn kafka_manifest(host: &[Package]) -> Vec<Package> {
    let mut manifest = host.to_vec();
    manifest.retain(|p| p.name != "tansu");
    manifest.push(Package::crate_package("tansu", drover_providers::local::TANSU_VERSION));
    manifest.sort();
    manifest
}

/// What an image of `engine` built from this host carries by default: the
/// host's dpkg manifest, with the tansu crate for Kafka.
async fn default_manifest(engine: EngineKind) -> Vec<Package> {
    let host = host_manifest().await;
    match engine {
        EngineKind::Kafka => kafka_manifest(&host),
        _ => host,
    }
}

/// Register an image (201), or find the same content registered (200).
#[utoipa::path(post, path = "/v1/images", tag = "images", request_body = CreateImage,
    responses((status = 201, body = Image), (status = 200, body = Image), (status = 400, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(crate) async fn create_image(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(request): Json<CreateImage>,
) -> Result<Response, ApiError> {
    let ready = state.ready()?;
    check_settings(&request.settings)?;
    let engine = request.engine;
    let catalog = ready.engine.query(|e| e.images()).await?;
    let base = catalog.iter().rev().find(|i| i.engine == engine);
    let version = match (&request.version, base) {
        (Some(v), _) if v.trim().is_empty() || v.len() > MAX_SETTING_BYTES => {
            return Err(ApiError::bad_request("version must be a short non-empty text"))
        }
        (Some(v), _) => v.clone(),
        (None, Some(b)) => b.version.clone(),
        (None, None) => {
            return Err(ApiError::bad_request(format!(
                "no {engine} image is registered to take the version from; give \"version\""
            )))
        }
    };
    let manifest = match request.manifest {
        Some(m) => m,
        None => default_manifest(engine).await,
    };
    // How the base image is built (its provider's description and
    // packages) stays; the settings and manifest are this image's own.
    let (configuration, packages) = base.map(|b| (b.configuration.clone(), b.packages.clone())).unwrap_or_default();
    let image = Image::new(engine, version, configuration, packages, crate::runtime::now())
        .with_settings_and_manifest(request.settings, manifest);
    let existed = catalog.iter().any(|i| i.id == image.id);
    match ready.engine.call(caller.command(Command::RegisterImage(image))).await? {
        Reply::Image(image) => {
            let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
            Ok((status, Json(*image)).into_response())
        }
        _ => Err(ApiError::internal("the engine answered an image registration with something else")),
    }
}

/// One image, with the services and instances on it.
#[utoipa::path(get, path = "/v1/images/{id}", tag = "images",
    params(("id" = String, Path, description = "Image id (sha256:…)")),
    responses((status = 200, body = ImageDetail), (status = 404, body = ErrorBody)))]
pub(crate) async fn show_image(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<ImageDetail>, ApiError> {
    let ready = state.ready()?;
    let key = ImageId(id.clone());
    let usage = ready
        .engine
        .query(move |e| e.image_usage(&key))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no image {id:?}; GET /v1/images lists them")))?;
    Ok(Json(ImageDetail {
        image: usage.image,
        services: usage.services.into_iter().filter(|(_, t)| caller.sees_team(Some(t))).map(|(n, _)| n).collect(),
        instances: usage.instances.into_iter().filter(|(_, t)| caller.sees_team(Some(t))).map(|(i, _)| i).collect(),
    }))
}
