//! A small HTTP client of the Drover API. Errors come back as one readable
//! line: the server's own `error` message, or why the server is unreachable.

use anyhow::anyhow;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::Duration;

/// Generous: a create waits for the engine's group commit, nothing longer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Client {
    base: String,
    http: reqwest::Client,
    actor: Option<String>,
}

/// Percent-encodes one path segment.
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    pub fn new(base: &str, actor: Option<String>, ca_cert: Option<&std::path::Path>) -> anyhow::Result<Client> {
        let http = drover_agent::tls::client_builder(ca_cert)?
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| anyhow!("cannot build the HTTP client: {e}"))?;
        Ok(Client { base: base.trim_end_matches('/').to_string(), http, actor })
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.send(Method::GET, path, query, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(Method::POST, path, &[], Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(Method::DELETE, path, &[], None).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.base, path);
        let mut request = self.http.request(method, &url).query(query);
        if let Some(actor) = &self.actor {
            request = request.header("x-drover-actor", actor);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            if let Some(tls) = drover_agent::tls::certificate_error(&e) {
                anyhow!(
                    "the TLS certificate of Drover at {} is not trusted ({tls}): give the CA certificate that signed it \
                     with --ca-cert or DROVER_CA_CERT",
                    self.base
                )
            } else if e.is_connect() {
                anyhow!("cannot reach Drover at {}: is `drover serve` running?", self.base)
            } else if e.is_timeout() {
                anyhow!("Drover at {} did not answer within {}s", self.base, REQUEST_TIMEOUT.as_secs())
            } else if e.is_builder() {
                anyhow!("invalid server URL {:?}: {e}", self.base)
            } else {
                anyhow!("request to Drover at {} failed: {e}", self.base)
            }
        })?;
        let status = response.status();
        let text =
            response.text().await.map_err(|e| anyhow!("cannot read the answer from Drover at {}: {e}", self.base))?;
        let value: Option<Value> = serde_json::from_str(&text).ok();
        if status.is_success() {
            return value.ok_or_else(|| anyhow!("Drover answered {status} with a body that is not JSON"));
        }
        let message = value
            .as_ref()
            .and_then(|v| v.get("error"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| if text.trim().is_empty() { reason(status) } else { text.trim().to_string() });
        Err(anyhow!("{message} ({})", status.as_u16()))
    }
}

fn reason(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("error").to_string()
}
