//! Conformance cases for requests: claims, fenced outcomes, retries and batch completion.

use std::collections::BTreeMap;
use std::sync::Arc;

use fusillade::Storage;
use fusillade::model::{Batch, BatchStatus, File, Finish, Outcome, RequestState, Timestamp};
use fusillade::storage::{BatchCreate, ClaimParams, ModelClaim, ResultFilter, ResultRow};

use super::{
    alice, assert_counts_match_rows, claim, create_batch, daemon, finish, get, ok, rows, states,
    upstream_error,
};
use crate::support::{ALICE, CHAT, jsonl, t, upload_ok};

fn models(claims: &[(&str, u32)]) -> Vec<ModelClaim> {
    claims
        .iter()
        .map(|(model, max)| ModelClaim {
            model: model.to_string(),
            max: *max,
            limit: u32::MAX,
            in_flight: 0,
        })
        .collect()
}

async fn claim_models(
    s: &Arc<dyn Storage>,
    claims: &[(&str, u32)],
    now: Timestamp,
) -> fusillade::storage::Claimed {
    let params = ClaimParams {
        daemon_id: daemon(),
        now,
        models: models(claims),
    };
    s.request_claim_many(params).await.expect("claim")
}

async fn batch_from(s: &Arc<dyn Storage>, file: &File, now: i64, deadline: Option<i64>) -> Batch {
    let params = BatchCreate {
        owner: ALICE.to_string(),
        input_file_id: file.id.clone(),
        endpoint: Some(CHAT.to_string()),
        completion_window: deadline.map(|_| "24h".to_string()),
        expires_at: deadline.map(t),
        metadata: None,
        now: t(now),
    };
    s.batch_create(params).await.unwrap()
}

/// A model's `limit` holds across daemons: a claim takes at most the limit minus the claiming
/// process's own calls in flight minus the rows other daemons run. Its own running rows are not
/// counted from the database (a finished call looks running there until its outcome is written).
pub async fn claim_holds_a_model_limit_across_daemons(s: Arc<dyn Storage>) {
    create_batch(&s, ALICE, &["m"; 12], t(0), None).await;
    let limited = |daemon_id: &str, in_flight: u32| ClaimParams {
        daemon_id: fusillade::model::DaemonId::from_string(daemon_id),
        now: t(1),
        models: vec![ModelClaim {
            model: "m".into(),
            max: 100,
            limit: 5,
            in_flight,
        }],
    };
    let first = s.request_claim_many(limited("daemon_a", 0)).await.unwrap();
    assert_eq!(first.requests.len(), 5);
    // Daemon A's five rows fill the limit for B.
    let second = s.request_claim_many(limited("daemon_b", 0)).await.unwrap();
    assert!(second.requests.is_empty());
    // A's own rows are its business: with two of them still in flight it may take three more.
    let third = s.request_claim_many(limited("daemon_a", 2)).await.unwrap();
    assert_eq!(third.requests.len(), 3);
    // Once A's rows are finished, B gets the limit minus its own calls in flight.
    for r in first.requests.iter().chain(&third.requests) {
        finish(&s, r, ok(&r.custom_id), t(2)).await;
    }
    let fourth = s.request_claim_many(limited("daemon_b", 1)).await.unwrap();
    assert_eq!(fourth.requests.len(), 4);
}

/// Each model gets at most its `max`; models not asked for (or with `max` 0) get nothing.
pub async fn claim_respects_per_model_max_and_requested_models(s: Arc<dyn Storage>) {
    let models = ["m1", "m2", "m3", "m1", "m2", "m3", "m1", "m2"];
    let batch = create_batch(&s, ALICE, &models, t(0), None).await;
    let claimed = claim_models(&s, &[("m1", 2), ("m3", 5), ("m2", 0), ("m9", 4)], t(1)).await;
    let mut got: Vec<(&str, u64)> = claimed
        .requests
        .iter()
        .map(|r| (r.model.as_str(), r.line))
        .collect();
    got.sort();
    assert_eq!(got, vec![("m1", 1), ("m1", 4), ("m3", 3), ("m3", 6)]);
    for r in &claimed.requests {
        assert_eq!(
            (r.batch_id.clone(), r.attempts, r.deadline),
            (batch.id.clone(), 0, None)
        );
        assert_eq!(r.custom_id, format!("req-{}", r.line));
    }
    let b = get(&s, &batch.id).await;
    assert_eq!((b.counts.running, b.counts.pending), (4, 4));
    assert_counts_match_rows(&s, &batch.id).await;

    // Leased requests are not claimed twice.
    let more = claim_models(&s, &[("m1", 10), ("m3", 10)], t(2)).await;
    let lines: Vec<u64> = more.requests.iter().map(|r| r.line).collect();
    assert_eq!(lines, vec![7]);
    assert!(more.next_retry_at.is_none());
    assert_counts_match_rows(&s, &batch.id).await;
}

/// Earliest deadline first (none last), then batch creation order, then line order.
pub async fn claim_orders_by_deadline_then_batch_then_line(s: Arc<dyn Storage>) {
    let file = |models: &'static [&'static str], at| {
        let s = s.clone();
        async move { upload_ok(s.as_ref(), ALICE, &jsonl(models), t(at)).await }
    };
    let fa = file(&["m", "m"], 0).await;
    let fd = file(&["m", "m"], 1).await;
    let fc = file(&["m", "m"], 2).await;
    let fb = file(&["m", "m"], 3).await;
    // D's file is older than C's, but C's batch is created first.
    let a = batch_from(&s, &fa, 10, None).await;
    let c = batch_from(&s, &fc, 11, Some(500)).await;
    let d = batch_from(&s, &fd, 12, Some(500)).await;
    let b = batch_from(&s, &fb, 13, Some(1000)).await;

    let order = |reqs: Vec<fusillade::model::ClaimedRequest>| {
        reqs.into_iter()
            .map(|r| (r.batch_id, r.line))
            .collect::<Vec<_>>()
    };
    let first = claim(&s, "m", 3, t(20)).await;
    assert_eq!(first[0].deadline, Some(t(500)));
    let expected = vec![(c.id.clone(), 1), (c.id.clone(), 2), (d.id.clone(), 1)];
    assert_eq!(order(first), expected);
    let rest = order(claim(&s, "m", 10, t(21)).await);
    let expected = vec![
        (d.id.clone(), 2),
        (b.id.clone(), 1),
        (b.id.clone(), 2),
        (a.id.clone(), 1),
        (a.id.clone(), 2),
    ];
    assert_eq!(rest, expected);

    // The same order holds across models within one claim.
    let x = create_batch(&s, ALICE, &["p", "q"], t(30), None).await;
    let y = create_batch(&s, ALICE, &["q", "p"], t(31), Some(t(900))).await;
    let mixed = claim_models(&s, &[("p", 10), ("q", 10)], t(32))
        .await
        .requests;
    let expected = vec![(y.id.clone(), 1), (y.id, 2), (x.id.clone(), 1), (x.id, 2)];
    assert_eq!(order(mixed), expected);
    for batch in [a, b, c, d] {
        assert_counts_match_rows(&s, &batch.id).await;
    }
}

/// A retry waits for its `not_before`, which the claim reports so the scheduler can wake.
pub async fn retry_is_not_claimable_before_not_before(s: Arc<dyn Storage>) {
    let batch = create_batch(&s, ALICE, &["m"], t(0), None).await;
    let req = claim(&s, "m", 1, t(1)).await;
    let retry = Outcome::Retry {
        not_before: t(60),
        error: upstream_error(503),
    };
    let report = finish(&s, &req[0], retry, t(2)).await;
    assert_eq!((report.applied, report.stale), (1, 0));
    assert!(report.finished_batches.is_empty());
    let b = get(&s, &batch.id).await;
    assert_eq!(
        (b.status, b.counts.pending, b.counts.running),
        (BatchStatus::InProgress, 1, 0)
    );
    let row = &rows(&s, &batch.id, ResultFilter::All).await[0];
    assert_eq!((row.state, row.attempts), (RequestState::Pending, 1));
    assert_eq!(row.status_code, Some(503));
    assert_eq!(row.error_code.as_deref(), Some("upstream_status"));

    let early = claim_models(&s, &[("m", 10)], t(59)).await;
    assert!(early.requests.is_empty(), "claimed before not_before");
    assert_eq!(early.next_retry_at, Some(t(60)));
    let due = claim_models(&s, &[("m", 10)], t(60)).await;
    assert_eq!(due.requests.len(), 1);
    assert_eq!(due.requests[0].attempts, 1);
    assert_eq!(due.next_retry_at, None);

    finish(&s, &due.requests[0], ok("req-1"), t(61)).await;
    let row = &rows(&s, &batch.id, ResultFilter::All).await[0];
    assert_eq!((row.state, row.attempts), (RequestState::Completed, 2));
    assert_eq!(
        row.error_code, None,
        "a completed request keeps an old error"
    );
    assert_counts_match_rows(&s, &batch.id).await;
}

/// Completed stores the answer, Failed the error; counters follow each write.
pub async fn finish_completed_and_failed_store_results(s: Arc<dyn Storage>) {
    let batch = create_batch(&s, ALICE, &["m", "m", "m"], t(0), None).await;
    let c = claim(&s, "m", 3, t(1)).await;
    let report = finish(&s, &c[0], ok("req-1"), t(2)).await;
    assert_eq!((report.applied, report.stale), (1, 0));
    let counts = get(&s, &batch.id).await.counts;
    assert_eq!((counts.running, counts.completed, counts.failed), (2, 1, 0));

    let finishes = [
        Finish {
            id: c[1].id,
            lease: c[1].lease,
            outcome: Outcome::Failed(upstream_error(400)),
        },
        Finish {
            id: c[2].id,
            lease: c[2].lease,
            outcome: ok("req-3"),
        },
    ];
    let report = s.request_finish_many(&finishes, t(3)).await.unwrap();
    assert_eq!((report.applied, report.stale), (2, 0));
    let counts = get(&s, &batch.id).await.counts;
    assert_eq!((counts.running, counts.completed, counts.failed), (0, 2, 1));

    let all = rows(&s, &batch.id, ResultFilter::All).await;
    let done = &all[0];
    assert_eq!((done.state, done.attempts), (RequestState::Completed, 1));
    assert_eq!(done.status_code, Some(200));
    assert_eq!(done.response_body.as_deref(), Some(r#"{"answer":"req-1"}"#));
    assert_eq!(done.upstream_request_id.as_deref(), Some("up-req-1"));
    assert_eq!(
        (done.error_code.as_deref(), done.error_message.as_deref()),
        (None, None)
    );
    let failed = &all[1];
    assert_eq!((failed.state, failed.attempts), (RequestState::Failed, 1));
    assert_eq!(failed.status_code, Some(400));
    assert_eq!(
        failed.response_body.as_deref(),
        Some(r#"{"error":"status 400"}"#)
    );
    assert_eq!(failed.error_code.as_deref(), Some("upstream_status"));
    assert_eq!(
        failed.error_message.as_deref(),
        Some("upstream answered 400")
    );
    assert_counts_match_rows(&s, &batch.id).await;
}

/// A request released unsent goes back to pending with no attempt charged.
pub async fn finish_released_returns_to_pending_without_charging_an_attempt(s: Arc<dyn Storage>) {
    let batch = create_batch(&s, ALICE, &["m"], t(0), None).await;
    let first = claim(&s, "m", 1, t(1)).await;
    let report = finish(&s, &first[0], Outcome::Released, t(2)).await;
    assert_eq!((report.applied, report.stale), (1, 0));
    let b = get(&s, &batch.id).await;
    assert_eq!((b.counts.pending, b.counts.running), (1, 0));
    let row = &rows(&s, &batch.id, ResultFilter::All).await[0];
    assert_eq!((row.state, row.attempts), (RequestState::Pending, 0));

    let second = claim(&s, "m", 1, t(2)).await;
    assert_eq!(
        (second.len(), second[0].attempts),
        (1, 0),
        "released not claimable at once"
    );
    // The first lease is over: its holder can no longer write.
    let late = finish(&s, &first[0], ok("req-1"), t(3)).await;
    assert_eq!((late.applied, late.stale), (0, 1));
    assert_eq!(states(&s, &batch.id).await, vec![RequestState::Running]);
    assert_counts_match_rows(&s, &batch.id).await;
}

/// An outcome under a lease that is not the current one changes nothing.
pub async fn finish_with_stale_lease_is_ignored(s: Arc<dyn Storage>) {
    let batch = create_batch(&s, ALICE, &["m"], t(0), None).await;
    let req = claim(&s, "m", 1, t(1)).await.remove(0);
    let wrong = Finish {
        id: req.id,
        lease: req.lease.wrapping_add(1),
        outcome: ok("req-1"),
    };
    let report = s.request_finish_many(&[wrong], t(2)).await.unwrap();
    assert_eq!((report.applied, report.stale), (0, 1));
    assert!(report.finished_batches.is_empty());
    let b = get(&s, &batch.id).await;
    assert_eq!((b.status, b.counts.running), (BatchStatus::InProgress, 1));
    let row = &rows(&s, &batch.id, ResultFilter::All).await[0];
    assert_eq!(
        (row.state, row.attempts, row.status_code),
        (RequestState::Running, 0, None)
    );
    assert_counts_match_rows(&s, &batch.id).await;

    let report = finish(&s, &req, ok("req-1"), t(3)).await;
    assert_eq!((report.applied, report.stale), (1, 0));
}

/// Once final, a request keeps its first outcome, even within one flush.
pub async fn final_state_is_first_writer_wins(s: Arc<dyn Storage>) {
    let batch = create_batch(&s, ALICE, &["m", "m"], t(0), None).await;
    let c = claim(&s, "m", 2, t(1)).await;
    finish(&s, &c[0], ok("req-1"), t(2)).await;
    for outcome in [
        Outcome::Failed(upstream_error(500)),
        Outcome::Cancelled,
        ok("again"),
    ] {
        let report = finish(&s, &c[0], outcome, t(3)).await;
        assert_eq!((report.applied, report.stale), (0, 1));
    }
    let row = &rows(&s, &batch.id, ResultFilter::All).await[0];
    assert_eq!((row.state, row.attempts), (RequestState::Completed, 1));
    assert_eq!(row.response_body.as_deref(), Some(r#"{"answer":"req-1"}"#));

    // Two outcomes for the same attempt in one flush: exactly one applies.
    let twice = [ok("req-2"), Outcome::Failed(upstream_error(400))].map(|outcome| Finish {
        id: c[1].id,
        lease: c[1].lease,
        outcome,
    });
    let report = s.request_finish_many(&twice, t(4)).await.unwrap();
    assert_eq!((report.applied, report.stale), (1, 1));
    assert_eq!(report.finished_batches, vec![batch.id.clone()]);
    let b = get(&s, &batch.id).await;
    assert_eq!(b.counts.completed + b.counts.failed, 2);
    assert_counts_match_rows(&s, &batch.id).await;
}

/// The flush that finishes the last request completes the batch and reports it.
pub async fn finish_of_last_request_completes_the_batch(s: Arc<dyn Storage>) {
    let batch = create_batch(&s, ALICE, &["m", "m", "m"], t(0), None).await;
    let c = claim(&s, "m", 3, t(1)).await;
    let r1 = finish(&s, &c[0], ok("req-1"), t(10)).await;
    let r2 = finish(&s, &c[1], Outcome::Failed(upstream_error(404)), t(11)).await;
    assert!(r1.finished_batches.is_empty() && r2.finished_batches.is_empty());
    let b = get(&s, &batch.id).await;
    assert_eq!(
        (b.status, b.finalizing_at, b.completed_at),
        (BatchStatus::InProgress, None, None)
    );

    let r3 = finish(&s, &c[2], ok("req-3"), t(12)).await;
    assert_eq!(r3.finished_batches, vec![batch.id.clone()]);
    let b = get(&s, &batch.id).await;
    assert_eq!(b.status, BatchStatus::Completed);
    assert_eq!(b.completed_at, Some(t(12)));
    let finalizing = b.finalizing_at.expect("finalizing_at set");
    assert!(
        t(11) <= finalizing && finalizing <= t(12),
        "finalizing_at {finalizing}"
    );
    let c = b.counts;
    assert_eq!((c.total, c.completed, c.failed, c.finished()), (3, 2, 1, 3));
    assert!(s.batch_models_active().await.unwrap().is_empty());
    assert_counts_match_rows(&s, &batch.id).await;
}

/// One flush of hundreds of mixed outcomes (more than one statement's worth on backends that
/// split it), some with a stale lease: each applies exactly as it would alone.
pub async fn finish_of_hundreds_in_one_call_applies_each_outcome(s: Arc<dyn Storage>) {
    const N: usize = 345;
    let batch = create_batch(&s, ALICE, &["m"; N], t(0), None).await;
    let claimed = claim(&s, "m", N as u32, t(1)).await;
    assert_eq!(claimed.len(), N);
    let finishes: Vec<Finish> = claimed
        .iter()
        .enumerate()
        .map(|(i, req)| Finish {
            id: req.id,
            // Every tenth carries a lease that is not the request's: it must not apply.
            lease: if i % 10 == 9 {
                req.lease ^ 1
            } else {
                req.lease
            },
            outcome: match i % 3 {
                0 => ok(&req.custom_id),
                1 => Outcome::Failed(upstream_error(400)),
                _ => Outcome::Released,
            },
        })
        .collect();
    let report = s.request_finish_many(&finishes, t(2)).await.unwrap();
    let stale = N / 10;
    assert_eq!(
        (report.applied, report.stale),
        ((N - stale) as u64, stale as u64)
    );
    let by_line: BTreeMap<u64, ResultRow> = rows(&s, &batch.id, ResultFilter::All)
        .await
        .into_iter()
        .map(|r| (r.line, r))
        .collect();
    for (i, req) in claimed.iter().enumerate() {
        let row = &by_line[&req.line];
        let (state, attempts, body) = match (i % 10 == 9, i % 3) {
            (true, _) => (RequestState::Running, 0, None),
            (false, 0) => (
                RequestState::Completed,
                1,
                Some(format!(r#"{{"answer":"{}"}}"#, req.custom_id)),
            ),
            (false, 1) => (
                RequestState::Failed,
                1,
                Some(r#"{"error":"status 400"}"#.to_string()),
            ),
            (false, _) => (RequestState::Pending, 0, None),
        };
        assert_eq!(
            (row.state, row.attempts, row.response_body.clone()),
            (state, attempts, body),
            "line {}",
            req.line
        );
    }
    assert_counts_match_rows(&s, &batch.id).await;
}

/// In a cancelling batch, an attempt that would go back to pending is cancelled instead.
pub async fn retry_or_release_in_cancelling_batch_cancels_instead(s: Arc<dyn Storage>) {
    let batch = create_batch(&s, ALICE, &["m", "m", "m"], t(0), None).await;
    let c = claim(&s, "m", 2, t(1)).await;
    s.batch_cancel(&alice(), &batch.id, t(2)).await.unwrap();
    let finishes = [
        Finish {
            id: c[0].id,
            lease: c[0].lease,
            outcome: Outcome::Retry {
                not_before: t(3),
                error: upstream_error(503),
            },
        },
        Finish {
            id: c[1].id,
            lease: c[1].lease,
            outcome: Outcome::Released,
        },
    ];
    let report = s.request_finish_many(&finishes, t(3)).await.unwrap();
    assert_eq!((report.applied, report.stale), (2, 0));
    assert_eq!(report.finished_batches, vec![batch.id.clone()]);
    assert_eq!(
        states(&s, &batch.id).await,
        vec![RequestState::Cancelled; 3]
    );
    let b = get(&s, &batch.id).await;
    assert_eq!(
        (b.status, b.cancelled_at),
        (BatchStatus::Cancelled, Some(t(3)))
    );
    assert!(claim(&s, "m", 10, t(100)).await.is_empty());
    assert_counts_match_rows(&s, &batch.id).await;
}
