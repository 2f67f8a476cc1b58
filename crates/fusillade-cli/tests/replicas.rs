//! Several `fusillade worker` processes on one PostgreSQL database: every request executed
//! exactly once, per-model limits holding across replicas, a replica killed with -9 taken over,
//! and database connections cut mid-batch. Skips loudly without PostgreSQL unless
//! `FUSILLADE_REQUIRE_POSTGRES=1`.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fusillade::input::InputLimits;
use fusillade::model::{Batch, BatchId, RequestState};
use fusillade::output::{ResultFile, write_results};
use fusillade::storage::postgres::PostgresStorage;
use fusillade::storage::{BatchCreate, ResultFilter, ResultPage, Scope, Storage};
use fusillade_mock::{MockConfig, MockServer};
use fusillade_testkit::{TestDatabase, wait_until};

const LIMIT: u32 = 8;

struct Workers(Vec<Child>);

impl Workers {
    fn start(n: usize, db: &str, upstream: &str) -> Self {
        Self((0..n).map(|_| spawn_worker(db, upstream)).collect())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_worker(db: &str, upstream: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_fusillade"))
        .args(["worker", "--database", db, "--upstream", upstream])
        .args(["--concurrency", &LIMIT.to_string(), "--stale-after", "2"])
        .env("FUSILLADE_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker")
}

fn input(lines: usize) -> String {
    (0..lines)
        .map(|i| {
            format!(
                "{{\"custom_id\":\"req-{i}\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\
                 \"body\":{{\"model\":\"m{}\",\"messages\":[]}}}}\n",
                i % 2
            )
        })
        .collect()
}

async fn create_batch(storage: &Arc<dyn Storage>, lines: usize) -> Batch {
    let now = chrono::Utc::now();
    let text = input(lines);
    let file = fusillade::ingest::upload(
        storage.as_ref(),
        text.as_bytes(),
        InputLimits::default(),
        "t",
        "in.jsonl",
        now,
    )
    .await
    .expect("upload");
    storage
        .batch_create(BatchCreate {
            owner: "t".into(),
            input_file_id: file.id,
            endpoint: None,
            completion_window: None,
            expires_at: None,
            metadata: None,
            now,
        })
        .await
        .expect("batch")
}

async fn wait_final(storage: &Arc<dyn Storage>, id: &BatchId, timeout: Duration) {
    wait_until(timeout, "the batch to finish", || async {
        let b = storage.batch_get(&Scope::All, id).await;
        b.is_ok_and(|b| b.status.is_final())
    })
    .await;
}

/// Every custom_id appears exactly once across the output and error files.
async fn assert_each_exactly_once(storage: &Arc<dyn Storage>, id: &BatchId, lines: usize) {
    let mut ids = Vec::new();
    for which in [ResultFile::Output, ResultFile::Errors] {
        let mut out = Vec::new();
        write_results(storage.as_ref(), &Scope::All, id, which, &mut out)
            .await
            .expect("write results");
        for line in String::from_utf8(out).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            ids.push(v["custom_id"].as_str().unwrap().to_string());
        }
    }
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), unique.len()), (lines, lines));
}

async fn completed_ids(storage: &Arc<dyn Storage>, id: &BatchId) -> Vec<String> {
    let (mut ids, mut after_line) = (Vec::new(), 0);
    loop {
        let page = ResultPage {
            batch_id: id.clone(),
            filter: ResultFilter::State(RequestState::Completed),
            after_line,
            limit: 5000,
            with_input: false,
        };
        let rows = storage.result_page(&Scope::All, page).await.expect("page");
        let Some(last) = rows.last() else { return ids };
        after_line = last.line;
        ids.extend(rows.into_iter().map(|r| r.custom_id));
    }
}

async fn setup(latency_ms: u64) -> Option<(TestDatabase, Arc<dyn Storage>, MockServer)> {
    let db = TestDatabase::create().await?;
    let storage: Arc<dyn Storage> =
        Arc::new(PostgresStorage::open(&db.url, true).await.expect("open"));
    let config = MockConfig {
        latency: Duration::from_millis(latency_ms),
        ..MockConfig::default()
    };
    let mock = MockServer::start(([127, 0, 0, 1], 0).into(), config)
        .await
        .expect("mock");
    Some((db, storage, mock))
}

#[tokio::test(flavor = "multi_thread")]
async fn three_workers_send_each_request_once_within_the_global_limit() {
    let Some((db, storage, mock)) = setup(5).await else { return };
    let lines = 20_000;
    let batch = create_batch(&storage, lines).await;
    let _workers = Workers::start(3, &db.url, &mock.base_url());
    wait_final(&storage, &batch.id, Duration::from_secs(180)).await;
    let stats = mock.stats();
    assert_eq!(stats.per_custom_id.len(), lines);
    assert!(stats.per_custom_id.values().all(|&n| n == 1), "a request was sent twice");
    for (model, m) in &stats.per_model {
        assert!(m.peak_in_flight <= u64::from(LIMIT), "{model}: peak {}", m.peak_in_flight);
        assert_eq!(m.peak_in_flight, u64::from(LIMIT), "{model} never reached its limit");
    }
    let done = storage.batch_get(&Scope::All, &batch.id).await.unwrap();
    assert_eq!(done.counts.completed, lines as u64);
    assert_each_exactly_once(&storage, &batch.id, lines).await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_worker_is_taken_over_and_nothing_finished_is_sent_again() {
    let Some((db, storage, mock)) = setup(10).await else { return };
    let lines = 4_000;
    let batch = create_batch(&storage, lines).await;
    let mut workers = Workers::start(3, &db.url, &mock.base_url());
    wait_until(Duration::from_secs(60), "work to start", || async {
        mock.stats().requests_total > 800
    })
    .await;
    workers.0[0].kill().expect("kill -9");
    workers.0[0].wait().expect("reap");
    let finished_before_kill = completed_ids(&storage, &batch.id).await;
    wait_final(&storage, &batch.id, Duration::from_secs(120)).await;
    let done = storage.batch_get(&Scope::All, &batch.id).await.unwrap();
    assert_eq!(done.counts.completed, lines as u64);
    assert_each_exactly_once(&storage, &batch.id, lines).await;
    let sent = mock.stats().per_custom_id;
    for id in &finished_before_kill {
        assert_eq!(sent.get(id), Some(&1), "{id} finished before the kill but was sent again");
    }
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cut_database_connections_do_not_stop_the_batch() {
    let Some((db, storage, mock)) = setup(5).await else { return };
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
