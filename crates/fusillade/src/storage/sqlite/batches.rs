//! Batches on SQLite: creation with its requests, reads, cancellation, expiry and retries.

use sqlx::{SqliteConnection, SqlitePool};

use super::SqliteStorage;
use super::files::{scope_binds, visible_seq};
use super::rows::{BATCH_COLUMNS, NO_DEADLINE, apply_deltas, batch_from_row, finalize_batches, ms};
use crate::model::{Batch, BatchId, BatchStatus, FileId, FilePurpose, RequestState, Timestamp};
use crate::storage::shared::{CANCELLED_MESSAGE, CounterDeltas, EXPIRED_MESSAGE};
use crate::storage::{BatchCreate, BatchList, Page, Result, Scope, StorageError, StorageEvent};

pub(super) async fn create(s: &SqliteStorage, p: BatchCreate) -> Result<Batch> {
    let (file_seq, purpose) = visible_seq(s, &Scope::Tenant(p.owner.clone()), &p.input_file_id)
        .await
        .map_err(|_| StorageError::NotFound(format!("file {}", p.input_file_id)))?;
    if purpose != FilePurpose::Batch {
        return Err(StorageError::Conflict(format!(
            "file {} has purpose {}, not batch",
            p.input_file_id,
            purpose.as_str()
        )));
    }
    let endpoint = check_endpoint(&s.reader, file_seq, p.endpoint.as_deref()).await?;
    let id = BatchId::generate();
    let (output_file, error_file) = (FileId::generate(), FileId::generate());
    let mut tx = s.writer.begin().await?;
    for (file, purpose) in [
        (&output_file, FilePurpose::BatchOutput),
        (&error_file, FilePurpose::BatchError),
    ] {
        sqlx::query(
            "INSERT INTO files (id, owner, filename, purpose, status, batch_id, created_at) \
             VALUES (?1, ?2, ?3, ?4, 'processed', ?5, ?6)",
        )
        .bind(file.as_str())
        .bind(&p.owner)
        .bind(format!("{id}_{}.jsonl", purpose.as_str()))
        .bind(purpose.as_str())
        .bind(id.as_str())
        .bind(ms(p.now))
        .execute(&mut *tx)
        .await?;
    }
    let metadata = p
        .metadata
        .as_ref()
        .map(|m| serde_json::to_string(m).expect("json"));
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO batches (id, owner, input_file_id, endpoint, completion_window, metadata, \
             status, output_file_id, error_file_id, created_at, in_progress_at, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'in_progress', ?7, ?8, ?9, ?9, ?10) RETURNING seq",
    )
    .bind(id.as_str())
    .bind(&p.owner)
    .bind(p.input_file_id.as_str())
    .bind(&endpoint)
    .bind(&p.completion_window)
    .bind(metadata)
    .bind(output_file.as_str())
    .bind(error_file.as_str())
    .bind(ms(p.now))
    .bind(p.expires_at.map(ms))
    .fetch_one(&mut *tx)
    .await?;
    populate_requests(&mut tx, seq, file_seq, p.expires_at.map_or(NO_DEADLINE, ms)).await?;
    tx.commit().await?;
    s.emit(StorageEvent::WorkAvailable);
    get(&s.writer, &Scope::All, &id).await
}

/// The endpoint of the batch: the one asked for, which every line must use, or else the url of
/// the first line.
async fn check_endpoint(
    reader: &SqlitePool,
    file_seq: i64,
    endpoint: Option<&str>,
) -> Result<String> {
    if let Some(endpoint) = endpoint {
        let mismatch: Option<(i64, String)> = sqlx::query_as(
            "SELECT line, url FROM templates WHERE file_seq = ?1 AND url != ?2 \
             ORDER BY line LIMIT 1",
        )
        .bind(file_seq)
        .bind(endpoint)
        .fetch_optional(reader)
        .await?;
        if let Some((line, url)) = mismatch {
            return Err(StorageError::Conflict(format!(
                "Line {line}: url {url:?} does not match the batch endpoint {endpoint:?}"
            )));
        }
        return Ok(endpoint.to_string());
    }
    let first: String =
        sqlx::query_scalar("SELECT url FROM templates WHERE file_seq = ?1 ORDER BY line LIMIT 1")
            .bind(file_seq)
            .fetch_one(reader)
            .await?;
    Ok(first)
}

async fn populate_requests(
    conn: &mut SqliteConnection,
    seq: i64,
    file_seq: i64,
    deadline: i64,
) -> Result<()> {
    let n = sqlx::query(
        "INSERT INTO requests (batch_seq, template_id, line, model, deadline, state) \
         SELECT ?1, id, line, model, ?2, 'pending' FROM templates WHERE file_seq = ?3 \
         ORDER BY line",
    )
    .bind(seq)
    .bind(deadline)
    .bind(file_seq)
    .execute(&mut *conn)
    .await?
    .rows_affected() as i64;
    sqlx::query(
        "INSERT INTO batch_models (batch_seq, model) \
         SELECT DISTINCT ?1, model FROM templates WHERE file_seq = ?2",
    )
    .bind(seq)
    .bind(file_seq)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE batches SET total = ?2, pending = ?2 WHERE seq = ?1")
        .bind(seq)
        .bind(n)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(super) async fn get(pool: &SqlitePool, scope: &Scope, id: &BatchId) -> Result<Batch> {
    let row = sqlx::query(&format!(
        "SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?1"
    ))
    .bind(id.as_str())
    .fetch_optional(pool)
    .await?;
    let batch = row.as_ref().map(batch_from_row).transpose()?;
    match batch {
        Some(b) if scope.allows(&b.owner) => Ok(b),
        _ => Err(StorageError::NotFound(format!("batch {id}"))),
    }
}

async fn seq_of(conn: &mut SqliteConnection, scope: &Scope, id: &BatchId) -> Result<i64> {
    let (owner, all) = scope_binds(scope);
    sqlx::query_scalar("SELECT seq FROM batches WHERE id = ?1 AND (?2 OR owner = ?3)")
        .bind(id.as_str())
        .bind(all)
        .bind(owner)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| StorageError::NotFound(format!("batch {id}")))
}

pub(super) async fn list(s: &SqliteStorage, p: BatchList) -> Result<Page<Batch>> {
    let mut conn = s.reader.acquire().await?;
    let cursor =
        match &p.after {
            Some(after) => Some(seq_of(&mut conn, &p.scope, after).await.map_err(|_| {
                StorageError::NotFound(format!("batch {after} (the `after` cursor)"))
            })?),
            None => None,
        };
    let (owner, all) = scope_binds(&p.scope);
    let search = p.search.as_ref().map(|q| q.to_lowercase());
    let rows = sqlx::query(&format!(
        "SELECT {BATCH_COLUMNS} FROM batches WHERE (?1 OR owner = ?2) \
           AND (?3 IS NULL OR seq < ?3) \
           AND (?4 IS NULL OR instr(lower(coalesce(metadata, '')), ?4) > 0) \
         ORDER BY seq DESC LIMIT ?5"
    ))
    .bind(all)
    .bind(owner)
    .bind(cursor)
    .bind(search)
    .bind(i64::from(p.limit) + 1)
    .fetch_all(&mut *conn)
    .await?;
    let mut items = rows
        .iter()
        .map(batch_from_row)
        .collect::<Result<Vec<_>>>()?;
    let has_more = items.len() > p.limit as usize;
    items.truncate(p.limit as usize);
    Ok(Page { items, has_more })
}

pub(super) async fn get_by_output_file(
    s: &SqliteStorage,
    scope: &Scope,
    id: &FileId,
) -> Result<Batch> {
    let batch_id: Option<String> = sqlx::query_scalar(
        "SELECT batch_id FROM files WHERE id = ?1 AND deleted_at IS NULL \
         AND purpose IN ('batch_output', 'batch_error')",
    )
    .bind(id.as_str())
    .fetch_optional(&s.reader)
    .await?
    .flatten();
    let batch_id = batch_id.ok_or_else(|| StorageError::NotFound(format!("file {id}")))?;
    get(&s.reader, scope, &BatchId::from_string(batch_id))
        .await
        .map_err(|_| StorageError::NotFound(format!("file {id}")))
}

pub(super) async fn cancel(
    s: &SqliteStorage,
    scope: &Scope,
    id: &BatchId,
    now: Timestamp,
) -> Result<Batch> {
    let mut tx = s.writer.begin().await?;
    let seq = seq_of(&mut tx, scope, id).await?;
    let status: String = sqlx::query_scalar("SELECT status FROM batches WHERE seq = ?1")
        .bind(seq)
        .fetch_one(&mut *tx)
        .await?;
    if status != BatchStatus::InProgress.as_str() && status != BatchStatus::Validating.as_str() {
        drop(tx);
        return get(&s.writer, scope, id).await;
    }
    let n = sqlx::query(
        "UPDATE requests SET state = 'cancelled', finished_at = ?2, not_before = NULL, \
             error_code = 'batch_cancelled', error_message = ?3, status_code = NULL, \
             response = NULL \
         WHERE batch_seq = ?1 AND state = 'pending'",
    )
    .bind(seq)
    .bind(ms(now))
    .bind(CANCELLED_MESSAGE)
    .execute(&mut *tx)
    .await?
    .rows_affected() as i64;
    sqlx::query(
        "UPDATE batches SET pending = pending - ?2, cancelled = cancelled + ?2, \
             status = CASE WHEN running = 0 THEN 'cancelled' ELSE 'cancelling' END, \
             cancelling_at = ?3, cancelled_at = CASE WHEN running = 0 THEN ?3 END \
         WHERE seq = ?1",
    )
    .bind(seq)
    .bind(n)
    .bind(ms(now))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    s.emit(StorageEvent::BatchCancelled(id.clone()));
    get(&s.writer, scope, id).await
}

pub(super) async fn expire_due(s: &SqliteStorage, now: Timestamp) -> Result<Vec<BatchId>> {
    let mut tx = s.writer.begin().await?;
    let due: Vec<(i64, String)> = sqlx::query_as(
        "SELECT seq, id FROM batches WHERE status = 'in_progress' AND expires_at <= ?1",
    )
    .bind(ms(now))
    .fetch_all(&mut *tx)
    .await?;
    let mut deltas = CounterDeltas::default();
    for (seq, _) in &due {
        for from in [RequestState::Pending, RequestState::Running] {
            let n = sqlx::query(
                "UPDATE requests SET state = 'expired', finished_at = ?3, not_before = NULL, \
                     lease = NULL, daemon_id = NULL, error_code = 'batch_expired', \
                     error_message = ?4, status_code = NULL, response = NULL \
                 WHERE batch_seq = ?1 AND state = ?2",
            )
            .bind(seq)
            .bind(from.as_str())
            .bind(ms(now))
            .bind(EXPIRED_MESSAGE)
            .execute(&mut *tx)
            .await?
            .rows_affected() as i64;
            deltas.moved(*seq, from, RequestState::Expired, n);
        }
        sqlx::query("UPDATE batches SET status = 'expired', expired_at = ?2 WHERE seq = ?1")
            .bind(seq)
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
    }
    apply_deltas(&mut tx, &deltas).await?;
    tx.commit().await?;
    let expired: Vec<BatchId> = due
        .into_iter()
        .map(|(_, id)| BatchId::from_string(id))
        .collect();
    for id in &expired {
        s.emit(StorageEvent::BatchFinished(id.clone()));
    }
    Ok(expired)
}

pub(super) async fn retry_failed(
    s: &SqliteStorage,
    scope: &Scope,
    id: &BatchId,
    now: Timestamp,
) -> Result<u64> {
    let mut tx = s.writer.begin().await?;
    let seq = seq_of(&mut tx, scope, id).await?;
    let (status, expires_at): (String, Option<i64>) =
        sqlx::query_as("SELECT status, expires_at FROM batches WHERE seq = ?1")
            .bind(seq)
            .fetch_one(&mut *tx)
            .await?;
    let open = status == "in_progress" || status == "completed";
    if !open || expires_at.is_some_and(|e| e <= ms(now)) {
        return Err(StorageError::Conflict(format!(
            "batch {id} is {status}; only an in-progress or completed batch before its deadline can retry failed requests"
        )));
    }
    let n = sqlx::query(
        "UPDATE requests SET state = 'pending', attempts = 0, not_before = NULL, \
             finished_at = NULL WHERE batch_seq = ?1 AND state = 'failed'",
    )
    .bind(seq)
    .execute(&mut *tx)
    .await?
    .rows_affected() as i64;
    if n > 0 {
        sqlx::query(
            "UPDATE batches SET failed = failed - ?2, pending = pending + ?2, \
                 status = 'in_progress', finalizing_at = NULL, completed_at = NULL \
             WHERE seq = ?1",
        )
        .bind(seq)
        .bind(n)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    if n > 0 {
        s.emit(StorageEvent::WorkAvailable);
    }
    Ok(n as u64)
}

pub(super) async fn statuses(
    s: &SqliteStorage,
    ids: &[BatchId],
) -> Result<Vec<(BatchId, BatchStatus)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let json = serde_json::to_string(&ids).expect("ids serialize");
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, status FROM batches WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(json)
    .fetch_all(&s.reader)
    .await?;
    rows.into_iter()
        .map(|(id, st)| {
            let st = BatchStatus::parse(&st).ok_or_else(|| super::rows::corrupt("status"))?;
            Ok((BatchId::from_string(id), st))
        })
        .collect()
}

pub(super) async fn models_active(s: &SqliteStorage) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT m.model FROM batch_models m JOIN batches b ON b.seq = m.batch_seq \
         WHERE b.status IN ('in_progress', 'cancelling') ORDER BY m.model",
    )
    .fetch_all(&s.reader)
    .await?)
}

/// Applies counter deltas, then finishes the touched batches that have nothing left to run.
pub(super) async fn finalize(
    conn: &mut SqliteConnection,
    deltas: &CounterDeltas,
    now: Timestamp,
) -> Result<Vec<BatchId>> {
    apply_deltas(conn, deltas).await?;
    finalize_batches(conn, deltas.seqs(), now).await
}
