//! Owns the HTTP surface: the router, the OpenAI endpoint pipeline (parse,
//! count, wait, inject) and the `/stats` and `/healthz` endpoints.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::config::{CUSTOM_ID_HEADER, FAULT_HEADER, Fault};
use crate::fault::{self, FaultContext};
use crate::request::{self, Endpoint, ParsedRequest};
use crate::response::{self, ResponseIds};
use crate::state::{ActiveConfig, App};
use crate::stats::{Outcome, Stats};

/// Batch-sized bodies must fit; axum's 2 MiB default is too small for them.
const BODY_LIMIT: usize = 64 * 1024 * 1024;

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/stats", get(stats))
        .route("/stats/reset", post(reset_stats))
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}

async fn chat(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    handle(&app, Endpoint::Chat, &headers, &body).await
}

async fn completions(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    handle(&app, Endpoint::Completions, &headers, &body).await
}

async fn embeddings(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    handle(&app, Endpoint::Embeddings, &headers, &body).await
}

async fn stats(State(app): State<Arc<App>>) -> Json<Stats> {
    Json(app.shared.stats.snapshot())
}

/// Answers with the stats as they are right after the reset.
async fn reset_stats(State(app): State<Arc<App>>) -> Json<Stats> {
    app.shared.stats.reset();
    Json(app.shared.stats.snapshot())
}

async fn healthz() -> &'static str {
    "ok"
}

/// Counts the request, answers it and tags the answer with `x-request-id`.
async fn handle(app: &App, endpoint: Endpoint, headers: &HeaderMap, body: &[u8]) -> Response {
    let custom_id = headers
        .get(CUSTOM_ID_HEADER)
        .map(|value| String::from_utf8_lossy(value.as_bytes()));
    app.shared.stats.record_request(custom_id.as_deref());
    let serial = app.shared.next_serial();
    let mut response = respond(app, endpoint, headers, body, serial).await;
    let request_id = format!("req-mock{serial:016x}");
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn respond(
    app: &App,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: &[u8],
    serial: u64,
) -> Response {
    let request = match request::parse(endpoint, body) {
        Ok(request) => request,
        Err(message) => return response::error_response(StatusCode::BAD_REQUEST, &message),
    };
    // One snapshot per request, so a concurrent `set_config` never mixes two configs.
    let active = app.shared.config();
    let fault = match requested_fault(headers, &active) {
        Ok(fault) => fault,
        Err(message) => return response::error_response(StatusCode::BAD_REQUEST, &message),
    };

    let _in_flight = app.shared.stats.start(&request.model);
    if !active.config.latency.is_zero() {
        tokio::time::sleep(active.config.latency).await;
    }
    let ids = ResponseIds {
        serial,
        created: unix_now(),
    };
    let (response, outcome) = match fault {
        Some(fault) => {
            let ctx = FaultContext {
                request: &request,
                ids,
                retry_after: active.config.retry_after(),
                shutdown: &app.shutdown,
            };
            fault::respond(fault, ctx).await
        }
        None => injected_or_success(&active, &request, ids),
    };
    if let Some(outcome) = outcome {
        app.shared.stats.record_outcome(outcome);
    }
    response
}

/// The request's own `x-mock-fault` header wins over the configured fault.
fn requested_fault(headers: &HeaderMap, active: &ActiveConfig) -> Result<Option<Fault>, String> {
    let Some(value) = headers.get(FAULT_HEADER) else {
        return Ok(active.config.fault);
    };
    let text = value
        .to_str()
        .map_err(|_| format!("{FAULT_HEADER} header is not valid text"))?;
    text.parse().map(Some)
}

fn injected_or_success(
    active: &ActiveConfig,
    request: &ParsedRequest,
    ids: ResponseIds,
) -> (Response, Option<Outcome>) {
    let config = &active.config;
    let roll = active.draw();
    if roll < config.rate_limit_rate {
        let response = response::rate_limit_response(config.retry_after());
        (response, Some(Outcome::RateLimited))
    } else if roll < config.rate_limit_rate + config.error_rate {
        let message =
            "The server had an error while processing your request (injected by fusillade-mock)";
        let response = response::error_response(StatusCode::INTERNAL_SERVER_ERROR, message);
        (response, Some(Outcome::Error))
    } else {
        let body = response::success_body(request, ids);
        (
            response::json_response(StatusCode::OK, body),
            Some(Outcome::Ok),
        )
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
