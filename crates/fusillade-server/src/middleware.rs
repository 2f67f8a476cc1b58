//! Cross-cutting layers: request metrics and error logging, and the check that a path decodes
//! to UTF-8. Errors are logged here rather than where they are rendered, so that turning an
//! error into a response has no side effects.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::{ApiError, LoggedError};

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

/// Refuses a path whose percent-escapes do not decode to UTF-8 with a 400 in OpenAI's shape;
/// left to the handlers' `Path` extractors it would be a plain-text 400.
pub(crate) async fn require_utf8_path(request: Request, next: Next) -> Response {
    if std::str::from_utf8(&percent_decode(request.uri().path().as_bytes())).is_err() {
        let error = ApiError::BadRequest {
            message: "Invalid URL: the path is not valid UTF-8 once percent-decoded.".into(),
            param: None,
            code: None,
        };
        return axum::response::IntoResponse::into_response(error);
    }
    next.run(request).await
}

/// `%XX` escapes decoded; anything else (including a malformed escape) kept as it is.
fn percent_decode(path: &[u8]) -> Vec<u8> {
    let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%'
            && let (Some(high), Some(low)) = (hex(path.get(i + 1)), hex(path.get(i + 2)))
        {
            out.push((high * 16 + low) as u8);
            i += 3;
            continue;
        }
        out.push(path[i]);
        i += 1;
    }
    out
}
