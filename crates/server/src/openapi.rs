//! The OpenAPI 3 document of the HTTP API, generated from the handlers'
//! annotations and the model's schemas. Served at `/openapi.json`.

use crate::error::ErrorBody;
use crate::http::{self, ChaosRequest, Health, HeartbeatBatch, HeartbeatReceiptDoc};
use drover_model::{
    ActionKind, ActionRecord, ActionState, AuditEntry, BackupStatus, Beat, CreateService, EngineKind, Event,
    EventSubject, Facts, Fault, Image, InstanceState, InstanceView, Plan, Role, ServiceState, ServiceView,
};
use std::sync::OnceLock;
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
        http::post_resume,
        http::service_checks,
        http::post_backup,
        http::post_verify_backup,
        http::show_instance,
        http::list_events,
        http::post_heartbeats,
        http::post_chaos,
        http::list_actions,
        http::list_audit,
        http::list_images,
        http::metrics_text,
        http::openapi_json,
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
    ),
    components(schemas(
        ErrorBody,
        Health,
        CreateService,
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
        EventSubject,
        AuditEntry,
        Image,
        BackupStatus,
    ))
)]
pub struct ApiDoc;

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as JSON, built once.
pub fn document_json() -> String {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| document().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))).clone()
}
