//! A standby node answers by forwarding (issue 16: "every node forwards to
//! the holder, it does not redirect"): while another node holds the
//! fleet's lease, every request but `/healthz` goes to the holder's
//! published URL as it came (method, path, query, headers with the
//! caller's token, body) and its answer comes back as it is. Tokens live in
//! the shared store, so the holder knows the caller's.
//!
//! A request forwarded once is never forwarded again (a standby that finds
//! the holder it was told about is itself not ready answers 503), and a
//! holder that does not answer is a 503 naming it: the client retries, by
//! which time a standby may have taken over — unless it is a command and
//! the holder could not be reached at all: then it is kept for the next
//! holder and answered 202 (`deferred`). Bodies are buffered (at most
//! [`crate::routes::MAX_BODY_BYTES`]); a streamed answer arrives whole.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

/// Set on a forwarded request: the node that forwarded it.
pub const FORWARDED_BY: &str = "x-drover-forwarded-by";

/// Set on a request a node sends every holder for its own part of a list
/// (`shard_route::Rule::FanOut`): the node answers from its own engine and
/// sends it nowhere. A client that sets it gets one node's part, and only
/// what its token lets it see there.
pub const PART: &str = "x-drover-part";

/// Set on a forwarded request: the caller's address and when the standby
/// saw it, sealed with the key every node shares. The holder's failure
/// limiter and audit trail use it instead of the standby's own address
/// (else one caller's refusals through a standby would slow down every
/// caller of that standby). Anyone without the key cannot make one; a
/// copy is honoured for [`VOUCH_FOR`] only.
pub const FORWARDED_FOR: &str = "x-drover-forwarded-for";
const VOUCH_CONTEXT: &str = "drover forwarded-for v1";
const VOUCH_FOR: u64 = 60;

fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The sealed header a standby adds for the caller at `ip`.
pub(crate) fn vouch(key: &drover_secrets::SecretKey, ip: std::net::IpAddr) -> String {
    key.seal_str(VOUCH_CONTEXT, &format!("{ip} {}", unix_secs()))
}

/// The caller's address a node of this control plane vouched for, if the
/// request carries a fresh one sealed with the shared key.
pub(crate) fn vouched_ip(key: &drover_secrets::SecretKey, headers: &axum::http::HeaderMap) -> Option<std::net::IpAddr> {
    let sealed = headers.get(FORWARDED_FOR)?.to_str().ok()?;
    let text = key.open_str(VOUCH_CONTEXT, sealed).ok()?;
    let (ip, at) = text.split_once(' ')?;
    let at: u64 = at.parse().ok()?;
    (unix_secs().abs_diff(at) <= VOUCH_FOR).then_some(())?;
    ip.parse().ok()
}

/// How long the holder may take to answer a forwarded request.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);

/// Hop-by-hop headers, and the ones the client library sets itself.
fn skipped(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host" | "connection" | "keep-alive" | "transfer-encoding" | "te" | "trailer" | "upgrade" | "content-length"
    ) || name == header::PROXY_AUTHORIZATION
}

/// The client nodes ask each other (and themselves) with.
pub(crate) fn node_client() -> &'static reqwest::Client {
    client()
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        drover_agent::tls::builder()
            .timeout(FORWARD_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default()
    })
}

pub async fn to_the_holder(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    if state.ready.get().is_some() {
        let whole = state.shards.read().unwrap_or_else(|p| p.into_inner()).whole();
        if whole {
            return next.run(request).await;
        }
        return to_the_shard_s_holder(&state, request, next).await;
    }
    let holder = state.standby.read().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(holder) = holder else {
        if !state.taking_over.load(std::sync::atomic::Ordering::SeqCst) {
            return next.run(request).await;
        }
        // This node holds the lease and is loading the fleet: a command is
        // kept for it, as for a holder that died, and carried out once it
        // is ready; anything else is answered "starting" (503).
        let (parts, body) = request.into_parts();
        let body = match buffered(body).await {
            Ok(body) => body,
            Err(refused) => return refused,
        };
        if let Some(kept) = crate::deferred::accept(&state, &parts, &body, &state.node).await {
            return kept;
        }
        return next.run(Request::from_parts(parts, axum::body::Body::from(body))).await;
    };
    if request.headers().contains_key(FORWARDED_BY) {
        return ApiError::unavailable(format!(
            "forwarded to a node that does not hold the fleet either (it sees {} as the holder); retry in a moment",
            holder.node
        ))
        .into_response();
    }
    let (parts, body) = request.into_parts();
    let body = match buffered(body).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    forward_or_keep(&state, &holder, &parts, body, "this node is a standby and the fleet's holder").await
}

/// A ready node that holds only some of the shards: a request for what it
/// holds is answered here, one for another shard is forwarded to that
/// shard's holder (or kept for the next one when it has none or cannot be
/// reached, as a standby keeps it), and what needs several holders at once
/// is refused for now (503, naming why).
async fn to_the_shard_s_holder(state: &AppState, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let body = match buffered(body).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    if parts.headers.contains_key(PART) {
        return next.run(Request::from_parts(parts, axum::body::Body::from(body))).await;
    }
    let map = state.shards.read().unwrap_or_else(|p| p.into_inner()).clone();
    let path = parts.uri.path_and_query().map_or(parts.uri.path(), |p| p.as_str());
    let target = match crate::shard_route::target(parts.method.as_str(), path, &body, map.shards) {
        Ok(target) => target,
        // No such route: the router answers 404 (405) as usual.
        Err(_) if !crate::shard_route::is_route(parts.method.as_str(), parts.uri.path()) => {
            return next.run(Request::from_parts(parts, axum::body::Body::from(body))).await
        }
        Err(why) => return ApiError::bad_request(why).into_response(),
    };
    let shard =
        match crate::shard_route::decide(target, map.shards, |s| map.held.contains(&s)) {
            crate::shard_route::Decision::Here => {
                return next.run(Request::from_parts(parts, axum::body::Body::from(body))).await
            }
            crate::shard_route::Decision::Forward(shard) => shard,
            crate::shard_route::Decision::Every if parts.method == axum::http::Method::GET => {
                return fan_out(state, &map, parts, body, next).await
            }
            crate::shard_route::Decision::Split(split) => {
                return heartbeat_parts(state, &map, parts, body, split, next).await
            }
            crate::shard_route::Decision::Actions => return agent_actions(state, &map, parts, body, next).await,
            crate::shard_route::Decision::Every => return ApiError::unavailable(
                "this request needs every node holding a part of the fleet, which is not served yet while the fleet \
                 is split between nodes",
            )
            .into_response(),
        };
    let Some(holder) = map.holders.get(&shard).cloned() else {
        // Its holder just died: a command is kept for the next one.
        let lost = format!("shard {shard}'s last holder");
        if let Some(kept) = crate::deferred::accept(state, &parts, &body, &lost).await {
            return kept;
        }
        return ApiError::unavailable(format!("no node holds shard {shard} at the moment; retry in a moment"))
            .into_response();
    };
    if parts.headers.contains_key(FORWARDED_BY) {
        return ApiError::unavailable(format!(
            "forwarded to a node that does not hold shard {shard} (it sees {} as its holder); retry in a moment",
            holder.node
        ))
        .into_response();
    }
    forward_or_keep(state, &holder, &parts, body, &format!("shard {shard}'s holder")).await
}

/// An agent's long poll for its host's actions on a fleet split between
/// nodes: every holder's queue for the host (this node's through its own
/// router), each asked with the agent's cursor (each answers from where it
/// says the agent left off on it, `agents::Cursor`). Answered as soon as
/// one part has something, or once every part has waited out its time; the
/// parts' cursors merged. A holder that cannot be reached, or answers 5xx,
/// is left out (its shards' next holder queues their running actions
/// again); a 4xx (the caller's token or host) is answered as it came.
async fn agent_actions(
    state: &AppState,
    map: &crate::lease::ShardMap,
    mut parts: axum::http::request::Parts,
    body: axum::body::Bytes,
    next: Next,
) -> Response {
    use crate::agents::{ActionBatch, Cursor};
    parts.headers.insert(HeaderName::from_static(PART), axum::http::HeaderValue::from_static("1"));
    let after = parts.uri.query().unwrap_or("").split('&').find_map(|pair| pair.strip_prefix("after="));
    let read = after.map(|raw| {
        percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| "after is not UTF-8 once decoded".to_string())
            .and_then(|text| Cursor::parse(&text))
    });
    let mut cursor = match read {
        None => Cursor::default(),
        Some(Ok(cursor)) => cursor,
        Some(Err(why)) => return ApiError::bad_request(why).into_response(),
    };
    let mut holders: Vec<crate::lease::Holder> =
        map.holders.values().filter(|h| *h.node != *state.node).cloned().collect();
    holders.sort_by(|a, b| a.node.cmp(&b.node));
    holders.dedup_by(|a, b| a.node == b.node);
    let mut asked = tokio::task::JoinSet::new();
    {
        let (node, parts, body) = (state.node.to_string(), parts.clone(), body.clone());
        asked.spawn(async move {
            let own = next.run(Request::from_parts(parts, axum::body::Body::from(body))).await;
            (node, Ok(own))
        });
    }
    for holder in holders {
        let (node, key, parts, body) = (state.node.to_string(), state.key.clone(), parts.clone(), body.clone());
        asked.spawn(async move {
            let answer = forward(&holder, &node, &key, &parts, body).await;
            (holder.node, answer)
        });
    }
    let (mut merged, mut answered) = (ActionBatch::default(), false);
    while let Some(joined) = asked.join_next().await {
        let Ok((node, answer)) = joined else { continue };
        let response = match answer {
            Ok(response) => response,
            Err(Failed::NotSent(why) | Failed::NoAnswer(why)) => {
                tracing::debug!(%node, %why, "a holder's part of an agent's actions did not answer");
                continue;
            }
        };
        if response.status().is_client_error() {
            return response;
        }
        if response.status() != axum::http::StatusCode::OK {
            tracing::debug!(%node, status = %response.status(), "a holder's part of an agent's actions was refused");
            continue;
        }
        let Ok(bytes) = axum::body::to_bytes(response.into_body(), usize::MAX).await else { continue };
        let Ok(part) = serde_json::from_slice::<ActionBatch>(&bytes) else {
            tracing::warn!(%node, "a holder's part of an agent's actions is not a batch of actions");
            continue;
        };
        answered = true;
        if let Some(Ok(theirs)) = part.cursor.as_deref().map(Cursor::parse) {
            cursor.merge(&theirs);
        }
        let something = !part.actions.is_empty() || part.host_fault.is_some();
        merged.actions.extend(part.actions);
        merged.host_fault = merged.host_fault.or(part.host_fault);
        if something {
            break;
        }
    }
    asked.abort_all();
    if !answered {
        return ApiError::unavailable(
            "no node holding a part of the fleet answered for this host's actions; retry in a moment",
        )
        .into_response();
    }
    merged.actions.sort_by_key(|a| (a.action.created_at, a.seq));
    merged.cursor = Some(cursor.to_string());
    axum::Json(merged).into_response()
}

/// A list of the whole fleet, on a node that holds part of it: every
/// holder's own part (this node's through its own router), merged as the
/// whole fleet would list it (`shard_route::merge_pages`). A part that
/// fails fails the list (a list missing a part would say services are
/// gone): the first refusal as it came, else 503 naming the node.
async fn fan_out(
    state: &AppState,
    map: &crate::lease::ShardMap,
    mut parts: axum::http::request::Parts,
    body: axum::body::Bytes,
    next: Next,
) -> Response {
    parts.headers.insert(HeaderName::from_static(PART), axum::http::HeaderValue::from_static("1"));
    let mut holders: Vec<crate::lease::Holder> =
        map.holders.values().filter(|h| *h.node != *state.node).cloned().collect();
    holders.sort_by(|a, b| a.node.cmp(&b.node));
    holders.dedup_by(|a, b| a.node == b.node);
    let mut asked = tokio::task::JoinSet::new();
    for holder in holders {
        let (node, key, parts, body) = (state.node.to_string(), state.key.clone(), parts.clone(), body.clone());
        asked.spawn(async move {
            let answer = forward(&holder, &node, &key, &parts, body).await;
            (holder, answer)
        });
    }
    let own = next.run(Request::from_parts(parts.clone(), axum::body::Body::from(body))).await;
    let mut answers = vec![(state.node.to_string(), own)];
    while let Some(joined) = asked.join_next().await {
        match joined {
            Ok((holder, Ok(response))) => answers.push((holder.node, response)),
            Ok((holder, Err(Failed::NotSent(why) | Failed::NoAnswer(why)))) => {
                return ApiError::unavailable(format!(
                    "node {} ({}), which holds part of the fleet, did not answer its part of this list: {why}; retry \
                     in a moment",
                    holder.node, holder.url
                ))
                .into_response()
            }
            Err(e) => return ApiError::internal(format!("a part of this list failed: {e}")).into_response(),
        }
    }
    if parts.uri.path() == "/v1/maintenance.ics" {
        return merged_calendar(answers).await;
    }
    let mut lists = Vec::with_capacity(answers.len());
    // Said alike by every part (the store's): this node's.
    let stale = answers.first().and_then(|(_, a)| a.headers().get(ADVISORIES_STALE).cloned());
    // A rollout's services are in the parts of the holders that have
    // any: a node that has no part of it (a resize of another holder's
    // service) does not know it.
    let members = parts.uri.path().starts_with("/v1/rollouts/");
    let mut unknown = None;
    for (node, answer) in answers {
        if members && answer.status() == axum::http::StatusCode::NOT_FOUND {
            unknown = Some(answer);
            continue;
        }
        if answer.status() != axum::http::StatusCode::OK {
            return answer;
        }
        let more = answer
            .headers()
            .get(header::LINK)
            .and_then(|l| l.to_str().ok())
            .is_some_and(|l| l.contains("rel=\"next\""));
        let bytes = match axum::body::to_bytes(answer.into_body(), usize::MAX).await {
            Ok(bytes) => bytes,
            Err(e) => return ApiError::unavailable(format!("node {node}'s part was cut short: {e}")).into_response(),
        };
        match serde_json::from_slice::<Vec<serde_json::Value>>(&bytes) {
            Ok(items) => lists.push((items, more)),
            Err(e) => {
                return ApiError::internal(format!("node {node}'s part of this list is not a list: {e}"))
                    .into_response()
            }
        }
    }
    if let (true, Some(unknown)) = (lists.is_empty(), unknown) {
        return unknown;
    }
    let mut response = merged(parts.uri.path(), parts.uri.query(), lists);
    if let Some(stale) = stale {
        response.headers_mut().insert(ADVISORIES_STALE, stale);
    }
    response
}

const ADVISORIES_STALE: &str = "drover-advisories-stale";

/// A heartbeat batch on a node that holds some of the shards: each part
/// goes to its holder, this node's own fed to its engine through its own
/// router as parsed (`http::Batch`), and the agent is answered once every
/// part was: the receipts added up. A batch that is all one other
/// holder's goes as it came. A part refused (a beat of another host's
/// instance: 403) refuses the batch. A part whose shard has no holder or
/// whose holder did not answer is `pending`, as beats the engine has not
/// taken yet: the agent's lease is renewed (failing the whole batch would
/// make it fence the primaries of every shard for one shard's takeover),
/// and the next holder judges those instances by their next beats.
async fn heartbeat_parts(
    state: &AppState,
    map: &crate::lease::ShardMap,
    parts: axum::http::request::Parts,
    body: axum::body::Bytes,
    split: crate::shard_route::Beats,
    next: Next,
) -> Response {
    let mut response = fed_in_parts(state, map, parts, body, split, next).await;
    // Tells the agent where each shard's beats go from now on.
    let own = state.ready.get().map(|ready| ready.node.url.clone());
    let urls = (0..map.shards).filter_map(|s| {
        let url = if map.held.contains(&s) { own.clone() } else { map.holders.get(&s).map(|h| h.url.clone()) };
        url.map(|url| (s, url))
    });
    let told = drover_agent::holders::Holders::new(map.shards, urls).render();
    if let Ok(value) = axum::http::HeaderValue::from_str(&told) {
        response.headers_mut().insert(HeaderName::from_static(drover_agent::holders::HEADER), value);
    }
    response
}

async fn fed_in_parts(
    state: &AppState,
    map: &crate::lease::ShardMap,
    mut parts: axum::http::request::Parts,
    body: axum::body::Bytes,
    split: crate::shard_route::Beats,
    next: Next,
) -> Response {
    parts.headers.insert(HeaderName::from_static(PART), axum::http::HeaderValue::from_static("1"));
    let whole = split.parts.len() == 1;
    // An empty batch still renews the agent's lease: heard here.
    let empty = split.parts.is_empty();
    let mut asked = tokio::task::JoinSet::new();
    let mut own: Vec<drover_model::Beat> = Vec::new();
    let mut unheard = 0u32;
    let lease_ms = split.lease_ms;
    for (shard, beats) in split.parts {
        if map.held.contains(&shard) {
            own.extend(beats);
            continue;
        }
        let Some(holder) = map.holders.get(&shard).cloned() else {
            unheard += beats.len() as u32;
            continue;
        };
        let sent = if whole { body.clone() } else { crate::shard_route::Beats::body_of(&beats, lease_ms).into() };
        let (node, key, parts) = (state.node.to_string(), state.key.clone(), parts.clone());
        let beats = beats.len() as u32;
        metrics::counter!(crate::telemetry::HEARTBEATS_FORWARDED).increment(u64::from(beats));
        asked.spawn(async move { (forward(&holder, &node, &key, &parts, sent).await, beats) });
    }
    let mut answers = Vec::new();
    if !own.is_empty() || empty {
        let mut request = Request::from_parts(parts, axum::body::Body::empty());
        request.extensions_mut().insert(crate::http::Parsed(crate::http::HeartbeatBatch { beats: own, lease_ms }));
        let answer = next.run(request).await;
        if asked.is_empty() && unheard == 0 {
            // All of it this node's (an agent that sends each holder its part).
            return answer;
        }
        answers.push(answer);
    }
    while let Some(joined) = asked.join_next().await {
        match joined {
            Ok((Ok(answer), _)) => answers.push(answer),
            Ok((Err(Failed::NotSent(why) | Failed::NoAnswer(why)), beats)) => {
                tracing::warn!(beats, %why, "a holder did not take its part of a heartbeat batch: pending");
                unheard += beats;
            }
            Err(e) => return ApiError::internal(format!("a part of this batch failed: {e}")).into_response(),
        }
    }
    let mut total = serde_json::json!({"accepted": 0, "stale": 0, "unknown": [], "pending": unheard});
    for answer in answers {
        if answer.status() != axum::http::StatusCode::OK {
            return answer;
        }
        let receipt = match axum::body::to_bytes(answer.into_body(), crate::routes::MAX_BODY_BYTES).await {
            Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default(),
            Err(e) => return ApiError::unavailable(format!("a part's answer was cut short: {e}")).into_response(),
        };
        for field in ["accepted", "stale", "pending"] {
            let sum = total[field].as_u64().unwrap_or(0) + receipt[field].as_u64().unwrap_or(0);
            total[field] = sum.into();
        }
        if let (Some(all), Some(these)) = (total["unknown"].as_array_mut(), receipt["unknown"].as_array()) {
            all.extend(these.iter().cloned());
        }
    }
    axum::Json(total).into_response()
}

/// The merged answer of a listing route: services by name, paged by
/// `after` and `limit` as one node pages them; archives by id.
fn merged(path: &str, query: Option<&str>, lists: Vec<(Vec<serde_json::Value>, bool)>) -> Response {
    let text = |v: &serde_json::Value, field: &str| v[field].as_str().unwrap_or_default().to_string();
    if path == "/v1/audit" {
        return merged_audit(query, lists);
    }
    if path == "/v1/advisories/audit" {
        return merged_findings(lists);
    }
    if path == "/v1/hosts" {
        return merged_hosts(lists);
    }
    if path == "/v1/archives" {
        let (items, _) = crate::shard_route::merge_pages(lists, usize::MAX, |v| text(v, "id"));
        return axum::Json(items).into_response();
    }
    if path.starts_with("/v1/rollouts/") {
        // Each part in its own order: by position (each shard's part
        // counts from 0), then name.
        let mut items: Vec<serde_json::Value> = lists.into_iter().flat_map(|(items, _)| items).collect();
        items.sort_by_key(|v| (v["position"].as_u64().unwrap_or(0), text(v, "name")));
        return axum::Json(items).into_response();
    }
    let limit = query_limit(query);
    let (items, more) = crate::shard_route::merge_pages(lists, limit, |v| text(v, "name"));
    let next = more.then(|| items.last().map(|v| text(v, "name"))).flatten();
    let mut response = axum::Json(items).into_response();
    if let Some(last) = next {
        if let Ok(link) =
            axum::http::HeaderValue::from_str(&format!("</v1/services?after={last}&limit={limit}>; rel=\"next\""))
        {
            response.headers_mut().insert(header::LINK, link);
        }
    }
    response
}

/// The hosts as one engine lists them: every engine knows every host (the
/// fleet's records), each counts the instances of its own shards on it.
/// Merged by name: the instances added up, and the state the gravest any
/// holder sees (a host's silence is judged by each holder from its own
/// instances' beats; a holder with none there sees it ready).
fn merged_hosts(lists: Vec<(Vec<serde_json::Value>, bool)>) -> Response {
    const GRAVITY: [&str; 5] = ["ready", "cordoned", "draining", "uncertain", "down"];
    let grave = |v: &serde_json::Value| GRAVITY.iter().position(|s| v["state"] == *s).unwrap_or(0);
    let mut by_name: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for host in lists.into_iter().flat_map(|(items, _)| items) {
        let name = host["name"].as_str().unwrap_or_default().to_string();
        match by_name.get_mut(&name) {
            None => {
                by_name.insert(name, host);
            }
            Some(seen) => {
                let instances = seen["instances"].as_u64().unwrap_or(0) + host["instances"].as_u64().unwrap_or(0);
                seen["instances"] = instances.into();
                if grave(&host) > grave(seen) {
                    seen["state"] = host["state"].clone();
                }
            }
        }
    }
    axum::Json(by_name.into_values().collect::<Vec<_>>()).into_response()
}

/// The `limit` a list was asked with (the API's default without one).
fn query_limit(query: Option<&str>) -> usize {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("limit="))
        .and_then(|l| l.parse().ok())
        .unwrap_or(crate::http::DEFAULT_LIMIT)
}

/// The audit trail is in the store every node shares, but a team's token
/// sees only the entries of its team's services, which each holder knows
/// of its own shards: every part is the last `limit` entries its node
/// lets the caller see; together, in order, the last `limit` of them (an
/// entry several parts have, once).
fn merged_audit(query: Option<&str>, lists: Vec<(Vec<serde_json::Value>, bool)>) -> Response {
    let limit = query_limit(query);
    let mut all: Vec<(u64, String, serde_json::Value)> = lists
        .into_iter()
        .flat_map(|(items, _)| items)
        .map(|v| (v["seq"].as_u64().unwrap_or(0), v.to_string(), v))
        .collect();
    all.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    all.dedup_by(|a, b| a.1 == b.1);
    let skip = all.len().saturating_sub(limit);
    axum::Json(all.into_iter().skip(skip).map(|(_, _, v)| v).collect::<Vec<_>>()).into_response()
}

/// The maintenance calendar: every part's events (each holder's services)
/// in one calendar, with the first part's heading.
async fn merged_calendar(answers: Vec<(String, Response)>) -> Response {
    let mut heading: Option<String> = None;
    let mut events = String::new();
    let mut content_type = None;
    for (node, answer) in answers {
        if answer.status() != axum::http::StatusCode::OK {
            return answer;
        }
        content_type = content_type.or_else(|| answer.headers().get(header::CONTENT_TYPE).cloned());
        let text = match axum::body::to_bytes(answer.into_body(), usize::MAX).await {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => return ApiError::unavailable(format!("node {node}'s part was cut short: {e}")).into_response(),
        };
        let body = text.trim_end().strip_suffix("END:VCALENDAR").unwrap_or(&text);
        let (head, own) = body.split_once("BEGIN:VEVENT").map_or((body, ""), |(h, e)| (h, e));
        heading.get_or_insert_with(|| head.to_string());
        if !own.is_empty() {
            events.push_str("BEGIN:VEVENT");
            events.push_str(own);
        }
    }
    let calendar = format!("{}{events}END:VCALENDAR\r\n", heading.unwrap_or_default());
    let mut response = (axum::http::StatusCode::OK, calendar).into_response();
    if let Some(content_type) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    }
    response
}

/// The CVE audit: every node knows every image (the findings are alike)
/// but only its own shards' services on them: one finding per advisory
/// and package, its services, owners and instances those of every part.
fn merged_findings(lists: Vec<(Vec<serde_json::Value>, bool)>) -> Response {
    use drover_advisories::Finding;
    let mut by: std::collections::BTreeMap<(String, String), Finding> = std::collections::BTreeMap::new();
    for (items, _) in lists {
        for item in items {
            let Ok(f) = serde_json::from_value::<Finding>(item) else {
                return ApiError::internal("a node's part of the audit is not a list of findings").into_response();
            };
            match by.entry((f.advisory.clone(), f.package.clone())) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(f);
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    let have = o.get_mut();
                    have.services.extend(f.services);
                    have.owners.extend(f.owners);
                    have.instances += f.instances;
                    for list in [&mut have.services, &mut have.owners] {
                        list.sort();
                        list.dedup();
                    }
                }
            }
        }
    }
    axum::Json(by.into_values().collect::<Vec<_>>()).into_response()
}

/// Sends the request to `holder` and returns its answer; one that could
/// not be sent at all is kept for the next holder when it is a command
/// (`deferred`), else 503 naming `whose` holder did not answer.
async fn forward_or_keep(
    state: &AppState,
    holder: &crate::lease::Holder,
    parts: &axum::http::request::Parts,
    body: axum::body::Bytes,
    whose: &str,
) -> Response {
    let why = match forward(holder, &state.node, &state.key, parts, body.clone()).await {
        Ok(response) => return response,
        // Never sent: a command can be kept for the next holder.
        Err(Failed::NotSent(why)) => match crate::deferred::accept(state, parts, &body, &holder.node).await {
            Some(kept) => return kept,
            None => why,
        },
        Err(Failed::NoAnswer(why)) => why,
    };
    ApiError::unavailable(format!("{whose} {} ({}) did not answer: {why}; retry in a moment", holder.node, holder.url))
        .into_response()
}

/// A request's whole body (a standby forwards or keeps it whole).
async fn buffered(body: axum::body::Body) -> Result<axum::body::Bytes, Response> {
    axum::body::to_bytes(body, crate::routes::MAX_BODY_BYTES)
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")).into_response())
}

/// Why a forward failed.
enum Failed {
    /// The holder could not be reached: the request was not sent.
    NotSent(String),
    /// Sent (or perhaps sent): whether the holder acted on it is unknown.
    NoAnswer(String),
}

async fn forward(
    holder: &crate::lease::Holder,
    this_node: &str,
    key: &drover_secrets::SecretKey,
    parts: &axum::http::request::Parts,
    body: axum::body::Bytes,
) -> Result<Response, Failed> {
    let caller = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", holder.url.trim_end_matches('/'));
    let mut out = client().request(parts.method.clone(), &url).body(body);
    for (name, value) in &parts.headers {
        if !skipped(name) && name.as_str() != FORWARDED_FOR {
            out = out.header(name, value);
        }
    }
    out = out.header(FORWARDED_BY, this_node);
    if let Some(ip) = caller {
        out = out.header(FORWARDED_FOR, vouch(key, ip));
    }
    let answer = out.send().await.map_err(|e| {
        if e.is_connect() {
            Failed::NotSent(e.to_string())
        } else {
            Failed::NoAnswer(e.to_string())
        }
    })?;
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !skipped(name) {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.map_err(|e| Failed::NoAnswer(e.to_string()))?;
    response.body(axum::body::Body::from(bytes)).map_err(|e| Failed::NoAnswer(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn headers(value: &str) -> HeaderMap {
        HeaderMap::from_iter([(HeaderName::from_static(FORWARDED_FOR), HeaderValue::from_str(value).unwrap())])
    }

    #[test]
    fn a_vouch_is_believed_only_sealed_with_the_shared_key_and_fresh() {
        let key = drover_secrets::SecretKey::generate();
        let ip: std::net::IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(vouched_ip(&key, &headers(&vouch(&key, ip))), Some(ip));
        let other = drover_secrets::SecretKey::generate();
        assert_eq!(vouched_ip(&other, &headers(&vouch(&key, ip))), None, "another control plane's key");
        let stale = key.seal_str(VOUCH_CONTEXT, &format!("{ip} {}", unix_secs() - VOUCH_FOR - 5));
        assert_eq!(vouched_ip(&key, &headers(&stale)), None, "an old copy");
        let other_context = key.seal_str("something else", &format!("{ip} {}", unix_secs()));
        assert_eq!(vouched_ip(&key, &headers(&other_context)), None, "sealed for another purpose");
        for garbage in ["", "203.0.113.7", "sealed:", "sealed:AAAA"] {
            assert_eq!(vouched_ip(&key, &headers(garbage)), None, "{garbage:?}");
        }
        let nonsense = key.seal_str(VOUCH_CONTEXT, "not-an-ip 12");
        assert_eq!(vouched_ip(&key, &headers(&nonsense)), None);
        assert_eq!(vouched_ip(&key, &HeaderMap::new()), None);
    }
}
