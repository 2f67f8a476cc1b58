//! Operations endpoints, outside `/v1` and without authentication: liveness, readiness
//! (storage answers) and Prometheus metrics.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use fusillade::model::BatchId;
use fusillade::storage::{Scope, StorageError};
use http::{HeaderValue, StatusCode, header};

use crate::error::ApiError;
use crate::state::AppState;

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "ok", body = String)))]
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: storage answers a query. A lookup of an id that cannot exist costs one indexed
/// read and needs no dedicated storage operation.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "ready", body = String),
        (status = 503, description = "storage unreachable")))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    let probe = BatchId::from_string("batch_readiness_probe");
    match state.storage.batch_get(&Scope::All, &probe).await {
        Ok(_) | Err(StorageError::NotFound(_)) => Ok("ready"),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}

/// Prometheus text exposition of the daemon's and the API's metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String)))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let Some(handle) = &state.metrics else {
        return (
            StatusCode::NOT_FOUND,
            "metrics are not enabled in this process\n",
        )
            .into_response();
    };
    let mut response = handle.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
