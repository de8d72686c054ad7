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
//! which time a standby may have taken over. Bodies are buffered (at most
//! [`crate::routes::MAX_BODY_BYTES`]); a streamed answer arrives whole.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;
use std::time::Duration;

/// Set on a forwarded request: the node that forwarded it.
pub const FORWARDED_BY: &str = "x-drover-forwarded-by";

/// How long the holder may take to answer a forwarded request.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);

/// Hop-by-hop headers, and the ones the client library sets itself.
fn skipped(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host" | "connection" | "keep-alive" | "transfer-encoding" | "te" | "trailer" | "upgrade" | "content-length"
    ) || name == header::PROXY_AUTHORIZATION
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
    if state.ready.get().is_some() || request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let holder = state.standby.read().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(holder) = holder else { return next.run(request).await };
    if request.headers().contains_key(FORWARDED_BY) {
        return ApiError::unavailable(format!(
            "forwarded to a node that does not hold the fleet either (it sees {} as the holder); retry in a moment",
            holder.node
        ))
        .into_response();
    }
    match forward(&holder, &state.node, request).await {
        Ok(response) => response,
        Err(why) => ApiError::unavailable(format!(
            "this node is a standby and the fleet's holder {} ({}) did not answer: {why}; retry in a moment",
            holder.node, holder.url
        ))
        .into_response(),
    }
}

async fn forward(holder: &crate::lease::Holder, this_node: &str, request: Request) -> Result<Response, String> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", holder.url.trim_end_matches('/'));
    let body = axum::body::to_bytes(body, crate::routes::MAX_BODY_BYTES).await.map_err(|e| e.to_string())?;
    let mut out = client().request(parts.method.clone(), &url).body(body);
    for (name, value) in &parts.headers {
        if !skipped(name) {
            out = out.header(name, value);
        }
    }
    out = out.header(FORWARDED_BY, this_node);
    let answer = out.send().await.map_err(|e| e.to_string())?;
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !skipped(name) {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.map_err(|e| e.to_string())?;
    response.body(axum::body::Body::from(bytes)).map_err(|e| e.to_string())
}
