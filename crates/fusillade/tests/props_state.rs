//! Property test of the request state machine on a real SQLite database: random sequences of
//! claims, finishes (every outcome, with the right lease, an old one or a made-up one), batch
//! cancels, expiries, rescues of dead daemons' leases and retries of failed requests, checked
//! after every step against a plain in-memory model and against these invariants:
//!
//! - each batch's counters equal its per-state row counts, the raw counters are never negative,
//!   and the total never changes;
//! - a request in a final state never changes again, except failed → pending by retry_failed;
//! - a finish under a stale lease changes nothing at all;
//! - pending requests exist only in batches in progress, running ones only in batches in
//!   progress or cancelling;
//! - claims take the earliest deadline first, then batch order, then line order, and never a
//!   retry that is not due.

// Only its invariant helper is used here; its cases run in `sqlite.rs` and `postgres.rs`.
#[allow(unused_imports)]
mod conformance;
mod support;

use std::path::PathBuf;
use std::sync::Arc;

use chrono::TimeZone;
use fusillade::model::{
    Batch, BatchId, BatchStatus, DaemonId, DaemonRecord, Finish, Outcome, RequestError,
    RequestState, Timestamp,
};
use fusillade::storage::sqlite::SqliteStorage;
use fusillade::storage::{
    BatchCreate, ClaimParams, ModelClaim, RescueParams, ResultFilter, ResultPage, ResultRow, Scope,
    Storage, StorageError,
};
use proptest::prelude::*;
use proptest::sample::Index;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, SqliteConnection};

const MODELS: [&str; 2] = ["m0", "m1"];
const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Clone, Copy)]
enum LeaseChoice {
    /// The lease the request holds now (a made-up one when it holds none).
    Current,
    /// A lease the request held at some earlier point.
    Old(Index),
    /// A lease nobody ever held.
    MadeUp(i64),
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Completed,
    Failed,
    /// Retry due at once.
    RetryNow,
    /// Retry due a few steps later.
    RetryLater,
    Released,
    Cancelled,
}

#[derive(Debug, Clone)]
enum Op {
    Claim {
        daemon: Index,
        model: Index,
        max: u32,
    },
    Finish(Vec<(Index, LeaseChoice, Kind)>),
    Cancel(Index),
    /// `batch_expire_due` at this many hours past the start (plus a minute).
    Expire(u8),
    /// Declares a live daemon dead (and registers a fresh one in its place).
    Rescue(Index),
    RetryFailed(Index),
}

fn op() -> impl Strategy<Value = Op> {
    let lease = prop_oneof![
        3 => Just(LeaseChoice::Current),
        1 => any::<Index>().prop_map(LeaseChoice::Old),
        1 => any::<i64>().prop_map(LeaseChoice::MadeUp),
    ];
    let kind = prop::sample::select(vec![
        Kind::Completed,
        Kind::Failed,
        Kind::RetryNow,
        Kind::RetryLater,
        Kind::Released,
        Kind::Cancelled,
    ]);
    prop_oneof![
        4 => (any::<Index>(), any::<Index>(), 0u32..4)
            .prop_map(|(daemon, model, max)| Op::Claim { daemon, model, max }),
        5 => prop::collection::vec((any::<Index>(), lease, kind), 1..4).prop_map(Op::Finish),
        1 => any::<Index>().prop_map(Op::Cancel),
        1 => (0u8..3).prop_map(Op::Expire),
        1 => any::<Index>().prop_map(Op::Rescue),
        1 => any::<Index>().prop_map(Op::RetryFailed),
    ]
}

/// What the model expects of one request.
#[derive(Debug, Clone)]
struct Row {
    batch: usize,
    line: u64,
    model: &'static str,
    state: RequestState,
    attempts: u32,
    lease: Option<i64>,
    daemon: Option<usize>,
    /// Milliseconds.
    not_before: Option<i64>,
    /// Database id, known once the request was claimed.
    id: Option<i64>,
    leases_seen: Vec<i64>,
    /// The body of its completed response.
    response: Option<String>,
}

#[derive(Debug, Clone)]
struct ModelBatch {
    id: BatchId,
    status: BatchStatus,
    /// Milliseconds.
    deadline: Option<i64>,
}

/// The in-memory model, plus the real storage it shadows.
struct World {
    storage: Arc<dyn Storage>,
    raw: SqliteConnection,
    _dir: tempfile::TempDir,
    start: i64,
    clock: i64,
    batches: Vec<ModelBatch>,
    rows: Vec<Row>,
    /// Every daemon registered, with whether it is alive.
    daemons: Vec<(DaemonId, bool)>,
    serial: u64,
}

fn at(ms: i64) -> Timestamp {
    chrono::Utc
        .timestamp_millis_opt(ms)
        .single()
        .expect("valid time")
}

impl World {
    async fn new(sizes: &[usize]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path: PathBuf = dir.path().join("fusillade.db");
        let storage = Arc::new(SqliteStorage::open(&path).await.expect("SQLite opens"));
        let raw = SqliteConnectOptions::new()
            .filename(&path)
            .read_only(true)
            .connect()
            .await
            .expect("raw connection");
        let start = chrono::Utc::now().timestamp_millis();
        let mut world = World {
            storage,
            raw,
            _dir: dir,
            start,
            clock: start,
            batches: Vec::new(),
            rows: Vec::new(),
            daemons: Vec::new(),
            serial: 0,
        };
        // Deadlines: in an hour, in two hours, none. Claims must take them in that order.
        for (b, &size) in sizes.iter().enumerate() {
            let deadline = (b < 2).then(|| start + (b as i64 + 1) * HOUR_MS);
            world.add_batch(b, size, deadline).await;
        }
        world.register_daemon().await;
        world.register_daemon().await;
        world
    }

    async fn add_batch(&mut self, b: usize, size: usize, deadline: Option<i64>) {
        // Lines `req-1`, `req-2`, … alternate between the two models.
        let models: Vec<&str> = (0..size).map(|i| MODELS[i % 2]).collect();
        let now = at(self.start);
        let file =
            support::upload_ok(self.storage.as_ref(), "t", &support::jsonl(&models), now).await;
        let batch = self
            .storage
            .batch_create(BatchCreate {
                owner: "t".into(),
                input_file_id: file.id,
                endpoint: None,
                completion_window: deadline.map(|_| "1h".into()),
                expires_at: deadline.map(at),
                metadata: None,
                now,
            })
            .await
            .expect("batch");
        for i in 0..size {
            self.rows.push(Row {
                batch: b,
                line: i as u64 + 1,
                model: MODELS[i % 2],
                state: RequestState::Pending,
                attempts: 0,
                lease: None,
                daemon: None,
                not_before: None,
                id: None,
                leases_seen: Vec::new(),
                response: None,
            });
        }
        self.batches.push(ModelBatch {
            id: batch.id,
            status: BatchStatus::InProgress,
            deadline,
        });
    }

    async fn register_daemon(&mut self) {
        let now = at(self.clock);
        let record = DaemonRecord {
            id: DaemonId::generate(),
            hostname: "test".into(),
            pid: 1,
            version: "0".into(),
            started_at: now,
            last_heartbeat: now,
            stopped_at: None,
            status: "running".into(),
            requests_finished: 0,
        };
        self.storage
            .daemon_register(&record)
            .await
            .expect("register");
        self.daemons.push((record.id, true));
    }

    fn batch_of(&self, id: &BatchId) -> usize {
        self.batches
            .iter()
            .position(|b| &b.id == id)
            .expect("known batch")
    }

    fn row_at(&self, batch: usize, line: u64) -> usize {
        self.rows
            .iter()
            .position(|r| r.batch == batch && r.line == line)
            .expect("known row")
    }

    /// Batches touched by outcomes that left nothing to run are finished.
    fn finalize(&mut self, touched: &[usize]) {
        for &b in touched {
            let open = self
                .rows
                .iter()
                .any(|r| r.batch == b && !r.state.is_final());
            let batch = &mut self.batches[b];
            if !open {
                batch.status = match batch.status {
                    BatchStatus::InProgress => BatchStatus::Completed,
                    BatchStatus::Cancelling => BatchStatus::Cancelled,
                    other => other,
                };
            }
        }
    }

    /// A pending request of a cancelling batch is cancelled instead of run again.
    fn requeue(&mut self, r: usize) {
        let row = &mut self.rows[r];
        row.state = if self.batches[row.batch].status == BatchStatus::Cancelling {
            row.not_before = None;
            RequestState::Cancelled
        } else {
            RequestState::Pending
        };
    }

    async fn claim(&mut self, daemon: Index, model: Index, max: u32) {
        let d = daemon.index(self.daemons.len());
        let model = MODELS[model.index(MODELS.len())];
        let now = self.clock;
        let claimed = self
            .storage
            .request_claim_many(ClaimParams {
                daemon_id: self.daemons[d].0.clone(),
                now: at(now),
                models: vec![ModelClaim {
                    model: model.into(),
                    max,
                    limit: max,
                    in_flight: 0,
                }],
            })
            .await
            .expect("claim");
        // Model: due retries become claimable, then the first `max` by deadline, batch, line.
        for row in &mut self.rows {
            if row.state == RequestState::Pending && row.not_before.is_some_and(|t| t <= now) {
                row.not_before = None;
            }
        }
        let mut claimable: Vec<usize> = (0..self.rows.len())
            .filter(|&r| {
                let row = &self.rows[r];
                row.state == RequestState::Pending && row.not_before.is_none() && row.model == model
            })
            .collect();
        claimable.sort_by_key(|&r| {
            let row = &self.rows[r];
            let deadline = self.batches[row.batch].deadline.unwrap_or(i64::MAX);
            (deadline, row.batch, row.line)
        });
        // The limit (here equal to `max`) counts the model's rows other daemons run.
        let running_elsewhere = self
            .rows
            .iter()
            .filter(|row| {
                row.state == RequestState::Running && row.model == model && row.daemon != Some(d)
            })
            .count();
        claimable.truncate((max as usize).saturating_sub(running_elsewhere));
        let got: Vec<usize> = claimed
            .requests
            .iter()
            .map(|c| self.row_at(self.batch_of(&c.batch_id), c.line))
            .collect();
        assert_eq!(got, claimable, "claimed rows or their order");
        for c in &claimed.requests {
            let r = self.row_at(self.batch_of(&c.batch_id), c.line);
            let row = &mut self.rows[r];
            assert_eq!(row.id.unwrap_or(c.id), c.id, "a request's id never changes");
            assert_eq!(c.attempts, row.attempts, "{row:?}");
            assert_eq!(c.model, row.model);
            row.id = Some(c.id);
            row.state = RequestState::Running;
            row.lease = Some(c.lease);
            row.leases_seen.push(c.lease);
            row.daemon = Some(d);
        }
        let next_retry = self
            .rows
            .iter()
            .filter(|r| r.state == RequestState::Pending)
            .filter_map(|r| r.not_before)
            .min();
        assert_eq!(
            claimed.next_retry_at.map(|t| t.timestamp_millis()),
            next_retry
        );
    }

    fn outcome(&mut self, kind: Kind) -> Outcome {
        self.serial += 1;
        let error = RequestError {
            code: "upstream_status".into(),
            message: format!("attempt {}", self.serial),
            status_code: Some(503),
            body: Some(format!("{{\"error\":{}}}", self.serial)),
        };
        match kind {
            Kind::Completed => Outcome::Completed {
                status_code: 200,
                body: format!("{{\"ok\":{}}}", self.serial),
                upstream_request_id: Some(format!("up-{}", self.serial)),
            },
            Kind::Failed => Outcome::Failed(error),
            Kind::RetryNow => Outcome::Retry {
                not_before: at(self.clock),
                error,
            },
            Kind::RetryLater => Outcome::Retry {
                not_before: at(self.clock + 3_000),
                error,
            },
            Kind::Released => Outcome::Released,
            Kind::Cancelled => Outcome::Cancelled,
        }
    }

    async fn finish(&mut self, picks: &[(Index, LeaseChoice, Kind)]) {
        let known: Vec<usize> = (0..self.rows.len())
            .filter(|&r| self.rows[r].id.is_some())
            .collect();
        let mut finishes: Vec<(Option<usize>, Finish)> = Vec::new();
        for &(pick, choice, kind) in picks {
            let outcome = self.outcome(kind);
            let Some(&r) = known.get(pick.index(known.len().max(1))) else {
                // Nothing was ever claimed: an unknown request with a made-up lease.
                let finish = Finish {
                    id: -1,
                    lease: 7,
                    outcome,
                };
                finishes.push((None, finish));
                continue;
            };
            if finishes.iter().any(|(f, _)| *f == Some(r)) {
                continue; // a daemon never reports one attempt twice in one flush
            }
            let row = &self.rows[r];
            let lease = match choice {
                LeaseChoice::Current => row.lease.unwrap_or(-2),
                LeaseChoice::Old(i) => row.leases_seen[i.index(row.leases_seen.len())],
                LeaseChoice::MadeUp(l) => l,
            };
            let id = row.id.expect("known id");
            finishes.push((Some(r), Finish { id, lease, outcome }));
        }
        let before = self.snapshot().await;
        let all: Vec<Finish> = finishes.iter().map(|(_, f)| f.clone()).collect();
        let report = self
            .storage
            .request_finish_many(&all, at(self.clock))
            .await
            .expect("finish");
        let mut applied = 0;
        let mut touched = Vec::new();
        for (r, f) in &finishes {
            let Some(r) = *r else { continue };
            let row = &mut self.rows[r];
            if row.state != RequestState::Running || row.lease != Some(f.lease) {
                continue;
            }
            applied += 1;
            touched.push(row.batch);
            row.lease = None;
            row.daemon = None;
            row.not_before = None;
            if f.outcome.charges_attempt() {
                row.attempts += 1;
            }
            match &f.outcome {
                Outcome::Completed { body, .. } => {
                    row.state = RequestState::Completed;
                    row.response = Some(body.clone());
                }
                Outcome::Failed(_) => row.state = RequestState::Failed,
                Outcome::Cancelled => row.state = RequestState::Cancelled,
                Outcome::Retry { not_before, .. } => {
                    row.not_before = Some(not_before.timestamp_millis());
                    self.requeue(r);
                }
                Outcome::Released => self.requeue(r),
            }
        }
        assert_eq!(report.applied, applied, "applied outcomes");
        assert_eq!(report.stale, all.len() as u64 - applied, "stale outcomes");
        self.finalize(&touched);
        if applied == 0 {
            assert_eq!(
                self.snapshot().await,
                before,
                "a stale finish changed something"
            );
        }
    }

    async fn cancel(&mut self, batch: Index) {
        let b = batch.index(self.batches.len());
        let id = self.batches[b].id.clone();
        let got = self
            .storage
            .batch_cancel(&Scope::All, &id, at(self.clock))
            .await
            .expect("cancel");
        if self.batches[b].status == BatchStatus::InProgress {
            let mut running = false;
            for row in self.rows.iter_mut().filter(|r| r.batch == b) {
                match row.state {
                    RequestState::Pending => {
                        row.state = RequestState::Cancelled;
                        row.not_before = None;
                    }
                    RequestState::Running => running = true,
                    _ => {}
                }
            }
            self.batches[b].status = if running {
                BatchStatus::Cancelling
            } else {
                BatchStatus::Cancelled
            };
        }
        assert_eq!(got.status, self.batches[b].status);
    }

    async fn expire(&mut self, hours: u8) {
        let now = self.start + i64::from(hours) * HOUR_MS + 60_000;
        let mut expired = self
            .storage
            .batch_expire_due(at(now))
            .await
            .expect("expire");
        let mut due = Vec::new();
        for (b, batch) in self.batches.iter_mut().enumerate() {
            if batch.status == BatchStatus::InProgress && batch.deadline.is_some_and(|d| d <= now) {
                batch.status = BatchStatus::Expired;
                due.push(batch.id.clone());
                for row in self.rows.iter_mut().filter(|r| r.batch == b) {
                    if !row.state.is_final() {
                        row.state = RequestState::Expired;
                        row.lease = None;
                        row.daemon = None;
                        row.not_before = None;
                    }
                }
            }
        }
        expired.sort();
        due.sort();
        assert_eq!(expired, due, "batches expired");
    }

    async fn rescue(&mut self, pick: Index) {
        let live: Vec<usize> = (0..self.daemons.len())
            .filter(|&d| self.daemons[d].1)
            .collect();
        let victim = live[pick.index(live.len())];
        let survivor = *live.iter().find(|&&d| d != victim).expect("two live");
        let rescued = self
            .storage
            .request_rescue_stale(RescueParams {
                heartbeat_before: at(self.start - HOUR_MS),
                all_except: Some(self.daemons[survivor].0.clone()),
                now: at(self.clock),
            })
            .await
            .expect("rescue");
        self.daemons[victim].1 = false;
        let mut expected = 0;
        let mut touched = Vec::new();
        for r in 0..self.rows.len() {
            let row = &self.rows[r];
            let dead = row.daemon.is_some_and(|d| !self.daemons[d].1);
            if row.state == RequestState::Running && dead {
                expected += 1;
                touched.push(row.batch);
                let row = &mut self.rows[r];
                row.lease = None;
                row.daemon = None;
                self.requeue(r);
            }
        }
        assert_eq!(rescued, expected, "requests rescued");
        self.finalize(&touched);
        self.register_daemon().await;
    }

    async fn retry_failed(&mut self, batch: Index) {
        let b = batch.index(self.batches.len());
        let id = self.batches[b].id.clone();
        let got = self
            .storage
            .batch_retry_failed(&Scope::All, &id, at(self.clock))
            .await;
        let batch = &self.batches[b];
        let open = matches!(
            batch.status,
            BatchStatus::InProgress | BatchStatus::Completed
        ) && batch.deadline.is_none_or(|d| d > self.clock);
        if !open {
            assert!(
                matches!(got, Err(StorageError::Conflict(_))),
                "retry of a {:?} batch: {got:?}",
                batch.status
            );
            return;
        }
        let mut n = 0;
        for row in self.rows.iter_mut().filter(|r| r.batch == b) {
            if row.state == RequestState::Failed {
                n += 1;
                row.state = RequestState::Pending;
                row.attempts = 0;
                row.not_before = None;
            }
        }
        if n > 0 {
            self.batches[b].status = BatchStatus::InProgress;
        }
        assert_eq!(got.expect("retry"), n);
    }

    /// Every batch and every request row as stored.
    async fn snapshot(&self) -> Vec<(Batch, Vec<ResultRow>)> {
        let mut out = Vec::new();
        for b in &self.batches {
            let batch = self
                .storage
                .batch_get(&Scope::All, &b.id)
                .await
                .expect("batch");
            let rows = self
                .storage
                .result_page(
                    &Scope::All,
                    ResultPage {
                        batch_id: b.id.clone(),
                        filter: ResultFilter::All,
                        after_line: 0,
                        limit: 1000,
                        with_input: false,
                    },
                )
                .await
                .expect("rows");
            out.push((batch, rows));
        }
        out
    }

    /// Checks storage against the model and the invariants; returns the snapshot.
    async fn check(
        &mut self,
        previous: &[(Batch, Vec<ResultRow>)],
        op: &Op,
    ) -> Vec<(Batch, Vec<ResultRow>)> {
        let now = self.snapshot().await;
        let raw: Vec<(i64, i64, i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT total, pending, running, completed, failed, cancelled, expired \
             FROM batches ORDER BY seq",
        )
        .fetch_all(&mut self.raw)
        .await
        .expect("raw counters");
        for (b, ((batch, rows), raw)) in now.iter().zip(&raw).enumerate() {
            let c = batch.counts;
            let (t, p, r, co, f, ca, e) = *raw;
            assert!(
                [t, p, r, co, f, ca, e].iter().all(|&n| n >= 0),
                "a negative counter in batch {b}: {raw:?}"
            );
            conformance::assert_counts_match_rows(&self.storage, &batch.id).await;
            assert_eq!(c.total, previous[b].0.counts.total, "total is constant");

            let model = &self.batches[b];
            assert_eq!(batch.status, model.status, "batch {b} status");
            let expected: Vec<&Row> = self.rows.iter().filter(|r| r.batch == b).collect();
            assert_eq!(rows.len(), expected.len(), "batch {b} rows");
            for (row, want) in rows.iter().zip(&expected) {
                assert_eq!(
                    (row.line, row.state, row.attempts),
                    (want.line, want.state, want.attempts),
                    "batch {b}: {row:?} against the model {want:?}"
                );
                if row.state == RequestState::Completed {
                    assert_eq!(row.status_code, Some(200), "{row:?}");
                    assert_eq!(row.response_body, want.response, "{row:?}");
                }
                match row.state {
                    RequestState::Pending => assert_eq!(batch.status, BatchStatus::InProgress),
                    RequestState::Running => assert!(
                        matches!(
                            batch.status,
                            BatchStatus::InProgress | BatchStatus::Cancelling
                        ),
                        "running in a {:?} batch",
                        batch.status
                    ),
                    _ => {}
                }
            }
            for (old, new) in previous[b].1.iter().zip(rows) {
                if !old.state.is_final() {
                    continue;
                }
                let retried = matches!(op, Op::RetryFailed(_))
                    && old.state == RequestState::Failed
                    && new.state == RequestState::Pending;
                if !retried {
                    assert_eq!(old, new, "a final request changed under {op:?}");
                }
            }
        }
        now
    }
}

async fn run(sizes: Vec<usize>, ops: Vec<Op>) {
    let mut world = World::new(&sizes).await;
    let mut previous = world.snapshot().await;
    for op in &ops {
        world.clock += 1_000;
        match op {
            Op::Claim { daemon, model, max } => world.claim(*daemon, *model, *max).await,
            Op::Finish(picks) => world.finish(picks).await,
            Op::Cancel(b) => world.cancel(*b).await,
            Op::Expire(hours) => world.expire(*hours).await,
            Op::Rescue(d) => world.rescue(*d).await,
            Op::RetryFailed(b) => world.retry_failed(*b).await,
        }
        previous = world.check(&previous, op).await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_state_machine_keeps_its_invariants(
        sizes in prop::collection::vec(1usize..5, 3),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(run(sizes, ops));
    }
}
