//! Conformance cases for batches: creation, listing, cancellation, expiry, retries, results.

use std::sync::Arc;

use fusillade::model::{BatchId, BatchStatus, FileId, FilePurpose, Outcome, RequestState};
use fusillade::storage::{BatchCreate, BatchList, ResultFilter, ResultPage, Scope};
use fusillade::{Storage, StorageError};

use super::{
    alice, assert_counts_match_rows, claim, create_batch, finish, get, ok, rows, upstream_error,
};
use crate::support::{ALICE, BOB, CHAT, body, jsonl, line, line_raw, t, upload_ok};

fn create_params(owner: &str, file: &FileId, endpoint: Option<&str>) -> BatchCreate {
    BatchCreate {
        owner: owner.to_string(),
        input_file_id: file.clone(),
        endpoint: endpoint.map(str::to_string),
        completion_window: None,
        expires_at: None,
        metadata: None,
        now: t(0),
    }
}

fn list_params(scope: Scope, after: Option<BatchId>, limit: u32) -> BatchList {
    BatchList {
        scope,
        after,
        limit,
        search: None,
    }
}

/// A new batch has one pending request per line, its counters, status and generated files.
pub async fn batch_create_makes_one_pending_request_per_line(s: Arc<dyn Storage>) {
    let file = upload_ok(s.as_ref(), ALICE, &jsonl(&["m1", "m2", "m1"]), t(0)).await;
    let metadata = serde_json::json!({"project": "apollo"});
    let batch = s
        .batch_create(BatchCreate {
            completion_window: Some("24h".into()),
            expires_at: Some(t(86_400)),
            metadata: metadata.as_object().cloned(),
            now: t(5),
            ..create_params(ALICE, &file.id, Some(CHAT))
        })
        .await
        .unwrap();
    assert_eq!(batch.status, BatchStatus::InProgress);
    assert_eq!(batch.owner, ALICE);
    assert_eq!(batch.input_file_id, file.id);
    assert_eq!(batch.endpoint, CHAT);
    assert_eq!(batch.completion_window.as_deref(), Some("24h"));
    assert_eq!(batch.expires_at, Some(t(86_400)));
    assert_eq!(batch.metadata, metadata.as_object().cloned());
    assert_eq!(batch.created_at, t(5));
    assert!(batch.errors.is_empty());
    let c = batch.counts;
    assert_eq!((c.total, c.pending, c.finished() + c.running), (3, 3, 0));
    assert_eq!(get(&s, &batch.id).await, batch);

    for (id, purpose) in [
        (&batch.output_file_id, FilePurpose::BatchOutput),
        (&batch.error_file_id, FilePurpose::BatchError),
    ] {
        let f = s.file_get(&alice(), id).await.unwrap();
        assert_eq!((f.purpose, f.batch_id.as_ref()), (purpose, Some(&batch.id)));
    }
    let all = rows(&s, &batch.id, ResultFilter::All).await;
    let lines: Vec<(u64, &str, RequestState, u32)> = all
        .iter()
        .map(|r| (r.line, r.custom_id.as_str(), r.state, r.attempts))
        .collect();
    let p = RequestState::Pending;
    let expected = vec![(1, "req-1", p, 0), (2, "req-2", p, 0), (3, "req-3", p, 0)];
    assert_eq!(lines, expected);
    assert_counts_match_rows(&s, &batch.id).await;
}

/// A line whose url differs from the batch endpoint rejects the batch, naming that line.
pub async fn batch_create_with_mismatched_endpoint_is_conflict_naming_the_line(
    s: Arc<dyn Storage>,
) {
    let content = format!(
        "{}\n{}\n{}\n",
        line("a", "m"),
        line("b", "m"),
        line_raw("c", "/v1/embeddings", r#"{"model":"m","input":"x"}"#),
    );
    let file = upload_ok(s.as_ref(), ALICE, &content, t(0)).await;
    let err = s
        .batch_create(create_params(ALICE, &file.id, Some(CHAT)))
        .await
        .unwrap_err();
    match err {
        StorageError::Conflict(m) => assert!(m.contains("Line 3"), "line not named: {m}"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    let listed = s
        .batch_list(list_params(Scope::All, None, 10))
        .await
        .unwrap();
    assert!(listed.items.is_empty(), "a rejected batch was stored");
    // Without an endpoint the file's own lines are accepted.
    let lenient = s.batch_create(create_params(ALICE, &file.id, None)).await;
    assert_eq!(lenient.unwrap().counts.total, 3);
}

/// A batch needs an input file that exists, is visible to its owner and is an upload.
pub async fn batch_create_from_unknown_or_foreign_file_is_not_found(s: Arc<dyn Storage>) {
    let unknown = FileId::from_string("file-unknown");
    let r = s
        .batch_create(create_params(ALICE, &unknown, Some(CHAT)))
        .await;
    assert!(matches!(r, Err(StorageError::NotFound(_))), "{r:?}");
    let file = upload_ok(s.as_ref(), ALICE, &jsonl(&["m"]), t(0)).await;
    let r = s
        .batch_create(create_params(BOB, &file.id, Some(CHAT)))
        .await;
    assert!(
        matches!(r, Err(StorageError::NotFound(_))),
        "foreign file: {r:?}"
    );
    let batch = s
        .batch_create(create_params(ALICE, &file.id, Some(CHAT)))
        .await
        .unwrap();
    let r = s
        .batch_create(create_params(ALICE, &batch.output_file_id, Some(CHAT)))
        .await;
    assert!(r.is_err(), "a batch was created from an output file");
    let listed = s
        .batch_list(list_params(Scope::All, None, 10))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
}

async fn batch_with_metadata(s: &Arc<dyn Storage>, owner: &str, project: &str, at: i64) -> BatchId {
    let file = upload_ok(s.as_ref(), owner, &jsonl(&["m"]), t(at)).await;
    let metadata = serde_json::json!({ "project": project });
    let params = BatchCreate {
        metadata: metadata.as_object().cloned(),
        now: t(at),
        ..create_params(owner, &file.id, Some(CHAT))
    };
    s.batch_create(params).await.unwrap().id
}

/// Newest first, continued with `after`, searchable in metadata, scoped to the tenant.
pub async fn batch_list_is_newest_first_with_cursor_search_and_tenant_scope(s: Arc<dyn Storage>) {
    let b1 = batch_with_metadata(&s, ALICE, "Alpha", 1).await;
    let b2 = batch_with_metadata(&s, ALICE, "beta", 2).await;
    let b3 = batch_with_metadata(&s, ALICE, "alphabet", 3).await;
    let bb = batch_with_metadata(&s, BOB, "alpha", 4).await;
    let ids = |p: fusillade::storage::Page<fusillade::model::Batch>| {
        let ids: Vec<BatchId> = p.items.into_iter().map(|b| b.id).collect();
        (ids, p.has_more)
    };

    let p1 = s.batch_list(list_params(alice(), None, 2)).await.unwrap();
    assert_eq!(ids(p1), (vec![b3.clone(), b2.clone()], true));
    let p2 = s
        .batch_list(list_params(alice(), Some(b2.clone()), 2))
        .await;
    assert_eq!(ids(p2.unwrap()), (vec![b1.clone()], false));
    let full = s.batch_list(list_params(alice(), None, 3)).await.unwrap();
    assert_eq!(ids(full), (vec![b3.clone(), b2.clone(), b1.clone()], false));

    let search = BatchList {
        search: Some("ALPHA".into()),
        ..list_params(alice(), None, 10)
    };
    let found = s.batch_list(search).await.unwrap();
    assert_eq!(ids(found), (vec![b3.clone(), b1.clone()], false));

    let bob = Scope::Tenant(BOB.into());
    let bobs = s.batch_list(list_params(bob.clone(), None, 10)).await;
    assert_eq!(ids(bobs.unwrap()), (vec![bb.clone()], false));
    let all = s.batch_list(list_params(Scope::All, None, 10)).await;
    assert_eq!(ids(all.unwrap()).0, vec![bb, b3, b2, b1.clone()]);

    let r = s.batch_get(&bob, &b1).await;
    assert!(matches!(r, Err(StorageError::NotFound(_))), "{r:?}");
    let r = s.batch_list(list_params(bob, Some(b1), 10)).await;
    assert!(
        matches!(r, Err(StorageError::NotFound(_))),
        "foreign cursor: {r:?}"
    );
    let unknown = Some(BatchId::from_string("batch_unknown"));
    let r = s.batch_list(list_params(alice(), unknown, 10)).await;
    assert!(
        matches!(r, Err(StorageError::NotFound(_))),
        "unknown cursor: {r:?}"
    );
}

/// Output and error file ids lead back to their batch; other files and tenants do not.
pub async fn batch_get_by_output_file_finds_the_batch(s: Arc<dyn Storage>) {
    let batch = create_batch(&s, ALICE, &["m"], t(0), None).await;
    let other = create_batch(&s, ALICE, &["m"], t(1), None).await;
    let scope = alice();
    let by_output = s.batch_get_by_output_file(&scope, &batch.output_file_id);
    assert_eq!(by_output.await.unwrap().id, batch.id);
    let by_error = s.batch_get_by_output_file(&scope, &batch.error_file_id);
    assert_eq!(by_error.await.unwrap().id, batch.id);
    let by_other = s.batch_get_by_output_file(&Scope::All, &other.error_file_id);
    assert_eq!(by_other.await.unwrap().id, other.id);

    let r = s
        .batch_get_by_output_file(&alice(), &batch.input_file_id)
        .await;
    assert!(
        matches!(r, Err(StorageError::NotFound(_))),
        "input file: {r:?}"
    );
    let bob = Scope::Tenant(BOB.into());
    let r = s
        .batch_get_by_output_file(&bob, &batch.output_file_id)
        .await;
    assert!(
        matches!(r, Err(StorageError::NotFound(_))),
        "other tenant: {r:?}"
    );
}

/// Statuses of the given batches; unknown ids are left out.
pub async fn batch_statuses_report_known_ids_only(s: Arc<dyn Storage>) {
    let running = create_batch(&s, ALICE, &["m"], t(0), None).await;
    let cancelled = create_batch(&s, BOB, &["m"], t(1), None).await;
    s.batch_cancel(&Scope::All, &cancelled.id, t(2))
        .await
        .unwrap();
    let unknown = BatchId::from_string("batch_unknown");
    let ids = [running.id.clone(), unknown, cancelled.id.clone()];
    let mut got = s.batch_statuses(&ids).await.unwrap();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected = vec![
        (running.id, BatchStatus::InProgress),
        (cancelled.id, BatchStatus::Cancelled),
    ];
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, expected);
    assert!(s.batch_statuses(&[]).await.unwrap().is_empty());
}

/// Only batches with unfinished work contribute their models.
pub async fn models_active_lists_models_of_unfinished_batches_only(s: Arc<dyn Storage>) {
    assert!(s.batch_models_active().await.unwrap().is_empty());
    create_batch(&s, ALICE, &["m1", "m2", "m1"], t(0), None).await;
    let cancelled = create_batch(&s, ALICE, &["m3"], t(1), None).await;
    s.batch_cancel(&alice(), &cancelled.id, t(2)).await.unwrap();
    let completed = create_batch(&s, ALICE, &["m4"], t(3), None).await;
    let req = claim(&s, "m4", 1, t(4)).await;
    let cancelling = create_batch(&s, ALICE, &["m5"], t(5), None).await;
    claim(&s, "m5", 1, t(6)).await;
    s.batch_cancel(&alice(), &cancelling.id, t(7))
        .await
        .unwrap();
    finish(&s, &req[0], ok("req-1"), t(8)).await;
    assert_eq!(get(&s, &completed.id).await.status, BatchStatus::Completed);

    let mut models = s.batch_models_active().await.unwrap();
    models.sort();
    assert_eq!(models, vec!["m1", "m2", "m5"]);
}

/// Output, Errors, one State and All select the right rows, with the stored results.
pub async fn result_page_filters_by_outcome_and_state(s: Arc<dyn Storage>) {
    let batch = create_batch(&s, ALICE, &["m"; 5], t(0), None).await;
    let c = claim(&s, "m", 4, t(1)).await;
    finish(&s, &c[0], ok("req-1"), t(2)).await;
    finish(&s, &c[1], Outcome::Failed(upstream_error(400)), t(2)).await;
    let retry = Outcome::Retry {
        not_before: t(1000),
        error: upstream_error(503),
    };
    finish(&s, &c[2], retry, t(2)).await;
    // line 4 stays running, line 5 pending.
    let lines = |filter| {
        let s = s.clone();
        let id = batch.id.clone();
        async move {
            let r = rows(&s, &id, filter).await;
            r.iter().map(|r| r.line).collect::<Vec<_>>()
        }
    };
    assert_eq!(lines(ResultFilter::Output).await, vec![1]);
    assert_eq!(lines(ResultFilter::Errors).await, vec![2]);
    assert_eq!(
        lines(ResultFilter::State(RequestState::Running)).await,
        vec![4]
    );
    let pending = lines(ResultFilter::State(RequestState::Pending)).await;
    assert_eq!(pending, vec![3, 5]);
    assert_eq!(lines(ResultFilter::All).await, vec![1, 2, 3, 4, 5]);

    let out = &rows(&s, &batch.id, ResultFilter::Output).await[0];
    assert_eq!(out.status_code, Some(200));
    assert_eq!(out.upstream_request_id.as_deref(), Some("up-req-1"));
    let err = &rows(&s, &batch.id, ResultFilter::Errors).await[0];
    assert_eq!(
        (err.custom_id.as_str(), err.status_code),
        ("req-2", Some(400))
    );
    assert_eq!(
        err.response_body.as_deref(),
        Some(r#"{"error":"status 400"}"#)
    );
    assert_eq!(err.error_code.as_deref(), Some("upstream_status"));
    assert_eq!(err.error_message.as_deref(), Some("upstream answered 400"));

    s.batch_cancel(&alice(), &batch.id, t(3)).await.unwrap();
    // Cancelled requests are reported in the error file too.
    assert_eq!(lines(ResultFilter::Errors).await, vec![2, 3, 5]);
    assert_counts_match_rows(&s, &batch.id).await;
}

/// Keyset pages over the input line number, with the request body only when asked for.
pub async fn result_page_paginates_by_line_with_optional_input(s: Arc<dyn Storage>) {
    let batch = create_batch(&s, ALICE, &["m"; 5], t(0), None).await;
    let page = |after_line, with_input| ResultPage {
        batch_id: batch.id.clone(),
        filter: ResultFilter::All,
        after_line,
        limit: 2,
        with_input,
    };
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let p = s.result_page(&alice(), page(after, true)).await.unwrap();
        assert!(p.len() <= 2);
        let Some(last) = p.last() else { break };
        after = last.line;
        seen.extend(p);
    }
    assert_eq!(
        seen.iter().map(|r| r.line).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        seen[2].input_body.as_deref(),
        Some(body("req-3", "m").as_str())
    );
    let tail = s.result_page(&alice(), page(3, false)).await.unwrap();
    assert_eq!(tail.iter().map(|r| r.line).collect::<Vec<_>>(), [4, 5]);
    assert!(tail.iter().all(|r| r.input_body.is_none()));

    let bob = Scope::Tenant(BOB.into());
    let r = s.result_page(&bob, page(0, false)).await;
    assert!(matches!(r, Err(StorageError::NotFound(_))), "{r:?}");
}
