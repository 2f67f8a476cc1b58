//! Beyond OpenAI: a batch's results side by side with its inputs, and retrying its failed
//! requests.
//!
//! `GET /v1/batches/{id}/results` lists one entry per input line, in line order: the request
//! body, its state, and its response or error. Filter with `status`, page with `after` (the
//! `id` of the last entry) and `limit`.

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::Utc;
use fusillade::model::{BatchId, RequestState, public_request_id};
use fusillade::storage::{ResultFilter, ResultPage, ResultRow, StorageError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Tenant;
use crate::batches::{BatchObject, visible_batch};
use crate::error::{ApiError, ErrorResponse};
use crate::params::{ListObject, page_limit};
use crate::state::AppState;

/// One line of a batch with its outcome.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultObject {
    /// `batch_req_…`, the id used in the output and error files.
    pub id: String,
    /// The caller's id.
    pub custom_id: String,
    /// 1-based input line.
    pub line: u64,
    /// `pending`, `running`, `completed`, `failed`, `cancelled` or `expired`.
    #[schema(value_type = String, example = "completed")]
    pub status: &'static str,
    /// Attempts made so far.
    pub attempts: u32,
    /// The request body as uploaded.
    #[schema(value_type = Object)]
    pub input: Value,
    /// The upstream's answer (the final one, or the last error answer), if any.
    pub response: Option<ResultResponse>,
    /// Why the request did not succeed (so far), if it did not.
    pub error: Option<ResultError>,
}

/// An upstream answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultResponse {
    /// HTTP status.
    pub status_code: u16,
    /// The body: JSON when it parses, a string otherwise.
    #[schema(value_type = Object)]
    pub body: Value,
}

/// An error of a request.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultError {
    /// Machine-readable code, e.g. `upstream_status`, `timeout`, `batch_expired`.
    pub code: Option<String>,
    /// What went wrong.
    pub message: Option<String>,
}

fn json_or_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

fn result_object(batch: &BatchId, row: ResultRow) -> ResultObject {
    let response = row.status_code.map(|status_code| ResultResponse {
        status_code,
        body: json_or_text(row.response_body.as_deref().unwrap_or("")),
    });
    let has_error = row.error_code.is_some() || row.error_message.is_some();
    let error = has_error.then_some(ResultError {
        code: row.error_code,
        message: row.error_message,
    });
    ResultObject {
        id: public_request_id(batch, row.line),
        custom_id: row.custom_id,
        line: row.line,
        status: row.state.as_str(),
        attempts: row.attempts,
        input: json_or_text(row.input_body.as_deref().unwrap_or("null")),
        response,
        error,
    }
}

/// Query of the results view.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ResultsQuery {
    /// Only requests in this state.
    pub status: Option<String>,
    /// Continue after this entry id (`batch_req_…`).
    pub after: Option<String>,
    /// Page size, 1–1,000 (default 100).
    pub limit: Option<String>,
}

/// The input line an `after` cursor names: request ids end with the line in hex after the
/// batch id's random part.
fn cursor_line(batch: &BatchId, after: &str) -> Result<u64, ApiError> {
    let prefix = public_request_id(batch, 0);
    let prefix = &prefix[..prefix.len() - 8];
    after
        .strip_prefix(prefix)
        .filter(|hex| hex.len() >= 8)
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| crate::params::unknown_cursor(after))
}

/// Each input line of a batch next to its output or error.
#[utoipa::path(get, path = "/v1/batches/{batch_id}/results", tag = "fusillade",
    params(("batch_id" = String, Path, description = "The batch id"), ResultsQuery),
    responses((status = 200, body = ListObject<ResultObject>), (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse)))]
pub async fn results(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
    Query(q): Query<ResultsQuery>,
) -> Result<Json<ListObject<ResultObject>>, ApiError> {
    let c = &state.config;
    let limit = page_limit(
        q.limit.as_deref(),
        c.results_page_default,
        c.results_page_max,
    )?;
    let filter = match q.status.as_deref() {
        None => ResultFilter::All,
        Some(s) => ResultFilter::State(RequestState::parse(s).ok_or_else(|| {
            ApiError::bad("status", format!(
                "Invalid 'status': {s:?}. Expected pending, running, completed, failed, cancelled or expired."
            ))
        })?),
    };
    let batch = visible_batch(&state, &tenant, &id).await?;
    let after_line = match q.after.as_deref() {
        Some(after) => cursor_line(&batch.id, after)?,
        None => 0,
    };
    let params = ResultPage {
        batch_id: batch.id.clone(),
        filter,
        after_line,
        limit: limit + 1,
        with_input: true,
    };
    let mut rows = state.storage.result_page(&tenant.scope(), params).await?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let data = rows
        .into_iter()
        .map(|r| result_object(&batch.id, r))
        .collect();
    Ok(Json(ListObject::new(data, has_more, |r| &r.id)))
}

/// The answer to a retry.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetryObject {
    /// Always `batch.retry`.
    #[schema(value_type = String, example = "batch.retry")]
    pub object: &'static str,
    /// Failed requests put back to pending.
    pub retried: u64,
    /// The batch after the retry.
    pub batch: BatchObject,
}

/// Sends a batch's failed requests again, with a fresh attempt budget. The batch must be
/// `in_progress` or `completed` and before its deadline (else 409).
#[utoipa::path(post, path = "/v1/batches/{batch_id}/retry", tag = "fusillade",
    params(("batch_id" = String, Path, description = "The batch id")),
    responses((status = 200, body = RetryObject), (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse)))]
pub async fn retry(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<RetryObject>, ApiError> {
    let batch_id = BatchId::from_string(&id);
    let retried = match state
        .storage
        .batch_retry_failed(&tenant.scope(), &batch_id, Utc::now())
        .await
    {
        Err(StorageError::NotFound(_)) => return Err(ApiError::no_such("Batch", &id, "batch_id")),
        other => other?,
    };
    let batch = visible_batch(&state, &tenant, &id).await?;
    Ok(Json(RetryObject {
        object: "batch.retry",
        retried,
        batch: BatchObject::from(&batch),
    }))
}
