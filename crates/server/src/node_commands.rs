//! Engine commands one node of a split fleet sends the holder of a
//! service's shard (issue 16): a runbook runs on shard 0's holder, but a
//! step that names a service (fail it over, take a backup, …) must be
//! carried out by the engine that holds the service, as the operator who
//! approved it. `POST /v1/cluster/commands` takes such a command from
//! another node only: the request is sealed with the key every node of
//! this control plane shares (checked against the store at start), binds
//! the body's digest, is fresh for [`FRESH_FOR`] seconds and is taken at
//! most once (a nonce), so a copy cannot be replayed.

use crate::error::{ApiError, Json};
use crate::state::{AppState, Ready};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use drover_engine::{Command, Input, Reply};
use drover_model::ServiceView;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The header that carries the seal.
pub const SEAL: &str = "x-drover-node-seal";
const CONTEXT: &str = "drover node command v1";
/// How long a sealed command may take to arrive.
pub const FRESH_FOR: u64 = 30;
const TIMEOUT: Duration = Duration::from_secs(30);

/// What a node asks a shard's holder to do.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeCommand {
    /// Whose command it is (the audit trail's actor).
    pub actor: String,
    pub role: Option<String>,
    /// The actor's team, when its token is limited to one: a service of
    /// another team is answered 404, as to the actor itself.
    pub team: Option<String>,
    /// Only check that the service exists and the actor may see it.
    #[serde(default)]
    pub check_only: bool,
    /// The engine command (it names one service).
    #[schema(value_type = Object)]
    pub command: Command,
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn digest(body: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(body))
}

/// The seal for `body`, made now.
pub fn seal(key: &drover_secrets::SecretKey, body: &[u8]) -> String {
    let mut nonce = [0u8; 16];
    // Without randomness the seal is still bound to its body and time.
    let _ = getrandom::fill(&mut nonce);
    key.seal_str(CONTEXT, &format!("{} {} {}", unix_secs(), hex::encode(nonce), digest(body)))
}

/// Nonces taken within the last [`FRESH_FOR`] seconds (by when).
fn taken() -> &'static Mutex<HashMap<String, u64>> {
    static TAKEN: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
    TAKEN.get_or_init(Default::default)
}

/// Whether `headers` carry a fresh seal of `body` made with `key`, not
/// taken before.
fn admitted(key: &drover_secrets::SecretKey, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
    let sealed = headers.get(SEAL).and_then(|v| v.to_str().ok()).ok_or("no seal")?;
    let text = key.open_str(CONTEXT, sealed).map_err(|_| "a seal not made with this control plane's key")?;
    let mut parts = text.split(' ');
    let (Some(at), Some(nonce), Some(sum), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("a malformed seal");
    };
    let at: u64 = at.parse().map_err(|_| "a malformed seal")?;
    let now = unix_secs();
    if now.abs_diff(at) > FRESH_FOR {
        return Err("a stale seal");
    }
    if sum != digest(body) {
        return Err("a seal of another body");
    }
    let mut seen = taken().lock().unwrap_or_else(|p| p.into_inner());
    seen.retain(|_, when| now.abs_diff(*when) <= FRESH_FOR * 2);
    if seen.insert(nonce.to_string(), at).is_some() {
        return Err("a seal already used");
    }
    Ok(())
}

/// A command from another node of this control plane, for a service this
/// node holds. Not for clients: only a request sealed with the nodes'
/// shared key is taken (403 otherwise).
#[utoipa::path(post, path = "/v1/cluster/commands", tag = "cluster",
    request_body = NodeCommand,
    responses((status = 200, description = "Carried out (or, `check_only`, the service is there)"),
        (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn take(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    if let Err(why) = admitted(&state.key, &headers, &body) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("not a command of a node of this control plane: {why}"),
        ));
    }
    let asked: NodeCommand =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("not a node's command: {e}")))?;
    let ready = state.ready()?;
    let Some(name) = service_of(&asked.command).map(str::to_string) else {
        return Err(ApiError::bad_request("a node's command names one service"));
    };
    let map = ready.node.shards.read().unwrap_or_else(|p| p.into_inner()).clone();
    let shard = drover_model::Slot::of_name(&name).shard(map.shards.max(1));
    if !map.whole() && !map.held.contains(&shard) {
        return Err(ApiError::unavailable(format!(
            "this node does not hold shard {shard} (service {name:?}) any more; retry in a moment"
        )));
    }
    let who = Who { actor: asked.actor, role: asked.role, team: asked.team };
    // A service created here has nothing to look at yet: its source was
    // checked by the node that planned it, for the same actor.
    if !matches!(asked.command, Command::CreateRestored { .. }) {
        let (lookup, team) = (name.clone(), who.team.clone());
        ready
            .engine
            .query(move |e| e.service_view(&lookup))
            .await?
            .filter(|v| team.as_ref().is_none_or(|t| *t == v.team))
            .ok_or_else(|| ApiError::not_found(format!("no service named {name:?}")))?;
    }
    if asked.check_only {
        return Ok(Json(serde_json::json!({"service": name})));
    }
    let view = carry_out_here(ready, &who, asked.command).await?;
    Ok(Json(serde_json::json!({"service": name, "view": view})))
}

/// Who a command is carried out for.
#[derive(Clone, Debug)]
pub struct Who {
    pub actor: String,
    pub role: Option<String>,
    pub team: Option<String>,
}

impl Who {
    /// As `Identity::command` names them.
    pub fn of(identity: &crate::auth::Identity) -> Who {
        Who {
            actor: identity.name.clone(),
            role: Some(identity.role.as_str().to_string()),
            team: identity.team.clone(),
        }
    }

    fn input(&self, command: Command) -> Input {
        Input::Command { actor: self.actor.clone(), role: self.role.clone(), command }
    }
}

/// Carries `command` out on this node's engine, which holds its service. A
/// fork whose new name is in a shard another node holds is planned here
/// (the source is here) and created by that node (`Command::CreateRestored`).
async fn carry_out_here(ready: &Ready, who: &Who, command: Command) -> Result<Option<ServiceView>, ApiError> {
    if let Command::ForkService { source, name, at } = &command {
        if let Some(remote) = across(ready, name) {
            let (source, name, at) = (source.clone(), name.clone(), *at);
            let now = crate::runtime::now();
            let (request, from) =
                ready.engine.query(move |e| e.fork_plan(&source, name, at, now)).await?.map_err(ApiError::from)?;
            return send(ready, who, Command::CreateRestored { request: Box::new(request), from }, false, remote).await;
        }
    }
    match ready.engine.call(who.input(command)).await? {
        Reply::Service(view) => Ok(Some(*view)),
        _ => Ok(None),
    }
}

/// The shard of service `name` and its holder, when the fleet is split and
/// another node holds it.
fn across(ready: &Ready, name: &str) -> Option<(u16, Option<crate::lease::Holder>)> {
    let map = ready.node.shards.read().unwrap_or_else(|p| p.into_inner());
    if map.whole() {
        return None;
    }
    let shard = drover_model::Slot::of_name(name).shard(map.shards);
    (!map.held.contains(&shard)).then(|| (shard, map.holders.get(&shard).cloned()))
}

/// Whether service `name` is in a shard another node holds.
pub fn is_across(ready: &Ready, name: &str) -> bool {
    across(ready, name).is_some()
}

/// A restored service (a fork, an archive's restore) planned here and
/// created where its name's shard is: this node's engine, or its holder's.
pub async fn create_restored(
    ready: &Ready,
    identity: &crate::auth::Identity,
    request: drover_model::CreateService,
    from: drover_model::RestoreFrom,
) -> Result<Option<ServiceView>, ApiError> {
    let who = Who::of(identity);
    let command = Command::CreateRestored { request: Box::new(request), from };
    match service_of(&command).and_then(|name| across(ready, name)) {
        Some(remote) => send(ready, &who, command, false, remote).await,
        None => carry_out_here(ready, &who, command).await,
    }
}

/// The service a command acts on (a restored service: the new one).
pub fn service_of(c: &Command) -> Option<&str> {
    match c {
        Command::Failover { name }
        | Command::Switchover { name }
        | Command::RebuildFollower { name, .. }
        | Command::TakeBackup { name }
        | Command::VerifyBackup { name }
        | Command::ResumeService { name }
        | Command::ForkService { source: name, .. } => Some(name),
        Command::CreateRestored { request, .. } => Some(&request.name),
        _ => None,
    }
}

/// Runs `command` as `who` on the engine that holds its service: this
/// node's own when it holds it (or the fleet is not split), else its
/// holder's through `POST /v1/cluster/commands`. `check_only`: only
/// whether the service is there for `who` (404 if not). The service's
/// view when the command answers one.
pub async fn run_as(
    ready: &Ready,
    identity: &crate::auth::Identity,
    command: Command,
    check_only: bool,
) -> Result<Option<ServiceView>, ApiError> {
    let who = Who::of(identity);
    let remote = service_of(&command).and_then(|name| across(ready, name));
    let Some(remote) = remote else {
        if check_only {
            if let Some(name) = service_of(&command) {
                ready.visible_service(identity, name).await?;
            }
            return Ok(None);
        }
        return carry_out_here(ready, &who, command).await;
    };
    send(ready, &who, command, check_only, remote).await
}

/// Sends `command` to the holder of its service's shard.
async fn send(
    ready: &Ready,
    who: &Who,
    command: Command,
    check_only: bool,
    (shard, holder): (u16, Option<crate::lease::Holder>),
) -> Result<Option<ServiceView>, ApiError> {
    let name = service_of(&command).unwrap_or_default().to_string();
    let holder = holder.ok_or_else(|| {
        ApiError::unavailable(format!(
            "no node holds shard {shard} (service {name:?}) at the moment; retry in a moment"
        ))
    })?;
    let asked =
        NodeCommand { actor: who.actor.clone(), role: who.role.clone(), team: who.team.clone(), check_only, command };
    let body = serde_json::to_vec(&asked).map_err(|e| ApiError::internal(format!("cannot encode a command: {e}")))?;
    let url = format!("{}/v1/cluster/commands", holder.url.trim_end_matches('/'));
    let answer = crate::forward::node_client()
        .post(&url)
        .timeout(TIMEOUT)
        .header(SEAL, seal(&ready.node.key, &body))
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| {
            ApiError::unavailable(format!(
                "shard {shard}'s holder {} ({}) did not answer for {name:?}: {e}; retry in a moment",
                holder.node, holder.url
            ))
        })?;
    let status = answer.status();
    let text = answer.text().await.unwrap_or_default();
    if status.is_success() {
        let view = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|mut v| serde_json::from_value::<ServiceView>(v["view"].take()).ok());
        return Ok(view);
    }
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or(text);
    Err(ApiError::new(
        StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
        format!("{message} (on {}, which holds {name:?})", holder.node),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(seal: &str) -> HeaderMap {
        HeaderMap::from_iter([(axum::http::HeaderName::from_static(SEAL), HeaderValue::from_str(seal).unwrap())])
    }

    #[test]
    fn a_command_is_taken_once_sealed_with_the_shared_key_for_its_own_body_and_fresh() {
        let key = drover_secrets::SecretKey::generate();
        let body = br#"{"actor":"ops"}"#;
        let sealed = seal(&key, body);
        assert_eq!(admitted(&key, &headers(&sealed), body), Ok(()));
        assert_eq!(admitted(&key, &headers(&sealed), body), Err("a seal already used"), "a replay");
        let other = drover_secrets::SecretKey::generate();
        assert!(admitted(&other, &headers(&seal(&key, body)), body).is_err(), "another control plane's key");
        assert_eq!(admitted(&key, &headers(&seal(&key, b"{}")), body), Err("a seal of another body"));
        let old = key.seal_str(CONTEXT, &format!("{} abc {}", unix_secs() - FRESH_FOR - 5, digest(body)));
        assert_eq!(admitted(&key, &headers(&old), body), Err("a stale seal"));
        for garbage in ["", "sealed:", "x y z"] {
            assert!(admitted(&key, &headers(garbage), body).is_err(), "{garbage:?}");
        }
        assert_eq!(admitted(&key, &HeaderMap::new(), body), Err("no seal"));
        let malformed = key.seal_str(CONTEXT, "12");
        assert_eq!(admitted(&key, &headers(&malformed), body), Err("a malformed seal"));
    }
}
