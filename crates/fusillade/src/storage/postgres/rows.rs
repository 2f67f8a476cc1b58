//! Conversions between PostgreSQL rows and domain types, the batch-counter statements shared
//! by the request and batch operations, and result pages.

use chrono::{DurationRound, TimeDelta};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::model::{
    Batch, BatchError, BatchId, BatchStatus, File, FileId, FilePurpose, RequestCounts,
    RequestState, Timestamp,
};
use crate::storage::shared::{CounterDeltas, result_page_rows, result_page_sql};
use crate::storage::{Result, ResultPage, ResultRow, Scope, StorageError};

/// Timestamps are kept at millisecond precision, as on every backend.
pub(super) fn ms(t: Timestamp) -> Timestamp {
    t.duration_trunc(TimeDelta::milliseconds(1)).unwrap_or(t)
}

/// The `deadline` value of a batch with no deadline: sorts after every real one.
pub(super) const NO_DEADLINE: i64 = i64::MAX;

/// The claim-order key of a deadline.
pub(super) fn deadline_key(deadline: Option<Timestamp>) -> i64 {
    deadline.map_or(NO_DEADLINE, |d| d.timestamp_millis())
}

pub(super) fn corrupt(what: &str) -> StorageError {
    StorageError::Database(sqlx::Error::Protocol(format!("unexpected value in {what}")))
}

/// The owner and all-tenants flag to bind for a scope filter `($all OR owner = $owner)`.
pub(super) fn scope_binds(scope: &Scope) -> (&str, bool) {
    match scope {
        Scope::All => ("", true),
        Scope::Tenant(t) => (t.as_str(), false),
    }
}

pub(super) const FILE_COLUMNS: &str = "id, owner, filename, purpose, bytes, line_count, \
     content_hash, batch_id, created_at, expires_at";

pub(super) fn file_from_row(row: &PgRow) -> Result<File> {
    let purpose: String = row.try_get("purpose")?;
    Ok(File {
        id: FileId::from_string(row.try_get::<String, _>("id")?),
        owner: row.try_get("owner")?,
        filename: row.try_get("filename")?,
        purpose: FilePurpose::parse(&purpose).ok_or_else(|| corrupt("files.purpose"))?,
        bytes: row.try_get::<i64, _>("bytes")? as u64,
        line_count: row.try_get::<i64, _>("line_count")? as u64,
        content_hash: row.try_get("content_hash")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        batch_id: row
            .try_get::<Option<String>, _>("batch_id")?
            .map(BatchId::from_string),
    })
}

pub(super) const BATCH_COLUMNS: &str = "seq, id, owner, input_file_id, endpoint, \
     completion_window, metadata, status, output_file_id, error_file_id, errors, total, pending, \
     running, completed, failed, cancelled, expired, created_at, in_progress_at, expires_at, \
     finalizing_at, completed_at, failed_at, expired_at, cancelling_at, cancelled_at";

fn count(row: &PgRow, column: &str) -> Result<u64> {
    Ok(row.try_get::<i64, _>(column)?.max(0) as u64)
}

pub(super) fn batch_from_row(row: &PgRow) -> Result<Batch> {
    let status: String = row.try_get("status")?;
    let metadata: Option<String> = row.try_get("metadata")?;
    let errors: Option<String> = row.try_get("errors")?;
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
        created_at: row.try_get("created_at")?,
        in_progress_at: row.try_get("in_progress_at")?,
        expires_at: row.try_get("expires_at")?,
        finalizing_at: row.try_get("finalizing_at")?,
        completed_at: row.try_get("completed_at")?,
        failed_at: row.try_get("failed_at")?,
        expired_at: row.try_get("expired_at")?,
        cancelling_at: row.try_get("cancelling_at")?,
        cancelled_at: row.try_get("cancelled_at")?,
    })
}

/// Parses a request state read from the database.
pub(super) fn state(s: &str) -> Result<RequestState> {
    RequestState::parse(s).ok_or_else(|| corrupt("requests.state"))
}

/// Applies counter deltas, locking the batch rows in seq order (the deltas are sorted) so that
/// concurrent transactions touching the same batches cannot deadlock.
pub(super) async fn apply_deltas(conn: &mut PgConnection, deltas: &CounterDeltas) -> Result<()> {
    if deltas.is_empty() {
        return Ok(());
    }
    let d: Vec<_> = deltas.deltas().collect();
    let col = |f: fn(&crate::storage::shared::CounterDelta) -> i64| -> Vec<i64> {
        d.iter().map(|x| f(x)).collect()
    };
    sqlx::query("SELECT seq FROM batches WHERE seq = ANY($1) ORDER BY seq FOR UPDATE")
        .bind(deltas.seqs())
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        r#"
UPDATE batches b SET
    pending = b.pending + d.pending, running = b.running + d.running,
    completed = b.completed + d.completed, failed = b.failed + d.failed,
    cancelled = b.cancelled + d.cancelled, expired = b.expired + d.expired
FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],
            $7::bigint[]) AS d(seq, pending, running, completed, failed, cancelled, expired)
WHERE b.seq = d.seq
"#,
    )
    .bind(col(|x| x.seq))
    .bind(col(|x| x.pending))
    .bind(col(|x| x.running))
    .bind(col(|x| x.completed))
    .bind(col(|x| x.failed))
    .bind(col(|x| x.cancelled))
    .bind(col(|x| x.expired))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Applies counter deltas, then moves touched batches with nothing pending or running to their
/// final status. Returns the batches finished.
pub(super) async fn apply_and_finalize(
    conn: &mut PgConnection,
    deltas: &CounterDeltas,
    now: Timestamp,
) -> Result<Vec<BatchId>> {
    if deltas.is_empty() {
        return Ok(Vec::new());
    }
    apply_deltas(conn, deltas).await?;
    let finished: Vec<String> = sqlx::query_scalar(
        r#"
UPDATE batches SET
    status        = CASE status WHEN 'cancelling' THEN 'cancelled' ELSE 'completed' END,
    finalizing_at = CASE status WHEN 'cancelling' THEN finalizing_at ELSE $2 END,
    completed_at  = CASE status WHEN 'cancelling' THEN completed_at ELSE $2 END,
    cancelled_at  = CASE status WHEN 'cancelling' THEN $2 ELSE cancelled_at END
WHERE seq = ANY($1) AND status IN ('in_progress', 'cancelling') AND pending = 0 AND running = 0
RETURNING id
"#,
    )
    .bind(deltas.seqs())
    .bind(ms(now))
    .fetch_all(&mut *conn)
    .await?;
    Ok(finished.into_iter().map(BatchId::from_string).collect())
}

/// Planner settings for a result page, set with `SET LOCAL` semantics (`set_config(…, true)`)
/// so nothing outlives the transaction, as transaction pooling requires. On a freshly finished
/// batch the planner has no statistics, guesses a handful of matching rows and prefers a
/// bitmap scan of the whole rest of the batch plus a sort, for every page; without those
/// options the only plan left is the keyset walk along `requests_by_batch`.
const RESULT_PAGE_PLANNER: &str = "SELECT set_config('enable_seqscan', 'off', true), \
     set_config('enable_bitmapscan', 'off', true), set_config('enable_sort', 'off', true), \
     set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)";

/// A page of a batch's results, in line order, read as one packed value (see
/// `storage::shared`) so the driver decodes one row per page, not per request.
pub(super) async fn result_page(
    pool: &PgPool,
    scope: &Scope,
    p: ResultPage,
) -> Result<Vec<ResultRow>> {
    let sql = result_page_sql(p.filter, '$');
    let (owner, all) = scope_binds(scope);
    let mut tx = pool.begin().await?;
    sqlx::query(RESULT_PAGE_PLANNER).execute(&mut *tx).await?;
    let (seq, page): (Option<i64>, Option<String>) = sqlx::query_as(&sql)
        .bind(p.batch_id.as_str())
        .bind(all)
        .bind(owner)
        .bind(p.after_line as i64)
        .bind(i64::from(p.limit))
        .bind(p.with_input)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    result_page_rows(&p.batch_id, seq, page)
}
