//! The application state the HTTP handlers share: filled once start-up is
//! done, so every handler answers 503 until then.

use crate::error::ApiError;
use crate::oncall::PagerHandle;
use crate::runtime::EngineHandle;
use drover_model::ServiceView;
use drover_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::{Arc, OnceLock};

/// What the handlers reach, filled once start-up is done.
pub struct Ready {
    pub engine: EngineHandle,
    pub store: Arc<dyn Store>,
    pub providers: Vec<String>,
    pub provider_objects: std::collections::HashMap<String, Arc<dyn drover_providers::Provider>>,
    /// The pager actor (on-call).
    pub oncall: PagerHandle,
    /// The API tokens (`auth`).
    pub auth: Arc<crate::auth::Tokens>,
    /// The host the providers' instances run on: this machine's name.
    pub host: String,
    /// Advisories, runbook runs and freezes by hand (`drover.db`).
    pub breakglass: Arc<drover_store::breakglass::BreakGlassStore>,
    pub advisory_cache: crate::advisories::AdvisoryCache,
    /// The break-glass runbooks shipped with this Drover.
    pub runbooks: Vec<crate::runbooks::Runbook>,
    /// The action queues of the agents' hosts (`agents`).
    pub agents: crate::agents::AgentChannel,
    /// The public status site (`status`).
    pub status: crate::status::StatusSite,
    /// The routers of services on agent hosts (None: they could not be
    /// opened).
    pub routers_beside: Option<crate::agents::RoutersBeside>,
    /// This node, and the store it shares with others (`GET /v1/cluster`).
    pub node: crate::cluster::ThisNode,
}

impl Ready {
    /// The service `name` as the caller may see it: 404 for a service that
    /// does not exist and for one of another team (the caller learns nothing).
    pub(crate) async fn visible_service(
        &self,
        caller: &crate::auth::Identity,
        name: &str,
    ) -> Result<ServiceView, ApiError> {
        let lookup = name.to_string();
        self.engine
            .query(move |engine| engine.service_view(&lookup))
            .await?
            .filter(|v| caller.sees_team(Some(&v.team)))
            .ok_or_else(|| ApiError::not_found(format!("no service named {name:?}")))
    }

    /// Adds what only the provider knows (the stable URL) to a view. The
    /// URL's password only for a caller allowed to connect.
    pub(crate) fn complete(&self, mut view: ServiceView, caller: &crate::auth::Identity) -> ServiceView {
        if let Some(p) = self.provider_objects.get(&view.provider) {
            // A service on agent hosts is routed beside the control plane,
            // also when this control plane has a host of its own.
            view.url =
                p.service_url(&view.name).or_else(|| self.routers_beside.as_ref().and_then(|r| r.url(&view.name)));
            view.read_urls = view.read_slots.iter().filter_map(|&slot| p.read_url(&view.name, slot)).collect();
        }
        if !caller.may_connect() {
            view.url = view.url.map(|u| redact_password(&u));
            view.read_urls = view.read_urls.iter().map(|u| redact_password(u)).collect();
        }
        view
    }
}

/// `scheme://user:password@host/...` without the password.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map(|(u, _)| u).unwrap_or(userinfo);
            format!("{scheme}://{user}@{host}{path}")
        }
        None => url.to_string(),
    }
}

#[derive(Clone)]
pub struct AppState {
    pub ready: Arc<OnceLock<Ready>>,
    pub metrics: PrometheusHandle,
    /// While this node is a standby of a shared store: the holder, to
    /// which every request but `/healthz` is forwarded (`forward`).
    pub standby: crate::lease::Standby,
    /// Once ready: the shards this node holds and the holders of the
    /// others (a fleet split between nodes; not split by default).
    pub shards: crate::lease::Shards,
    /// This node's name (`--node`, else the host's): what it says it is
    /// when it forwards.
    pub node: Arc<str>,
    /// The key every node of this control plane shares (a standby vouches
    /// for its callers' addresses with it: `forward::FORWARDED_FOR`).
    pub key: drover_secrets::SecretKey,
    /// The shared store once it is open, also while a standby: where it
    /// keeps commands its holder could not take (`deferred`).
    pub desk: crate::deferred::Desk,
    /// Failed authentication per client address (while a standby too).
    pub failures: Arc<crate::auth::FailureLimiter>,
    /// This node holds the shared store's lease and is loading the fleet:
    /// commands are kept for it (`deferred`) until it is ready.
    pub taking_over: Arc<std::sync::atomic::AtomicBool>,
}

impl AppState {
    pub(crate) fn ready(&self) -> Result<&Ready, ApiError> {
        self.ready.get().ok_or_else(|| ApiError::unavailable("Drover is starting; retry in a moment"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_cut_from_urls() {
        assert_eq!(
            super::redact_password("postgres://app:s3cr:et@127.0.0.1:6432/postgres"),
            "postgres://app@127.0.0.1:6432/postgres"
        );
        assert_eq!(super::redact_password("postgres://127.0.0.1/x"), "postgres://127.0.0.1/x");
        assert_eq!(super::redact_password("nonsense"), "nonsense");
    }
}
