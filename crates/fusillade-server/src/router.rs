//! [`router`]: every route, its authentication and its layers, as a plain function so tests
//! can drive it with `oneshot` and no socket.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::error::ApiError;
use crate::params::JSON_BODY_LIMIT;
use crate::state::AppState;
use crate::upload::MULTIPART_OVERHEAD;
use crate::{auth, batches, content, files, health, middleware, openapi, results, upload};

/// The whole API over `state`.
pub fn router(state: AppState) -> Router {
    // The upload streams its own byte count against the limit; the body limit only stops a
    // request whose other parts are oversized.
    let upload_limit =
        usize::try_from(state.config.max_upload_bytes + MULTIPART_OVERHEAD).unwrap_or(usize::MAX);
    let v1 = Router::new()
        .route(
            "/files",
            post(upload::upload)
                .layer(DefaultBodyLimit::max(upload_limit))
                .get(files::list),
        )
        .route("/files/{file_id}", get(files::get).delete(files::delete))
        .route("/files/{file_id}/content", get(content::content))
        .route("/files/{file_id}/stats", get(files::stats))
        .route("/batches", post(batches::create).get(batches::list))
        .route("/batches/{batch_id}", get(batches::get))
        .route("/batches/{batch_id}/cancel", post(batches::cancel))
        .route("/batches/{batch_id}/retry", post(results::retry))
        .route("/batches/{batch_id}/results", get(results::results))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(middleware::require_utf8_path))
        .layer(axum::middleware::from_fn(middleware::observe))
        .with_state(state)
}

async fn not_found(uri: http::Uri) -> ApiError {
    ApiError::NotFound {
        message: format!("Unknown path: {}", uri.path()),
        param: None,
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
