//! Cross-cutting layers: request metrics and error logging. Errors are logged here rather than
//! where they are rendered, so that turning an error into a response has no side effects.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::LoggedError;

/// Counts requests by route and status, times them, and logs the errors they ended with:
/// server errors (with their internal cause, which the client never sees) at `error`, client
/// errors at `debug`.
pub(crate) async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let response = next.run(request).await;
    let status = response.status();
    let labels = [
        ("method", method.to_string()),
        ("route", route.clone()),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!("fusillade_http_requests_total", &labels).increment(1);
    metrics::histogram!("fusillade_http_request_seconds", &labels[..2])
        .record(started.elapsed().as_secs_f64());
    if let Some(LoggedError(error)) = response.extensions().get::<LoggedError>() {
        if status.is_server_error() {
            tracing::error!(%method, %route, status = status.as_u16(), error = %error, "request failed");
        } else {
            tracing::debug!(%method, %route, status = status.as_u16(), error = %error, "request rejected");
        }
    }
    response
}
