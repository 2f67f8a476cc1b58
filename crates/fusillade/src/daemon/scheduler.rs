//! The scheduler: leases runnable requests in bulk, never more than each model's free slots,
//! and hands them to the executor. It sleeps until a slot frees, new work arrives, a retry
//! comes due or the fallback poll fires.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::error_backoff;
use super::executor::Executor;
use super::state::Shared;
use crate::storage::{ClaimParams, Claimed, ModelClaim};

/// How long the scheduler waits for more slots to free before claiming a small batch.
const COALESCE: Duration = Duration::from_millis(2);

pub(crate) async fn run(shared: Arc<Shared>, executor: &Executor, shutdown: CancellationToken) {
    let mut next_poll = Instant::now();
    let mut failures = 0u32;
    let mut models = ActiveModels::default();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = shared.wake.notified() => {}
            _ = sleep_until(next_poll) => {}
        }
        let result = async {
            let active = models.get(&shared).await?;
            coalesce(&shared, active, &shutdown).await;
            tick(&shared, executor, active).await
        }
        .await;
        if shutdown.is_cancelled() {
            return;
        }
        match result {
            Ok(claimed) => {
                failures = 0;
                next_poll = next_wake(&shared, &claimed);
            }
            Err(e) => {
                failures += 1;
                metrics::counter!("fusillade_loop_errors_total", "loop" => "scheduler")
                    .increment(1);
                tracing::error!(error = %e, failures, "claiming failed; retrying");
                next_poll = Instant::now() + error_backoff(failures);
            }
        }
    }
}

/// The models of unfinished batches, read again only when a storage event says batches came or
/// went, or after a poll interval (events can be missed): one query less per claim.
#[derive(Default)]
struct ActiveModels {
    models: Vec<String>,
    read_at: Option<Instant>,
}

impl ActiveModels {
    async fn get(&mut self, shared: &Shared) -> crate::storage::Result<&[String]> {
        let expired = self
            .read_at
            .is_none_or(|at| at.elapsed() >= shared.config.poll_interval);
        // Taken before the read, so an event during it makes the next claim read again.
        if shared.models_changed.swap(false, Ordering::AcqRel) || expired {
            self.read_at = None;
            self.models = shared.storage.batch_models_active().await?;
            self.read_at = Some(Instant::now());
        }
        Ok(&self.models)
    }
}

/// When only a few slots are free, waits briefly so that one claim serves several: claims of
/// one or two rows would cost a transaction each.
async fn coalesce(shared: &Shared, models: &[String], shutdown: &CancellationToken) {
    let (mut limit, mut free) = (0u32, 0u32);
    for model in models {
        let model_limit = shared.config.concurrency.limit(model);
        limit += model_limit;
        free += model_limit.saturating_sub(shared.in_flight(model));
    }
    if free == limit || free >= limit / 4 {
        return;
    }
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(COALESCE) => {}
    }
}

/// One claim: every active model with free slots, in one transaction.
async fn tick(
    shared: &Shared,
    executor: &Executor,
    models: &[String],
) -> crate::storage::Result<Claimed> {
    let claims: Vec<ModelClaim> = models
        .iter()
        .filter_map(|model| {
            let limit = shared.config.concurrency.limit(model);
            let in_flight = shared.in_flight(model);
            let max = limit.saturating_sub(in_flight);
            (max > 0).then(|| ModelClaim {
                model: model.clone(),
                max,
                limit,
                in_flight,
            })
        })
        .collect();
    if claims.is_empty() {
        return Ok(Claimed::default());
    }
    let started = std::time::Instant::now();
    let claimed = shared
        .storage
        .request_claim_many(ClaimParams {
            daemon_id: shared.daemon_id.clone(),
            now: chrono::Utc::now(),
            models: claims,
        })
        .await?;
    let took = started.elapsed();
    metrics::histogram!("fusillade_claim_seconds").record(took.as_secs_f64());
    tracing::trace!(
        rows = claimed.requests.len(),
        micros = took.as_micros() as u64,
        "claimed"
    );
    shared.stats.commits.fetch_add(1, Ordering::Relaxed);
    shared
        .stats
        .claimed
        .fetch_add(claimed.requests.len() as u64, Ordering::Relaxed);
    metrics::histogram!("fusillade_claim_size").record(claimed.requests.len() as f64);
    for req in &claimed.requests {
        shared.start_calls(&req.model, 1);
    }
    for req in claimed.requests.iter().cloned() {
        executor.dispatch(req);
    }
    Ok(claimed)
}

/// The fallback poll, brought forward to the next scheduled retry.
fn next_wake(shared: &Shared, claimed: &Claimed) -> Instant {
    let poll = Instant::now() + shared.config.poll_interval;
    let Some(retry_at) = claimed.next_retry_at else {
        return poll;
    };
    let until = (retry_at - chrono::Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO);
    poll.min(Instant::now() + until)
}
