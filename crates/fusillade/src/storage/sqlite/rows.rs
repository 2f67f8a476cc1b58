//! Conversions between SQLite rows and domain types, the shared batch-counter update, and
//! result pages.

use chrono::{TimeZone, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use super::SqliteStorage;
use super::files::scope_binds;
use crate::model::{
    Batch, BatchError, BatchId, BatchStatus, File, FileId, FilePurpose, RequestCounts,
    RequestState, Timestamp,
};
use crate::storage::shared::{CounterDeltas, result_page_rows, result_page_sql};
use crate::storage::{Result, ResultPage, ResultRow, Scope, StorageError};

/// Milliseconds since the epoch.
pub(super) fn ms(t: Timestamp) -> i64 {
    t.timestamp_millis()
}

/// Back from milliseconds.
pub(super) fn ts(ms: i64) -> Timestamp {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

pub(super) fn opt_ts(ms: Option<i64>) -> Option<Timestamp> {
    ms.map(ts)
}

/// The `deadline` column value of a batch with no deadline: sorts after every real one.
pub(super) const NO_DEADLINE: i64 = i64::MAX;

pub(super) fn corrupt(what: &str) -> StorageError {
    StorageError::Database(sqlx::Error::Protocol(format!("unexpected value in {what}")))
}

pub(super) const FILE_COLUMNS: &str = "id, owner, filename, purpose, bytes, line_count, \
     content_hash, batch_id, created_at, expires_at";

pub(super) fn file_from_row(row: &SqliteRow) -> Result<File> {
    let purpose: String = row.try_get("purpose")?;
    Ok(File {
        id: FileId::from_string(row.try_get::<String, _>("id")?),
        owner: row.try_get("owner")?,
        filename: row.try_get("filename")?,
        purpose: FilePurpose::parse(&purpose).ok_or_else(|| corrupt("files.purpose"))?,
        bytes: row.try_get::<i64, _>("bytes")? as u64,
        line_count: row.try_get::<i64, _>("line_count")? as u64,
        content_hash: row.try_get("content_hash")?,
        created_at: ts(row.try_get("created_at")?),
        expires_at: opt_ts(row.try_get("expires_at")?),
        batch_id: row
            .try_get::<Option<String>, _>("batch_id")?
            .map(BatchId::from_string),
    })
}

pub(super) const BATCH_COLUMNS: &str = "seq, id, owner, input_file_id, endpoint, \
     completion_window, metadata, status, output_file_id, error_file_id, errors, total, pending, \
     running, completed, failed, cancelled, expired, created_at, in_progress_at, expires_at, \
     finalizing_at, completed_at, failed_at, expired_at, cancelling_at, cancelled_at";

fn count(row: &SqliteRow, column: &str) -> Result<u64> {
    Ok(row.try_get::<i64, _>(column)?.max(0) as u64)
}

pub(super) fn batch_from_row(row: &SqliteRow) -> Result<Batch> {
    let status: String = row.try_get("status")?;
    let metadata: Option<String> = row.try_get("metadata")?;
    let errors: Option<String> = row.try_get("errors")?;
    let time = |c: &str| -> Result<Option<Timestamp>> { Ok(opt_ts(row.try_get(c)?)) };
    Ok(Batch {
        id: BatchId::from_string(row.try_get::<String, _>("id")?),
        owner: row.try_get("owner")?,
        input_file_id: FileId::from_string(row.try_get::<String, _>("input_file_id")?),
        endpoint: row.try_get("endpoint")?,
        completion_window: row.try_get("completion_window")?,
        metadata: match metadata {
            Some(m) => Some(serde_json::from_str(&m).map_err(|_| corrupt("batches.metadata"))?),
            None => None,
        },
        status: BatchStatus::parse(&status).ok_or_else(|| corrupt("batches.status"))?,
        output_file_id: FileId::from_string(row.try_get::<String, _>("output_file_id")?),
        error_file_id: FileId::from_string(row.try_get::<String, _>("error_file_id")?),
        errors: match errors {
            Some(e) => serde_json::from_str(&e).map_err(|_| corrupt("batches.errors"))?,
            None => Vec::<BatchError>::new(),
        },
        counts: RequestCounts {
            total: count(row, "total")?,
            pending: count(row, "pending")?,
            running: count(row, "running")?,
            completed: count(row, "completed")?,
            failed: count(row, "failed")?,
            cancelled: count(row, "cancelled")?,
            expired: count(row, "expired")?,
        },
        created_at: ts(row.try_get("created_at")?),
        in_progress_at: time("in_progress_at")?,
        expires_at: time("expires_at")?,
        finalizing_at: time("finalizing_at")?,
        completed_at: time("completed_at")?,
        failed_at: time("failed_at")?,
        expired_at: time("expired_at")?,
        cancelling_at: time("cancelling_at")?,
        cancelled_at: time("cancelled_at")?,
    })
}

/// Applies every counter delta in one statement.
pub(super) async fn apply_deltas(
    conn: &mut SqliteConnection,
    deltas: &CounterDeltas,
) -> Result<()> {
    if deltas.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = deltas.deltas().collect();
    let json = serde_json::to_string(&rows).expect("counter deltas serialize");
    sqlx::query(
        r#"
UPDATE batches SET
    pending   = pending   + (d.value ->> 'pending'),
    running   = running   + (d.value ->> 'running'),
    completed = completed + (d.value ->> 'completed'),
    failed    = failed    + (d.value ->> 'failed'),
    cancelled = cancelled + (d.value ->> 'cancelled'),
    expired   = expired   + (d.value ->> 'expired')
FROM json_each(?1) AS d
WHERE batches.seq = (d.value ->> 'seq')
"#,
    )
    .bind(json)
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves batches among `seqs` that have nothing pending or running to their final status
/// (`in_progress` → `completed`, `cancelling` → `cancelled`). Returns the batches finished.
pub(super) async fn finalize_batches(
    conn: &mut SqliteConnection,
    seqs: Vec<i64>,
    now: Timestamp,
) -> Result<Vec<BatchId>> {
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    let json = serde_json::to_string(&seqs).expect("seqs serialize");
    let finished: Vec<String> = sqlx::query_scalar(
        r#"
UPDATE batches SET
    status        = CASE status WHEN 'cancelling' THEN 'cancelled' ELSE 'completed' END,
    finalizing_at = CASE status WHEN 'cancelling' THEN finalizing_at ELSE ?2 END,
    completed_at  = CASE status WHEN 'cancelling' THEN completed_at ELSE ?2 END,
    cancelled_at  = CASE status WHEN 'cancelling' THEN ?2 ELSE cancelled_at END
WHERE seq IN (SELECT value FROM json_each(?1))
  AND status IN ('in_progress', 'cancelling')
  AND pending = 0 AND running = 0
RETURNING id
"#,
    )
    .bind(json)
    .bind(ms(now))
    .fetch_all(conn)
    .await?;
    Ok(finished.into_iter().map(BatchId::from_string).collect())
}

/// Parses a request state read from the database.
pub(super) fn state(s: &str) -> Result<RequestState> {
    RequestState::parse(s).ok_or_else(|| corrupt("requests.state"))
}

/// A page of a batch's results, in line order, read with one statement returning one packed
/// value (see `storage::shared`): SQLite hands each row to the async side through a
/// channel, which cost more than the query itself.
pub(super) async fn result_page(
    s: &SqliteStorage,
    scope: &Scope,
    p: ResultPage,
) -> Result<Vec<ResultRow>> {
    let sql = result_page_sql(p.filter, '?');
    let (owner, all) = scope_binds(scope);
    let (seq, page): (Option<i64>, Option<String>) = sqlx::query_as(&sql)
        .bind(p.batch_id.as_str())
        .bind(all)
        .bind(owner)
        .bind(p.after_line as i64)
        .bind(i64::from(p.limit))
        .bind(p.with_input)
        .fetch_one(&s.reader)
        .await?;
    result_page_rows(&p.batch_id, seq, page)
}
