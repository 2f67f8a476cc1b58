//! [`AppState`]: what every handler shares, cheap to clone.

use std::sync::Arc;

use fusillade::Storage;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

use crate::auth::Tenants;
use crate::config::{ApiConfig, ApiConfigError};

/// State shared by the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Where files, batches and results live.
    pub storage: Arc<dyn Storage>,
    /// Limits and rules, validated.
    pub config: Arc<ApiConfig>,
    /// API keys and their tenants.
    pub tenants: Arc<Tenants>,
    /// Renders `GET /metrics`; `None` answers 404 there (the embedding process did not install
    /// a Prometheus recorder).
    pub metrics: Option<PrometheusHandle>,
    /// Upload slots: an upload beyond `max_concurrent_uploads` is answered 429 at once rather
    /// than queued behind a long one.
    pub(crate) uploads: Arc<Semaphore>,
}

impl AppState {
    /// Validates `config` and builds the state.
    pub fn new(
        storage: Arc<dyn Storage>,
        config: ApiConfig,
        tenants: Tenants,
    ) -> Result<Self, ApiConfigError> {
        config.validate()?;
        Ok(Self {
            storage,
            uploads: Arc::new(Semaphore::new(config.max_concurrent_uploads)),
            config: Arc::new(config),
            tenants: Arc::new(tenants),
            metrics: None,
        })
    }

    /// Serves `GET /metrics` from this Prometheus recorder.
    pub fn with_metrics(mut self, handle: PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }
}

/// Installs the process-wide Prometheus recorder, so the daemon's and the API's metrics are
/// served at `GET /metrics`. Call once per process; a second call fails.
pub fn install_prometheus() -> Result<PrometheusHandle, String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| e.to_string())
}
