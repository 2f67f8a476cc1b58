//! The storage conformance suite: every backend of `Storage` must pass every case here.
//!
//! Cases are `pub async fn(Arc<dyn Storage>)`; they use only the trait (never SQL), pass time
//! explicitly and never sleep. A backend's test binary instantiates them all with
//! `storage_conformance!(factory)`, where `factory` is an
//! `async fn() -> (Arc<dyn Storage>, Box<dyn Any + Send>)` returning a fresh, empty storage
//! and a guard (a temporary directory, a database to drop) kept alive for the test.

#![allow(dead_code)]

pub mod batches;
pub mod daemons;
pub mod files;
pub mod lifecycle;
pub mod requests;
pub mod rescue;

pub use batches::*;
pub use daemons::*;
pub use files::*;
pub use lifecycle::*;
pub use requests::*;
pub use rescue::*;

use std::collections::BTreeMap;
use std::sync::Arc;

use fusillade::Storage;
use fusillade::model::{
    Batch, BatchId, ClaimedRequest, DaemonId, DaemonRecord, Finish, Outcome, RequestError,
    RequestState, Timestamp,
};
use fusillade::storage::{
    BatchCreate, ClaimParams, FinishReport, ModelClaim, ResultFilter, ResultPage, ResultRow, Scope,
};

use crate::support::{ALICE, jsonl, upload_ok};

/// Emits one `#[tokio::test]` per conformance case, each on a fresh storage from `$factory`.
#[macro_export]
macro_rules! storage_conformance {
    ($factory:path) => {
        $crate::storage_conformance!(@cases $factory;
            // files
            file_templates_read_back_in_line_order,
            file_of_thousands_of_lines_reads_back_whole,
            file_upload_with_bad_line_stores_nothing,
            file_of_other_tenant_is_not_found,
            file_list_pages_both_directions_with_cursor,
            file_list_filters_by_purpose,
            file_delete_hides_file_but_its_batch_keeps_running,
            file_model_stats_count_requests_and_body_bytes_per_model,
            // batches
            batch_create_makes_one_pending_request_per_line,
            batch_create_with_mismatched_endpoint_is_conflict_naming_the_line,
            batch_create_from_unknown_or_foreign_file_is_not_found,
            batch_list_is_newest_first_with_cursor_search_and_tenant_scope,
            batch_get_by_output_file_finds_the_batch,
            cancel_without_running_requests_cancels_at_once,
            cancel_with_running_requests_waits_for_them,
            cancelling_batch_keeps_results_finished_after_cancel,
            cancel_of_completed_batch_returns_it_unchanged,
            expire_due_expires_unfinished_requests_and_keeps_results,
            batch_without_deadline_never_expires,
            retry_failed_resets_attempts_and_reopens_completed_batch,
            batch_statuses_report_known_ids_only,
            models_active_lists_models_of_unfinished_batches_only,
            result_page_filters_by_outcome_and_state,
            result_page_paginates_by_line_with_optional_input,
            // requests
            claim_respects_per_model_max_and_requested_models,
            claim_holds_a_model_limit_across_daemons,
            claim_orders_by_deadline_then_batch_then_line,
            retry_is_not_claimable_before_not_before,
            finish_completed_and_failed_store_results,
            finish_released_returns_to_pending_without_charging_an_attempt,
            finish_with_stale_lease_is_ignored,
            final_state_is_first_writer_wins,
            finish_of_last_request_completes_the_batch,
            finish_of_hundreds_in_one_call_applies_each_outcome,
            retry_or_release_in_cancelling_batch_cancels_instead,
            rescue_returns_leases_of_silent_daemons_without_charging_attempts,
            rescue_all_except_rescues_every_other_daemon,
            rescue_in_cancelling_batch_cancels_instead,
            // daemons and events
            daemons_register_heartbeat_stop_and_list,
            heartbeat_revives_a_daemon_declared_dead,
            events_announce_work_cancellation_and_finished_batches,
        );
    };
    (@cases $factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                // A factory returns None when its backend is unavailable (it says so loudly).
                let Some((storage, _guard)) = $factory().await else { return };
                $crate::conformance::$case(storage).await;
            }
        )*
    };
}

/// The daemon that claims in most cases.
pub fn daemon() -> DaemonId {
    DaemonId::from_string("daemon_conformance")
}

/// Uploads a file with one line per model for `owner` and starts a batch on it.
pub async fn create_batch(
    s: &Arc<dyn Storage>,
    owner: &str,
    models: &[&str],
    now: Timestamp,
    expires_at: Option<Timestamp>,
) -> Batch {
    let file = upload_ok(s.as_ref(), owner, &jsonl(models), now).await;
    s.batch_create(BatchCreate {
        owner: owner.to_string(),
        input_file_id: file.id,
        endpoint: Some(crate::support::CHAT.to_string()),
        completion_window: expires_at.map(|_| "24h".to_string()),
        expires_at,
        metadata: None,
        now,
    })
    .await
    .expect("batch_create")
}

/// Claims up to `max` requests of `model` for `daemon`.
pub async fn claim_as(
    s: &Arc<dyn Storage>,
    daemon: &DaemonId,
    model: &str,
    max: u32,
    now: Timestamp,
) -> Vec<ClaimedRequest> {
    s.request_claim_many(ClaimParams {
        daemon_id: daemon.clone(),
        now,
        models: vec![ModelClaim {
            model: model.to_string(),
            max,
            // No cross-process limit in these cases: only `max` bounds the claim.
            limit: u32::MAX,
            in_flight: 0,
        }],
    })
    .await
    .expect("request_claim_many")
    .requests
}

/// Claims up to `max` requests of `model` for [`daemon`].
pub async fn claim(
    s: &Arc<dyn Storage>,
    model: &str,
    max: u32,
    now: Timestamp,
) -> Vec<ClaimedRequest> {
    claim_as(s, &daemon(), model, max, now).await
}

/// Finishes one claimed request with `outcome` under its own lease.
pub async fn finish(
    s: &Arc<dyn Storage>,
    req: &ClaimedRequest,
    outcome: Outcome,
    now: Timestamp,
) -> FinishReport {
    let f = Finish {
        id: req.id,
        lease: req.lease,
        outcome,
    };
    s.request_finish_many(&[f], now)
        .await
        .expect("request_finish_many")
}

/// A 200 answer with a body naming the request.
pub fn ok(custom_id: &str) -> Outcome {
    Outcome::Completed {
        status_code: 200,
        body: format!(r#"{{"answer":"{custom_id}"}}"#),
        upstream_request_id: Some(format!("up-{custom_id}")),
    }
}

/// An upstream error answer.
pub fn upstream_error(status: u16) -> RequestError {
    RequestError {
        code: "upstream_status".to_string(),
        message: format!("upstream answered {status}"),
        status_code: Some(status),
        body: Some(format!(r#"{{"error":"status {status}"}}"#)),
    }
}

/// The batch as `Scope::All` sees it.
pub async fn get(s: &Arc<dyn Storage>, id: &BatchId) -> Batch {
    s.batch_get(&Scope::All, id).await.expect("batch_get")
}

/// Every row of a batch matching `filter`, read in small pages.
pub async fn rows(s: &Arc<dyn Storage>, id: &BatchId, filter: ResultFilter) -> Vec<ResultRow> {
    let mut out: Vec<ResultRow> = Vec::new();
    loop {
        let page = s
            .result_page(
                &Scope::All,
                ResultPage {
                    batch_id: id.clone(),
                    filter,
                    after_line: out.last().map_or(0, |r| r.line),
                    limit: 3,
                    with_input: false,
                },
            )
            .await
            .expect("result_page");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// The states of a batch's requests in line order.
pub async fn states(s: &Arc<dyn Storage>, id: &BatchId) -> Vec<RequestState> {
    let rows = rows(s, id, ResultFilter::All).await;
    rows.iter().map(|r| r.state).collect()
}

/// The invariant every operation keeps: a batch's counters equal what its rows show.
pub async fn assert_counts_match_rows(s: &Arc<dyn Storage>, id: &BatchId) {
    let batch = get(s, id).await;
    let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
    let rows = rows(s, id, ResultFilter::All).await;
    for r in &rows {
        *seen.entry(r.state.as_str()).or_default() += 1;
    }
    let n = |st: RequestState| seen.get(st.as_str()).copied().unwrap_or(0);
    let c = batch.counts;
    let from_rows = [
        rows.len() as u64,
        n(RequestState::Pending),
        n(RequestState::Running),
        n(RequestState::Completed),
        n(RequestState::Failed),
        n(RequestState::Cancelled),
        n(RequestState::Expired),
    ];
    let counters = [
        c.total,
        c.pending,
        c.running,
        c.completed,
        c.failed,
        c.cancelled,
        c.expired,
    ];
    assert_eq!(
        counters, from_rows,
        "batch {id} counters [total, pending, running, completed, failed, cancelled, expired] \
         differ from its rows"
    );
}

/// Registers a running daemon whose last heartbeat is `heartbeat`.
pub async fn register(s: &Arc<dyn Storage>, id: &str, heartbeat: Timestamp) -> DaemonId {
    let id = DaemonId::from_string(id);
    let record = DaemonRecord {
        id: id.clone(),
        hostname: "host".to_string(),
        pid: 42,
        version: "0.0.0-test".to_string(),
        started_at: heartbeat,
        last_heartbeat: heartbeat,
        stopped_at: None,
        status: "running".to_string(),
        requests_finished: 0,
    };
    s.daemon_register(&record).await.expect("daemon_register");
    id
}

/// The single-owner scope of Alice.
pub fn alice() -> Scope {
    Scope::Tenant(ALICE.to_string())
}
