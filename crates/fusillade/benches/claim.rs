//! Claim latency with a large backlog, and how soon a new batch's first request is sent.
//!
//! ```sh
//! cargo bench -p fusillade --bench claim                     # SQLite
//! FUSILLADE_BENCH_BACKEND=postgres cargo bench -p fusillade --bench claim
//! FUSILLADE_BENCH_PENDING=1000000 ...                        # backlog size (default 1,000,000)
//! ```
//! The backlog is spread over 50 batches and 10 models. Each measured claim asks for 10
//! requests of every model (100 in all), as a daemon with free slots would; the claimed
//! requests are then completed (not timed), so the backlog stays about the same size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fusillade::input::InputLimits;
use fusillade::model::{DaemonId, Finish, Outcome};
use fusillade::storage::{BatchCreate, ClaimParams, ModelClaim, Storage};
use fusillade::upstream::{Upstream, Upstreams};
use fusillade::{Daemon, DaemonConfig};
use fusillade_mock::{MockConfig, MockServer};
use tokio_util::sync::CancellationToken;

const BATCHES: usize = 50;
const MODELS: usize = 10;
const CLAIMS: usize = 500;
const PER_MODEL: u32 = 10;

async fn add_batch(storage: &Arc<dyn Storage>, batch: usize, lines: usize) {
    let now = chrono::Utc::now();
    let text = fusillade_testkit::chat_jsonl(&format!("b{batch}-"), "model-", MODELS, lines);
    let file = fusillade::ingest::upload(
        storage.as_ref(),
        text.as_bytes(),
        InputLimits::default(),
        "bench",
        "in.jsonl",
        now,
    )
    .await
    .expect("upload");
    storage
        .batch_create(BatchCreate {
            owner: "bench".into(),
            input_file_id: file.id,
            endpoint: None,
            completion_window: Some("24h".into()),
            expires_at: Some(now + chrono::Duration::hours(24 + batch as i64)),
            metadata: None,
            now,
        })
        .await
        .expect("batch");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn claim_latency(storage: &Arc<dyn Storage>, pending: usize) {
    let started = Instant::now();
    for b in 0..BATCHES {
        add_batch(storage, b, pending / BATCHES).await;
    }
    eprintln!(
        "backlog of {pending} pending requests built in {:.1?}",
        started.elapsed()
    );
    let daemon = DaemonId::generate();
    let models: Vec<ModelClaim> = (0..MODELS)
        .map(|m| ModelClaim {
            model: format!("model-{m}"),
            max: PER_MODEL,
            limit: u32::MAX,
            in_flight: 0,
        })
        .collect();
    let mut times = Vec::with_capacity(CLAIMS);
    for _ in 0..CLAIMS {
        let params = ClaimParams {
            daemon_id: daemon.clone(),
            now: chrono::Utc::now(),
            models: models.clone(),
        };
        let t = Instant::now();
        let claimed = storage.request_claim_many(params).await.expect("claim");
        times.push(t.elapsed());
        assert_eq!(claimed.requests.len(), MODELS * PER_MODEL as usize);
        let finishes: Vec<Finish> = claimed
            .requests
            .iter()
            .map(|r| Finish {
                id: r.id,
                lease: r.lease,
                outcome: Outcome::Completed {
                    status_code: 200,
                    body: "{}".into(),
                    upstream_request_id: None,
                },
            })
            .collect();
        storage
            .request_finish_many(&finishes, chrono::Utc::now())
            .await
            .expect("finish");
    }
    times.sort();
    println!(
        "claim of {} requests ({MODELS} models x {PER_MODEL}) with {pending} pending in {BATCHES} batches: \
         p50 {:.2?}, p99 {:.2?}, max {:.2?} over {CLAIMS} claims",
        MODELS * PER_MODEL as usize,
        percentile(&times, 0.50),
        percentile(&times, 0.99),
        times[times.len() - 1]
    );
}

/// Time from `batch_create` returning to the mock upstream receiving the first request, with
/// an idle daemon already running.
async fn first_dispatch(storage: Arc<dyn Storage>) {
    let mock = MockServer::start(([127, 0, 0, 1], 0).into(), MockConfig::default())
        .await
        .expect("mock");
    let upstreams = Upstreams::new(Upstream::new(&mock.base_url()).expect("url"));
    let config = DaemonConfig {
        poll_interval: Duration::from_secs(5),
        ..DaemonConfig::default()
    };
    let daemon = Daemon::new(storage.clone(), config, upstreams).expect("daemon");
    let stop = CancellationToken::new();
    let task = tokio::spawn(daemon.run(stop.clone()));
    let mut times = Vec::new();
    for round in 0..20 {
        let seen = mock.stats().requests_total;
        add_batch(&storage, 1000 + round, 1).await;
        let t = Instant::now();
        while mock.stats().requests_total == seen {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        times.push(t.elapsed());
    }
    stop.cancel();
    task.await.expect("join").expect("daemon");
    times.sort();
    println!(
        "first request dispatched after batch creation: p50 {:.2?}, max {:.2?} over {} batches",
        percentile(&times, 0.5),
        times[times.len() - 1],
        times.len()
    );
    mock.shutdown().await;
}

async fn open_storage() -> (Arc<dyn Storage>, Box<dyn std::any::Any>) {
    if std::env::var("FUSILLADE_BENCH_BACKEND").as_deref() == Ok("postgres") {
        let db = fusillade_testkit::TestDatabase::create()
            .await
            .expect("PostgreSQL is needed for this benchmark");
        let storage = fusillade::storage::open(&db.url).await.expect("open");
        return (storage, Box::new(db));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = fusillade::storage::open(&dir.path().join("bench.db").display().to_string())
        .await
        .expect("open");
    (storage, Box::new(dir))
}

#[tokio::main]
async fn main() {
    let pending: usize = std::env::var("FUSILLADE_BENCH_PENDING")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let (storage, _guard) = open_storage().await;
    claim_latency(&storage, pending).await;
    let (storage, _guard2) = open_storage().await;
    first_dispatch(storage).await;
}
