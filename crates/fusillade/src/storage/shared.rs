//! Backend-independent pieces of the storage contract: how outcomes map to row values, and how
//! state changes add up to batch counter changes. Each backend only writes the SQL.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::{Finish, Outcome, RequestState};
use crate::storage::ResultFilter;

/// Error code of a request aborted because its batch was cancelled.
pub(crate) const CANCELLED_CODE: &str = "batch_cancelled";
/// Message of a request aborted because its batch was cancelled.
pub(crate) const CANCELLED_MESSAGE: &str = "The batch was cancelled before this request finished.";
/// Error code of a request whose batch's completion window ended first.
pub(crate) const EXPIRED_CODE: &str = "batch_expired";
/// The message every expired request carries, as OpenAI words it.
pub(crate) const EXPIRED_MESSAGE: &str =
    "This request could not be executed before the completion window expired.";

/// The column values one outcome writes. `set` is false when the outcome keeps the stored
/// result fields (a released request keeps its last error).
#[derive(Debug, Serialize)]
pub(crate) struct FinishRow<'a> {
    pub(crate) id: i64,
    pub(crate) lease: i64,
    pub(crate) state: &'static str,
    /// Milliseconds since the epoch.
    pub(crate) not_before: Option<i64>,
    pub(crate) charge: i32,
    pub(crate) set: bool,
    pub(crate) status_code: Option<i32>,
    pub(crate) response: Option<&'a str>,
    pub(crate) upstream_request_id: Option<&'a str>,
    pub(crate) error_code: Option<&'a str>,
    pub(crate) error_message: Option<&'a str>,
}

impl<'a> FinishRow<'a> {
    pub(crate) fn new(f: &'a Finish) -> Self {
        let mut row = FinishRow {
            id: f.id,
            lease: f.lease,
            state: f.outcome.next_state().as_str(),
            not_before: None,
            charge: i32::from(f.outcome.charges_attempt()),
            set: true,
            status_code: None,
            response: None,
            upstream_request_id: None,
            error_code: None,
            error_message: None,
        };
        match &f.outcome {
            Outcome::Completed {
                status_code,
                body,
                upstream_request_id,
            } => {
                row.status_code = Some(i32::from(*status_code));
                row.response = Some(body);
                row.upstream_request_id = upstream_request_id.as_deref();
            }
            Outcome::Failed(e) | Outcome::Retry { error: e, .. } => {
                row.status_code = e.status_code.map(i32::from);
                row.response = e.body.as_deref();
                row.error_code = Some(&e.code);
                row.error_message = Some(&e.message);
                if let Outcome::Retry { not_before, .. } = &f.outcome {
                    row.not_before = Some(not_before.timestamp_millis());
                }
            }
            Outcome::Released => row.set = false,
            Outcome::Cancelled => {
                row.error_code = Some(CANCELLED_CODE);
                row.error_message = Some(CANCELLED_MESSAGE);
            }
        }
        row
    }
}

/// Changes to one batch's counters.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct CounterDelta {
    pub(crate) seq: i64,
    pub(crate) pending: i64,
    pub(crate) running: i64,
    pub(crate) completed: i64,
    pub(crate) failed: i64,
    pub(crate) cancelled: i64,
    pub(crate) expired: i64,
}

impl CounterDelta {
    fn slot(&mut self, state: RequestState) -> &mut i64 {
        match state {
            RequestState::Pending => &mut self.pending,
            RequestState::Running => &mut self.running,
            RequestState::Completed => &mut self.completed,
            RequestState::Failed => &mut self.failed,
            RequestState::Cancelled => &mut self.cancelled,
            RequestState::Expired => &mut self.expired,
        }
    }
}

/// Counter changes of many batches, in batch order (so that row locks are always taken in the
/// same order, which keeps concurrent transactions from deadlocking).
#[derive(Debug, Default)]
pub(crate) struct CounterDeltas(BTreeMap<i64, CounterDelta>);

impl CounterDeltas {
    /// Records `n` requests of batch `seq` moving from `from` to `to`.
    pub(crate) fn moved(&mut self, seq: i64, from: RequestState, to: RequestState, n: i64) {
        let delta = self.0.entry(seq).or_insert_with(|| CounterDelta {
            seq,
            ..CounterDelta::default()
        });
        *delta.slot(from) -= n;
        *delta.slot(to) += n;
    }

    /// The batches touched, ascending.
    pub(crate) fn seqs(&self) -> Vec<i64> {
        self.0.keys().copied().collect()
    }

    /// The deltas, ascending by batch.
    pub(crate) fn deltas(&self) -> impl Iterator<Item = &CounterDelta> {
        self.0.values()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The condition on `r.state` (the requests table aliased `r`) selecting a result page's rows;
/// the same SQL on every backend. States are our own constants, never user text.
pub(crate) fn result_filter_sql(filter: ResultFilter) -> String {
    match filter {
        ResultFilter::Output => "r.state = 'completed'".into(),
        ResultFilter::Errors => "r.state IN ('failed', 'expired', 'cancelled')".into(),
        ResultFilter::State(st) => format!("r.state = '{}'", st.as_str()),
        ResultFilter::All => "TRUE".into(),
    }
}
