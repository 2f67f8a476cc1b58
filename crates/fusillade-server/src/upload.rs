//! `POST /v1/files`: a multipart upload streamed straight into storage.
//!
//! The `file` part is never buffered: its bytes go through the line parser
//! (`fusillade::ingest::upload_stream`) into `Storage::file_create` as they arrive, so memory
//! stays flat however large the file. A bad line, a size overrun or a broken upload aborts the
//! stream, and storage then keeps nothing. Form fields are expected before the file, as the SDK
//! and OpenAI's examples send them; a field that arrives after the file and changes the outcome
//! rejects the upload and removes the stored file.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::extract::multipart::{Field, Multipart, MultipartError, MultipartRejection};
use chrono::{Duration, Utc};
use fusillade::ingest::upload_stream;
use fusillade::model::{File, Timestamp};
use fusillade::storage::FileCreate;
use futures::StreamExt;
use http::HeaderMap;
use tokio_util::io::StreamReader;
use utoipa::ToSchema;

use crate::auth::Tenant;
use crate::error::{ApiError, ErrorResponse};
use crate::files::FileObject;
use crate::state::AppState;

/// Room for the multipart envelope and form fields beyond the file's own bytes.
pub(crate) const MULTIPART_OVERHEAD: u64 = 64 * 1024;
/// Longest accepted value of a text form field.
const MAX_FIELD_BYTES: usize = 1024;
/// Shortest and longest `expires_after[seconds]`: one hour to thirty days, as OpenAI.
const EXPIRY_SECONDS: std::ops::RangeInclusive<i64> = 3600..=2_592_000;

/// The multipart form. It only describes the upload in the OpenAPI document; the handler
/// reads the parts one by one as they stream.
#[allow(dead_code)]
#[derive(Debug, ToSchema)]
pub(crate) struct UploadForm {
    /// The JSONL file of requests.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// Must be `batch`.
    purpose: String,
    /// Optional: `created_at`.
    #[schema(rename = "expires_after[anchor]")]
    expires_after_anchor: Option<String>,
    /// Optional: 3600–2592000.
    #[schema(rename = "expires_after[seconds]")]
    expires_after_seconds: Option<i64>,
}

/// What the form said so far.
#[derive(Default)]
struct Form {
    purpose: Option<String>,
    anchor: Option<String>,
    seconds: Option<String>,
    /// The stored file, once the `file` part has been read.
    file: Option<File>,
    /// Whether an expiry field arrived after the file.
    late_expiry: bool,
}

/// Uploads a batch input file. Every line is validated while it streams; a bad line rejects
/// the whole upload with `Line N: …` and stores nothing.
#[utoipa::path(post, path = "/v1/files", tag = "files",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses((status = 200, body = FileObject), (status = 400, body = ErrorResponse),
        (status = 413, body = ErrorResponse), (status = 429, body = ErrorResponse)))]
pub(crate) async fn upload(
    State(state): State<AppState>,
    tenant: Tenant,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<FileObject>, ApiError> {
    let _slot = state
        .uploads
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Busy {
            message: "Too many uploads in progress; retry shortly.".into(),
            retry_after: 1,
        })?;
    check_content_length(&headers, state.config.max_upload_bytes)?;
    let mut multipart = multipart.map_err(|e| ApiError::BadRequest {
        message: format!("Invalid multipart request: {}", e.body_text()),
        param: None,
        code: None,
    })?;
    let mut form = Form::default();
    let read = read_form(&state, &tenant, &mut multipart, &mut form).await;
    let outcome = read.and_then(|()| check_form(&form));
    match (outcome, form.file) {
        (Ok(()), Some(file)) => Ok(Json(FileObject::from(&file))),
        (Ok(()), None) => Err(ApiError::bad("file", "No file field found in the upload.")),
        (Err(e), stored) => {
            if let Some(file) = stored {
                // A late field made the upload invalid after the file was stored.
                state
                    .storage
                    .file_delete(&tenant.scope(), &file.id, Utc::now())
                    .await?;
            }
            Err(e)
        }
    }
}

fn check_content_length(headers: &HeaderMap, max: u64) -> Result<(), ApiError> {
    let length = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        Some(n) if n > max + MULTIPART_OVERHEAD => Err(too_large(max)),
        _ => Ok(()),
    }
}

fn too_large(max: u64) -> ApiError {
    ApiError::TooLarge(format!(
        "File exceeds the maximum allowed size of {max} bytes."
    ))
}

async fn read_form(
    state: &AppState,
    tenant: &Tenant,
    multipart: &mut Multipart,
    form: &mut Form,
) -> Result<(), ApiError> {
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "file" if form.file.is_some() => {
                return Err(ApiError::bad(
                    "file",
                    "Only one file may be uploaded at a time.",
                ));
            }
            "file" => {
                check_purpose(form.purpose.as_deref().unwrap_or("batch"))?;
                let expires_at = expiry(form, Utc::now())?;
                form.file = Some(store(state, tenant, field, expires_at).await?);
            }
            "purpose" => form.purpose = Some(text(field).await?),
            "expires_after[anchor]" | "expires_after[seconds]" => {
                form.late_expiry |= form.file.is_some();
                let value = Some(text(field).await?);
                if name.ends_with("[anchor]") {
                    form.anchor = value;
                } else {
                    form.seconds = value;
                }
            }
            // Other fields are ignored, as unknown JSON fields are.
            _ => drop(text(field).await),
        }
    }
    Ok(())
}

/// Checks the whole form once it has been read.
fn check_form(form: &Form) -> Result<(), ApiError> {
    let Some(purpose) = form.purpose.as_deref() else {
        return Err(ApiError::bad(
            "purpose",
            "Missing required parameter: 'purpose'.",
        ));
    };
    check_purpose(purpose)?;
    if form.late_expiry {
        return Err(ApiError::bad(
            "expires_after",
            "Send the expires_after fields before the file part.",
        ));
    }
    Ok(())
}

fn check_purpose(purpose: &str) -> Result<(), ApiError> {
    if purpose == "batch" {
        return Ok(());
    }
    Err(ApiError::bad(
        "purpose",
        format!("Invalid purpose '{purpose}'. Only 'batch' is supported."),
    ))
}

/// `expires_at` from the `expires_after` fields, anchored at `now` (the file's `created_at`).
fn expiry(form: &Form, now: Timestamp) -> Result<Option<Timestamp>, ApiError> {
    match (form.anchor.as_deref(), form.seconds.as_deref()) {
        (None, None) => Ok(None),
        (Some("created_at"), Some(seconds)) => match seconds.trim().parse::<i64>() {
            Ok(s) if EXPIRY_SECONDS.contains(&s) => Ok(Some(now + Duration::seconds(s))),
            _ => Err(ApiError::bad(
                "expires_after[seconds]",
                format!(
                    "Invalid 'expires_after[seconds]': {seconds:?}. Expected an integer from 3600 to 2592000."
                ),
            )),
        },
        (Some(anchor), Some(_)) if anchor != "created_at" => Err(ApiError::bad(
            "expires_after[anchor]",
            format!("Invalid 'expires_after[anchor]': {anchor:?}. Expected 'created_at'."),
        )),
        _ => Err(ApiError::bad(
            "expires_after",
            "expires_after needs both [anchor] and [seconds].",
        )),
    }
}

/// Reads a small text field.
async fn text(mut field: Field<'_>) -> Result<String, ApiError> {
    let name = field.name().unwrap_or_default().to_string();
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_FIELD_BYTES {
            return Err(ApiError::BadRequest {
                message: format!("Form field '{name}' is longer than {MAX_FIELD_BYTES} bytes."),
                param: None,
                code: None,
            });
        }
    }
    String::from_utf8(bytes).map_err(|_| ApiError::BadRequest {
        message: format!("Form field '{name}' is not UTF-8."),
        param: None,
        code: None,
    })
}

fn multipart_error(e: MultipartError) -> ApiError {
    if e.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::TooLarge(e.body_text());
    }
    ApiError::BadRequest {
        message: format!("Failed to read the multipart upload: {}", e.body_text()),
        param: None,
        code: None,
    }
}

/// Streams the file part through the parser into storage. The byte counter and the multipart
/// reader report their own failures through `failure`, which wins over the parser's generic
/// "reading the file failed" when the upload is rejected.
async fn store(
    state: &AppState,
    tenant: &Tenant,
    field: Field<'_>,
    expires_at: Option<Timestamp>,
) -> Result<File, ApiError> {
    let max = state.config.max_upload_bytes;
    let filename = field.file_name().unwrap_or("upload.jsonl").to_string();
    let failure: Arc<Mutex<Option<ApiError>>> = Arc::default();
    let report = failure.clone();
    let mut seen = 0u64;
    let bytes = field.map(move |chunk| {
        let error = match chunk {
            Ok(bytes) => {
                seen += bytes.len() as u64;
                if seen <= max {
                    return Ok(bytes);
                }
                too_large(max)
            }
            Err(e) => multipart_error(e),
        };
        let message = error.to_string();
        *report.lock().expect("not poisoned") = Some(error);
        Err(std::io::Error::other(message))
    });
    let now = Utc::now();
    let params = FileCreate {
        owner: tenant.0.clone(),
        filename,
        expires_at,
        now,
    };
    let limits = state.config.input_limits();
    let stored = state
        .storage
        .file_create(params, upload_stream(StreamReader::new(bytes), limits))
        .await;
    stored.map_err(|e| {
        failure
            .lock()
            .expect("not poisoned")
            .take()
            .unwrap_or(e.into())
    })
}
