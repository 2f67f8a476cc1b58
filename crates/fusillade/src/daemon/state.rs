//! State shared by the daemon's tasks: per-model in-flight counts, per-batch cancellation
//! tokens and live statistics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::DaemonConfig;
use crate::model::{BatchId, DaemonId};
use crate::storage::Storage;

/// Live counters of one daemon.
#[derive(Debug, Default)]
pub struct DaemonStats {
    /// Requests leased so far.
    pub claimed: AtomicU64,
    /// HTTP calls in flight now.
    pub in_flight: AtomicU64,
    /// Outcomes written to storage (stale ones excluded).
    pub finished: AtomicU64,
    /// Outcomes ignored because the lease had moved on.
    pub stale: AtomicU64,
    /// Database transactions committed by the scheduler and completer.
    pub commits: AtomicU64,
}

pub(crate) struct Shared {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) config: DaemonConfig,
    pub(crate) daemon_id: DaemonId,
    pub(crate) stats: Arc<DaemonStats>,
    /// Wakes the scheduler: a slot was freed or new work may exist.
    pub(crate) wake: Notify,
    /// Batches were created or finished since the scheduler last read the active models.
    pub(crate) models_changed: AtomicBool,
    in_flight: Mutex<HashMap<String, u32>>,
    cancels: Mutex<HashMap<BatchId, (CancellationToken, u32)>>,
}

impl Shared {
    pub(crate) fn new(storage: Arc<dyn Storage>, config: DaemonConfig, id: DaemonId) -> Self {
        Self {
            storage,
            config,
            daemon_id: id,
            stats: Arc::new(DaemonStats::default()),
            wake: Notify::new(),
            models_changed: AtomicBool::new(true),
            in_flight: Mutex::new(HashMap::new()),
            cancels: Mutex::new(HashMap::new()),
        }
    }

    /// Calls of `model` in flight now.
    pub(crate) fn in_flight(&self, model: &str) -> u32 {
        self.in_flight
            .lock()
            .expect("in-flight lock")
            .get(model)
            .copied()
            .unwrap_or(0)
    }

    /// Counts `n` new calls of `model` in flight.
    pub(crate) fn start_calls(&self, model: &str, n: u32) {
        *self
            .in_flight
            .lock()
            .expect("in-flight lock")
            .entry(model.to_string())
            .or_insert(0) += n;
        self.stats
            .in_flight
            .fetch_add(u64::from(n), Ordering::Relaxed);
    }

    /// One call of `model` ended and its outcome is queued: its slot is free. Wakes the
    /// scheduler.
    pub(crate) fn end_call(&self, model: &str) {
        if let Some(n) = self
            .in_flight
            .lock()
            .expect("in-flight lock")
            .get_mut(model)
        {
            *n = n.saturating_sub(1);
        }
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// The cancellation token of `batch`, counted as used by one more call.
    pub(crate) fn batch_token(&self, batch: &BatchId) -> CancellationToken {
        let mut map = self.cancels.lock().expect("cancels lock");
        let entry = map
            .entry(batch.clone())
            .or_insert_with(|| (CancellationToken::new(), 0));
        entry.1 += 1;
        entry.0.clone()
    }

    /// A call of `batch` ended; the token is dropped with its last call, so the map only ever
    /// holds batches with calls in flight.
    pub(crate) fn release_batch_token(&self, batch: &BatchId) {
        let mut map = self.cancels.lock().expect("cancels lock");
        if let Some(entry) = map.get_mut(batch) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(batch);
            }
        }
    }

    /// Aborts every in-flight call of `batch`.
    pub(crate) fn cancel_batch(&self, batch: &BatchId) {
        if let Some((token, _)) = self.cancels.lock().expect("cancels lock").get(batch) {
            token.cancel();
        }
    }

    /// Batches with calls in flight.
    pub(crate) fn batches_in_flight(&self) -> Vec<BatchId> {
        self.cancels
            .lock()
            .expect("cancels lock")
            .keys()
            .cloned()
            .collect()
    }
}
