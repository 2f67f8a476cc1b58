//! The completer: the one task that writes outcomes. It groups whatever arrived within
//! `flush_interval` (at most `flush_max`) into a single transaction, so database commits per
//! request stay far below one at saturation.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::error_backoff;
use super::state::Shared;
use crate::model::Finish;

pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Finish>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        collect(&shared, &mut rx, &mut group).await;
        flush(&shared, &group).await;
    }
}

/// Adds outcomes to `group` until it is full or the flush interval since the first one ends.
async fn collect(shared: &Shared, rx: &mut mpsc::Receiver<Finish>, group: &mut Vec<Finish>) {
    let deadline = Instant::now() + shared.config.flush_interval;
    while group.len() < shared.config.flush_max {
        tokio::select! {
            item = rx.recv() => match item {
                Some(item) => group.push(item),
                None => return,
            },
            _ = sleep_until(deadline) => return,
        }
    }
}

/// Writes one group, retrying until it succeeds: an outcome is never dropped while the
/// process lives. (If the process dies first, the leases expire and the requests are rescued.)
async fn flush(shared: &Shared, buffer: &[Finish]) {
    let mut failures = 0u32;
    loop {
        let started = std::time::Instant::now();
        match shared
            .storage
            .request_finish_many(buffer, chrono::Utc::now())
            .await
        {
            Ok(report) => {
                let took = started.elapsed();
                metrics::histogram!("fusillade_flush_seconds").record(took.as_secs_f64());
                tracing::trace!(
                    rows = buffer.len(),
                    micros = took.as_micros() as u64,
                    "flushed"
                );
                shared.stats.commits.fetch_add(1, Ordering::Relaxed);
                shared
                    .stats
                    .finished
                    .fetch_add(report.applied, Ordering::Relaxed);
                shared
                    .stats
                    .stale
                    .fetch_add(report.stale, Ordering::Relaxed);
                metrics::histogram!("fusillade_flush_size").record(buffer.len() as f64);
                for batch in &report.finished_batches {
                    tracing::info!(batch_id = %batch, "batch finished");
                }
                return;
            }
            Err(e) => {
                failures += 1;
                metrics::counter!("fusillade_loop_errors_total", "loop" => "completer")
                    .increment(1);
                tracing::error!(error = %e, outcomes = buffer.len(), failures, "writing outcomes failed; retrying");
                tokio::time::sleep(error_backoff(failures)).await;
            }
        }
    }
}
