//! Batches on PostgreSQL: creation with its requests, reads, cancellation, expiry, retries.

use sqlx::{PgConnection, PgPool};

use super::events::notify;
use super::files::visible_seq;
use super::rows::{
    BATCH_COLUMNS, apply_and_finalize, batch_from_row, corrupt, deadline_key, ms, scope_binds,
};
use crate::model::{Batch, BatchId, BatchStatus, FileId, FilePurpose, RequestState, Timestamp};
use crate::storage::shared::{
    CANCELLED_CODE, CANCELLED_MESSAGE, CounterDeltas, EXPIRED_CODE, EXPIRED_MESSAGE,
};
use crate::storage::{BatchCreate, BatchList, Page, Result, Scope, StorageError, StorageEvent};

pub(super) async fn create(pool: &PgPool, p: BatchCreate) -> Result<Batch> {
    let (file_seq, purpose) = visible_seq(pool, &Scope::Tenant(p.owner.clone()), &p.input_file_id)
        .await
        .map_err(|_| StorageError::NotFound(format!("file {}", p.input_file_id)))?;
    if purpose != FilePurpose::Batch {
        return Err(StorageError::Conflict(format!(
            "file {} has purpose {}, not batch",
            p.input_file_id,
            purpose.as_str()
        )));
    }
    let endpoint = check_endpoint(pool, file_seq, p.endpoint.as_deref()).await?;
    let id = BatchId::generate();
    let (output_file, error_file) = (FileId::generate(), FileId::generate());
    let now = ms(p.now);
    let mut tx = pool.begin().await?;
    for (file, purpose) in [
        (&output_file, FilePurpose::BatchOutput),
        (&error_file, FilePurpose::BatchError),
    ] {
        sqlx::query(
            "INSERT INTO files (id, owner, filename, purpose, status, batch_id, created_at, \
                 touched_at) VALUES ($1, $2, $3, $4, 'processed', $5, $6, $6)",
        )
        .bind(file.as_str())
        .bind(&p.owner)
        .bind(format!("{id}_{}.jsonl", purpose.as_str()))
        .bind(purpose.as_str())
        .bind(id.as_str())
        .bind(now)
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
         VALUES ($1, $2, $3, $4, $5, $6, 'in_progress', $7, $8, $9, $9, $10) RETURNING seq",
    )
    .bind(id.as_str())
    .bind(&p.owner)
    .bind(p.input_file_id.as_str())
    .bind(&endpoint)
    .bind(&p.completion_window)
    .bind(metadata)
    .bind(output_file.as_str())
    .bind(error_file.as_str())
    .bind(now)
    .bind(p.expires_at.map(ms))
    .fetch_one(&mut *tx)
    .await?;
    populate(&mut tx, seq, file_seq, deadline_key(p.expires_at)).await?;
    notify(&mut tx, &StorageEvent::WorkAvailable).await?;
    tx.commit().await?;
    get(pool, &Scope::All, &id).await
}

async fn check_endpoint(pool: &PgPool, file_seq: i64, endpoint: Option<&str>) -> Result<String> {
    if let Some(endpoint) = endpoint {
        let mismatch: Option<(i64, String)> = sqlx::query_as(
            "SELECT line, url FROM templates WHERE file_seq = $1 AND url <> $2 \
             ORDER BY line LIMIT 1",
        )
        .bind(file_seq)
        .bind(endpoint)
        .fetch_optional(pool)
        .await?;
        if let Some((line, url)) = mismatch {
            return Err(StorageError::Conflict(format!(
                "Line {line}: url {url:?} does not match the batch endpoint {endpoint:?}"
            )));
        }
        return Ok(endpoint.to_string());
    }
    Ok(
        sqlx::query_scalar("SELECT url FROM templates WHERE file_seq = $1 ORDER BY line LIMIT 1")
            .bind(file_seq)
            .fetch_one(pool)
            .await?,
    )
}

async fn populate(conn: &mut PgConnection, seq: i64, file_seq: i64, deadline: i64) -> Result<i64> {
    let n = sqlx::query(
        "INSERT INTO requests (batch_seq, template_id, line, model, deadline, state) \
         SELECT $1, id, line, model, $2, 'pending' FROM templates WHERE file_seq = $3 \
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
         SELECT DISTINCT $1::bigint, model FROM templates WHERE file_seq = $2",
    )
    .bind(seq)
    .bind(file_seq)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE batches SET total = $2, pending = $2 WHERE seq = $1")
        .bind(seq)
        .bind(n)
        .execute(&mut *conn)
        .await?;
    Ok(n)
}

pub(super) async fn get(pool: &PgPool, scope: &Scope, id: &BatchId) -> Result<Batch> {
    let row = sqlx::query(&format!(
        "SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1"
    ))
    .bind(id.as_str())
    .fetch_optional(pool)
    .await?;
    match row.as_ref().map(batch_from_row).transpose()? {
        Some(b) if scope.allows(&b.owner) => Ok(b),
        _ => Err(StorageError::NotFound(format!("batch {id}"))),
    }
}

/// The batch's seq and status, locking its row when `lock` is set.
async fn seq_of(
    conn: &mut PgConnection,
    scope: &Scope,
    id: &BatchId,
    lock: bool,
) -> Result<(i64, String, Option<Timestamp>)> {
    let (owner, all) = scope_binds(scope);
    let sql = format!(
        "SELECT seq, status, expires_at FROM batches WHERE id = $1 AND ($2 OR owner = $3){}",
        if lock { " FOR UPDATE" } else { "" }
    );
    sqlx::query_as(&sql)
        .bind(id.as_str())
        .bind(all)
        .bind(owner)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| StorageError::NotFound(format!("batch {id}")))
}

pub(super) async fn list(pool: &PgPool, p: BatchList) -> Result<Page<Batch>> {
    let mut conn = pool.acquire().await?;
    let cursor = match &p.after {
        Some(after) => Some(
            seq_of(&mut conn, &p.scope, after, false)
                .await
                .map_err(|_| StorageError::NotFound(format!("batch {after} (the `after` cursor)")))?
                .0,
        ),
        None => None,
    };
    let (owner, all) = scope_binds(&p.scope);
    let rows = sqlx::query(&format!(
        "SELECT {BATCH_COLUMNS} FROM batches WHERE ($1 OR owner = $2) \
           AND ($3::bigint IS NULL OR seq < $3) \
           AND ($4::text IS NULL OR strpos(lower(coalesce(metadata, '')), $4) > 0) \
         ORDER BY seq DESC LIMIT $5"
    ))
    .bind(all)
    .bind(owner)
    .bind(cursor)
    .bind(p.search.as_ref().map(|q| q.to_lowercase()))
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

pub(super) async fn get_by_output_file(pool: &PgPool, scope: &Scope, id: &FileId) -> Result<Batch> {
    let batch_id: Option<String> = sqlx::query_scalar(
        "SELECT batch_id FROM files WHERE id = $1 AND deleted_at IS NULL \
         AND purpose IN ('batch_output', 'batch_error')",
    )
    .bind(id.as_str())
    .fetch_optional(pool)
    .await?
    .flatten();
    let batch_id = batch_id.ok_or_else(|| StorageError::NotFound(format!("file {id}")))?;
    get(pool, scope, &BatchId::from_string(batch_id))
        .await
        .map_err(|_| StorageError::NotFound(format!("file {id}")))
}

pub(super) async fn cancel(
    pool: &PgPool,
    scope: &Scope,
    id: &BatchId,
    now: Timestamp,
) -> Result<Batch> {
    let now = ms(now);
    let mut tx = pool.begin().await?;
    let (seq, status, _) = seq_of(&mut tx, scope, id, true).await?;
    if status != "in_progress" && status != "validating" {
        drop(tx);
        return get(pool, scope, id).await;
    }
    let n = sqlx::query(
        "UPDATE requests SET state = 'cancelled', finished_at = $2, not_before = NULL, \
             error_code = $3, error_message = $4, status_code = NULL, response = NULL \
         WHERE batch_seq = $1 AND state = 'pending'",
    )
    .bind(seq)
    .bind(now)
    .bind(CANCELLED_CODE)
    .bind(CANCELLED_MESSAGE)
    .execute(&mut *tx)
    .await?
    .rows_affected() as i64;
    sqlx::query(
        "UPDATE batches SET pending = pending - $2, cancelled = cancelled + $2, \
             status = CASE WHEN running = 0 THEN 'cancelled' ELSE 'cancelling' END, \
             cancelling_at = $3, cancelled_at = CASE WHEN running = 0 THEN $3 END \
         WHERE seq = $1",
    )
    .bind(seq)
    .bind(n)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    notify(&mut tx, &StorageEvent::BatchCancelled(id.clone())).await?;
    tx.commit().await?;
    get(pool, scope, id).await
}

pub(super) async fn expire_due(pool: &PgPool, now: Timestamp) -> Result<Vec<BatchId>> {
    let now = ms(now);
    let mut tx = pool.begin().await?;
    let due: Vec<(i64, String)> = sqlx::query_as(
        "SELECT seq, id FROM batches WHERE status = 'in_progress' AND expires_at <= $1 \
         ORDER BY seq FOR UPDATE SKIP LOCKED",
    )
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let mut deltas = CounterDeltas::default();
    for (seq, id) in &due {
        for from in [RequestState::Pending, RequestState::Running] {
            let n = sqlx::query(
                "UPDATE requests SET state = 'expired', finished_at = $3, not_before = NULL, \
                     lease = NULL, daemon_id = NULL, error_code = $4, error_message = $5, \
                     status_code = NULL, response = NULL \
                 WHERE batch_seq = $1 AND state = $2",
            )
            .bind(seq)
            .bind(from.as_str())
            .bind(now)
            .bind(EXPIRED_CODE)
            .bind(EXPIRED_MESSAGE)
            .execute(&mut *tx)
            .await?
            .rows_affected() as i64;
            deltas.moved(*seq, from, RequestState::Expired, n);
        }
        sqlx::query("UPDATE batches SET status = 'expired', expired_at = $2 WHERE seq = $1")
            .bind(seq)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        notify(
            &mut tx,
            &StorageEvent::BatchFinished(BatchId::from_string(id.clone())),
        )
        .await?;
    }
    apply_and_finalize(&mut tx, &deltas, now).await?;
    tx.commit().await?;
    Ok(due
        .into_iter()
        .map(|(_, id)| BatchId::from_string(id))
        .collect())
}

pub(super) async fn retry_failed(
    pool: &PgPool,
    scope: &Scope,
    id: &BatchId,
    now: Timestamp,
) -> Result<u64> {
    let mut tx = pool.begin().await?;
    let (seq, status, expires_at) = seq_of(&mut tx, scope, id, true).await?;
    let open = status == "in_progress" || status == "completed";
    if !open || expires_at.is_some_and(|e| e <= now) {
        return Err(StorageError::Conflict(format!(
            "batch {id} is {status}; only an in-progress or completed batch before its deadline can retry failed requests"
        )));
    }
    let n = sqlx::query(
        "UPDATE requests SET state = 'pending', attempts = 0, not_before = NULL, \
             finished_at = NULL WHERE batch_seq = $1 AND state = 'failed'",
    )
    .bind(seq)
    .execute(&mut *tx)
    .await?
    .rows_affected() as i64;
    if n > 0 {
        sqlx::query(
            "UPDATE batches SET failed = failed - $2, pending = pending + $2, \
                 status = 'in_progress', finalizing_at = NULL, completed_at = NULL \
             WHERE seq = $1",
        )
        .bind(seq)
        .bind(n)
        .execute(&mut *tx)
        .await?;
        notify(&mut tx, &StorageEvent::WorkAvailable).await?;
    }
    tx.commit().await?;
    Ok(n as u64)
}

pub(super) async fn statuses(
    pool: &PgPool,
    ids: &[BatchId],
) -> Result<Vec<(BatchId, BatchStatus)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = ids.iter().map(BatchId::as_str).collect();
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT id, status FROM batches WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(pool)
            .await?;
    rows.into_iter()
        .map(|(id, st)| {
            let st = BatchStatus::parse(&st).ok_or_else(|| corrupt("batches.status"))?;
            Ok((BatchId::from_string(id), st))
        })
        .collect()
}

pub(super) async fn models_active(pool: &PgPool) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT m.model FROM batch_models m JOIN batches b ON b.seq = m.batch_seq \
         WHERE b.status IN ('in_progress', 'cancelling') ORDER BY m.model",
    )
    .fetch_all(pool)
    .await?)
}
