//! Events across replicas: writers `NOTIFY` in their transaction; one `LISTEN` task per process
//! turns notifications into [`StorageEvent`]s. A lost connection is re-established, and a
//! `WorkAvailable` is raised after it since notifications may have been missed.

use std::time::Duration;

use sqlx::PgConnection;
use sqlx::postgres::{PgConnectOptions, PgListener};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::model::BatchId;
use crate::storage::{Result, StorageEvent};

/// The notification channel.
const CHANNEL: &str = "fusillade_events";

/// Queues `event` for delivery to every replica when the transaction commits.
pub(super) async fn notify(conn: &mut PgConnection, event: &StorageEvent) -> Result<()> {
    let payload = match event {
        StorageEvent::WorkAvailable => "work".to_string(),
        StorageEvent::BatchCancelled(id) => format!("cancel:{id}"),
        StorageEvent::BatchFinished(id) => format!("finish:{id}"),
    };
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(())
}

fn parse(payload: &str) -> Option<StorageEvent> {
    if payload == "work" {
        return Some(StorageEvent::WorkAvailable);
    }
    if let Some(id) = payload.strip_prefix("cancel:") {
        return Some(StorageEvent::BatchCancelled(BatchId::from_string(id)));
    }
    payload
        .strip_prefix("finish:")
        .map(|id| StorageEvent::BatchFinished(BatchId::from_string(id)))
}

/// Starts the listener task; it stops when `stop` is cancelled.
pub(super) fn spawn_listener(
    options: PgConnectOptions,
    events: broadcast::Sender<StorageEvent>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = listen(&options, &events) => r,
            };
            if let Err(e) = result {
                failures += 1;
                tracing::warn!(error = %e, failures, "LISTEN connection lost; reconnecting");
            }
            let _ = events.send(StorageEvent::WorkAvailable);
            let backoff = Duration::from_millis(100 * u64::from(failures.min(50)));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
        }
    });
}

async fn listen(
    options: &PgConnectOptions,
    events: &broadcast::Sender<StorageEvent>,
) -> Result<()> {
    let pool = sqlx::PgPool::connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(CHANNEL).await?;
    loop {
        // None means the connection dropped; notifications may have been missed.
        match listener.try_recv().await? {
            Some(n) => {
                if let Some(event) = parse(n.payload()) {
                    let _ = events.send(event);
                }
            }
            None => return Ok(()),
        }
    }
}
