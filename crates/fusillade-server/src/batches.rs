//! `/v1/batches`: the Batch object, creation, retrieval, listing (with metadata search) and
//! cancellation.
//!
//! Status and counts, as documented in the README:
//! - Input lines are validated at upload, so a batch starts `in_progress` at creation (with
//!   `in_progress_at = created_at`); `validating` is never shown.
//! - `request_counts.failed` counts every request that ended without success: failed,
//!   expired and cancelled, i.e. exactly the lines of the error file. So `completed + failed`
//!   is the number of lines across both files, and equals `total` once the batch is final.
//! - `output_file_id` is set once at least one request completed, `error_file_id` once at least
//!   one ended without success (both readable while the batch runs); `null` otherwise, as
//!   OpenAI leaves them when a file would be empty.
//! - `finalizing_at` and `completed_at` are written together when the last request finishes.
//! - Cancelling a batch that is already final returns it unchanged (200); cancelling twice is
//!   harmless.

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::Utc;
use fusillade::model::{Batch, BatchId, FileId, FilePurpose, parse_completion_window};
use fusillade::storage::{BatchCreate, BatchList, StorageError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Tenant;
use crate::error::{ApiError, ErrorResponse};
use crate::files::visible_file;
use crate::params::{ApiJson, ListObject, page_limit, unknown_cursor};
use crate::state::AppState;

/// OpenAI's Batch object. Unset timestamps are explicit `null`s.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchObject {
    /// `batch_…`
    pub id: String,
    /// Always `batch`.
    #[schema(value_type = String, example = "batch")]
    pub object: &'static str,
    /// The endpoint every request targets.
    pub endpoint: String,
    /// Validation errors, as `{"object":"list","data":[…]}`, or `null`.
    pub errors: Option<BatchErrors>,
    /// The input file.
    pub input_file_id: String,
    /// The window given at creation.
    pub completion_window: Option<String>,
    /// `validating`, `failed`, `in_progress`, `finalizing`, `completed`, `expired`,
    /// `cancelling` or `cancelled`.
    #[schema(value_type = String, example = "in_progress")]
    pub status: &'static str,
    /// Successful results, once there is at least one.
    pub output_file_id: Option<String>,
    /// Unsuccessful results, once there is at least one.
    pub error_file_id: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub in_progress_at: Option<i64>,
    /// The deadline, unix seconds.
    pub expires_at: Option<i64>,
    /// Unix seconds.
    pub finalizing_at: Option<i64>,
    /// Unix seconds.
    pub completed_at: Option<i64>,
    /// Unix seconds.
    pub failed_at: Option<i64>,
    /// Unix seconds.
    pub expired_at: Option<i64>,
    /// Unix seconds.
    pub cancelling_at: Option<i64>,
    /// Unix seconds.
    pub cancelled_at: Option<i64>,
    /// Request counts.
    pub request_counts: RequestCountsObject,
    /// The metadata given at creation.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// `{"object":"list","data":[…]}` of validation errors.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchErrors {
    /// Always `list`.
    #[schema(value_type = String, example = "list")]
    pub object: &'static str,
    /// The errors.
    pub data: Vec<BatchErrorObject>,
}

/// One validation error.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchErrorObject {
    /// Machine-readable code.
    pub code: String,
    /// What is wrong.
    pub message: String,
    /// The parameter at fault.
    pub param: Option<String>,
    /// The 1-based input line at fault.
    pub line: Option<u64>,
}

/// Request counts. `failed` includes expired and cancelled requests (see the module docs).
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestCountsObject {
    /// Every request of the batch.
    pub total: u64,
    /// Finished with a 2xx response.
    pub completed: u64,
    /// Ended without success: failed, expired or cancelled.
    pub failed: u64,
}

impl From<&Batch> for BatchObject {
    fn from(b: &Batch) -> Self {
        let secs = |t: Option<chrono::DateTime<Utc>>| t.map(|t| t.timestamp());
        let unsuccessful = b.counts.failed + b.counts.expired + b.counts.cancelled;
        let errors = (!b.errors.is_empty()).then(|| BatchErrors {
            object: "list",
            data: b
                .errors
                .iter()
                .map(|e| BatchErrorObject {
                    code: e.code.clone(),
                    message: e.message.clone(),
                    param: e.param.clone(),
                    line: e.line,
                })
                .collect(),
        });
        Self {
            id: b.id.to_string(),
            object: "batch",
            endpoint: b.endpoint.clone(),
            errors,
            input_file_id: b.input_file_id.to_string(),
            completion_window: b.completion_window.clone(),
            status: b.status.as_str(),
            output_file_id: (b.counts.completed > 0).then(|| b.output_file_id.to_string()),
            error_file_id: (unsuccessful > 0).then(|| b.error_file_id.to_string()),
            created_at: b.created_at.timestamp(),
            in_progress_at: secs(b.in_progress_at),
            expires_at: secs(b.expires_at),
            finalizing_at: secs(b.finalizing_at),
            completed_at: secs(b.completed_at),
            failed_at: secs(b.failed_at),
            expired_at: secs(b.expired_at),
            cancelling_at: secs(b.cancelling_at),
            cancelled_at: secs(b.cancelled_at),
            request_counts: RequestCountsObject {
                total: b.counts.total,
                completed: b.counts.completed,
                failed: unsuccessful,
            },
            metadata: b.metadata.clone(),
        }
    }
}

/// Body of `POST /v1/batches`. Every field is optional here so that a missing one is reported
/// with its name in `param`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CreateBatch {
    /// An uploaded file with purpose `batch`.
    pub input_file_id: Option<String>,
    /// The endpoint every line targets, e.g. `/v1/chat/completions`.
    pub endpoint: Option<String>,
    /// One of the configured windows (default only `24h`).
    pub completion_window: Option<String>,
    /// Up to 16 string pairs; keys ≤ 64 characters, values ≤ 512.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Accepted for compatibility and checked; output files do not expire.
    #[schema(value_type = Option<Object>)]
    pub output_expires_after: Option<Value>,
}

fn required<'a>(value: &'a Option<String>, name: &'static str) -> Result<&'a str, ApiError> {
    value
        .as_deref()
        .ok_or_else(|| ApiError::bad(name, format!("Missing required parameter: '{name}'.")))
}

/// Creates a batch from an uploaded file.
#[utoipa::path(post, path = "/v1/batches", tag = "batches", request_body = CreateBatch,
    responses((status = 200, body = BatchObject), (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 413, body = ErrorResponse)))]
pub async fn create(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiJson(body): ApiJson<CreateBatch>,
) -> Result<Json<BatchObject>, ApiError> {
    let file_id = required(&body.input_file_id, "input_file_id")?;
    let endpoint = required(&body.endpoint, "endpoint")?;
    let window = required(&body.completion_window, "completion_window")?;
    let duration = check_target(&state.config, endpoint, window)?;
    let metadata = check_metadata(body.metadata)?;
    check_output_expiry(body.output_expires_after.as_ref())?;
    let file = visible_file(&state, &tenant, file_id, "input_file_id").await?;
    if file.purpose != FilePurpose::Batch {
        return Err(ApiError::bad(
            "input_file_id",
            format!(
                "File {file_id} has purpose 'batch_output'; a batch needs a file uploaded with purpose 'batch'."
            ),
        ));
    }
    let now = Utc::now();
    let created = state.storage.batch_create(BatchCreate {
        owner: tenant.0.clone(),
        input_file_id: FileId::from_string(file_id),
        endpoint: Some(endpoint.to_string()),
        completion_window: Some(window.to_string()),
        expires_at: Some(now + duration),
        metadata,
        now,
    });
    match created.await {
        Ok(batch) => Ok(Json(BatchObject::from(&batch))),
        Err(StorageError::NotFound(_)) => Err(ApiError::no_such("File", file_id, "input_file_id")),
        // The only conflict left is a line whose url is not the batch's endpoint.
        Err(StorageError::Conflict(message)) => Err(ApiError::bad("endpoint", message)),
        Err(e) => Err(e.into()),
    }
}

/// Checks the endpoint against the allowed ones and returns the window's length.
fn check_target(
    config: &crate::ApiConfig,
    endpoint: &str,
    window: &str,
) -> Result<chrono::Duration, ApiError> {
    if !config.allowed_endpoints.iter().any(|e| e == endpoint) {
        return Err(ApiError::bad(
            "endpoint",
            format!(
                "Unsupported endpoint '{endpoint}'. Supported: {}.",
                config.allowed_endpoints.join(", ")
            ),
        ));
    }
    let allowed = config.completion_windows.iter().any(|w| w == window);
    allowed
        .then(|| parse_completion_window(window))
        .flatten()
        .ok_or_else(|| {
            ApiError::bad(
                "completion_window",
                format!(
                    "Unsupported completion_window '{window}'. Allowed values: {}.",
                    config.completion_windows.join(", ")
                ),
            )
        })
}

/// OpenAI's metadata rules: an object of at most 16 string values, keys ≤ 64 characters,
/// values ≤ 512.
fn check_metadata(metadata: Option<Value>) -> Result<Option<Map<String, Value>>, ApiError> {
    let bad = |m: String| Err(ApiError::bad("metadata", m));
    let map = match metadata {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(map)) => map,
        Some(_) => return bad("Invalid 'metadata': expected an object of string values.".into()),
    };
    if map.len() > 16 {
        return bad(format!(
            "Invalid 'metadata': {} keys; at most 16 are allowed.",
            map.len()
        ));
    }
    for (key, value) in &map {
        if key.chars().count() > 64 {
            return bad(format!(
                "Invalid 'metadata': key {key:?} is longer than 64 characters."
            ));
        }
        let Value::String(text) = value else {
            return bad(format!(
                "Invalid 'metadata': the value of {key:?} must be a string."
            ));
        };
        if text.chars().count() > 512 {
            return bad(format!(
                "Invalid 'metadata': the value of {key:?} is longer than 512 characters."
            ));
        }
    }
    Ok(Some(map))
}

fn check_output_expiry(value: Option<&Value>) -> Result<(), ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let anchor_ok = value.get("anchor").and_then(Value::as_str) == Some("created_at");
    let seconds = value.get("seconds").and_then(Value::as_i64);
    if anchor_ok && seconds.is_some_and(|s| (3600..=2_592_000).contains(&s)) {
        return Ok(());
    }
    Err(ApiError::bad(
        "output_expires_after",
        "Invalid 'output_expires_after': expected {\"anchor\": \"created_at\", \"seconds\": 3600..2592000}.",
    ))
}

/// The batch `id` if this tenant may see it.
pub(crate) async fn visible_batch(
    state: &AppState,
    tenant: &Tenant,
    id: &str,
) -> Result<Batch, ApiError> {
    match state
        .storage
        .batch_get(&tenant.scope(), &BatchId::from_string(id))
        .await
    {
        Err(StorageError::NotFound(_)) => Err(ApiError::no_such("Batch", id, "batch_id")),
        other => Ok(other?),
    }
}

/// Retrieves a batch.
#[utoipa::path(get, path = "/v1/batches/{batch_id}", tag = "batches",
    params(("batch_id" = String, Path, description = "The batch id")),
    responses((status = 200, body = BatchObject), (status = 404, body = ErrorResponse)))]
pub async fn get(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<BatchObject>, ApiError> {
    Ok(Json(BatchObject::from(
        &visible_batch(&state, &tenant, &id).await?,
    )))
}

/// Query of `GET /v1/batches`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BatchListQuery {
    /// Continue after this batch id.
    pub after: Option<String>,
    /// Page size, 1–100 (default 20).
    pub limit: Option<String>,
    /// Only batches whose metadata contains this text, case-insensitive (beyond OpenAI).
    pub search: Option<String>,
}

/// Lists the tenant's batches, newest first.
#[utoipa::path(get, path = "/v1/batches", tag = "batches", params(BatchListQuery),
    responses((status = 200, body = ListObject<BatchObject>), (status = 400, body = ErrorResponse)))]
pub async fn list(
    State(state): State<AppState>,
    tenant: Tenant,
    Query(q): Query<BatchListQuery>,
) -> Result<Json<ListObject<BatchObject>>, ApiError> {
    let c = &state.config;
    let limit = page_limit(
        q.limit.as_deref(),
        c.batches_page_default,
        c.batches_page_max,
    )?;
    let page = state.storage.batch_list(BatchList {
        scope: tenant.scope(),
        after: q.after.as_deref().map(BatchId::from_string),
        limit,
        search: q.search.filter(|s| !s.is_empty()),
    });
    let page = match page.await {
        Err(StorageError::NotFound(_)) => {
            return Err(unknown_cursor(q.after.as_deref().unwrap_or_default()));
        }
        other => other?,
    };
    let data = page.items.iter().map(BatchObject::from).collect();
    Ok(Json(ListObject::new(data, page.has_more, |b| &b.id)))
}

/// Cancels a batch: unstarted requests are never sent and in-flight calls are aborted. The
/// batch is `cancelling` until in-flight calls stop, then `cancelled`. A batch that is already
/// final is returned unchanged.
#[utoipa::path(post, path = "/v1/batches/{batch_id}/cancel", tag = "batches",
    params(("batch_id" = String, Path, description = "The batch id")),
    responses((status = 200, body = BatchObject), (status = 404, body = ErrorResponse)))]
pub async fn cancel(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<BatchObject>, ApiError> {
    let (scope, batch_id) = (tenant.scope(), BatchId::from_string(&id));
    match state
        .storage
        .batch_cancel(&scope, &batch_id, Utc::now())
        .await
    {
        Ok(batch) => Ok(Json(BatchObject::from(&batch))),
        Err(StorageError::NotFound(_)) => Err(ApiError::no_such("Batch", &id, "batch_id")),
        Err(e) => Err(e.into()),
    }
}
