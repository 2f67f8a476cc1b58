//! `/v1/files`: the File object, listing, retrieval, deletion and per-model statistics. Uploads
//! are in [`crate::upload`], downloads in [`crate::content`].

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::Utc;
use fusillade::model::{File, FileId, FilePurpose};
use fusillade::storage::{FileList, StorageError};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Tenant;
use crate::error::{ApiError, ErrorResponse};
use crate::params::{ListObject, page_limit, unknown_cursor};
use crate::state::AppState;

/// OpenAI's File object.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileObject {
    /// `file-…`
    pub id: String,
    /// Always `file`.
    #[schema(value_type = String, example = "file")]
    pub object: &'static str,
    /// Size in bytes of an upload. Generated output and error files report 0: their content
    /// is rendered from the results when downloaded.
    pub bytes: u64,
    /// Unix seconds.
    pub created_at: i64,
    /// The uploaded file's name.
    pub filename: String,
    /// `batch` for uploads; `batch_output` for a batch's output and error files, as OpenAI.
    #[schema(value_type = String, example = "batch")]
    pub purpose: &'static str,
    /// Always `processed`: uploads are validated before the response.
    #[schema(value_type = String, example = "processed")]
    pub status: &'static str,
    /// Unix seconds after which the file is gone, if it expires.
    pub expires_at: Option<i64>,
    /// Always `null`.
    #[schema(value_type = Option<String>)]
    pub status_details: Option<()>,
}

impl From<&File> for FileObject {
    fn from(f: &File) -> Self {
        Self {
            id: f.id.to_string(),
            object: "file",
            bytes: f.bytes,
            created_at: f.created_at.timestamp(),
            filename: f.filename.clone(),
            purpose: api_purpose(f.purpose),
            status: "processed",
            expires_at: f.expires_at.map(|t| t.timestamp()),
            status_details: None,
        }
    }
}

/// The purpose as OpenAI names it: both generated files are `batch_output`.
fn api_purpose(p: FilePurpose) -> &'static str {
    match p {
        FilePurpose::Batch => "batch",
        FilePurpose::BatchOutput | FilePurpose::BatchError => "batch_output",
    }
}

/// Whether a file has passed its `expires_at`: it is then gone, as at OpenAI.
fn expired(f: &File) -> bool {
    f.expires_at.is_some_and(|t| t <= Utc::now())
}

/// The file `id` if this tenant may see it; 404 otherwise (unknown, deleted, expired, or
/// another tenant's).
pub(crate) async fn visible_file(
    state: &AppState,
    tenant: &Tenant,
    id: &str,
    param: &'static str,
) -> Result<File, ApiError> {
    match state
        .storage
        .file_get(&tenant.scope(), &FileId::from_string(id))
        .await
    {
        Ok(f) if !expired(&f) => Ok(f),
        Ok(_) | Err(StorageError::NotFound(_)) => Err(ApiError::no_such("File", id, param)),
        Err(e) => Err(e.into()),
    }
}

/// Query of `GET /v1/files`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FileListQuery {
    /// Only files with this purpose (`batch` or `batch_output`).
    pub purpose: Option<String>,
    /// Continue after this file id.
    pub after: Option<String>,
    /// Page size, 1–10,000 (default 10,000).
    pub limit: Option<String>,
    /// `asc` or `desc` by creation time (default `desc`).
    pub order: Option<String>,
}

/// Lists the tenant's files.
#[utoipa::path(get, path = "/v1/files", tag = "files", params(FileListQuery),
    responses((status = 200, body = ListObject<FileObject>), (status = 400, body = ErrorResponse)))]
pub async fn list(
    State(state): State<AppState>,
    tenant: Tenant,
    Query(q): Query<FileListQuery>,
) -> Result<Json<ListObject<FileObject>>, ApiError> {
    let c = &state.config;
    let limit = page_limit(q.limit.as_deref(), c.files_page_default, c.files_page_max)?;
    let ascending = match q.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(other) => {
            return Err(ApiError::bad(
                "order",
                format!("Invalid 'order': {other:?}. Expected 'asc' or 'desc'."),
            ));
        }
    };
    let mut params = FileList {
        scope: tenant.scope(),
        // `batch_output` covers two stored purposes, so that filter is applied here.
        purpose: (q.purpose.as_deref() == Some("batch")).then_some(FilePurpose::Batch),
        after: q.after.as_deref().map(FileId::from_string),
        limit: limit + 1,
        ascending,
    };
    let wanted = |f: &File| {
        !expired(f)
            && q.purpose
                .as_deref()
                .is_none_or(|p| api_purpose(f.purpose) == p)
    };
    // Expired files and the purpose filter are applied here, so storage pages may hold items
    // this list skips: read on until a full page plus one is found or storage runs out.
    let mut kept = Vec::new();
    loop {
        let page = match state.storage.file_list(params.clone()).await {
            Err(StorageError::NotFound(_)) => {
                return Err(unknown_cursor(q.after.as_deref().unwrap_or_default()));
            }
            other => other?,
        };
        params.after = page.items.last().map(|f| f.id.clone());
        kept.extend(
            page.items
                .iter()
                .filter(|f| wanted(f))
                .map(FileObject::from),
        );
        if kept.len() > limit as usize || !page.has_more {
            break;
        }
    }
    let has_more = kept.len() > limit as usize;
    kept.truncate(limit as usize);
    Ok(Json(ListObject::new(kept, has_more, |f| &f.id)))
}

/// Retrieves one file.
#[utoipa::path(get, path = "/v1/files/{file_id}", tag = "files",
    params(("file_id" = String, Path, description = "The file id")),
    responses((status = 200, body = FileObject), (status = 404, body = ErrorResponse)))]
pub async fn get(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<FileObject>, ApiError> {
    let file = visible_file(&state, &tenant, &id, "id").await?;
    Ok(Json(FileObject::from(&file)))
}

/// The answer to a deletion.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileDeleted {
    /// The deleted file's id.
    pub id: String,
    /// Always `file`.
    #[schema(value_type = String, example = "file")]
    pub object: &'static str,
    /// Always true.
    pub deleted: bool,
}

/// Deletes a file. Batches already created from an input file keep running and keep their
/// results: deletion does not cascade.
#[utoipa::path(delete, path = "/v1/files/{file_id}", tag = "files",
    params(("file_id" = String, Path, description = "The file id")),
    responses((status = 200, body = FileDeleted), (status = 404, body = ErrorResponse)))]
pub async fn delete(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<FileDeleted>, ApiError> {
    let file = visible_file(&state, &tenant, &id, "id").await?;
    match state
        .storage
        .file_delete(&tenant.scope(), &file.id, Utc::now())
        .await
    {
        Err(StorageError::NotFound(_)) => return Err(ApiError::no_such("File", &id, "id")),
        other => other?,
    }
    Ok(Json(FileDeleted {
        id,
        object: "file",
        deleted: true,
    }))
}

/// Request count and body bytes of one model in an input file.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelStatsObject {
    /// `body.model`.
    pub model: String,
    /// Lines for the model.
    pub requests: u64,
    /// Sum of their request body sizes in bytes (a token estimate is about bytes / 4).
    pub body_bytes: u64,
}

/// Per-model statistics of an input file, for cost estimates (beyond OpenAI).
#[derive(Debug, Serialize, ToSchema)]
pub struct FileStats {
    /// Always `file.stats`.
    #[schema(value_type = String, example = "file.stats")]
    pub object: &'static str,
    /// The file.
    pub file_id: String,
    /// Lines in the file.
    pub total_requests: u64,
    /// Sum of every request body size in bytes.
    pub total_body_bytes: u64,
    /// One entry per model, by model name.
    pub models: Vec<ModelStatsObject>,
}

/// Per-model request counts and body bytes of an input file.
#[utoipa::path(get, path = "/v1/files/{file_id}/stats", tag = "fusillade",
    params(("file_id" = String, Path, description = "An input file id (purpose batch)")),
    responses((status = 200, body = FileStats), (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse)))]
pub async fn stats(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<FileStats>, ApiError> {
    let file = visible_file(&state, &tenant, &id, "id").await?;
    if file.purpose != FilePurpose::Batch {
        return Err(ApiError::bad(
            "id",
            "Statistics are available for input files (purpose 'batch') only.",
        ));
    }
    let models = state
        .storage
        .file_model_stats(&tenant.scope(), &file.id)
        .await?;
    Ok(Json(FileStats {
        object: "file.stats",
        file_id: id,
        total_requests: models.iter().map(|m| m.requests).sum(),
        total_body_bytes: models.iter().map(|m| m.body_bytes).sum(),
        models: models
            .into_iter()
            .map(|m| ModelStatsObject {
                model: m.model,
                requests: m.requests,
                body_bytes: m.body_bytes,
            })
            .collect(),
    }))
}
