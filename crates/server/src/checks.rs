//! `GET /v1/services/{name}/checks`: backups, replication, security and
//! performance, each `ok` | `warn` | `crit` | `unknown` with evidence.
//! Backups come from what the engine recorded; replication from the
//! provider's view of the primary, or else from heartbeat facts; security
//! and performance only from a provider that runs real servers.

use drover_model::{Role, ServiceView, Timestamp};
use drover_providers::checks::{self, BackupPolicy, Check, FollowerFacts, ReplicationPlan, Status};
use drover_providers::ProviderChecks;
use serde::Serialize;

#[derive(Serialize, utoipa::ToSchema)]
pub struct ServiceChecks {
    #[schema(value_type = Object)]
    pub backups: BackupsCheck,
    #[schema(value_type = Object)]
    pub replication: Check,
    #[schema(value_type = Object)]
    pub security: Check,
    #[schema(value_type = Object)]
    pub performance: Check,
    /// The router behind the service's stable URL.
    #[schema(value_type = Object)]
    pub router: Check,
    /// Whether writes survive a restart (RDB snapshots, AOF): only for
    /// engines whose persistence can fail apart from backups (Redis).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub persistence: Option<Check>,
}

#[derive(Serialize)]
pub struct BackupsCheck {
    #[serde(flatten)]
    pub check: Check,
    pub last_backup_at: Option<Timestamp>,
    pub last_verified_restore_at: Option<Timestamp>,
    pub last_verify_ok: Option<bool>,
}

/// A service's checks as the API answers them: the provider's part asked
/// for, composed with the engine's view. A Kafka service's backups are its
/// storage's, and its replication counts the storage's follower too.
pub async fn of_service(ready: &crate::state::Ready, view: &ServiceView) -> ServiceChecks {
    let provider = provider_checks(ready, view).await;
    let mut checks = compose(view, provider, crate::actor::now());
    let Some(storage) = view.storage.clone() else { return checks };
    let lookup = storage.clone();
    let storage_view = ready.engine.query(move |e| e.service_view(&lookup)).await.ok().flatten();
    match storage_view {
        Some(storage_view) => {
            let provider = provider_checks(ready, &storage_view).await;
            let of_storage = compose(&storage_view, provider, crate::actor::now());
            with_storage(&mut checks, &storage, of_storage);
        }
        None => {
            checks.backups.check = Check {
                status: Status::Crit,
                summary: format!("the storage {storage} holding the records is gone"),
                evidence: serde_json::json!({ "storage": storage }),
            };
        }
    }
    checks
}

async fn provider_checks(ready: &crate::state::Ready, view: &ServiceView) -> ProviderChecks {
    match ready.provider_objects.get(&view.provider) {
        Some(p) => p.service_checks(&view.name).await,
        None => ProviderChecks::default(),
    }
}

/// A Kafka service's checks with its storage's: the backups are the
/// storage's (the brokers keep nothing), the replication the worse of the
/// brokers' and the storage's, each with its evidence.
fn with_storage(checks: &mut ServiceChecks, storage: &str, of_storage: ServiceChecks) {
    let prefixed = |c: &Check| format!("storage {storage}: {}", c.summary);
    checks.backups = BackupsCheck {
        check: Check {
            status: of_storage.backups.check.status,
            summary: prefixed(&of_storage.backups.check),
            evidence: serde_json::json!({ "storage": storage, "backups": of_storage.backups.check.evidence }),
        },
        ..of_storage.backups
    };
    let brokers = std::mem::replace(
        &mut checks.replication,
        Check { status: Status::Unknown, summary: String::new(), evidence: serde_json::Value::Null },
    );
    let status = worse(brokers.status, of_storage.replication.status);
    checks.replication = Check {
        status,
        summary: format!("{}; {}", brokers.summary, prefixed(&of_storage.replication)),
        evidence: serde_json::json!({
            "brokers": brokers.evidence,
            "storage": { "service": storage, "replication": of_storage.replication.evidence },
        }),
    };
}

/// The worse of two statuses: crit, then warn, then unknown, then ok.
fn worse(a: Status, b: Status) -> Status {
    let rank = |s: Status| match s {
        Status::Ok => 0,
        Status::Unknown => 1,
        Status::Warn => 2,
        Status::Crit => 3,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

pub fn compose(view: &ServiceView, provider: ProviderChecks, now: Timestamp) -> ServiceChecks {
    let b = &view.backups;
    let backups = BackupsCheck {
        check: checks::backups(
            b.last_backup_at,
            b.last_backup_error.as_deref(),
            b.last_verified_restore_at,
            b.last_verify_ok,
            now,
            &BackupPolicy::default(),
        ),
        last_backup_at: b.last_backup_at,
        last_verified_restore_at: b.last_verified_restore_at,
        last_verify_ok: b.last_verify_ok,
    };
    let plan = ReplicationPlan {
        followers: usize::from(view.plan.followers),
        synchronous: view.plan.sync,
        on_demand: view.read_slots.len(),
    };
    let from_facts;
    let followers = match &provider.followers {
        Some(f) => Some(f.as_slice()),
        None => {
            from_facts = followers_from_heartbeats(view);
            Some(from_facts.as_slice())
        }
    };
    let mut replication = if view.engine == drover_model::EngineKind::Kafka {
        brokers_check(view)
    } else {
        checks::replication(&plan, followers)
    };
    if let Some(obj) = replication.evidence.as_object_mut() {
        // Which of the followers are read replicas added on demand, by slot.
        let read_replicas: serde_json::Map<String, serde_json::Value> = view
            .instances
            .iter()
            .filter(|i| i.state.is_member())
            .filter_map(|i| i.read_slot.map(|slot| (i.id.to_string(), slot.into())))
            .collect();
        if !read_replicas.is_empty() {
            obj.insert("read_replicas".into(), read_replicas.into());
        }
    }
    if provider.followers.is_none() && view.engine != drover_model::EngineKind::Kafka {
        if let Some(obj) = replication.evidence.as_object_mut() {
            obj.insert("source".into(), "heartbeat facts of the followers".into());
        }
    }
    let unknown = |what: &str| Check {
        status: Status::Unknown,
        summary: format!("the {} provider runs no real server to inspect for {what}", view.provider),
        evidence: serde_json::json!({ "provider": view.provider }),
    };
    ServiceChecks {
        backups,
        replication,
        security: provider.security.unwrap_or_else(|| unknown("security")),
        performance: provider.performance.unwrap_or_else(|| unknown("performance")),
        router: provider.router.unwrap_or_else(|| unknown("its router")),
        persistence: provider.persistence,
    }
}

/// A Kafka service's replication: its brokers are peers (no follower
/// streams from another; the records' durability is the storage's), so
/// what counts is how many serve against the plan's `brokers`.
fn brokers_check(view: &ServiceView) -> Check {
    let planned = usize::from(view.plan.brokers.unwrap_or(drover_engine::policy::KAFKA_BROKERS));
    let serving: Vec<String> = view
        .instances
        .iter()
        .filter(|i| i.role == Role::Broker && i.state == drover_model::InstanceState::Available && !i.fenced)
        .map(|i| i.id.to_string())
        .collect();
    let (status, summary) = if serving.is_empty() {
        (Status::Crit, format!("no broker of the {planned} planned serves"))
    } else if serving.len() < planned {
        (
            Status::Warn,
            format!("{} of {planned} planned brokers serve: the missing ones are being replaced", serving.len()),
        )
    } else {
        (Status::Ok, format!("all {planned} planned brokers serve"))
    };
    Check {
        status,
        summary,
        evidence: serde_json::json!({ "plan": { "brokers": planned }, "serving_brokers": serving }),
    }
}

/// Followers as their own heartbeats describe them. Which one is the sync
/// standby is not reported by heartbeats: in a synchronous plan the most
/// advanced streaming follower is taken as it.
fn followers_from_heartbeats(view: &ServiceView) -> Vec<FollowerFacts> {
    let mut followers: Vec<FollowerFacts> = view
        .instances
        .iter()
        .filter(|i| i.role == Role::Follower && i.state.is_member())
        .map(|i| FollowerFacts {
            name: i.id.to_string(),
            streaming: i.state == drover_model::InstanceState::Available && i.facts.upstream_streaming == Some(true),
            lag_bytes: i.facts.replication_lag_bytes,
            replay_lag: None,
            sync_state: "async".into(),
        })
        .collect();
    if view.plan.sync {
        // A read replica added on demand is asynchronous: never the sync one.
        let read_replicas: Vec<String> =
            view.instances.iter().filter(|i| i.read_slot.is_some()).map(|i| i.id.to_string()).collect();
        if let Some(f) = followers
            .iter_mut()
            .filter(|f| f.streaming && !read_replicas.contains(&f.name))
            .min_by_key(|f| f.lag_bytes.unwrap_or(u64::MAX))
        {
            f.sync_state = "sync".into();
        }
    }
    followers
}
