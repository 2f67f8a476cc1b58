//! Batch and daemon lifecycles: cancellation aborting calls, waking on a new batch, heartbeats,
//! expiry keeping finished results, graceful shutdown draining, the drain deadline releasing
//! calls, and crash recovery.

use std::collections::BTreeSet;
use std::time::Duration;

use fusillade::model::{BatchStatus, DaemonId, DaemonRecord, RequestState};
use fusillade::output::ResultFile;
use fusillade::storage::{ClaimParams, ModelClaim, ResultFilter, Scope};
use fusillade_mock::{Fault, MockConfig};
use tokio::time::Instant;

use crate::daemon_support::*;

fn hanging() -> MockConfig {
    MockConfig {
        fault: Some(Fault::Hang),
        ..MockConfig::default()
    }
}

fn slow(latency_ms: u64) -> MockConfig {
    MockConfig {
        latency: Duration::from_millis(latency_ms),
        ..MockConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_aborts_in_flight_calls_promptly() {
    // Two calls hang at the mock; the other four wait for a slot.
    let mock = start_mock(hanging()).await;
    let store = Store::new().await;
    let reqs = requests(6, &["m1"]);
    let batch = store.batch(&reqs, None).await;
    let config = with_limits(fast_config(), &[("m1", 2)]);
    let daemon = Running::start(&store.storage, config, upstreams(&mock.base_url()));
    wait_until("calls in flight at the mock", PATIENCE, || async {
        mock_in_flight(&mock) == 2
    })
    .await;

    let asked = Instant::now();
    let now = chrono::Utc::now();
    store
        .storage
        .batch_cancel(&Scope::All, &batch.id, now)
        .await
        .expect("cancel");
    let done = store.wait_final(&batch.id, Duration::from_secs(3)).await;
    assert!(asked.elapsed() < Duration::from_secs(3));
    assert_eq!(done.status, BatchStatus::Cancelled);
    wait_until(
        "the mock to see the calls dropped",
        Duration::from_secs(3),
        || async { mock_in_flight(&mock) == 0 },
    )
    .await;
    daemon.stop().await;

    assert_eq!(
        mock.stats().requests_total,
        2,
        "queued requests are never sent"
    );
    assert_eq!((done.counts.cancelled, done.counts.running), (6, 0));
    for row in store.rows(&batch.id, ResultFilter::All).await {
        assert_eq!(row.state, RequestState::Cancelled, "{row:?}");
        assert_eq!(row.attempts, 0, "an aborted call is not charged: {row:?}");
    }
    assert!(store.file(&batch.id, ResultFile::Output).await.is_empty());
    let errors = store.file(&batch.id, ResultFile::Errors).await;
    assert_eq!(
        custom_ids(&errors),
        ids(&reqs),
        "each custom_id once in the error file"
    );
    for line in &errors {
        assert_eq!(line["error"]["code"], "batch_cancelled", "{line}");
        assert!(line["response"].is_null(), "{line}");
    }
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_batch_wakes_an_idle_daemon() {
    let mock = start_mock(MockConfig::default()).await;
    let store = Store::new().await;
    let mut config = fast_config();
    config.poll_interval = Duration::from_secs(60);
    let daemon = Running::start(&store.storage, config, upstreams(&mock.base_url()));
    // Once the daemon has heartbeated, its first claim found nothing long ago: only the
    // batch-created event can start the work before the 60 s fallback poll.
    wait_until("the daemon to heartbeat", PATIENCE, || async {
        let daemons = store.storage.daemon_list().await.expect("daemons");
        daemons.iter().any(|d| d.last_heartbeat > d.started_at)
    })
    .await;
    let batch = store.batch(&requests(3, &["m1"]), None).await;
    let done = store.wait_final(&batch.id, Duration::from_secs(10)).await;
    daemon.stop().await;
    assert_eq!(done.counts.completed, 3);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_come_well_within_stale_after() {
    let store = Store::new().await;
    let mut config = fast_config();
    config.heartbeat_interval = Duration::from_millis(100);
    config.stale_after = Duration::from_millis(400);
    let stale = chrono::Duration::from_std(config.stale_after).expect("duration");
    let daemon = Running::start(&store.storage, config, upstreams(&closed_port_url().await));
    let deadline = Instant::now() + PATIENCE;
    let mut beats = BTreeSet::new();
    while beats.len() < 6 {
        assert!(Instant::now() < deadline, "only {} heartbeats", beats.len());
        let daemons = store.storage.daemon_list().await.expect("daemons");
        let now = chrono::Utc::now();
        if let [me] = daemons.as_slice() {
            assert_eq!(me.status, "running");
            let age = now - me.last_heartbeat;
            assert!(
                age < stale,
                "silent for {age:?}: others would declare it dead"
            );
            beats.insert(me.last_heartbeat);
        }
        // Sampling interval: the loop watches heartbeats until a deadline, not for one event.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_keeps_finished_results_and_expires_the_rest() {
    // 20 requests, 2 at a time, 200 ms each: 2 s of work in a 1 s window.
    let mock = start_mock(slow(200)).await;
    let store = Store::new().await;
    let reqs = requests(20, &["m1"]);
    let deadline = chrono::Utc::now() + chrono::Duration::seconds(1);
    let batch = store.batch(&reqs, Some(deadline)).await;
    let config = with_limits(fast_config(), &[("m1", 2)]);
    let daemon = Running::start(&store.storage, config, upstreams(&mock.base_url()));
    let done = store.wait_final(&batch.id, PATIENCE).await;
    daemon.stop().await;

    assert_eq!(done.status, BatchStatus::Expired);
    assert!(done.counts.completed > 0, "{:?}", done.counts);
    assert!(done.counts.expired > 0, "{:?}", done.counts);
    assert_eq!(done.counts.completed + done.counts.expired, 20);
    let output = store.file(&batch.id, ResultFile::Output).await;
    let errors = store.file(&batch.id, ResultFile::Errors).await;
    assert_eq!(output.len() as u64, done.counts.completed);
    assert_eq!(errors.len() as u64, done.counts.expired);
    for line in &output {
        assert_eq!(line["response"]["status_code"], 200, "{line}");
        assert!(line["error"].is_null(), "{line}");
    }
    for line in &errors {
        assert_eq!(line["error"]["code"], "batch_expired", "{line}");
        assert!(line["response"].is_null(), "{line}");
    }
    let mut all = custom_ids(&output);
    all.extend(custom_ids(&errors));
    let unique: BTreeSet<String> = all.iter().cloned().collect();
    assert_eq!(
        all.len(),
        20,
        "every custom_id exactly once across both files"
    );
    assert_eq!(unique, ids(&reqs).into_iter().collect());
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_in_flight_calls_finish() {
    let mock = start_mock(slow(300)).await;
    let store = Store::new().await;
    let reqs = requests(10, &["m1"]);
    let batch = store.batch(&reqs, None).await;
    let config = with_limits(fast_config(), &[("m1", 4)]);
    let daemon = Running::start(&store.storage, config, upstreams(&mock.base_url()));
    wait_until("calls in flight at the mock", PATIENCE, || async {
        mock_in_flight(&mock) > 0
    })
    .await;
    daemon.stop().await;

    let stats = mock.stats();
    assert_eq!(
        mock_in_flight(&mock),
        0,
        "run returned with calls still in flight"
    );
    let rows = store.rows(&batch.id, ResultFilter::All).await;
    let completed: Vec<_> = rows
        .iter()
        .filter(|r| r.state == RequestState::Completed)
        .collect();
    assert!(!completed.is_empty());
    assert_eq!(
        completed.len() as u64,
        stats.requests_total,
        "every sent call completed"
    );
    for row in &rows {
        match row.state {
            RequestState::Completed => assert_eq!(sends(&stats, &row.custom_id), 1),
            RequestState::Pending => {
                assert_eq!(row.attempts, 0, "{row:?}");
                assert_eq!(sends(&stats, &row.custom_id), 0, "{row:?}");
            }
            other => panic!("unexpected state {other:?}: {row:?}"),
        }
    }
    assert!(
        store
            .rows(&batch.id, ResultFilter::State(RequestState::Running))
            .await
            .is_empty()
    );
    let daemons = store.storage.daemon_list().await.expect("daemons");
    assert!(daemons.iter().all(|d| d.status == "stopped"), "{daemons:?}");
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_releases_calls_for_the_next_run() {
    let mock = start_mock(hanging()).await;
    let store = Store::new().await;
    let reqs = requests(4, &["m1"]);
    let batch = store.batch(&reqs, None).await;
    let mut config = fast_config();
    config.drain_timeout = Duration::from_millis(200);
    let daemon = Running::start(&store.storage, config.clone(), upstreams(&mock.base_url()));
    wait_until("every call to hang at the mock", PATIENCE, || async {
        mock_in_flight(&mock) == 4
    })
    .await;
    let stopping = Instant::now();
    daemon.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );

    for row in store.rows(&batch.id, ResultFilter::All).await {
        assert_eq!(row.state, RequestState::Pending, "released: {row:?}");
        assert_eq!(row.attempts, 0, "a released call is not charged: {row:?}");
    }
    let counts = store.get(&batch.id).await.counts;
    assert_eq!((counts.pending, counts.running), (4, 0), "{counts:?}");

    mock.set_config(MockConfig::default());
    let daemon = Running::start(&store.storage, config, upstreams(&mock.base_url()));
    let done = store.wait_final(&batch.id, PATIENCE).await;
    daemon.stop().await;
    assert_eq!(done.status, BatchStatus::Completed);
    assert_eq!(done.counts.completed, 4);
    for row in store.rows(&batch.id, ResultFilter::All).await {
        assert_eq!(row.attempts, 1, "{row:?}");
    }
    mock.shutdown().await;
}

/// Registers a daemon whose last heartbeat was an hour ago and leases it `n` requests of `m1`,
/// as if it had crashed mid-call.
async fn lease_to_a_crashed_daemon(store: &Store, n: u32) -> DaemonId {
    let long_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    let dead = DaemonRecord {
        id: DaemonId::generate(),
        hostname: "gone".into(),
        pid: 1,
        version: "0.0.0".into(),
        started_at: long_ago,
        last_heartbeat: long_ago,
        stopped_at: None,
        status: "running".into(),
        requests_finished: 0,
    };
    store
        .storage
        .daemon_register(&dead)
        .await
        .expect("register");
    let claim = ClaimParams {
        daemon_id: dead.id.clone(),
        now: chrono::Utc::now(),
        models: vec![ModelClaim {
            model: "m1".into(),
            max: n,
            limit: n,
            in_flight: 0,
        }],
    };
    let claimed = store
        .storage
        .request_claim_many(claim)
        .await
        .expect("claim");
    assert_eq!(claimed.requests.len(), n as usize);
    dead.id
}

/// Leases four of six requests to a crashed daemon, then runs a real daemon: an exclusive one
/// rescues them at start, another once it sees the heartbeat is stale.
async fn recovers_requests_of_a_dead_daemon(exclusive: bool) {
    let mock = start_mock(MockConfig::default()).await;
    let store = Store::new().await;
    let reqs = requests(6, &["m1"]);
    let batch = store.batch(&reqs, None).await;
    let dead = lease_to_a_crashed_daemon(&store, 4).await;
    assert_eq!(store.get(&batch.id).await.counts.running, 4);

    let mut config = fast_config();
    config.exclusive = exclusive;
    if exclusive {
        // Only the rescue at start can then free the leases.
        config.stale_after = Duration::from_secs(24 * 3600);
    }
    let daemon = Running::start(&store.storage, config, upstreams(&mock.base_url()));
    let done = store.wait_final(&batch.id, PATIENCE).await;
    daemon.stop().await;

    assert_eq!(done.status, BatchStatus::Completed);
    assert_eq!(done.counts.completed, 6);
    let stats = mock.stats();
    for row in store.rows(&batch.id, ResultFilter::All).await {
        assert_eq!(row.attempts, 1, "a rescue is not charged: {row:?}");
        assert_eq!(sends(&stats, &row.custom_id), 1, "{row:?}");
    }
    let daemons = store.storage.daemon_list().await.expect("daemons");
    let record = daemons
        .iter()
        .find(|d| d.id == dead)
        .expect("dead daemon listed");
    assert_eq!(record.status, "dead");
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_daemon_rescues_leases_at_start() {
    recovers_requests_of_a_dead_daemon(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_rescues_leases_of_a_silent_daemon() {
    recovers_requests_of_a_dead_daemon(false).await;
}
