//! `GET /v1/files/{id}/content`: a file's lines, streamed a storage page at a time.
//!
//! Input files are re-serialised from their stored templates in line order (each body exactly
//! as uploaded). Output and error files are rendered from the batch's results with
//! `fusillade::output::render_lines`, and can be read while the batch runs: `X-Incomplete: true`
//! says more lines may still arrive. The body is a stream, never collected, so memory stays
//! flat for a million-line file. `Accept` is ignored, so the SDK's `application/binary` works.

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use fusillade::Storage;
use fusillade::model::{BatchId, FileId, FilePurpose, NewTemplate};
use fusillade::output::render_lines;
use fusillade::storage::{ResultFilter, ResultPage, ResultRow, Scope, StorageError};
use futures::{Stream, StreamExt, stream};
use http::{HeaderValue, header};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::auth::Tenant;
use crate::error::{ApiError, ErrorResponse};
use crate::files::visible_file;
use crate::state::AppState;

/// Result rows read per storage call: large enough that a download is not dominated by round
/// trips, small enough that one page of large responses stays a few MB. A result page arrives
/// as one packed value, and at 2,000 rows (~1 MB) every copy of it faulted in fresh memory;
/// at 250 rows (~110 KB) a page stays under the allocator's 128 KB `mmap` threshold, and
/// downloads measured about 10% faster than at 500.
const PAGE_ROWS: u32 = 250;
/// Input-file lines read per storage call.
const INPUT_PAGE_ROWS: u32 = 2_000;
/// Pages read ahead of the one being rendered.
const PREFETCH: usize = 2;

/// Downloads a file's content as JSONL.
#[utoipa::path(get, path = "/v1/files/{file_id}/content", tag = "files",
    params(("file_id" = String, Path, description = "The file id")),
    responses((status = 200, description = "The JSONL content", content_type = "application/jsonl", body = String),
        (status = 404, body = ErrorResponse)))]
pub(crate) async fn content(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let file = visible_file(&state, &tenant, &id, "id").await?;
    let storage = state.storage.clone();
    let scope = tenant.scope();
    let (body, incomplete) = match file.purpose {
        FilePurpose::Batch => (
            Body::from_stream(input_lines(storage, scope, file.id)),
            false,
        ),
        purpose => {
            let batch = match storage.batch_get_by_output_file(&scope, &file.id).await {
                Err(StorageError::NotFound(_)) => return Err(ApiError::no_such("File", &id, "id")),
                other => other?,
            };
            let filter = match purpose {
                FilePurpose::BatchOutput => ResultFilter::Output,
                _ => ResultFilter::Errors,
            };
            let lines = result_lines(storage, scope, batch.id, filter);
            (Body::from_stream(lines), !batch.status.is_final())
        }
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jsonl; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}\"",
        file.filename.replace(['"', '\\'], "_")
    )) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert(
        "x-incomplete",
        HeaderValue::from_static(if incomplete { "true" } else { "false" }),
    );
    Ok(response)
}

/// A storage failure in the middle of a download can only cut the stream short: the status
/// line is long gone. Log it here, where the cause is known.
fn broken(e: StorageError) -> std::io::Error {
    tracing::error!(error = %e, "download aborted by a storage error");
    std::io::Error::other("storage error")
}

#[derive(Serialize)]
struct InputLine<'a> {
    custom_id: &'a str,
    method: &'static str,
    url: &'a str,
    body: &'a RawValue,
}

fn render_template(t: &NewTemplate, out: &mut String) {
    // Bodies were validated as JSON objects at upload, so they parse back.
    let Ok(body) = serde_json::from_str::<&RawValue>(&t.body) else {
        return;
    };
    let line = InputLine {
        custom_id: &t.custom_id,
        method: "POST",
        url: &t.url,
        body,
    };
    out.push_str(&serde_json::to_string(&line).expect("line serializes"));
    out.push('\n');
}

/// A body stream of pages. A spawned task reads page after page from storage (`fetch(after)`
/// gives the rows after a cursor and the next cursor, or `None` at the end) while this stream
/// renders the previous page, so the database read and the rendering overlap. At most
/// [`PREFETCH`] pages wait, and the task stops when the client goes away.
fn paged<R, F, Fut>(
    mut fetch: F,
    render: impl Fn(&[R]) -> Bytes + Send + 'static,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    R: Send + 'static,
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Option<(Vec<R>, u64)>, StorageError>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(PREFETCH);
    tokio::spawn(async move {
        let mut after = 0;
        loop {
            let page = fetch(after).await;
            let next = match &page {
                Ok(Some((_, next))) => Some(*next),
                _ => None,
            };
            let stop = next.is_none();
            if tx.send(page).await.is_err() || stop {
                return;
            }
            after = next.unwrap_or_default();
        }
    });
    stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|page| (page, rx))
    })
    .take_while(|page| std::future::ready(!matches!(page, Ok(None))))
    .map(move |page| match page {
        Ok(Some((rows, _))) => Ok(render(&rows)),
        Ok(None) => Ok(Bytes::new()),
        Err(e) => Err(broken(e)),
    })
}

fn input_lines(
    storage: Arc<dyn Storage>,
    scope: Scope,
    id: FileId,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let fetch = move |after| {
        let (storage, scope, id) = (storage.clone(), scope.clone(), id.clone());
        async move {
            let page = storage
                .template_page(&scope, &id, after, INPUT_PAGE_ROWS)
                .await?;
            Ok(page.last().map(|t| t.line).map(|last| (page, last)))
        }
    };
    paged(fetch, |page: &[NewTemplate]| {
        let mut chunk = String::with_capacity(page.len() * 256);
        page.iter().for_each(|t| render_template(t, &mut chunk));
        Bytes::from(chunk)
    })
}

fn result_lines(
    storage: Arc<dyn Storage>,
    scope: Scope,
    batch: BatchId,
    filter: ResultFilter,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let batch_id = batch.clone();
    let fetch = move |after_line| {
        let (storage, scope, batch_id) = (storage.clone(), scope.clone(), batch_id.clone());
        async move {
            let params = ResultPage {
                batch_id,
                filter,
                after_line,
                limit: PAGE_ROWS,
                with_input: false,
            };
            let rows = storage.result_page(&scope, params).await?;
            Ok(rows.last().map(|r| r.line).map(|last| (rows, last)))
        }
    };
    paged(fetch, move |rows: &[ResultRow]| {
        let mut chunk = Vec::with_capacity(rows.len() * 512);
        render_lines(&batch, rows, &mut chunk);
        Bytes::from(chunk)
    })
}
