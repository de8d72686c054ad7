//! The OpenAPI 3 document of the HTTP API, generated from the handlers'
//! annotations and the model's schemas, then completed by [`apply_rules`]
//! with what the annotations cannot say once for every route (the error
//! answers every route can give, the rules of shared parameters) and what
//! only the running server knows (its providers). Served at `/openapi.json`;
//! `scripts/fuzz-api` holds the server to it with schemathesis.

use crate::error::ErrorBody;
use crate::http::{self, ChaosRequest, Health, HeartbeatBatch, HeartbeatReceiptDoc};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use drover_model::{
    ActionKind, ActionRecord, ActionState, AuditEntry, BackupStatus, Beat, CreateService, EngineKind, Event, EventKind,
    EventSubject, Facts, Fault, Image, InstanceState, InstanceView, Plan, Role, ServiceState, ServiceView,
};
use serde_json::{json, Value};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Drover", description = "Control plane for fleets of managed databases."),
    paths(
        http::healthz,
        http::create_service,
        http::list_services,
        http::show_service,
        http::delete_service,
        http::post_switchover,
        http::post_fork,
        crate::followers::post_followers,
        crate::followers::delete_follower,
        http::post_resume,
        http::service_checks,
        http::post_backup,
        http::post_verify_backup,
        crate::credentials::post_rotate_credentials,
        http::show_instance,
        http::list_events,
        http::post_heartbeats,
        http::post_chaos,
        http::list_actions,
        http::list_audit,
        http::list_images,
        crate::images::create_image,
        crate::images::show_image,
        crate::rollouts::create_rollout,
        crate::rollouts::list_rollouts,
        crate::rollouts::show_rollout,
        crate::rollouts::rollout_services,
        crate::rollouts::pause_rollout,
        crate::rollouts::resume_rollout,
        crate::rollouts::abort_rollout,
        crate::rollouts::resize_service,
        crate::rollouts::upgrade_service,
        crate::rollouts::rollback_upgrade,
        crate::maintenance::put_window,
        crate::labels::put_labels,
        crate::maintenance::calendar,
        http::metrics_text,
        openapi_json,
        crate::oncall::routes::post_alertmanager,
        crate::oncall::routes::post_event_v2,
        crate::oncall::routes::list_pages,
        crate::oncall::routes::show_page,
        crate::oncall::routes::post_ack,
        crate::oncall::routes::post_resolve,
        crate::oncall::routes::link_ack,
        crate::oncall::routes::link_resolve,
        crate::oncall::routes::pager_metrics,
        crate::oncall::routes::pager_metrics_svg,
        crate::oncall::routes::pager_feed,
        crate::oncall::routes::on_call_now,
        crate::auth::tokens::create_token,
        crate::auth::tokens::list_tokens,
        crate::auth::tokens::revoke_token,
        crate::advisories::import,
        crate::advisories::status,
        crate::advisories::audit,
        crate::runbooks::list,
        crate::runbooks::run,
        crate::runbooks::show_run,
        crate::runbooks::approve,
        crate::hosts::list_hosts,
        crate::cluster::show_cluster,
        crate::node_commands::take,
        crate::deferred::show_command,
        crate::hosts::register_host,
        crate::hosts::post_drain,
        crate::hosts::post_cordon,
        crate::agents::fetch_actions,
        crate::agents::post_action_result,
        crate::archives::list_archives,
        crate::archives::restore_archive,
        crate::status::status_page,
        crate::status::status_feed,
        crate::status::declare,
        crate::status::list,
        crate::status::show,
        crate::status::post_update,
        crate::status::review,
        crate::status::timeline,
        crate::status::post_note,
        crate::lifecycle::list,
        crate::lifecycle::create,
        crate::lifecycle::move_stage,
        crate::lifecycle::attest,
        crate::lifecycle::import,
        crate::lifecycle::export,
    ),
    components(schemas(
        ErrorBody,
        crate::node_commands::NodeCommand,
        crate::status::DeclareIncident,
        crate::lifecycle::ComponentView,
        crate::lifecycle::Gate,
        crate::lifecycle::CreateComponent,
        crate::lifecycle::MoveStage,
        crate::lifecycle::Attest,
        crate::lifecycle::AttestedItem,
        crate::lifecycle::CatalogImport,
        crate::lifecycle::ImportOutcome,
        drover_oncall::lifecycle::Component,
        drover_oncall::lifecycle::Stage,
        drover_oncall::lifecycle::Link,
        drover_oncall::lifecycle::Attestation,
        drover_oncall::lifecycle::StageMove,
        drover_oncall::lifecycle::Evidence,
        drover_oncall::lifecycle::ItemState,
        crate::status::PostUpdate,
        crate::status::PostNote,
        drover_oncall::status::TimelineEntry,
        drover_oncall::status::IncidentNote,
        drover_oncall::status::Incident,
        drover_oncall::status::IncidentUpdate,
        drover_oncall::status::IncidentStatus,
        drover_oncall::status::IncidentSeverity,
        Health,
        crate::agents::ActionBatch,
        crate::agents::QueuedAction,
        crate::agents::HostFault,
        crate::agents::ActionResultBody,
        CreateService,
        http::ForkService,
        crate::followers::AddFollowers,
        drover_model::RestoreFrom,
        ServiceView,
        InstanceView,
        Plan,
        Role,
        EngineKind,
        ServiceState,
        InstanceState,
        Facts,
        Beat,
        HeartbeatBatch,
        HeartbeatReceiptDoc,
        ChaosRequest,
        Fault,
        ActionRecord,
        ActionKind,
        ActionState,
        Event,
        EventKind,
        EventSubject,
        AuditEntry,
        Image,
        drover_model::Package,
        crate::images::CreateImage,
        crate::images::ImageDetail,
        drover_model::RolloutSpec,
        crate::rollouts::CreateRollout,
        crate::rollouts::ResizeService,
        crate::rollouts::UpgradeService,
        drover_model::Selector,
        drover_model::RolloutView,
        drover_model::RolloutState,
        drover_model::RolloutMember,
        drover_model::MemberPhase,
        drover_model::MaintenanceWindow,
        drover_model::Weekday,
        crate::maintenance::WindowBody,
        crate::labels::LabelsBody,
        BackupStatus,
        drover_model::TokenRole,
        drover_model::TokenRecord,
        crate::auth::tokens::CreateToken,
        crate::auth::tokens::CreatedToken,
        drover_advisories::Records,
        drover_advisories::Record,
        drover_advisories::osv::Affected,
        drover_advisories::osv::Package,
        drover_advisories::osv::Range,
        drover_advisories::osv::RangeEvent,
        drover_advisories::Finding,
        drover_advisories::DatabaseStatus,
        crate::advisories::ImportReport,
        crate::runbooks::Runbook,
        crate::runbooks::Parameter,
        crate::runbooks::Step,
        crate::runbooks::RunbookRun,
        crate::runbooks::RunState,
        crate::runbooks::PlannedStep,
        crate::runbooks::RunRequest,
        drover_model::SourcePackage,
        drover_model::HostView,
        crate::cluster::ClusterView,
        crate::cluster::ClusterNode,
        crate::cluster::ClusterLease,
        crate::deferred::CommandView,
        drover_model::HostState,
        drover_model::RegisterHost,
        drover_model::ArchiveView,
        drover_model::ArchiveState,
        crate::archives::RestoreArchive,
    ))
)]
pub struct ApiDoc;

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as served: the generated one with [`apply_rules`] applied.
/// `providers` are the running server's (None while it starts).
pub fn document_value(providers: Option<&[String]>) -> Value {
    let mut doc = serde_json::to_value(document()).unwrap_or_else(|e| json!({"error": e.to_string()}));
    apply_rules(&mut doc, providers);
    doc
}

/// The document as JSON.
pub fn document_json(providers: Option<&[String]>) -> String {
    serde_json::to_string_pretty(&document_value(providers)).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// The syntax of a service name, as `CreateService::validate` checks it.
pub const SERVICE_NAME_PATTERN: &str = "^[a-z0-9][a-z0-9-]*$";
/// Printable ASCII without leading or trailing spaces, as `http::actor` checks it.
pub const ACTOR_PATTERN: &str = "^[!-~]([ -~]*[!-~])?$";

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    })
}

/// Completes the generated document with what every route shares and what
/// only the running server knows. Each rule names the code that enforces it.
pub fn apply_rules(doc: &mut Value, providers: Option<&[String]>) {
    unsigned_ranges(doc);
    // auth::authorize: the bearer scheme, and per operation what the
    // permission table says.
    doc["components"]["securitySchemes"] = json!({"bearer": {"type": "http", "scheme": "bearer",
        "description": "An API token (`drover tokens create`; the first admin token is DATA_DIR/admin.token)"}});
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else { continue };
            for (method, op) in item.iter_mut() {
                complete_operation(path, method, op);
            }
        }
    }
    let schemas = &mut doc["components"]["schemas"];
    // Timestamp's Deserialize: RFC 3339, or integer microseconds since the epoch in jiff's range.
    schemas["Timestamp"] = json!({"oneOf": [
        {"type": "string", "format": "date-time"},
        {"type": "integer", "format": "int64", "description": "Microseconds since the Unix epoch (requests only)",
         "minimum": jiff::Timestamp::MIN.as_second() * 1_000_000, "maximum": jiff::Timestamp::MAX.as_second() * 1_000_000}
    ]});
    // CreateService::validate: zone names, and sync replication needs a follower
    // (`followers` defaults to 0).
    let create = &mut schemas["CreateService"];
    create["properties"]["zones"]["items"] = json!({"type": "string", "minLength": 1, "maxLength": 63});
    create["allOf"] = json!([
        {"not": {
            "description": "sync replication needs at least one follower",
            "required": ["sync"],
            "properties": {"sync": {"const": true}, "followers": {"maximum": 0}}
        }},
        {"not": {
            "description": "brokers is for Kafka services",
            "required": ["brokers"],
            "properties": {"brokers": {"type": "integer"}, "engine": {"not": {"const": "kafka"}}}
        }}
    ]);
    // create_service: a provider this server runs.
    if let Some(providers) = providers {
        let mut names: Vec<Value> = providers.iter().map(|p| json!(p)).collect();
        names.push(Value::Null);
        create["properties"]["provider"] = json!({
            "type": ["string", "null"],
            "enum": names,
            "description": "A provider this server runs (default: the server's default provider)"
        });
    }
    // auth::tokens::create_token.
    let token = &mut schemas["CreateToken"]["properties"];
    let name = json!({"type": "string", "minLength": 1, "maxLength": crate::auth::tokens::MAX_NAME_LEN,
        "pattern": crate::auth::tokens::NAME_PATTERN});
    token["name"] = name.clone();
    token["team"] = json!({"oneOf": [name.clone(), {"type": "null"}]});
    token["host"] = json!({"oneOf": [name, {"type": "null"}]});
    token["expires_in"] = json!({"type": ["string", "null"], "pattern": crate::auth::tokens::EXPIRY_PATTERN});
    // integrations::from_alertmanager.
    let am = &mut schemas["AlertmanagerPayload"]["properties"];
    am["version"] = json!({"type": "string", "enum": ["4"]});
    am["groupKey"] = json!({"type": "string", "minLength": 1});
    am["status"] = json!({"type": "string", "enum": ["firing", "resolved"]});
    // integrations::from_event_v2 (the cross-field rules are in its description).
    let ev = &mut schemas["EventV2"]["properties"];
    ev["event_action"] = json!({"type": "string", "enum": ["trigger", "acknowledge", "resolve"]});
    ev["dedup_key"] = json!({"type": ["string", "null"], "minLength": 1,
        "maxLength": drover_oncall::integrations::MAX_DEDUP_KEY,
        "description": "Required to acknowledge or resolve; a trigger without one gets a new key"});
    schemas["EventPayload"]["properties"]["severity"] =
        json!({"type": "string", "enum": ["critical", "error", "warning", "info"]});
}

/// utoipa writes Rust's unsigned integers as `int32`/`int64` with `minimum: 0`,
/// which fuzzers read as capped at the signed maximum; serde accepts up to
/// the unsigned one. Says so wherever no tighter maximum is given.
fn unsigned_ranges(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            let unsigned = fields.get("minimum").and_then(Value::as_u64) == Some(0) && !fields.contains_key("maximum");
            let widened = match fields.get("format").and_then(Value::as_str) {
                Some("int32") if unsigned => Some(("uint32", json!(u32::MAX))),
                Some("int64") if unsigned => Some(("uint64", json!(u64::MAX))),
                _ => None,
            };
            if let Some((format, maximum)) = widened {
                fields.insert("format".into(), json!(format));
                fields.insert("maximum".into(), maximum);
            }
            fields.values_mut().for_each(unsigned_ranges);
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned_ranges),
        _ => {}
    }
}

fn complete_operation(path: &str, method: &str, op: &mut Value) {
    let mut has_params = false;
    if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
        for p in params.iter_mut() {
            has_params = true;
            let name = p["name"].as_str().unwrap_or_default().to_string();
            let place = p["in"].as_str().unwrap_or_default().to_string();
            match (place.as_str(), name.as_str()) {
                // http::actor.
                ("header", crate::request::ACTOR_HEADER) => {
                    p["schema"] = json!({"type": "string", "minLength": 1,
                        "maxLength": crate::request::MAX_ACTOR_LEN, "pattern": ACTOR_PATTERN});
                }
                // No service has a name outside CreateService's rules (404 then).
                ("path", "name") => {
                    p["schema"] = json!({"type": "string", "minLength": 1, "maxLength": 63,
                        "pattern": SERVICE_NAME_PATTERN});
                }
                // http::parse_instance_id, routes::parse_page_id.
                ("path", "id") => p["schema"] = json!({"type": "string", "format": "uuid"}),
                _ => {}
            }
        }
    }
    let has_body = op.get("requestBody").is_some();
    let permission = crate::auth::permissions::lookup(&method.to_ascii_uppercase(), path).map(|r| r.permission);
    let needs_token = permission.is_some_and(|p| !p.is_open());
    if needs_token {
        op["security"] = json!([{"bearer": []}]);
        let roles: Vec<&str> = permission.map(|p| p.roles().iter().map(|r| r.as_str()).collect()).unwrap_or_default();
        let note = format!("Needs a token with role: {}.", roles.join(", "));
        let description = match op.get("description").and_then(Value::as_str) {
            Some(d) => format!("{d}\n\n{note}"),
            None => note,
        };
        op["description"] = json!(description);
    } else {
        op["security"] = json!([]);
    }
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else { return };
    let mut add = |code: &str, description: &str| {
        responses.entry(code.to_string()).or_insert_with(|| error_response(description));
    };
    if has_params || has_body {
        add("400", "Bad input: a parameter, header or body the API refuses");
    }
    if needs_token {
        add("401", "No valid token: missing, unknown, expired or revoked");
        add("403", "The token's role may not do this, or the request comes from another site");
        if has_body {
            add("415", "The body is not `Content-Type: application/json`");
        }
    }
    if has_body {
        // error::Json and the body limit in http::router.
        add("413", "The body is over the size limit");
        add("415", "The body is not `Content-Type: application/json`");
        add("422", "The body is JSON of the wrong shape (a missing, unknown or mistyped field)");
    }
    // AppState::ready, the engine or store unavailable; not the two routes that need neither.
    if path != "/metrics" && path != "/openapi.json" {
        add("503", "Drover is starting or stopping, or its store cannot answer; retry");
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
pub(crate) async fn openapi_json(State(state): State<AppState>) -> Response {
    let providers = state.ready.get().map(|r| r.providers.as_slice());
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], document_json(providers)).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_documented_timestamp_range_is_the_one_accepted() {
        let doc = super::document_value(None);
        let micros = &doc["components"]["schemas"]["Timestamp"]["oneOf"][1];
        let (min, max) = (micros["minimum"].as_i64().unwrap(), micros["maximum"].as_i64().unwrap());
        let parse = |m: i64| serde_json::from_value::<drover_model::Timestamp>(serde_json::json!(m)).is_ok();
        assert!(parse(min) && parse(max));
        assert!(!parse(min - 1) && !parse(max + 1));
    }
}
