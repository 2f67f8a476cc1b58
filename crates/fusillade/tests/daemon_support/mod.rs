//! Helpers for the daemon tests: SQLite storage in a temp dir, batches built from JSONL, a
//! running daemon handle, polling waits, result readers and a header-recording upstream.

#![allow(dead_code)] // not every test module uses every helper

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Uri};
use fusillade::config::{ConcurrencyLimits, DaemonConfig, HttpLimits, RetryPolicy};
use fusillade::daemon::DaemonError;
use fusillade::input::InputLimits;
use fusillade::model::{Batch, BatchId, BatchStatus, RequestState, Timestamp};
use fusillade::output::{ResultFile, write_results};
use fusillade::storage::sqlite::SqliteStorage;
use fusillade::storage::{BatchCreate, ResultFilter, ResultPage, ResultRow, Scope, Storage};
use fusillade::upstream::{Upstream, Upstreams};
use fusillade::{Daemon, ingest};
use fusillade_mock::{MockConfig, MockServer, Stats};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The tenant owning every test file and batch.
pub const OWNER: &str = "tenant";
/// Upper bound for conditions that hold within milliseconds when the code works; it only
/// matters when something is broken, so it is generous for a loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A daemon configuration tuned for fast tests.
pub fn fast_config() -> DaemonConfig {
    DaemonConfig {
        concurrency: ConcurrencyLimits::default(),
        retry: RetryPolicy {
            max_attempts: 3,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            max_retry_after: Duration::from_secs(3600),
        },
        http: HttpLimits {
            connect_timeout: Duration::from_secs(2),
            first_byte_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(10),
            max_response_bytes: 1024 * 1024,
        },
        heartbeat_interval: Duration::from_millis(100),
        stale_after: Duration::from_millis(500),
        poll_interval: Duration::from_millis(50),
        drain_timeout: Duration::from_secs(10),
        ..DaemonConfig::default()
    }
}

/// `fast_config` with per-model concurrency limits.
pub fn with_limits(mut config: DaemonConfig, limits: &[(&str, u32)]) -> DaemonConfig {
    for (model, limit) in limits {
        config
            .concurrency
            .per_model
            .insert(model.to_string(), *limit);
    }
    config
}

/// Starts a mock upstream on a loopback port.
pub async fn start_mock(config: MockConfig) -> MockServer {
    let addr = "127.0.0.1:0".parse().expect("loopback address");
    MockServer::start(addr, config).await.expect("mock starts")
}

/// Every model routed to `base_url`.
pub fn upstreams(base_url: &str) -> Upstreams {
    Upstreams::new(Upstream::new(base_url).expect("valid upstream URL"))
}

/// `(custom_id, model)` pairs: `r000`, `r001`, … with models taken in turn from `models`.
pub fn requests(n: usize, models: &[&str]) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("r{i:03}"), models[i % models.len()].to_string()))
        .collect()
}

/// The custom ids of `requests`.
pub fn ids(requests: &[(String, String)]) -> Vec<String> {
    requests.iter().map(|(id, _)| id.clone()).collect()
}

/// A JSONL input file with one chat completion line per request.
pub fn jsonl(requests: &[(String, String)]) -> String {
    let mut out = String::new();
    for (custom_id, model) in requests {
        let line = json!({
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]},
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}

/// How many times the mock saw `custom_id` (through `X-Fusillade-Custom-Id`).
pub fn sends(stats: &Stats, custom_id: &str) -> u64 {
    stats.per_custom_id.get(custom_id).copied().unwrap_or(0)
}

/// Calls in flight at the mock, over every model.
pub fn mock_in_flight(mock: &MockServer) -> u64 {
    mock.stats().per_model.values().map(|m| m.in_flight).sum()
}

/// Polls `condition` every few milliseconds until it holds; panics after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    // Every 5 ms: these tests time a few short phases against each other.
    fusillade_testkit::wait_until_every(Duration::from_millis(5), timeout, what, condition).await;
}

/// A SQLite store, usually in its own temporary directory.
pub struct Store {
    /// The storage under test.
    pub storage: Arc<dyn Storage>,
    dir: Option<TempDir>,
}

impl Store {
    /// Opens a fresh database.
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = SqliteStorage::open(&dir.path().join("fusillade.db"))
            .await
            .expect("SQLite opens");
        Self {
            storage: Arc::new(storage),
            dir: Some(dir),
        }
    }

    /// Wraps storage opened elsewhere.
    pub fn with_storage(storage: Arc<dyn Storage>) -> Self {
        Self { storage, dir: None }
    }

    /// Uploads `requests` and creates a batch over them.
    pub async fn batch(
        &self,
        requests: &[(String, String)],
        expires_at: Option<Timestamp>,
    ) -> Batch {
        let now = chrono::Utc::now();
        let text = jsonl(requests);
        let file = ingest::upload(
            self.storage.as_ref(),
            text.as_bytes(),
            InputLimits::default(),
            OWNER,
            "in.jsonl",
            now,
        )
        .await
        .expect("upload");
        let params = BatchCreate {
            owner: OWNER.into(),
            input_file_id: file.id,
            endpoint: Some("/v1/chat/completions".into()),
            completion_window: expires_at.map(|_| "24h".into()),
            expires_at,
            metadata: None,
            now,
        };
        self.storage
            .batch_create(params)
            .await
            .expect("batch create")
    }

    /// The batch as stored now.
    pub async fn get(&self, id: &BatchId) -> Batch {
        self.storage
            .batch_get(&Scope::All, id)
            .await
            .expect("batch get")
    }

    /// Waits until the batch reaches a final status and returns it.
    pub async fn wait_final(&self, id: &BatchId, timeout: Duration) -> Batch {
        wait_until("the batch to finish", timeout, || async {
            self.get(id).await.status.is_final()
        })
        .await;
        self.get(id).await
    }

    /// Every request row of the batch matching `filter`, in line order.
    pub async fn rows(&self, id: &BatchId, filter: ResultFilter) -> Vec<ResultRow> {
        let mut rows: Vec<ResultRow> = Vec::new();
        loop {
            let params = ResultPage {
                batch_id: id.clone(),
                filter,
                after_line: rows.last().map_or(0, |r| r.line),
                limit: 50,
                with_input: false,
            };
            let page = self
                .storage
                .result_page(&Scope::All, params)
                .await
                .expect("page");
            if page.is_empty() {
                return rows;
            }
            rows.extend(page);
        }
    }

    /// Every byte of the database files (main file, WAL), as lossy text, for leak checks.
    pub fn raw_bytes(&self) -> String {
        let mut text = String::new();
        let dir = self.dir.as_ref().expect("a store in its own directory");
        for entry in std::fs::read_dir(dir.path()).expect("read temp dir") {
            let bytes = std::fs::read(entry.expect("dir entry").path()).expect("read file");
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
        text
    }

    /// The output or error file of the batch, one parsed JSON value per line.
    pub async fn file(&self, id: &BatchId, which: ResultFile) -> Vec<Value> {
        let mut out: Vec<u8> = Vec::new();
        let n = write_results(self.storage.as_ref(), &Scope::All, id, which, &mut out)
            .await
            .expect("write results");
        let text = String::from_utf8(out).expect("UTF-8 output");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(lines.len() as u64, n, "write_results counts its lines");
        lines
    }
}

/// The `custom_id` of every line of a result file.
pub fn custom_ids(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["custom_id"].as_str().expect("custom_id").to_string())
        .collect()
}

/// A daemon running in a spawned task.
pub struct Running {
    /// Cancel to ask for a graceful shutdown.
    pub token: CancellationToken,
    task: JoinHandle<Result<(), DaemonError>>,
}

impl Running {
    /// Builds and spawns a daemon.
    pub fn start(storage: &Arc<dyn Storage>, config: DaemonConfig, upstreams: Upstreams) -> Self {
        let daemon = Daemon::new(storage.clone(), config, upstreams).expect("daemon builds");
        let token = CancellationToken::new();
        let task = tokio::spawn(daemon.run(token.clone()));
        Self { token, task }
    }

    /// Asks for shutdown and waits for `run` to return `Ok`.
    pub async fn stop(self) {
        self.token.cancel();
        self.join().await;
    }

    /// Waits for `run` to return (after the token was cancelled) and checks it succeeded.
    pub async fn join(self) {
        let result = tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the daemon stops in time")
            .expect("the daemon task does not panic");
        result.expect("the daemon run ends without error");
    }
}

/// A batch run to its end against a mock configured with `mock_config`.
pub struct Finished {
    pub store: Store,
    pub batch: Batch,
    pub stats: Stats,
    pub ids: Vec<String>,
}

pub async fn run_to_end(mock_config: MockConfig, config: DaemonConfig, n: usize) -> Finished {
    let mock = start_mock(mock_config).await;
    let mut done = run_against(&mock.base_url(), config, n).await;
    done.stats = mock.stats();
    mock.shutdown().await;
    done
}

/// A batch of `n` requests run to its end against the upstream at `url` (no mock stats).
pub async fn run_against(url: &str, config: DaemonConfig, n: usize) -> Finished {
    let store = Store::new().await;
    let reqs = requests(n, &["m1"]);
    let batch = store.batch(&reqs, None).await;
    let daemon = Running::start(&store.storage, config, upstreams(url));
    let batch = store.wait_final(&batch.id, PATIENCE).await;
    daemon.stop().await;
    Finished {
        store,
        batch,
        stats: Stats::default(),
        ids: ids(&reqs),
    }
}

/// Checks that every request failed after `attempts` attempts with error `code`, each attempt
/// reaching the mock, and returns the error file.
pub async fn assert_all_failed(done: &Finished, attempts: u32, code: &str) -> Vec<Value> {
    assert_eq!(done.batch.status, BatchStatus::Completed);
    assert_eq!(done.batch.counts.failed, done.ids.len() as u64);
    for row in done.store.rows(&done.batch.id, ResultFilter::All).await {
        assert_eq!(row.state, RequestState::Failed, "{row:?}");
        assert_eq!(row.attempts, attempts, "{row:?}");
        assert_eq!(row.error_code.as_deref(), Some(code), "{row:?}");
    }
    let output = done.store.file(&done.batch.id, ResultFile::Output).await;
    assert!(output.is_empty(), "no output lines: {output:?}");
    let errors = done.store.file(&done.batch.id, ResultFile::Errors).await;
    assert_eq!(custom_ids(&errors), done.ids);
    for line in &errors {
        assert_eq!(line["error"]["code"], code, "{line}");
        assert!(line["error"]["message"].is_string(), "{line}");
    }
    errors
}

/// Runs five requests against a mock that answers each first attempt with a 429 carrying
/// `Retry-After` (as `limited` says), then succeeds, and checks that no retry came sooner than
/// `quiet_for` after the start, and that each request then completed on its second attempt.
pub async fn assert_429s_wait_for_retry_after(limited: MockConfig, quiet_for: Duration) {
    let mock = start_mock(limited).await;
    let store = Store::new().await;
    let reqs = requests(5, &["m1"]);
    let batch = store.batch(&reqs, None).await;
    let mut config = fast_config();
    // The retry must wake the scheduler when it comes due, not wait for the fallback poll.
    config.poll_interval = Duration::from_secs(60);
    let started = Instant::now();
    let daemon = Running::start(&store.storage, config, upstreams(&mock.base_url()));
    wait_until("every first attempt to get its 429", PATIENCE, || async {
        mock.stats().responses_rate_limited >= 5
    })
    .await;
    mock.set_config(MockConfig::default());
    // Every first answer came after `started`, so no second attempt may arrive within
    // `quiet_for` of it.
    let quiet_until = quiet_for.saturating_sub(Duration::from_millis(50));
    loop {
        let total = mock.stats().requests_total;
        let elapsed = started.elapsed();
        if elapsed >= quiet_until {
            break;
        }
        assert_eq!(
            total, 5,
            "a retry came {elapsed:?} after the start, before Retry-After"
        );
        // Sampling interval: this loop watches that nothing happens for a bounded window.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = store.wait_final(&batch.id, PATIENCE).await;
    daemon.stop().await;

    assert!(started.elapsed() >= quiet_for);
    assert_eq!(done.counts.completed, 5);
    let stats = mock.stats();
    assert_eq!(stats.responses_rate_limited, 5);
    for row in store.rows(&batch.id, ResultFilter::All).await {
        assert_eq!(row.state, RequestState::Completed, "{row:?}");
        assert_eq!(row.attempts, 2, "{row:?}");
        assert_eq!(sends(&stats, &row.custom_id), 2, "{row:?}");
    }
    mock.shutdown().await;
}

/// What the recording upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Request path.
    pub path: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Request body.
    pub body: String,
}

impl Seen {
    /// A header's value as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An upstream that records every request and answers 200 with a fixed JSON body and an
/// `x-request-id` of `up-<n>`.
pub struct Recorder {
    /// `http://127.0.0.1:PORT`
    pub base_url: String,
    /// Requests seen so far.
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Recorder {
    /// Serves on a loopback port until dropped.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base_url = format!("http://{}", listener.local_addr().expect("address"));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let handler = move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let log = log.clone();
            async move {
                let mut log = log.lock().expect("log lock");
                log.push(Seen {
                    path: uri.path().to_string(),
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
                let request_id = format!("up-{}", log.len());
                (
                    [("x-request-id", request_id)],
                    axum::Json(json!({"ok": true})),
                )
            }
        };
        let app = axum::Router::new().fallback(handler);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("recorder serves");
        });
        Self {
            base_url,
            seen,
            task,
        }
    }

    /// A copy of what was seen.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("log lock").clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback URL nothing listens on: the port was bound and released.
pub async fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{addr}")
}
