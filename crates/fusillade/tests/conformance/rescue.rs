//! Conformance cases for rescuing requests leased by daemons that died.

use std::sync::Arc;

use fusillade::Storage;
use fusillade::model::{BatchStatus, DaemonId, DaemonRecord, Outcome, RequestState};
use fusillade::storage::{RescueParams, ResultFilter};

use super::{
    alice, assert_counts_match_rows, claim_as, create_batch, finish, get, ok, register, rows,
    upstream_error,
};
use crate::support::{ALICE, t};

async fn daemon_record(s: &Arc<dyn Storage>, id: &DaemonId) -> DaemonRecord {
    let all = s.daemon_list().await.unwrap();
    all.into_iter()
        .find(|d| &d.id == id)
        .expect("daemon listed")
}

fn rescue_params(heartbeat_before: i64, all_except: Option<&DaemonId>, now: i64) -> RescueParams {
    RescueParams {
        heartbeat_before: t(heartbeat_before),
        all_except: all_except.cloned(),
        now: t(now),
    }
}

/// A silent daemon is declared dead and its leases return to pending, attempts untouched;
/// a daemon that heartbeats keeps its leases.
pub async fn rescue_returns_leases_of_silent_daemons_without_charging_attempts(
    s: Arc<dyn Storage>,
) {
    let silent = register(&s, "daemon_silent", t(0)).await;
    let alive = register(&s, "daemon_alive", t(0)).await;
    let batch = create_batch(&s, ALICE, &["m"; 4], t(0), None).await;
    let held = claim_as(&s, &silent, "m", 2, t(1)).await;
    let kept = claim_as(&s, &alive, "m", 2, t(1)).await;
    // Line 1 was tried once already, so it carries one attempt into the rescue.
    let retry = Outcome::Retry {
        not_before: t(5),
        error: upstream_error(503),
    };
    finish(&s, &held[0], retry, t(2)).await;
    let again = claim_as(&s, &silent, "m", 1, t(5)).await;
    assert_eq!((again[0].line, again[0].attempts), (1, 1));
    s.daemon_heartbeat(&alive, t(100), 0).await.unwrap();

    let rescued = s.request_rescue_stale(rescue_params(50, None, 110)).await;
    assert_eq!(rescued.unwrap(), 2);
    let dead = daemon_record(&s, &silent).await;
    assert_eq!(
        (dead.status.as_str(), dead.stopped_at),
        ("dead", Some(t(110)))
    );
    assert_eq!(daemon_record(&s, &alive).await.status, "running");
    let all = rows(&s, &batch.id, ResultFilter::All).await;
    let seen: Vec<(RequestState, u32)> = all.iter().map(|r| (r.state, r.attempts)).collect();
    use RequestState::{Pending, Running};
    assert_eq!(
        seen,
        vec![(Pending, 1), (Pending, 0), (Running, 0), (Running, 0)]
    );
    assert_counts_match_rows(&s, &batch.id).await;

    // The dead daemon's late outcome is stale; the live one's applies.
    let late = finish(&s, &held[1], ok("req-2"), t(111)).await;
    assert_eq!((late.applied, late.stale), (0, 1));
    let live = finish(&s, &kept[0], ok("req-3"), t(111)).await;
    assert_eq!((live.applied, live.stale), (1, 0));
    let reclaimed = claim_as(&s, &alive, "m", 10, t(112)).await;
    let got: Vec<(u64, u32)> = reclaimed.iter().map(|r| (r.line, r.attempts)).collect();
    assert_eq!(got, vec![(1, 1), (2, 0)]);
    assert_eq!(
        s.request_rescue_stale(rescue_params(50, None, 113))
            .await
            .unwrap(),
        0
    );
    assert_counts_match_rows(&s, &batch.id).await;
}

/// `all_except` declares every other daemon dead, whatever its heartbeat.
pub async fn rescue_all_except_rescues_every_other_daemon(s: Arc<dyn Storage>) {
    let me = register(&s, "daemon_me", t(100)).await;
    let other = register(&s, "daemon_other", t(100)).await;
    let batch = create_batch(&s, ALICE, &["m"; 3], t(0), None).await;
    let mine = claim_as(&s, &me, "m", 1, t(101)).await;
    claim_as(&s, &other, "m", 2, t(101)).await;

    let rescued = s
        .request_rescue_stale(rescue_params(0, Some(&me), 102))
        .await;
    assert_eq!(rescued.unwrap(), 2);
    assert_eq!(daemon_record(&s, &other).await.status, "dead");
    assert_eq!(daemon_record(&s, &me).await.status, "running");
    let b = get(&s, &batch.id).await;
    assert_eq!((b.counts.running, b.counts.pending), (1, 2));
    let report = finish(&s, &mine[0], ok("req-1"), t(103)).await;
    assert_eq!(report.applied, 1, "the excepted daemon lost its lease");
    assert_counts_match_rows(&s, &batch.id).await;
}

/// A rescued request of a batch being cancelled is cancelled, which can finish the batch.
pub async fn rescue_in_cancelling_batch_cancels_instead(s: Arc<dyn Storage>) {
    let gone = register(&s, "daemon_gone", t(0)).await;
    let batch = create_batch(&s, ALICE, &["m", "m"], t(0), None).await;
    claim_as(&s, &gone, "m", 1, t(1)).await;
    let b = s.batch_cancel(&alice(), &batch.id, t(2)).await.unwrap();
    assert_eq!(b.status, BatchStatus::Cancelling);

    let rescued = s.request_rescue_stale(rescue_params(50, None, 60)).await;
    assert_eq!(rescued.unwrap(), 1);
    let b = get(&s, &batch.id).await;
    assert_eq!(
        (b.status, b.cancelled_at),
        (BatchStatus::Cancelled, Some(t(60)))
    );
    assert_eq!((b.counts.cancelled, b.counts.pending), (2, 0));
    let all = rows(&s, &batch.id, ResultFilter::All).await;
    assert!(all.iter().all(|r| r.state == RequestState::Cancelled));
    let codes: Vec<Option<&str>> = all.iter().map(|r| r.error_code.as_deref()).collect();
    assert_eq!(codes, vec![Some("batch_cancelled"); 2]);
    assert!(claim_as(&s, &gone, "m", 10, t(61)).await.is_empty());
    assert_counts_match_rows(&s, &batch.id).await;
}
