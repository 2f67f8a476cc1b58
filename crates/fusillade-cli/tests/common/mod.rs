//! Helpers shared by the CLI's end-to-end tests: input files, a mock upstream, worker
//! processes on PostgreSQL, a batch to run, result checks.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
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

pub const LIMIT: u32 = 8;

pub struct Workers(pub Vec<Child>);

impl Workers {
    pub fn start(n: usize, db: &str, upstream: &str) -> Self {
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

pub fn spawn_worker(db: &str, upstream: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_fusillade"))
        .args(["worker", "--database", db, "--upstream", upstream])
        .args(["--concurrency", &LIMIT.to_string(), "--stale-after", "2"])
        .env("FUSILLADE_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker")
}

/// `lines` chat requests `req-0`, `req-1`, … alternating between models `m0` and `m1`, so that
/// per-model limits have two models to keep apart.
pub fn input_lines(lines: usize) -> String {
    fusillade_testkit::chat_jsonl("req-", "m", 2, lines)
}

/// Writes [`input_lines`] to `dir/in.jsonl`, the name the `run` tests' result files follow.
pub fn write_input(dir: &Path, lines: usize) -> PathBuf {
    let path = dir.join("in.jsonl");
    std::fs::write(&path, input_lines(lines)).expect("write input");
    path
}

/// A mock upstream on a loopback port the kernel picks, answering after `latency`.
pub async fn mock(latency: Duration) -> MockServer {
    let config = MockConfig {
        latency,
        ..MockConfig::default()
    };
    MockServer::start(([127, 0, 0, 1], 0).into(), config)
        .await
        .expect("mock")
}

pub async fn create_batch(storage: &Arc<dyn Storage>, lines: usize) -> Batch {
    let now = chrono::Utc::now();
    let text = input_lines(lines);
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

pub async fn wait_final(storage: &Arc<dyn Storage>, id: &BatchId, timeout: Duration) {
    wait_until(timeout, "the batch to finish", || async {
        let b = storage.batch_get(&Scope::All, id).await;
        b.is_ok_and(|b| b.status.is_final())
    })
    .await;
}

/// Every custom_id appears exactly once across the output and error files.
pub async fn assert_each_exactly_once(storage: &Arc<dyn Storage>, id: &BatchId, lines: usize) {
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

/// Custom ids of the batch's completed requests, in input order.
pub async fn completed_ids(storage: &Arc<dyn Storage>, id: &BatchId) -> Vec<String> {
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

pub async fn setup(latency_ms: u64) -> Option<(TestDatabase, Arc<dyn Storage>, MockServer)> {
    let db = TestDatabase::create().await?;
    let storage: Arc<dyn Storage> =
        Arc::new(PostgresStorage::open(&db.url, true).await.expect("open"));
    Some((db, storage, mock(Duration::from_millis(latency_ms)).await))
}
