//! The daemon: scheduler (claims) → executor (HTTP) → completer (group commit), plus the
//! maintenance loop (heartbeats, rescue of dead daemons' leases, expiry, cancel polling).
//!
//! Every loop has one shape: wait for a reason (an event, a freed slot, a timer, shutdown), do
//! one tick, log and back off on error, never die silently. The scheduler never leases more
//! requests than a model has free slots, so a claimed request is sent at once.

mod completer;
mod executor;
mod maintenance;
mod retry;
mod scheduler;
mod state;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ConfigError, DaemonConfig};
use crate::model::{DaemonId, DaemonRecord};
use crate::storage::{Storage, StorageError};
use crate::upstream::{UpstreamClient, Upstreams};

pub use state::DaemonStats;
use state::Shared;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The upstream HTTP client could not be built.
    #[error("{0}")]
    Upstream(String),
    /// Registering with storage failed.
    #[error("cannot register the daemon: {0}")]
    Storage(#[from] StorageError),
}

/// A daemon ready to run: create with [`Daemon::new`], then [`Daemon::run`].
pub struct Daemon {
    shared: Arc<Shared>,
    client: UpstreamClient,
}

impl Daemon {
    /// Builds a daemon over `storage` sending to `upstreams`.
    pub fn new(
        storage: Arc<dyn Storage>,
        config: DaemonConfig,
        upstreams: Upstreams,
    ) -> Result<Self, DaemonError> {
        config.validate()?;
        let client =
            UpstreamClient::new(upstreams, config.http.clone()).map_err(DaemonError::Upstream)?;
        Ok(Self {
            shared: Arc::new(Shared::new(storage, config, DaemonId::generate())),
            client,
        })
    }

    /// This daemon's id.
    pub fn id(&self) -> &DaemonId {
        &self.shared.daemon_id
    }

    /// Live counters, readable while the daemon runs.
    pub fn stats(&self) -> Arc<DaemonStats> {
        self.shared.stats.clone()
    }

    /// Runs until `shutdown` is cancelled, then stops claiming, lets in-flight calls finish for
    /// up to `drain_timeout` (releasing the rest back to pending), writes every outcome and
    /// marks the daemon stopped.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), DaemonError> {
        let shared = self.shared;
        register(&shared).await?;
        let (tx, rx) = mpsc::channel(shared.config.flush_max * 2);
        let completer = tokio::spawn(completer::run(shared.clone(), rx));
        let abort = CancellationToken::new();
        let tracker = TaskTracker::new();
        let executor = executor::Executor::new(
            shared.clone(),
            self.client,
            tx,
            tracker.clone(),
            abort.clone(),
        );
        let background = CancellationToken::new();
        let maintenance = tokio::spawn(maintenance::run(shared.clone(), background.clone()));
        let events = tokio::spawn(maintenance::forward_events(
            shared.clone(),
            background.clone(),
        ));

        scheduler::run(shared.clone(), &executor, shutdown).await;

        drop(executor);
        tracker.close();
        if tokio::time::timeout(shared.config.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = shared.stats.in_flight.load(Ordering::Relaxed),
                "drain timeout reached; releasing unfinished requests"
            );
            abort.cancel();
            tracker.wait().await;
        }
        if completer.await.is_err() {
            tracing::error!("the completer task panicked");
        }
        background.cancel();
        let _ = tokio::join!(maintenance, events);
        let now = chrono::Utc::now();
        if let Err(e) = shared.storage.daemon_stop(&shared.daemon_id, now).await {
            tracing::warn!(error = %e, "could not mark the daemon stopped");
        }
        tracing::info!(daemon_id = %shared.daemon_id, "daemon stopped");
        Ok(())
    }
}

async fn register(shared: &Shared) -> Result<(), DaemonError> {
    let now = chrono::Utc::now();
    let record = DaemonRecord {
        id: shared.daemon_id.clone(),
        hostname: hostname(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: now,
        last_heartbeat: now,
        stopped_at: None,
        status: "running".into(),
        requests_finished: 0,
    };
    shared.storage.daemon_register(&record).await?;
    if shared.config.exclusive {
        let rescued = shared
            .storage
            .request_rescue_stale(crate::storage::RescueParams {
                heartbeat_before: now,
                all_except: Some(shared.daemon_id.clone()),
                now,
            })
            .await?;
        if rescued > 0 {
            tracing::info!(
                rescued,
                "requests left running by a previous process returned to pending"
            );
        }
    }
    tracing::info!(daemon_id = %shared.daemon_id, "daemon started");
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Sleeps for an error backoff: doubling from 50 ms to 5 s with the failure count.
pub(crate) fn error_backoff(failures: u32) -> Duration {
    let ms = 50u64.saturating_mul(1 << failures.min(7)).min(5_000);
    Duration::from_millis(ms)
}
