//! Output and error files in the OpenAI Batch API format, produced from storage a page at a
//! time so that memory never depends on the size of the batch.
//!
//! Output line: `{"id","custom_id","response":{"status_code","request_id","body"},"error":null}`.
//! Error line: `response` is set when the upstream answered (its status and body), `null`
//! otherwise; `error` is `{"code","message"}` saying why the request did not succeed.

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::model::{BatchId, RequestState, public_request_id};
use crate::storage::{ResultFilter, ResultPage, ResultRow, Scope, Storage, StorageError};

/// Rows read per storage call while writing a file.
const PAGE_ROWS: u32 = 1_000;

#[derive(Serialize)]
struct Line<'a> {
    id: String,
    custom_id: &'a str,
    response: Option<Response<'a>>,
    error: Option<ErrorBody<'a>>,
}

#[derive(Serialize)]
struct Response<'a> {
    status_code: u16,
    request_id: String,
    body: Body<'a>,
}

/// A body as returned upstream: embedded as JSON when it is JSON, as a string otherwise.
enum Body<'a> {
    Json(&'a RawValue),
    Text(&'a str),
}

impl Serialize for Body<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Body::Json(raw) => raw.serialize(s),
            Body::Text(text) => s.serialize_str(text),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

/// Renders one result row as a JSONL line (with its trailing newline) for the output or error
/// file. Rows that are not final yet render as `None`.
pub fn render_line(batch: &BatchId, row: &ResultRow) -> Option<String> {
    if !row.state.is_final() {
        return None;
    }
    let public_id = public_request_id(batch, row.line);
    let response = row.status_code.map(|status_code| Response {
        status_code,
        request_id: row
            .upstream_request_id
            .clone()
            .unwrap_or_else(|| public_id.clone()),
        body: body(row.response_body.as_deref().unwrap_or("")),
    });
    let error = (row.state != RequestState::Completed).then(|| ErrorBody {
        code: row.error_code.as_deref().unwrap_or("failed"),
        message: row.error_message.as_deref().unwrap_or("the request failed"),
    });
    let line = Line {
        id: public_id,
        custom_id: &row.custom_id,
        response,
        error,
    };
    let mut text = serde_json::to_string(&line).expect("line serializes");
    text.push('\n');
    Some(text)
}

fn body(text: &str) -> Body<'_> {
    match serde_json::from_str::<&RawValue>(text) {
        Ok(raw) => Body::Json(raw),
        Err(_) => Body::Text(text),
    }
}

/// Which file to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultFile {
    /// Completed requests.
    Output,
    /// Failed, expired and cancelled requests.
    Errors,
}

/// Writes the output or error file of `batch` to `out`, in input line order. Returns the
/// number of lines written.
pub async fn write_results<W: AsyncWrite + Unpin>(
    storage: &dyn Storage,
    scope: &Scope,
    batch: &BatchId,
    file: ResultFile,
    out: &mut W,
) -> Result<u64, WriteError> {
    let filter = match file {
        ResultFile::Output => ResultFilter::Output,
        ResultFile::Errors => ResultFilter::Errors,
    };
    let mut after_line = 0;
    let mut written = 0u64;
    let mut chunk = String::new();
    loop {
        let rows = storage
            .result_page(
                scope,
                ResultPage {
                    batch_id: batch.clone(),
                    filter,
                    after_line,
                    limit: PAGE_ROWS,
                    with_input: false,
                },
            )
            .await?;
        let Some(last) = rows.last() else { break };
        after_line = last.line;
        chunk.clear();
        for row in &rows {
            if let Some(line) = render_line(batch, row) {
                chunk.push_str(&line);
                written += 1;
            }
        }
        out.write_all(chunk.as_bytes()).await?;
    }
    out.flush().await?;
    Ok(written)
}

/// Why writing a result file failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Reading from storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Writing the file failed.
    #[error("writing results failed: {0}")]
    Io(#[from] std::io::Error),
}
