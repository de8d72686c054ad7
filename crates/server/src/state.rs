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
}

impl Ready {
    /// Adds what only the provider knows (the stable URL) to a view.
    pub(crate) fn complete(&self, mut view: ServiceView) -> ServiceView {
        if let Some(p) = self.provider_objects.get(&view.provider) {
            view.url = p.service_url(&view.name);
        }
        view
    }
}

#[derive(Clone)]
pub struct AppState {
    pub ready: Arc<OnceLock<Ready>>,
    pub metrics: PrometheusHandle,
}

impl AppState {
    pub(crate) fn ready(&self) -> Result<&Ready, ApiError> {
        self.ready.get().ok_or_else(|| ApiError::unavailable("Drover is starting; retry in a moment"))
    }
}
