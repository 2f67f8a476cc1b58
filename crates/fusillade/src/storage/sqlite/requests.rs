//! Requests on SQLite: bulk claims, fenced group-commit of outcomes, and rescue of leases held
//! by dead daemons.

use rand::Rng;
use sqlx::{Row, SqliteConnection};

use super::SqliteStorage;
use super::batches::finalize;
use super::rows::{NO_DEADLINE, apply_deltas, ms, opt_ts, state, ts};
use crate::model::{BatchId, ClaimedRequest, Finish, RequestState};
use crate::storage::shared::{CANCELLED_MESSAGE, CounterDeltas, FinishRow};
use crate::storage::{ClaimParams, Claimed, FinishReport, RescueParams, Result, StorageEvent};

pub(super) async fn claim_many(s: &SqliteStorage, p: ClaimParams) -> Result<Claimed> {
    let now = ms(p.now);
    let lease: i64 = rand::rng().random_range(1..i64::MAX);
    let mut tx = s.writer.begin().await?;
    // Retries that came due join the claimable set first.
    sqlx::query(
        "UPDATE requests SET not_before = NULL \
         WHERE state = 'pending' AND not_before IS NOT NULL AND not_before <= ?1",
    )
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let mut ids: Vec<i64> = Vec::new();
    for m in p.models.iter().filter(|m| m.max > 0) {
        // At most `max`, and never past the model's limit counted with other daemons' rows
        // (left by a dead predecessor until they are rescued).
        let mut claimed: Vec<i64> = sqlx::query_scalar(
            "UPDATE requests SET state = 'running', daemon_id = ?1, lease = ?2, started_at = ?3 \
             WHERE id IN (SELECT id FROM requests \
                 WHERE state = 'pending' AND not_before IS NULL AND model = ?4 \
                 ORDER BY deadline, id \
                 LIMIT max(0, min(?5, ?6 - (SELECT COUNT(*) FROM requests \
                     WHERE state = 'running' AND model = ?4 AND daemon_id <> ?1)))) \
             RETURNING id",
        )
        .bind(p.daemon_id.as_str())
        .bind(lease)
        .bind(now)
        .bind(&m.model)
        .bind(i64::from(m.max))
        .bind(i64::from(m.limit) - i64::from(m.in_flight))
        .fetch_all(&mut *tx)
        .await?;
        ids.append(&mut claimed);
    }
    let requests = if ids.is_empty() {
        Vec::new()
    } else {
        load_claimed(&mut tx, &ids).await?
    };
    let next_retry_at: Option<i64> = sqlx::query_scalar(
        "SELECT MIN(not_before) FROM requests WHERE state = 'pending' AND not_before IS NOT NULL",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Claimed {
        requests,
        next_retry_at: opt_ts(next_retry_at),
    })
}

/// Reads what the executor needs for the just-claimed rows and moves the batch counters.
async fn load_claimed(tx: &mut SqliteConnection, ids: &[i64]) -> Result<Vec<ClaimedRequest>> {
    let json = serde_json::to_string(ids).expect("ids serialize");
    let rows = sqlx::query(
        "SELECT r.id, r.lease, r.batch_seq, b.id AS batch_id, r.line, t.custom_id, t.url, \
             r.model, t.body, r.attempts, r.deadline \
         FROM requests r \
         JOIN templates t ON t.id = r.template_id \
         JOIN batches b ON b.seq = r.batch_seq \
         WHERE r.id IN (SELECT value FROM json_each(?1)) \
         ORDER BY r.deadline, r.id",
    )
    .bind(json)
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
            attempts: r.try_get::<i64, _>("attempts")? as u32,
            deadline: (deadline != NO_DEADLINE).then(|| ts(deadline)),
        });
    }
    apply_deltas(tx, &deltas).await?;
    Ok(out)
}

pub(super) async fn finish_many(
    s: &SqliteStorage,
    finishes: &[Finish],
    now: crate::model::Timestamp,
) -> Result<FinishReport> {
    if finishes.is_empty() {
        return Ok(FinishReport::default());
    }
    let rows: Vec<FinishRow<'_>> = finishes.iter().map(FinishRow::new).collect();
    let json = serde_json::to_string(&rows).expect("finish rows serialize");
    let mut tx = s.writer.begin().await?;
    let applied = sqlx::query(
        r#"
UPDATE requests SET
    state       = f.value ->> 'state',
    not_before  = f.value ->> 'not_before',
    attempts    = attempts + (f.value ->> 'charge'),
    daemon_id   = NULL,
    lease       = NULL,
    finished_at = CASE WHEN (f.value ->> 'state') = 'pending' THEN NULL ELSE ?2 END,
    status_code = CASE WHEN (f.value ->> 'set') THEN f.value ->> 'status_code' ELSE status_code END,
    response    = CASE WHEN (f.value ->> 'set') THEN f.value ->> 'response' ELSE response END,
    upstream_request_id = CASE WHEN (f.value ->> 'set')
                          THEN f.value ->> 'upstream_request_id' ELSE upstream_request_id END,
    error_code  = CASE WHEN (f.value ->> 'set') THEN f.value ->> 'error_code' ELSE error_code END,
    error_message = CASE WHEN (f.value ->> 'set')
                    THEN f.value ->> 'error_message' ELSE error_message END
FROM json_each(?1) AS f
WHERE requests.id = (f.value ->> 'id')
  AND requests.state = 'running'
  AND requests.lease = (f.value ->> 'lease')
RETURNING requests.id, requests.batch_seq, requests.state
"#,
    )
    .bind(json)
    .bind(ms(now))
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
    let finished_batches = finalize(&mut tx, &deltas, now).await?;
    tx.commit().await?;
    if finishes
        .iter()
        .any(|f| f.outcome.next_state() == RequestState::Pending)
    {
        s.emit(StorageEvent::WorkAvailable);
    }
    for id in &finished_batches {
        s.emit(StorageEvent::BatchFinished(id.clone()));
    }
    Ok(FinishReport {
        applied: applied.len() as u64,
        stale: (finishes.len() - applied.len()) as u64,
        finished_batches,
    })
}

/// A retried or released request whose batch is being cancelled must not run again: it is
/// cancelled, like the batch's other pending requests were.
async fn cancel_requeued_of_cancelling(
    tx: &mut SqliteConnection,
    ids: &[i64],
    now: crate::model::Timestamp,
    deltas: &mut CounterDeltas,
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_string(ids).expect("ids serialize");
    let cancelled: Vec<i64> = sqlx::query_scalar(
        "UPDATE requests SET state = 'cancelled', finished_at = ?2, not_before = NULL, \
             error_code = 'batch_cancelled', error_message = ?3, status_code = NULL, \
             response = NULL \
         WHERE id IN (SELECT value FROM json_each(?1)) AND state = 'pending' \
           AND (SELECT status FROM batches b WHERE b.seq = requests.batch_seq) = 'cancelling' \
         RETURNING batch_seq",
    )
    .bind(json)
    .bind(ms(now))
    .bind(CANCELLED_MESSAGE)
    .fetch_all(&mut *tx)
    .await?;
    for seq in cancelled {
        deltas.moved(seq, RequestState::Pending, RequestState::Cancelled, 1);
    }
    Ok(())
}

pub(super) async fn rescue_stale(s: &SqliteStorage, p: RescueParams) -> Result<u64> {
    let now = ms(p.now);
    let mut tx = s.writer.begin().await?;
    sqlx::query(
        "UPDATE daemons SET status = 'dead', stopped_at = ?1 \
         WHERE status = 'running' AND (last_heartbeat < ?2 OR (?3 IS NOT NULL AND id != ?3))",
    )
    .bind(now)
    .bind(ms(p.heartbeat_before))
    .bind(p.all_except.as_ref().map(|d| d.as_str()))
    .execute(&mut *tx)
    .await?;
    // A rescued request of a batch being cancelled is cancelled rather than run again.
    let rescued = sqlx::query(
        "UPDATE requests SET \
             state = CASE WHEN (SELECT status FROM batches b WHERE b.seq = requests.batch_seq) \
                 = 'cancelling' THEN 'cancelled' ELSE 'pending' END, \
             finished_at = CASE WHEN (SELECT status FROM batches b \
                 WHERE b.seq = requests.batch_seq) = 'cancelling' THEN ?1 END, \
             error_code = CASE WHEN (SELECT status FROM batches b \
                 WHERE b.seq = requests.batch_seq) = 'cancelling' \
                 THEN 'batch_cancelled' ELSE error_code END, \
             error_message = CASE WHEN (SELECT status FROM batches b \
                 WHERE b.seq = requests.batch_seq) = 'cancelling' \
                 THEN ?2 ELSE error_message END, \
             daemon_id = NULL, lease = NULL, started_at = NULL \
         WHERE state = 'running' \
           AND (daemon_id IS NULL OR daemon_id NOT IN \
                (SELECT id FROM daemons WHERE status = 'running')) \
         RETURNING batch_seq, state",
    )
    .bind(now)
    .bind(CANCELLED_MESSAGE)
    .fetch_all(&mut *tx)
    .await?;
    let mut deltas = CounterDeltas::default();
    for r in &rescued {
        let to = state(r.try_get::<&str, _>("state")?)?;
        deltas.moved(r.try_get("batch_seq")?, RequestState::Running, to, 1);
    }
    let finished = finalize(&mut tx, &deltas, p.now).await?;
    tx.commit().await?;
    if !rescued.is_empty() {
        s.emit(StorageEvent::WorkAvailable);
    }
    for id in finished {
        s.emit(StorageEvent::BatchFinished(id));
    }
    Ok(rescued.len() as u64)
}
