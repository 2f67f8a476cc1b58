//! Background upkeep: heartbeats, rescue of requests leased by dead daemons, expiry of batches
//! past their deadline, and aborting calls of cancelled batches (by event, with a poll as the
//! fallback).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, interval};
use tokio_util::sync::CancellationToken;

use super::state::Shared;
use crate::model::BatchStatus;
use crate::storage::{RescueParams, StorageEvent};

/// Longest time between two checks of deadlines and cancellations.
const TICK: Duration = Duration::from_millis(500);

pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    // Ticking at half the heartbeat interval keeps heartbeats at most 1.5 intervals apart; with
    // a fixed 500 ms tick a 100 ms heartbeat came every 500 ms, past a valid 250 ms stale_after.
    let period = TICK.min(shared.config.heartbeat_interval / 2);
    let mut ticker = interval(period.max(Duration::from_millis(1)));
    let mut last_heartbeat = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Err(e) = tick(&shared, &mut last_heartbeat).await {
            metrics::counter!("fusillade_loop_errors_total", "loop" => "maintenance").increment(1);
            tracing::error!(error = %e, "maintenance failed; will retry");
        }
    }
}

async fn tick(shared: &Shared, last_heartbeat: &mut Instant) -> crate::storage::Result<()> {
    let now = chrono::Utc::now();
    let storage = &shared.storage;
    if last_heartbeat.elapsed() >= shared.config.heartbeat_interval {
        let finished = shared
            .stats
            .finished
            .load(std::sync::atomic::Ordering::Relaxed);
        storage
            .daemon_heartbeat(&shared.daemon_id, now, finished)
            .await?;
        *last_heartbeat = Instant::now();
        shared.stats.commits.fetch_add(2, Ordering::Relaxed);
        let stale = chrono::Duration::from_std(shared.config.stale_after).expect("duration");
        let rescued = storage
            .request_rescue_stale(RescueParams {
                heartbeat_before: now - stale,
                all_except: None,
                now,
            })
            .await?;
        if rescued > 0 {
            tracing::warn!(rescued, "requests of a silent daemon returned to pending");
        }
    }
    let expired = storage.batch_expire_due(now).await?;
    shared.stats.commits.fetch_add(1, Ordering::Relaxed);
    for batch in expired {
        tracing::info!(batch_id = %batch, "batch expired");
        shared.cancel_batch(&batch);
    }
    abort_stopped_batches(shared).await
}

/// Aborts in-flight calls of batches that are no longer in progress.
async fn abort_stopped_batches(shared: &Shared) -> crate::storage::Result<()> {
    let ids = shared.batches_in_flight();
    for (id, status) in shared.storage.batch_statuses(&ids).await? {
        if status != BatchStatus::InProgress {
            shared.cancel_batch(&id);
        }
    }
    Ok(())
}

/// Turns storage events into wake-ups and aborts.
pub(crate) async fn forward_events(shared: Arc<Shared>, stop: CancellationToken) {
    let mut events = shared.storage.subscribe();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = events.recv() => e,
        };
        match event {
            Ok(StorageEvent::WorkAvailable) | Err(RecvError::Lagged(_)) => {
                shared.models_changed.store(true, Ordering::Release);
                shared.wake.notify_one();
            }
            Ok(StorageEvent::BatchCancelled(id)) | Ok(StorageEvent::BatchFinished(id)) => {
                shared.models_changed.store(true, Ordering::Release);
                shared.cancel_batch(&id)
            }
            Err(RecvError::Closed) => return,
        }
    }
}
