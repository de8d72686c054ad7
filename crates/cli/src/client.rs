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
    /// The bearer token and where it came from (for error messages).
    token: Option<(String, String)>,
}

/// The data dir a client looks in for `admin.token` when given no token:
/// `DROVER_DATA_DIR`, else `./drover-data` (where `drover serve` and
/// `./scripts/run` keep it by default).
pub fn default_token_file() -> std::path::PathBuf {
    let dir = std::env::var_os("DROVER_DATA_DIR").filter(|d| !d.is_empty()).unwrap_or_else(|| "./drover-data".into());
    std::path::PathBuf::from(dir).join("admin.token")
}

/// The token to send, and where it came from: `DROVER_TOKEN`, else the
/// `--token-file`, else the default data dir's `admin.token` when it is
/// readable (`default_file`), else none.
pub fn resolve_token(
    token_file: Option<&std::path::Path>,
    default_file: Option<&std::path::Path>,
) -> anyhow::Result<Option<(String, String)>> {
    if let Some(token) = std::env::var("DROVER_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) {
        return Ok(Some((token, "DROVER_TOKEN".into())));
    }
    let read = |path: &std::path::Path| -> std::io::Result<Option<String>> {
        let text = std::fs::read_to_string(path)?;
        Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty()))
    };
    if let Some(path) = token_file {
        let token = read(path)
            .map_err(|e| anyhow!("cannot read the token file {}: {e}", path.display()))?
            .ok_or_else(|| anyhow!("the token file {} is empty", path.display()))?;
        return Ok(Some((token, path.display().to_string())));
    }
    if let Some(path) = default_file {
        if let Ok(Some(token)) = read(path) {
            return Ok(Some((token, path.display().to_string())));
        }
    }
    Ok(None)
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
    pub fn new(
        base: &str,
        actor: Option<String>,
        token: Option<(String, String)>,
        ca_cert: Option<&std::path::Path>,
    ) -> anyhow::Result<Client> {
        let http = drover_agent::tls::client_builder(ca_cert)?
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| anyhow!("cannot build the HTTP client: {e}"))?;
        Ok(Client { base: base.trim_end_matches('/').to_string(), http, actor, token })
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.send(Method::GET, path, query, None).await
    }
    /// A GET whose answer is not JSON (the pager chart).
    pub async fn get_text(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<String> {
        let url = format!("{}{}", self.base, path);
        let mut request = self.http.get(&url).query(query);
        if let Some((token, _)) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| anyhow!("cannot fetch {url}: {e}"))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| anyhow!("cannot read the answer from {url}: {e}"))?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or(text);
            return Err(anyhow!("{message} ({})", status.as_u16()));
        }
        Ok(text)
    }
    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(Method::POST, path, &[], Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(Method::PUT, path, &[], Some(body)).await
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
        if let Some((token, _)) = &self.token {
            request = request.bearer_auth(token);
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
        let deferred = response.headers().get(DEFERRED_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let text =
            response.text().await.map_err(|e| anyhow!("cannot read the answer from Drover at {}: {e}", self.base))?;
        let value: Option<Value> = serde_json::from_str(&text).ok();
        if let (StatusCode::ACCEPTED, Some(id)) = (status, deferred) {
            return self.outcome_of(&id).await;
        }
        if status.is_success() {
            return value.ok_or_else(|| anyhow!("Drover answered {status} with a body that is not JSON"));
        }
        let message = value
            .as_ref()
            .and_then(|v| v.get("error"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| if text.trim().is_empty() { reason(status) } else { text.trim().to_string() });
        let hint = match (status, &self.token) {
            (StatusCode::UNAUTHORIZED, None) => format!(
                "; no token was sent: set DROVER_TOKEN, pass --token-file, or run where {} is readable",
                default_token_file().display()
            ),
            (StatusCode::UNAUTHORIZED, Some((_, from))) => format!("; the token from {from} was refused"),
            (StatusCode::FORBIDDEN, Some((_, from))) => format!(" (token from {from})"),
            _ => String::new(),
        };
        Err(anyhow!("{message} ({}){hint}", status.as_u16()))
    }
}

/// Set by a standby that kept a command because the fleet's holder did
/// not answer (its value is the command's id).
const DEFERRED_HEADER: &str = "x-drover-deferred";

/// How long the CLI waits for a kept command (the server gives up on it
/// after 300 s).
const DEFERRED_WAIT: Duration = Duration::from_secs(320);

impl Client {
    /// Waits for a command a standby kept to be carried out by the node
    /// that takes the fleet over, and answers as the API did then.
    async fn outcome_of(&self, id: &str) -> anyhow::Result<Value> {
        eprintln!(
            "the fleet's holder did not answer: {} kept the command as {id}; waiting for another node to take the \
             fleet over and carry it out",
            self.base
        );
        let url = format!("{}/v1/commands/{id}", self.base);
        let until = std::time::Instant::now() + DEFERRED_WAIT;
        while std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut request = self.http.get(&url);
            if let Some((token, _)) = &self.token {
                request = request.bearer_auth(token);
            }
            // Until a node holds the fleet, reads are refused (503): wait.
            let Ok(response) = request.send().await else { continue };
            let status = response.status();
            if status == StatusCode::SERVICE_UNAVAILABLE || status.is_server_error() {
                continue;
            }
            let command: Value = response.json().await.unwrap_or_default();
            if !status.is_success() {
                let error = command["error"].as_str().unwrap_or("no answer");
                return Err(anyhow!("cannot follow command {id}: {error} ({})", status.as_u16()));
            }
            match command["state"].as_str() {
                Some("pending" | "running") => continue,
                Some("done") => {
                    let answered = command["status"].as_u64().unwrap_or_default();
                    let answer = command["answer"].clone();
                    if (200..300).contains(&answered) {
                        return Ok(answer);
                    }
                    let error = answer["error"].as_str().map(str::to_string).unwrap_or_else(|| answer.to_string());
                    return Err(anyhow!("{error} ({answered}; command {id}, carried out after a takeover)"));
                }
                _ => {
                    let message = command["message"].as_str().unwrap_or("not carried out");
                    return Err(anyhow!("command {id}: {message}"));
                }
            }
        }
        Err(anyhow!(
            "command {id} was kept but not carried out within {} s; `GET /v1/commands/{id}` tells where it stands",
            DEFERRED_WAIT.as_secs()
        ))
    }
}

fn reason(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("error").to_string()
}
