//! Output and error files in the OpenAI Batch API format, produced from storage a page at a
//! time so that memory never depends on the size of the batch.
//!
//! Output line: `{"id","custom_id","response":{"status_code","request_id","body"},"error":null}`.
//! Error line: `response` is set when the upstream answered (its status and body), `null`
//! otherwise; `error` is `{"code","message"}` saying why the request did not succeed.

use std::io::Write;

use serde::Serializer;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::model::{BatchId, PublicRequestId, RequestState};
use crate::storage::{ResultFilter, ResultPage, ResultRow, Scope, Storage, StorageError};

/// Rows read per storage call while writing a file.
const PAGE_ROWS: u32 = 1_000;

/// Appends the JSONL lines (each with its trailing newline) of `rows` to `out`, for the output
/// or error file; rows that are not final yet are skipped. Returns the number of lines.
/// Writing a whole page into one buffer keeps rendering free of per-line allocations.
pub fn render_lines(batch: &BatchId, rows: &[ResultRow], out: &mut Vec<u8>) -> u64 {
    let mut written = 0;
    for row in rows.iter().filter(|row| row.state.is_final()) {
        write_line(batch, row, out);
        written += 1;
    }
    written
}

/// One line, written field by field. The stored body is embedded as it is: storage keeps it
/// as one line of JSON (see [`ResultRow::response_body`]), and checking that again for every
/// line of every download was the largest single cost of rendering.
fn write_line(batch: &BatchId, row: &ResultRow, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"id\":");
    write_public_id(batch, row.line, out);
    out.extend_from_slice(b",\"custom_id\":");
    write_string(&row.custom_id, out);
    out.extend_from_slice(b",\"response\":");
    match row.status_code {
        Some(status_code) => {
            write!(out, "{{\"status_code\":{status_code},\"request_id\":").expect("in memory");
            match &row.upstream_request_id {
                Some(upstream) => write_string(upstream, out),
                None => write_public_id(batch, row.line, out),
            }
            out.extend_from_slice(b",\"body\":");
            match row.response_body.as_deref() {
                Some(body) => out.extend_from_slice(body.as_bytes()),
                None => out.extend_from_slice(b"\"\""),
            }
            out.push(b'}');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"error\":");
    if row.state == RequestState::Completed {
        out.extend_from_slice(b"null");
    } else {
        out.extend_from_slice(b"{\"code\":");
        write_string(row.error_code.as_deref().unwrap_or("failed"), out);
        out.extend_from_slice(b",\"message\":");
        write_string(
            row.error_message.as_deref().unwrap_or("the request failed"),
            out,
        );
        out.push(b'}');
    }
    out.extend_from_slice(b"}\n");
}

/// A request's public id as a JSON string, written in place rather than formatted apart first.
fn write_public_id(batch: &BatchId, line: u64, out: &mut Vec<u8>) {
    serde_json::Serializer::new(out)
        .collect_str(&PublicRequestId { batch, line })
        .expect("in memory");
}

fn write_string(text: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(out, text).expect("a string serializes");
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
    let mut chunk = Vec::new();
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
        written += render_lines(batch, &rows, &mut chunk);
        out.write_all(&chunk).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::public_request_id;

    fn row(line: u64, state: RequestState) -> ResultRow {
        ResultRow {
            line,
            custom_id: "c\"1".into(),
            state,
            attempts: 1,
            status_code: None,
            response_body: None,
            upstream_request_id: None,
            error_code: None,
            error_message: None,
            input_body: None,
        }
    }

    /// The exact bytes of output and error lines, including the public id (written here
    /// without going through `public_request_id`, so the two must agree).
    #[test]
    fn lines_render_in_the_openai_format() {
        let batch = BatchId::from_string("batch_abc");
        let completed = ResultRow {
            status_code: Some(200),
            response_body: Some("{\"x\":[1,2]}".into()),
            upstream_request_id: Some("up-9".into()),
            ..row(0x1f, RequestState::Completed)
        };
        let failed = ResultRow {
            status_code: Some(500),
            response_body: Some("\"oops <not json>\"".into()),
            error_code: Some("server_error".into()),
            ..row(2, RequestState::Failed)
        };
        let expired = row(3, RequestState::Expired);
        let rows = [completed, row(4, RequestState::Running), failed, expired];
        let mut out = Vec::new();
        assert_eq!(render_lines(&batch, &rows, &mut out), 3);
        let id = |line| public_request_id(&batch, line);
        let expected = [
            format!(
                r#"{{"id":"{}","custom_id":"c\"1","response":{{"status_code":200,"request_id":"up-9","body":{{"x":[1,2]}}}},"error":null}}"#,
                id(0x1f)
            ),
            format!(
                r#"{{"id":"{}","custom_id":"c\"1","response":{{"status_code":500,"request_id":"{}","body":"oops <not json>"}},"error":{{"code":"server_error","message":"the request failed"}}}}"#,
                id(2),
                id(2)
            ),
            format!(
                r#"{{"id":"{}","custom_id":"c\"1","response":null,"error":{{"code":"failed","message":"the request failed"}}}}"#,
                id(3)
            ),
        ];
        assert_eq!(String::from_utf8(out).unwrap(), expected.join("\n") + "\n");
    }
}
