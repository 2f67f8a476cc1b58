//! Conformance cases for the batch lifecycle after creation: cancel, expiry, retry of failures.

use std::sync::Arc;

use fusillade::model::{BatchStatus, Outcome, RequestState};
use fusillade::storage::{ResultFilter, Scope};
use fusillade::{Storage, StorageError};

use super::{
    alice, assert_counts_match_rows, claim, create_batch, finish, get, ok, rows, states,
    upstream_error,
};
use crate::support::{ALICE, BOB, t};

/// With nothing in flight a cancel is immediate: every pending request is cancelled.
pub async fn cancel_without_running_requests_cancels_at_once(s: Arc<dyn Storage>) {
    let batch = create_batch(&s, ALICE, &["m", "m", "m"], t(0), None).await;
    let bob = Scope::Tenant(BOB.into());
    let r = s.batch_cancel(&bob, &batch.id, t(1)).await;
    assert!(matches!(r, Err(StorageError::NotFound(_))), "{r:?}");
    assert_eq!(get(&s, &batch.id).await.status, BatchStatus::InProgress);

    let cancelled = s.batch_cancel(&alice(), &batch.id, t(10)).await.unwrap();
    assert_eq!(cancelled.status, BatchStatus::Cancelled);
    assert_eq!(cancelled.cancelling_at, Some(t(10)));
    assert_eq!(cancelled.cancelled_at, Some(t(10)));
    assert_eq!(
        (cancelled.counts.pending, cancelled.counts.cancelled),
        (0, 3)
    );
    assert_eq!(
        states(&s, &batch.id).await,
        vec![RequestState::Cancelled; 3]
    );
    let errors = rows(&s, &batch.id, ResultFilter::Errors).await;
    let codes: Vec<Option<&str>> = errors.iter().map(|r| r.error_code.as_deref()).collect();
    assert_eq!(
        codes,
        vec![Some("batch_cancelled"); 3],
        "cancelled rows say why"
    );
    assert!(claim(&s, "m", 10, t(11)).await.is_empty());
    assert!(s.batch_models_active().await.unwrap().is_empty());
    assert_counts_match_rows(&s, &batch.id).await;
}

/// With requests in flight the batch is `cancelling` until they come back cancelled.
pub async fn cancel_with_running_requests_waits_for_them(s: Arc<dyn Storage>) {
    let batch = create_batch(&s, ALICE, &["m", "m", "m"], t(0), None).await;
    let running = claim(&s, "m", 1, t(1)).await;
    let b = s.batch_cancel(&alice(), &batch.id, t(2)).await.unwrap();
    assert_eq!(b.status, BatchStatus::Cancelling);
    assert_eq!((b.cancelling_at, b.cancelled_at), (Some(t(2)), None));
    assert_eq!((b.counts.running, b.counts.cancelled), (1, 2));
    assert_counts_match_rows(&s, &batch.id).await;
    assert!(claim(&s, "m", 10, t(3)).await.is_empty());

    let report = finish(&s, &running[0], Outcome::Cancelled, t(4)).await;
    assert_eq!(report.applied, 1);
    assert_eq!(report.finished_batches, vec![batch.id.clone()]);
    let b = get(&s, &batch.id).await;
    assert_eq!(b.status, BatchStatus::Cancelled);
    assert_eq!(b.cancelled_at, Some(t(4)));
    assert_eq!((b.counts.running, b.counts.cancelled), (0, 3));
    assert_counts_match_rows(&s, &batch.id).await;
}

/// A request that completes after the cancel keeps its result; the batch still ends cancelled.
pub async fn cancelling_batch_keeps_results_finished_after_cancel(s: Arc<dyn Storage>) {
    let batch = create_batch(&s, ALICE, &["m", "m"], t(0), None).await;
    let running = claim(&s, "m", 1, t(1)).await;
    s.batch_cancel(&alice(), &batch.id, t(2)).await.unwrap();
    let report = finish(&s, &running[0], ok("req-1"), t(3)).await;
    assert_eq!(report.finished_batches, vec![batch.id.clone()]);
    let b = get(&s, &batch.id).await;
    assert_eq!(b.status, BatchStatus::Cancelled);
    assert_eq!((b.counts.completed, b.counts.cancelled), (1, 1));
    let out = rows(&s, &batch.id, ResultFilter::Output).await;
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].response_body.as_deref(),
        Some(r#"{"answer":"req-1"}"#)
    );
    assert_counts_match_rows(&s, &batch.id).await;
}

/// Cancelling a batch that already finished returns it as it was.
pub async fn cancel_of_completed_batch_returns_it_unchanged(s: Arc<dyn Storage>) {
    let batch = create_batch(&s, ALICE, &["m"], t(0), None).await;
    let req = claim(&s, "m", 1, t(1)).await;
    finish(&s, &req[0], ok("req-1"), t(2)).await;
    let before = get(&s, &batch.id).await;
    assert_eq!(before.status, BatchStatus::Completed);
    let after = s.batch_cancel(&alice(), &batch.id, t(3)).await.unwrap();
    assert_eq!(after, before);
    assert_eq!(get(&s, &batch.id).await, before);
    assert_eq!(states(&s, &batch.id).await, vec![RequestState::Completed]);
}

/// At the deadline, pending and running requests expire; finished results are kept.
pub async fn expire_due_expires_unfinished_requests_and_keeps_results(s: Arc<dyn Storage>) {
    let batch = create_batch(&s, ALICE, &["m", "m", "m"], t(0), Some(t(100))).await;
    let claimed = claim(&s, "m", 2, t(1)).await;
    finish(&s, &claimed[0], ok("req-1"), t(2)).await;

    assert!(s.batch_expire_due(t(99)).await.unwrap().is_empty());
    assert_eq!(get(&s, &batch.id).await.status, BatchStatus::InProgress);
    assert_eq!(
        s.batch_expire_due(t(100)).await.unwrap(),
        vec![batch.id.clone()]
    );

    let b = get(&s, &batch.id).await;
    assert_eq!(b.status, BatchStatus::Expired);
    assert_eq!(b.expired_at, Some(t(100)));
    let c = b.counts;
    assert_eq!((c.pending, c.running, c.completed, c.expired), (0, 0, 1, 2));
    use RequestState::{Completed, Expired};
    assert_eq!(
        states(&s, &batch.id).await,
        vec![Completed, Expired, Expired]
    );
    let out = rows(&s, &batch.id, ResultFilter::Output).await;
    assert_eq!(
        out[0].response_body.as_deref(),
        Some(r#"{"answer":"req-1"}"#)
    );

    // The worker that still held line 2 comes back too late: its write is stale.
    let late = finish(&s, &claimed[1], ok("req-2"), t(101)).await;
    assert_eq!((late.applied, late.stale), (0, 1));
    assert_eq!(states(&s, &batch.id).await[1], Expired);
    assert!(s.batch_expire_due(t(200)).await.unwrap().is_empty());
    assert!(claim(&s, "m", 10, t(201)).await.is_empty());
    assert_counts_match_rows(&s, &batch.id).await;
}

/// A batch created without a deadline is never expired, however late it gets.
pub async fn batch_without_deadline_never_expires(s: Arc<dyn Storage>) {
    let open = create_batch(&s, ALICE, &["m"], t(0), None).await;
    let due = create_batch(&s, ALICE, &["m"], t(0), Some(t(10))).await;
    let expired = s.batch_expire_due(t(10_000_000)).await.unwrap();
    assert_eq!(expired, vec![due.id]);
    assert_eq!(get(&s, &open.id).await.status, BatchStatus::InProgress);
    assert_eq!(claim(&s, "m", 10, t(10_000_001)).await.len(), 1);
    assert_counts_match_rows(&s, &open.id).await;
}

/// Failed requests go back to pending with their attempts reset, reopening the batch.
pub async fn retry_failed_resets_attempts_and_reopens_completed_batch(s: Arc<dyn Storage>) {
    let batch = create_batch(&s, ALICE, &["m", "m"], t(0), None).await;
    let claimed = claim(&s, "m", 2, t(1)).await;
    finish(&s, &claimed[0], ok("req-1"), t(2)).await;
    finish(&s, &claimed[1], Outcome::Failed(upstream_error(400)), t(2)).await;
    let done = get(&s, &batch.id).await;
    assert_eq!(done.status, BatchStatus::Completed);
    assert_eq!(done.counts.failed, 1);

    let bob = Scope::Tenant(BOB.into());
    let r = s.batch_retry_failed(&bob, &batch.id, t(3)).await;
    assert!(matches!(r, Err(StorageError::NotFound(_))), "{r:?}");
    assert_eq!(
        s.batch_retry_failed(&alice(), &batch.id, t(3))
            .await
            .unwrap(),
        1
    );
    let b = get(&s, &batch.id).await;
    assert_eq!(b.status, BatchStatus::InProgress);
    assert_eq!(b.completed_at, None);
    assert_eq!(
        (b.counts.pending, b.counts.failed, b.counts.completed),
        (1, 0, 1)
    );
    assert_counts_match_rows(&s, &batch.id).await;
    let all = rows(&s, &batch.id, ResultFilter::All).await;
    assert_eq!((all[1].state, all[1].attempts), (RequestState::Pending, 0));

    let again = claim(&s, "m", 10, t(4)).await;
    assert_eq!((again.len(), again[0].line, again[0].attempts), (1, 2, 0));
    let report = finish(&s, &again[0], ok("req-2"), t(5)).await;
    assert_eq!(report.finished_batches, vec![batch.id.clone()]);
    let b = get(&s, &batch.id).await;
    assert_eq!(
        (b.status, b.completed_at),
        (BatchStatus::Completed, Some(t(5)))
    );
    assert_eq!(
        s.batch_retry_failed(&alice(), &batch.id, t(6))
            .await
            .unwrap(),
        0
    );
    assert_counts_match_rows(&s, &batch.id).await;
}
