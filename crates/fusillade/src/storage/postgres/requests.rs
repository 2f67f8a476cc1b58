//! Requests on PostgreSQL: bulk claims that skip rows other replicas hold, fenced group-commit
//! of outcomes, and rescue of leases held by dead daemons.

use rand::Rng;
use sqlx::{PgConnection, PgPool, Row};

use super::events::notify;
use super::rows::{NO_DEADLINE, apply_and_finalize, ms, state};
use crate::model::{BatchId, ClaimedRequest, Finish, RequestState, Timestamp};
use crate::storage::shared::{CANCELLED_CODE, CANCELLED_MESSAGE, CounterDeltas, FinishRow};
use crate::storage::{
    ClaimParams, Claimed, FinishReport, ModelClaim, RescueParams, Result, StorageEvent,
};

pub(super) async fn claim_many(pool: &PgPool, p: ClaimParams) -> Result<Claimed> {
    let now = ms(p.now);
    let lease: i64 = rand::rng().random_range(1..i64::MAX);
    let mut tx = pool.begin().await?;
    // Retries that came due join the claimable set; rows another replica is promoting are
    // skipped rather than waited for.
    sqlx::query(
        "UPDATE requests SET not_before = NULL WHERE id IN (SELECT id FROM requests \
             WHERE state = 'pending' AND not_before IS NOT NULL AND not_before <= $1 \
             FOR UPDATE SKIP LOCKED)",
    )
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let mut ids: Vec<i64> = Vec::new();
    for m in p.models.iter().filter(|m| m.max > 0) {
        let n = global_free(&mut tx, m).await?;
        if n == 0 {
            continue;
        }
        let mut claimed: Vec<i64> = sqlx::query_scalar(
            "UPDATE requests SET state = 'running', daemon_id = $1, lease = $2, started_at = $3 \
             WHERE id IN (SELECT id FROM requests \
                 WHERE state = 'pending' AND not_before IS NULL AND model = $4 \
                 ORDER BY deadline, id LIMIT $5 FOR UPDATE SKIP LOCKED) \
             RETURNING id",
        )
        .bind(p.daemon_id.as_str())
        .bind(lease)
        .bind(now)
        .bind(&m.model)
        .bind(i64::from(n))
        .fetch_all(&mut *tx)
        .await?;
        ids.append(&mut claimed);
    }
    let requests = if ids.is_empty() {
        Vec::new()
    } else {
        load_claimed(&mut tx, &ids, now).await?
    };
    let next_retry_at: Option<Timestamp> = sqlx::query_scalar(
        "SELECT MIN(not_before) FROM requests WHERE state = 'pending' AND not_before IS NOT NULL",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Claimed {
        requests,
        next_retry_at,
    })
}

/// How many requests of `m.model` this claim may take so that the model's limit holds across
/// every replica: the limit minus what is running anywhere, under a transaction-scoped lock per
/// model so two replicas cannot both take the same free slots.
async fn global_free(tx: &mut PgConnection, m: &ModelClaim) -> Result<u32> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('fusillade.model:' || $1, 0))")
        .bind(&m.model)
        .execute(&mut *tx)
        .await?;
    let running: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM requests WHERE state = 'running' AND model = $1")
            .bind(&m.model)
            .fetch_one(&mut *tx)
            .await?;
    let free = i64::from(m.limit) - running + i64::from(m.unflushed);
    Ok(free.clamp(0, i64::from(m.max)) as u32)
}

async fn load_claimed(
    tx: &mut PgConnection,
    ids: &[i64],
    now: Timestamp,
) -> Result<Vec<ClaimedRequest>> {
    let rows = sqlx::query(
        "SELECT r.id, r.lease, r.batch_seq, b.id AS batch_id, r.line, t.custom_id, t.url, \
             r.model, t.body, r.attempts, r.deadline \
         FROM requests r \
         JOIN templates t ON t.id = r.template_id \
         JOIN batches b ON b.seq = r.batch_seq \
         WHERE r.id = ANY($1) ORDER BY r.deadline, r.id",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut deltas = CounterDeltas::default();
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let deadline: i64 = r.try_get("deadline")?;
        deltas.moved(
            r.try_get("batch_seq")?,
            RequestState::Pending,
            RequestState::Running,
            1,
        );
        out.push(ClaimedRequest {
            id: r.try_get("id")?,
            lease: r.try_get("lease")?,
            batch_id: BatchId::from_string(r.try_get::<String, _>("batch_id")?),
            line: r.try_get::<i64, _>("line")? as u64,
            custom_id: r.try_get("custom_id")?,
            url: r.try_get("url")?,
            model: r.try_get("model")?,
            body: r.try_get("body")?,
            attempts: r.try_get::<i32, _>("attempts")? as u32,
            deadline: (deadline != NO_DEADLINE)
                .then(|| chrono::DateTime::from_timestamp_millis(deadline))
                .flatten(),
        });
    }
    apply_and_finalize(tx, &deltas, now).await?;
    Ok(out)
}

pub(super) async fn finish_many(
    pool: &PgPool,
    finishes: &[Finish],
    now: Timestamp,
) -> Result<FinishReport> {
    if finishes.is_empty() {
        return Ok(FinishReport::default());
    }
    let now = ms(now);
    let rows: Vec<FinishRow<'_>> = finishes.iter().map(FinishRow::new).collect();
    let not_before: Vec<Option<Timestamp>> = rows
        .iter()
        .map(|r| {
            r.not_before
                .and_then(chrono::DateTime::from_timestamp_millis)
        })
        .collect();
    let mut tx = pool.begin().await?;
    let applied = sqlx::query(
        r#"
UPDATE requests r SET
    state = f.state, not_before = f.not_before, attempts = r.attempts + f.charge,
    daemon_id = NULL, lease = NULL,
    finished_at = CASE WHEN f.state = 'pending' THEN NULL ELSE $12 END,
    status_code = CASE WHEN f.set THEN f.status_code ELSE r.status_code END,
    response = CASE WHEN f.set THEN f.response ELSE r.response END,
    upstream_request_id = CASE WHEN f.set THEN f.upstream_request_id ELSE r.upstream_request_id END,
    error_code = CASE WHEN f.set THEN f.error_code ELSE r.error_code END,
    error_message = CASE WHEN f.set THEN f.error_message ELSE r.error_message END
FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::timestamptz[], $5::int[], $6::bool[],
            $7::int[], $8::text[], $9::text[], $10::text[], $11::text[])
    AS f(id, lease, state, not_before, charge, set, status_code, response,
         upstream_request_id, error_code, error_message)
WHERE r.id = f.id AND r.state = 'running' AND r.lease = f.lease
RETURNING r.id, r.batch_seq, r.state
"#,
    )
    .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.lease).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.state).collect::<Vec<_>>())
    .bind(not_before)
    .bind(rows.iter().map(|r| r.charge).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.set).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.status_code).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.response).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.upstream_request_id)
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.error_code).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.error_message).collect::<Vec<_>>())
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let mut deltas = CounterDeltas::default();
    let mut requeued = Vec::new();
    for r in &applied {
        let to = state(r.try_get::<&str, _>("state")?)?;
        deltas.moved(r.try_get("batch_seq")?, RequestState::Running, to, 1);
        if to == RequestState::Pending {
            requeued.push(r.try_get::<i64, _>("id")?);
        }
    }
    cancel_requeued_of_cancelling(&mut tx, &requeued, now, &mut deltas).await?;
    let finished_batches = apply_and_finalize(&mut tx, &deltas, now).await?;
    if rows
        .iter()
        .any(|r| r.state == RequestState::Pending.as_str())
    {
        notify(&mut tx, &StorageEvent::WorkAvailable).await?;
    }
    for id in &finished_batches {
        notify(&mut tx, &StorageEvent::BatchFinished(id.clone())).await?;
    }
    tx.commit().await?;
    Ok(FinishReport {
        applied: applied.len() as u64,
        stale: (finishes.len() - applied.len()) as u64,
        finished_batches,
    })
}

/// A retried or released request whose batch is being cancelled must not run again: it is
/// cancelled, like the batch's other pending requests were.
async fn cancel_requeued_of_cancelling(
    tx: &mut PgConnection,
    ids: &[i64],
    now: Timestamp,
    deltas: &mut CounterDeltas,
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let cancelled: Vec<i64> = sqlx::query_scalar(
        "UPDATE requests r SET state = 'cancelled', finished_at = $2, not_before = NULL, \
             error_code = $3, error_message = $4, status_code = NULL, response = NULL \
         FROM batches b \
         WHERE r.id = ANY($1) AND r.state = 'pending' AND b.seq = r.batch_seq \
           AND b.status = 'cancelling' \
         RETURNING r.batch_seq",
    )
    .bind(ids)
    .bind(now)
    .bind(CANCELLED_CODE)
    .bind(CANCELLED_MESSAGE)
    .fetch_all(&mut *tx)
    .await?;
    for seq in cancelled {
        deltas.moved(seq, RequestState::Pending, RequestState::Cancelled, 1);
    }
    Ok(())
}

pub(super) async fn rescue_stale(pool: &PgPool, p: RescueParams) -> Result<u64> {
    let now = ms(p.now);
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE daemons SET status = 'dead', stopped_at = $1 \
         WHERE status = 'running' AND (last_heartbeat < $2 OR ($3::text IS NOT NULL AND id <> $3))",
    )
    .bind(now)
    .bind(ms(p.heartbeat_before))
    .bind(p.all_except.as_ref().map(|d| d.as_str()))
    .execute(&mut *tx)
    .await?;
    // A rescued request of a batch being cancelled is cancelled rather than run again.
    let rescued = sqlx::query(
        "UPDATE requests r SET \
             state = CASE WHEN b.status = 'cancelling' THEN 'cancelled' ELSE 'pending' END, \
             finished_at = CASE WHEN b.status = 'cancelling' THEN $1 END, \
             error_code = CASE WHEN b.status = 'cancelling' THEN $2 ELSE r.error_code END, \
             error_message = CASE WHEN b.status = 'cancelling' THEN $3 \
                 ELSE r.error_message END, \
             daemon_id = NULL, lease = NULL, started_at = NULL \
         FROM batches b \
         WHERE b.seq = r.batch_seq AND r.id IN (SELECT id FROM requests \
             WHERE state = 'running' AND (daemon_id IS NULL OR daemon_id NOT IN \
                 (SELECT id FROM daemons WHERE status = 'running')) \
             FOR UPDATE SKIP LOCKED) \
         RETURNING r.batch_seq, r.state",
    )
    .bind(now)
    .bind(CANCELLED_CODE)
    .bind(CANCELLED_MESSAGE)
    .fetch_all(&mut *tx)
    .await?;
    let mut deltas = CounterDeltas::default();
    for r in &rescued {
        let to = state(r.try_get::<&str, _>("state")?)?;
        deltas.moved(r.try_get("batch_seq")?, RequestState::Running, to, 1);
    }
    let finished = apply_and_finalize(&mut tx, &deltas, now).await?;
    if !rescued.is_empty() {
        notify(&mut tx, &StorageEvent::WorkAvailable).await?;
    }
    for id in finished {
        notify(&mut tx, &StorageEvent::BatchFinished(id)).await?;
    }
    tx.commit().await?;
    Ok(rescued.len() as u64)
}
