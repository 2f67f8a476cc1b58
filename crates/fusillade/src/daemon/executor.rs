//! The executor: one task per leased request, which sends it, turns the answer into an outcome
//! and hands that to the completer. A call is abandoned at once when its batch is cancelled,
//! or released unfinished when the shutdown drain deadline passes.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::retry::classify;
use super::state::Shared;
use crate::model::{ClaimedRequest, Finish, Outcome};
use crate::upstream::UpstreamClient;

pub(crate) struct Executor {
    shared: Arc<Shared>,
    client: UpstreamClient,
    completer: mpsc::Sender<Finish>,
    tracker: TaskTracker,
    /// Cancelled when the drain deadline passes: unfinished calls are released.
    abort: CancellationToken,
}

impl Executor {
    pub(crate) fn new(
        shared: Arc<Shared>,
        client: UpstreamClient,
        completer: mpsc::Sender<Finish>,
        tracker: TaskTracker,
        abort: CancellationToken,
    ) -> Self {
        Self {
            shared,
            client,
            completer,
            tracker,
            abort,
        }
    }

    /// Starts sending `req`. The caller has already counted it in flight.
    pub(crate) fn dispatch(&self, req: ClaimedRequest) {
        let shared = self.shared.clone();
        let client = self.client.clone();
        let completer = self.completer.clone();
        let abort = self.abort.clone();
        let batch_token = shared.batch_token(&req.batch_id);
        self.tracker.spawn(async move {
            let outcome = tokio::select! {
                biased;
                _ = abort.cancelled() => Outcome::Released,
                _ = batch_token.cancelled() => Outcome::Cancelled,
                attempt = client.send(&req) => {
                    classify(attempt, &req, &shared.config.retry, chrono::Utc::now())
                }
            };
            record(&req, &outcome);
            shared.release_batch_token(&req.batch_id);
            let finish = Finish {
                id: req.id,
                lease: req.lease,
                outcome,
            };
            if completer.send(finish).await.is_err() {
                tracing::error!(request_id = req.id, "completer gone; outcome dropped");
            }
            shared.end_call(&req.model);
        });
    }
}

fn record(req: &ClaimedRequest, outcome: &Outcome) {
    let kind = match outcome {
        Outcome::Completed { .. } => "completed",
        Outcome::Failed(_) => "failed",
        Outcome::Retry { .. } => "retry",
        Outcome::Released => "released",
        Outcome::Cancelled => "cancelled",
    };
    metrics::counter!("fusillade_attempts_total", "model" => req.model.clone(), "outcome" => kind)
        .increment(1);
    match outcome {
        Outcome::Failed(e) | Outcome::Retry { error: e, .. } => tracing::debug!(
            request_id = req.id,
            batch_id = %req.batch_id,
            model = %req.model,
            code = %e.code,
            status = ?e.status_code,
            attempt = req.attempts + 1,
            outcome = kind,
            "attempt failed: {}",
            e.message
        ),
        _ => {}
    }
}
