//! Commands deferred while the fleet's holder is down (issue 16: "commands
//! for a shard whose holder just died are accepted (202) and carried out
//! once the shard is taken over").
//!
//! A standby forwards every request to the holder (`forward`). When the
//! holder cannot be reached at all (the connection is refused or times
//! out: the request was never sent, so it cannot have been carried out),
//! a command is kept instead of refused:
//!
//! - only commands: `POST`/`PUT`/`DELETE` of `/v1/…` routes for operators
//!   and admins (not tokens: an identity is not changed by a queue; not
//!   heartbeats or alerts: their senders retry and move between nodes
//!   themselves); reads and the rest stay 503, the client retries;
//! - the standby checks the caller first, against the tokens the nodes
//!   share: a missing or bad token is 401, a role the route does not allow
//!   403, a body that is not JSON 415 — at once, nothing kept;
//! - it stores the request (sealed with the key the nodes share: it holds
//!   the caller's token) in the store's `deferred_commands` queue and
//!   answers **202** with the command (`Location: /v1/commands/{id}`).
//!
//! The node that next holds the lease carries the queue out, oldest first,
//! through its own API router as the caller who sent it (the permission
//! check, the audit trail and every handler as for a request of its own),
//! and records the answer. The store's fencing makes each command run at
//! most once: one a stopped holder left running is `interrupted` (its
//! outcome unknown) and one nobody took within [`EXPIRE_AFTER`] `expired`
//! (`drover_store::deferred`). `GET /v1/commands/{id}` tells the sender
//! (or an admin) where it stands.

use crate::auth::permissions::{self, Permission, Rule};
use crate::auth::{Caller, Refusal};
use crate::error::blocking_task as blocking;
use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, request::Parts, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use drover_model::{Timestamp, TokenRole};
use drover_store::deferred::{DeferredCommand, NewDeferred};
use drover_store::{PgStore, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A command nobody took over within this long is not carried out.
pub const EXPIRE_AFTER: Duration = Duration::from_secs(300);

/// How often the holder looks for commands deferred by standbys.
const POLL: Duration = Duration::from_millis(250);

/// The largest answer kept for the sender (a bigger one is cut).
const MAX_ANSWER_BYTES: usize = 1 << 20;

const SEAL_CONTEXT: &str = "drover deferred command v1";

/// On a 202 of a kept command: its id (the CLI then waits for its outcome).
pub const DEFERRED_HEADER: &str = "x-drover-deferred";

/// The request headers kept and replayed: who and what, nothing of the
/// connection.
const KEPT_HEADERS: [HeaderName; 4] = [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT, header::USER_AGENT];

/// The shared store, while this node is a standby too (set once the store
/// is open, before the lease is held).
pub type Desk = Arc<OnceLock<Arc<PgStore>>>;

/// The permission table's templates, matched like axum's router does.
fn routes() -> &'static HashMap<&'static str, matchit::Router<&'static Rule>> {
    static ROUTES: OnceLock<HashMap<&'static str, matchit::Router<&'static Rule>>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let mut by_method: HashMap<&'static str, matchit::Router<&'static Rule>> = HashMap::new();
        for rule in permissions::TABLE {
            // The table's templates are unique (its test), so insert cannot conflict.
            let _ = by_method.entry(rule.method).or_default().insert(rule.path, rule);
        }
        by_method
    })
}

/// The rule of a request a standby may keep for the next holder.
pub(crate) fn deferrable(method: &Method, path: &str) -> Option<&'static Rule> {
    if !matches!(*method, Method::POST | Method::PUT | Method::DELETE) || !path.starts_with("/v1/") {
        return None;
    }
    let rule = *routes().get(method.as_str())?.at(path).ok()?.value;
    let command = matches!(rule.permission, Permission::Operate | Permission::Administer);
    (command && !rule.path.starts_with("/v1/tokens")).then_some(rule)
}

/// What is sealed in the store: enough to make the request again.
#[derive(Serialize, Deserialize)]
struct Kept {
    headers: Vec<(String, String)>,
    body: String,
    /// The caller's address (the holder's audit names it).
    client: Option<std::net::IpAddr>,
}

/// A deferred command as its sender sees it.
#[derive(Serialize, utoipa::ToSchema, Debug)]
pub struct CommandView {
    pub id: String,
    /// `pending` (waiting for a node to take the fleet over), `running`,
    /// `done` (`status` and `answer` are the API's answer), `interrupted`
    /// (the node carrying it out stopped; it may or may not have taken
    /// effect, and is never run twice) or `expired` (nobody took the fleet
    /// over in time; not carried out).
    pub state: String,
    pub method: String,
    pub path: String,
    #[schema(value_type = String)]
    pub received_at: Timestamp,
    /// The node that accepted it.
    pub received_by: String,
    /// The node that carried it out, and its lease's generation.
    pub carried_out_by: Option<String>,
    pub generation: Option<i64>,
    #[schema(value_type = Option<String>)]
    pub finished_at: Option<Timestamp>,
    /// The HTTP status the API answered.
    pub status: Option<u16>,
    /// The API's answer (JSON, as it would have been answered).
    #[schema(value_type = Option<Object>)]
    pub answer: Option<serde_json::Value>,
    pub message: String,
}

fn message(state: &str, status: Option<u16>) -> String {
    match state {
        "pending" => {
            "accepted: the fleet's holder does not answer; carried out once another node takes the fleet over \
                      (within the lease's TTL)"
                .into()
        }
        "running" => "being carried out".into(),
        "done" => format!("carried out: the API answered {}", status.unwrap_or_default()),
        "interrupted" => "the node carrying it out stopped: it may or may not have taken effect; check and send it \
                          again if needed"
            .into(),
        "expired" => {
            format!("not carried out: no node took the fleet over within {} s of its receipt", EXPIRE_AFTER.as_secs())
        }
        other => other.to_string(),
    }
}

fn view(command: DeferredCommand, key: &drover_secrets::SecretKey) -> CommandView {
    let status = command.status.and_then(|s| u16::try_from(s).ok());
    let answer = command.answer.as_deref().map(|sealed| match key.open_str(SEAL_CONTEXT, sealed) {
        Ok(text) => serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        Err(e) => serde_json::Value::String(format!("(the answer cannot be opened with this node's key: {e})")),
    });
    CommandView {
        message: message(&command.state, status),
        id: command.id,
        state: command.state,
        method: command.method,
        path: command.path,
        received_at: Timestamp(command.received_at),
        received_by: command.received_by,
        carried_out_by: command.taken_by,
        generation: command.generation,
        finished_at: command.finished_at.map(Timestamp),
        status,
        answer,
    }
}

/// At a standby whose holder could not be reached: the command kept and
/// 202, a refusal of the caller, or `None` when the request is not one
/// to keep (the caller answers 503).
pub(crate) async fn accept(state: &AppState, parts: &Parts, body: &Bytes, holder: &str) -> Option<Response> {
    let path = parts.uri.path_and_query().map_or(parts.uri.path(), |p| p.as_str()).to_string();
    let rule = deferrable(&parts.method, parts.uri.path())?;
    let store = Arc::clone(state.desk.get()?);
    Some(match keep(state, store, rule, parts, body, path, holder).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    })
}

async fn keep(
    state: &AppState,
    store: Arc<PgStore>,
    rule: &Rule,
    parts: &Parts,
    body: &Bytes,
    path: String,
    holder: &str,
) -> Result<Response, ApiError> {
    let command = format!("{} {}", rule.method, rule.path);
    let token = crate::auth::bearer(&parts.headers).map(str::to_string);
    // The caller's token as the store has it now (a standby keeps no
    // copy): its one row, not every token.
    let tokens_store = Arc::clone(&store);
    let identity = blocking(move || -> Result<Result<crate::auth::Identity, Refusal>, String> {
        let token = match token {
            Ok(token) => token,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let tokens = drover_store::tokens::TokenStore::postgres(tokens_store);
        crate::auth::Tokens::authenticate_in(&tokens, &token, crate::actor::now()).map_err(|e| e.to_string())
    })
    .await?
    .map_err(|e| ApiError::unavailable(format!("cannot read the API tokens from the store: {e}; retry in a moment")))?
    .map_err(crate::auth::Refused::from)
    .and_then(|identity| crate::auth::admit(rule, &command, identity, &parts.headers));
    let client = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let identity = match identity {
        Ok(identity) => identity,
        Err(refused) => {
            // Audited here, in the shared store, as the holder would.
            let detail = serde_json::json!({
                "status": refused.status.as_u16(),
                "client": client.map(|i| i.to_string()),
                "received_by": &*state.node,
            });
            let store: Arc<dyn drover_store::Store> = store;
            return Err(crate::auth::refuse_and_record(
                &store,
                &state.failures,
                client,
                refused,
                command,
                path,
                detail,
            )
            .await);
        }
    };
    if !body.is_empty() && !crate::auth::is_json(&parts.headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected a request body with `Content-Type: application/json`",
        ));
    }
    let body = String::from_utf8(body.to_vec()).map_err(|_| ApiError::bad_request("the request body is not UTF-8"))?;
    let headers = KEPT_HEADERS
        .iter()
        .filter_map(|name| Some((name.as_str().to_string(), parts.headers.get(name)?.to_str().ok()?.to_string())))
        .collect();
    let kept = serde_json::to_string(&Kept { headers, body, client }).map_err(|e| ApiError::internal(e.to_string()))?;
    let new = NewDeferred {
        id: format!("cmd-{}", uuid::Uuid::now_v7().simple()),
        received_by: state.node.to_string(),
        token_id: identity.token_id.clone(),
        method: parts.method.to_string(),
        path,
        request: state.key.seal_str(SEAL_CONTEXT, &kept),
    };
    let stored = blocking(move || store.defer_command(new))
        .await?
        .map_err(|e| ApiError::unavailable(format!("cannot keep the command in the store: {e}; retry in a moment")))?;
    tracing::warn!(
        command = %stored.id, %holder, request = %format!("{} {}", stored.method, stored.path), caller = %identity.name,
        "no node serves the fleet at this moment: command kept for the node that takes it over"
    );
    let location = format!("/v1/commands/{}", stored.id);
    let id = stored.id.clone();
    let mut response = (StatusCode::ACCEPTED, Json(view(stored, &state.key))).into_response();
    if let (Ok(location), Ok(id)) = (HeaderValue::from_str(&location), HeaderValue::from_str(&id)) {
        response.headers_mut().insert(header::LOCATION, location);
        response.headers_mut().insert(DEFERRED_HEADER, id);
    }
    Ok(response)
}

/// At the holder: carries out the commands standbys kept, oldest first,
/// until `stop` (or the lease is lost: the node then stops itself).
pub(crate) fn spawn_carry_out(
    state: AppState,
    store: Arc<PgStore>,
    zero: crate::held::ShardZero,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let router = crate::routes::router(state.clone());
    tokio::spawn(async move {
        loop {
            if *stop.borrow() {
                return;
            }
            if !zero.here() {
                // Shard 0's holder carries them out (each to its shard's
                // holder, through the router's forwarding).
                tokio::select! {
                    _ = tokio::time::sleep(POLL * 8) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let taking = Arc::clone(&store);
            let taken = match blocking(move || taking.take_deferred_command(EXPIRE_AFTER)).await {
                Ok(taken) => taken,
                Err(e) => Err(StoreError::Postgres { operation: "taking a deferred command", detail: e.message }),
            };
            let wait = match taken {
                Ok(Some(command)) => {
                    carry_out(&state, &store, router.clone(), command).await;
                    continue;
                }
                Ok(None) => POLL,
                // One holder of the fleet: it lost it, and a standby takes
                // this up when it holds the fleet. A split fleet: shard 0
                // moved meanwhile; taken up again if it comes back.
                Err(StoreError::LeaseLost { .. }) if !zero.split() => return,
                Err(StoreError::LeaseLost { .. }) => POLL * 8,
                Err(error) => {
                    tracing::warn!(%error, "cannot take the commands kept by standbys; trying again");
                    POLL * 8
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    });
}

async fn carry_out(state: &AppState, store: &Arc<PgStore>, router: axum::Router, command: DeferredCommand) {
    let (status, answer) = match replay(state, router, &command).await {
        Ok(answered) => answered,
        Err(why) => {
            let error = serde_json::json!({ "error": why }).to_string();
            (StatusCode::INTERNAL_SERVER_ERROR, error)
        }
    };
    tracing::info!(
        command = %command.id, received_by = %command.received_by, request = %format!("{} {}", command.method, command.path),
        status = status.as_u16(), "carried out a command kept by a standby"
    );
    let sealed = state.key.seal_str(SEAL_CONTEXT, &answer);
    let (finishing, id) = (Arc::clone(store), command.id.clone());
    match blocking(move || finishing.finish_deferred_command(&id, status.as_u16(), &sealed)).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => tracing::warn!(command = %command.id, "a carried-out command was no longer this node's"),
        Ok(Err(error)) => {
            tracing::error!(command = %command.id, %error, "cannot record a carried-out command's answer")
        }
        Err(error) => {
            tracing::error!(command = %command.id, error = %error.message, "cannot record a command's answer")
        }
    }
}

/// The kept request through this node's router: (status, answer body).
async fn replay(
    state: &AppState,
    router: axum::Router,
    command: &DeferredCommand,
) -> Result<(StatusCode, String), String> {
    use tower::ServiceExt;
    let kept = state
        .key
        .open_str(SEAL_CONTEXT, &command.request)
        .map_err(|e| format!("the kept request cannot be opened with this node's key: {e}"))?;
    let kept: Kept = serde_json::from_str(&kept).map_err(|e| format!("the kept request is not readable: {e}"))?;
    let method = Method::from_bytes(command.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut request = axum::http::Request::builder().method(method).uri(&command.path);
    for (name, value) in &kept.headers {
        request = request.header(name, value);
    }
    if let Some(ip) = kept.client {
        request = request.header(crate::forward::FORWARDED_FOR, crate::forward::vouch(&state.key, ip));
    }
    let request = request.body(axum::body::Body::from(kept.body)).map_err(|e| e.to_string())?;
    let Ok(response) = router.oneshot(request).await;
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES)
        .await
        .map_err(|e| format!("the answer could not be read: {e}"))?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Where a command kept by a standby stands: for the token that sent it
/// and for admins (404 for anyone else: nothing learned).
#[utoipa::path(get, path = "/v1/commands/{id}", tag = "cluster",
    params(("id" = String, Path, description = "The id a standby answered 202 with")),
    responses((status = 200, body = CommandView), (status = 404, body = crate::error::ErrorBody),
        (status = 503, body = crate::error::ErrorBody)))]
pub(crate) async fn show_command(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<CommandView>, ApiError> {
    let ready = state.ready()?;
    let missing = || ApiError::not_found(format!("no command {id:?} was kept by a standby"));
    let Some((store, _)) = ready.node.shared.clone() else { return Err(missing()) };
    let lookup = id.clone();
    let found = blocking(move || store.deferred_command(&lookup))
        .await?
        .map_err(|e| ApiError::unavailable(format!("cannot read the command from the store: {e}")))?;
    match found {
        Some(command) if command.token_id == caller.token_id || caller.role == TokenRole::Admin => {
            Ok(Json(view(command, &state.key)))
        }
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_commands_of_operators_and_admins_are_kept() {
        let kept = |method: Method, path: &str| deferrable(&method, path).map(|r| r.path);
        assert_eq!(kept(Method::POST, "/v1/services"), Some("/v1/services"));
        assert_eq!(kept(Method::DELETE, "/v1/services/db1"), Some("/v1/services/{name}"));
        assert_eq!(kept(Method::POST, "/v1/services/db1/switchover"), Some("/v1/services/{name}/switchover"));
        assert_eq!(kept(Method::PUT, "/v1/services/db1/labels"), Some("/v1/services/{name}/labels"));
        assert_eq!(kept(Method::POST, "/v1/chaos"), Some("/v1/chaos"));
        assert_eq!(kept(Method::GET, "/v1/services"), None, "reads are not kept");
        assert_eq!(kept(Method::POST, "/v1/heartbeats"), None, "agents retry themselves");
        assert_eq!(kept(Method::POST, "/v1/integrations/alertmanager"), None);
        assert_eq!(kept(Method::POST, "/v1/tokens"), None, "identities are not queued");
        assert_eq!(kept(Method::DELETE, "/v1/tokens/t1"), None);
        assert_eq!(kept(Method::POST, "/ui/login"), None);
        assert_eq!(kept(Method::POST, "/v1/nothing-here"), None);
        assert_eq!(kept(Method::PATCH, "/v1/services/db1"), None);
    }
}
