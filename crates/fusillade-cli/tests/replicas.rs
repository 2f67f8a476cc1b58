//! Several `fusillade worker` processes on one PostgreSQL database: every request executed
//! exactly once, per-model limits holding across replicas, a replica killed with -9 taken over,
//! and database connections cut mid-batch. Skips loudly without PostgreSQL unless
//! `FUSILLADE_REQUIRE_POSTGRES=1`.

mod common;

use std::time::Duration;

use common::*;
use fusillade::storage::Scope;
use fusillade_testkit::{FinishedSends, KillSchedule, wait_until};

#[tokio::test(flavor = "multi_thread")]
async fn three_workers_send_each_request_once_within_the_global_limit() {
    let Some((db, storage, mock)) = setup(5).await else {
        return;
    };
    let lines = 20_000;
    let batch = create_batch(&storage, lines).await;
    let _workers = Workers::start(3, &db.url, &mock.base_url());
    wait_final(&storage, &batch.id, Duration::from_secs(180)).await;
    let stats = mock.stats();
    assert_eq!(stats.per_custom_id.len(), lines);
    assert!(
        stats.per_custom_id.values().all(|&n| n == 1),
        "a request was sent twice"
    );
    for (model, m) in &stats.per_model {
        assert!(
            m.peak_in_flight <= u64::from(LIMIT),
            "{model}: peak {}",
            m.peak_in_flight
        );
        assert_eq!(
            m.peak_in_flight,
            u64::from(LIMIT),
            "{model} never reached its limit"
        );
    }
    let done = storage.batch_get(&Scope::All, &batch.id).await.unwrap();
    assert_eq!(done.counts.completed, lines as u64);
    assert_each_exactly_once(&storage, &batch.id, lines).await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_worker_is_taken_over_and_nothing_finished_is_sent_again() {
    let Some((db, storage, mock)) = setup(10).await else {
        return;
    };
    let lines = 4_000;
    let batch = create_batch(&storage, lines).await;
    let mut workers = Workers::start(3, &db.url, &mock.base_url());
    wait_until(Duration::from_secs(60), "work to start", || async {
        mock.stats().requests_total > 800
    })
    .await;
    workers.0[0].kill().expect("kill -9");
    workers.0[0].wait().expect("reap");
    let finished_before_kill =
        FinishedSends::each_sent_once(completed_ids(&storage, &batch.id).await);
    wait_final(&storage, &batch.id, Duration::from_secs(120)).await;
    let done = storage.batch_get(&Scope::All, &batch.id).await.unwrap();
    assert_eq!(done.counts.completed, lines as u64);
    assert_each_exactly_once(&storage, &batch.id, lines).await;
    finished_before_kill.assert_none_sent_again(&mock.stats().per_custom_id);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cut_database_connections_do_not_stop_the_batch() {
    let Some((db, storage, mock)) = setup(5).await else {
        return;
    };
    let lines = 4_000;
    let batch = create_batch(&storage, lines).await;
    let _workers = Workers::start(2, &db.url, &mock.base_url());
    let admin = sqlx::PgPool::connect(&fusillade_testkit::server_url())
        .await
        .expect("admin connection");
    for round in 1..=3u64 {
        wait_until(Duration::from_secs(60), "progress", || async {
            mock.stats().requests_total > round * 800
        })
        .await;
        let name = db.url.rsplit('/').next().unwrap().to_string();
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .execute(&admin)
        .await
        .expect("terminate backends");
    }
    wait_final(&storage, &batch.id, Duration::from_secs(120)).await;
    let done = storage.batch_get(&Scope::All, &batch.id).await.unwrap();
    assert_eq!(done.counts.completed, lines as u64);
    assert_each_exactly_once(&storage, &batch.id, lines).await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn run_on_postgres_shares_work_with_live_workers_without_declaring_them_dead() {
    let Some((db, storage, mock)) = setup(5).await else {
        return;
    };
    let _workers = Workers::start(1, &db.url, &mock.base_url());
    wait_until(
        Duration::from_secs(30),
        "the worker to register",
        || async { storage.daemon_list().await.is_ok_and(|d| d.len() == 1) },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), 2_000);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fusillade"))
        .arg("run")
        .arg(&input)
        .args(["--database", &db.url, "--upstream", &mock.base_url()])
        .args(["--concurrency", "8"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let daemons = storage.daemon_list().await.unwrap();
    let worker = daemons.iter().find(|d| d.status == "running");
    assert!(
        worker.is_some(),
        "the live worker was declared dead: {daemons:?}"
    );
    let sent = mock.stats().per_custom_id;
    assert_eq!(sent.len(), 2_000);
    assert!(sent.values().all(|&n| n == 1));
    let output = std::fs::read_to_string(dir.path().join("in.output.jsonl")).unwrap();
    assert_eq!(output.lines().count(), 2_000);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_worker_kills_at_random_moments_lose_nothing() {
    let Some((db, storage, mock)) = setup(10).await else {
        return;
    };
    let lines = 12_000;
    let batch = create_batch(&storage, lines).await;
    let mut workers = Workers::start(3, &db.url, &mock.base_url());
    let mut schedule = KillSchedule::from_env();
    let mut sends_when_finished = FinishedSends::default();
    for _ in 0..20 {
        let wait = Duration::from_millis(100 + schedule.next_u64() % 500);
        tokio::time::sleep(wait).await; // the kill moment itself is what is randomised
        let victim = (schedule.next_u64() % 3) as usize;
        workers.0[victim].kill().expect("kill -9");
        workers.0[victim].wait().expect("reap");
        // Finished rows first, sends second (see `FinishedSends::record`): other workers keep
        // sending and finishing in between.
        let done = completed_ids(&storage, &batch.id).await;
        sends_when_finished.record(done, &mock.stats().per_custom_id);
        workers.0[victim] = spawn_worker(&db.url, &mock.base_url());
    }
    wait_final(&storage, &batch.id, Duration::from_secs(180)).await;
    let done = storage.batch_get(&Scope::All, &batch.id).await.unwrap();
    assert_eq!(done.counts.completed, lines as u64);
    assert_each_exactly_once(&storage, &batch.id, lines).await;
    sends_when_finished.assert_none_sent_again(&mock.stats().per_custom_id);
    mock.shutdown().await;
}
