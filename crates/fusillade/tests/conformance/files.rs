//! Conformance cases for input files and templates: uploads, reads, listing, scoping, deletion.

use std::sync::Arc;

use fusillade::model::{FileId, FilePurpose};
use fusillade::storage::{FileList, ModelStats, Page, Scope};
use fusillade::{Storage, StorageError};

use super::{alice, assert_counts_match_rows, claim, create_batch};
use crate::support::{ALICE, BOB, CHAT, body, line, line_raw, t, upload, upload_ok};

fn list_params(scope: Scope, after: Option<FileId>, limit: u32, ascending: bool) -> FileList {
    FileList {
        scope,
        purpose: None,
        after,
        limit,
        ascending,
    }
}

fn ids(page: &Page<fusillade::model::File>) -> Vec<FileId> {
    page.items.iter().map(|f| f.id.clone()).collect()
}

/// Templates come back exactly as uploaded, in line order, a keyset page at a time.
pub async fn file_templates_read_back_in_line_order(s: Arc<dyn Storage>) {
    // Line 3 is blank: line numbers are physical lines of the file.
    let content = format!(
        "{}\n{}\n\n{}\n{}\n{}\n",
        line("a", "m1"),
        line("b", "m2"),
        line("c", "m1"),
        line("d", "m1"),
        line("e", "m2"),
    );
    let file = upload_ok(s.as_ref(), ALICE, &content, t(0)).await;
    assert_eq!(file.purpose, FilePurpose::Batch);
    assert_eq!(file.owner, ALICE);
    assert_eq!(file.line_count, 5);
    assert_eq!(file.bytes, content.len() as u64);
    assert!(file.content_hash.is_some());
    assert_eq!(file.created_at, t(0));
    assert_eq!(s.file_get(&alice(), &file.id).await.unwrap(), file);

    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = s.template_page(&alice(), &file.id, after, 2).await.unwrap();
        assert!(page.len() <= 2, "page larger than its limit");
        let Some(last) = page.last() else { break };
        after = last.line;
        seen.extend(page);
    }
    let lines: Vec<u64> = seen.iter().map(|t| t.line).collect();
    assert_eq!(lines, vec![1, 2, 4, 5, 6]);
    let custom_ids: Vec<&str> = seen.iter().map(|t| t.custom_id.as_str()).collect();
    assert_eq!(custom_ids, vec!["a", "b", "c", "d", "e"]);
    assert_eq!(seen[1].model, "m2");
    assert_eq!(seen[1].url, CHAT);
    assert_eq!(seen[1].body, body("b", "m2"));
    let tail = s.template_page(&alice(), &file.id, 4, 100).await.unwrap();
    assert_eq!(tail.iter().map(|t| t.line).collect::<Vec<_>>(), vec![5, 6]);
}

/// A file larger than one insert statement and one insert transaction, of a length that is a
/// multiple of neither, comes back whole: every line once, in order, with its own fields.
pub async fn file_of_thousands_of_lines_reads_back_whole(s: Arc<dyn Storage>) {
    const LINES: usize = 4_321;
    let content: String = (0..LINES)
        .map(|i| line(&format!("req-{i}"), &format!("m{}", i % 3)) + "\n")
        .collect();
    let file = upload_ok(s.as_ref(), ALICE, &content, t(0)).await;
    assert_eq!(file.line_count, LINES as u64);
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = s
            .template_page(&alice(), &file.id, after, 1_000)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.line;
        seen.extend(page);
    }
    assert_eq!(seen.len(), LINES);
    for (i, template) in seen.iter().enumerate() {
        let (custom_id, model) = (format!("req-{i}"), format!("m{}", i % 3));
        assert_eq!(template.line, i as u64 + 1);
        assert_eq!(template.custom_id, custom_id);
        assert_eq!(template.model, model);
        assert_eq!(template.url, CHAT);
        assert_eq!(template.body, body(&custom_id, &model));
    }
}

/// A bad line after thousands of good ones rejects the whole upload and leaves no trace.
/// 5,000 padded lines (~1 MB) span several read chunks, so backends that stage inserts in
/// batches of a few thousand rows have staged some before the bad line arrives.
pub async fn file_upload_with_bad_line_stores_nothing(s: Arc<dyn Storage>) {
    let pad = "x".repeat(150);
    let mut content = String::new();
    for i in 1..=5000 {
        let b = format!(r#"{{"model":"m","messages":[],"pad":"{pad}"}}"#);
        content.push_str(&line_raw(&format!("req-{i}"), CHAT, &b));
        content.push('\n');
    }
    content.push_str("{\"custom_id\": \"bad\", this is not json\n");
    content.push_str(&line("after-the-bad-one", "m"));
    content.push('\n');

    let err = upload(s.as_ref(), ALICE, &content, t(0)).await.unwrap_err();
    match err {
        StorageError::Rejected(e) => assert_eq!(e.line, Some(5001), "wrong line: {e}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    let all = s
        .file_list(list_params(Scope::All, None, 100, false))
        .await
        .unwrap();
    assert!(all.items.is_empty(), "a rejected upload is listed");
    assert!(!all.has_more);

    // The storage is still usable, and the next file holds only its own templates.
    let good = upload_ok(s.as_ref(), ALICE, &(line("only", "m") + "\n"), t(1)).await;
    let all = s
        .file_list(list_params(Scope::All, None, 100, false))
        .await
        .unwrap();
    assert_eq!(ids(&all), vec![good.id.clone()]);
    let stats = s.file_model_stats(&alice(), &good.id).await.unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].requests, 1);
}

/// Another tenant can neither see nor touch a file.
pub async fn file_of_other_tenant_is_not_found(s: Arc<dyn Storage>) {
    let file = upload_ok(s.as_ref(), ALICE, &(line("a", "m") + "\n"), t(0)).await;
    let bob = Scope::Tenant(BOB.to_string());
    let not_found = |r: Result<(), StorageError>, what: &str| match r {
        Err(StorageError::NotFound(_)) => {}
        other => panic!("{what} by another tenant: expected NotFound, got {other:?}"),
    };
    not_found(s.file_get(&bob, &file.id).await.map(drop), "file_get");
    not_found(s.file_delete(&bob, &file.id, t(1)).await, "file_delete");
    not_found(
        s.template_page(&bob, &file.id, 0, 10).await.map(drop),
        "template_page",
    );
    not_found(
        s.file_model_stats(&bob, &file.id).await.map(drop),
        "file_model_stats",
    );
    let bobs = s
        .file_list(list_params(bob, None, 10, false))
        .await
        .unwrap();
    assert!(
        bobs.items.is_empty(),
        "another tenant's list shows the file"
    );

    // Bob's failed delete changed nothing; Alice and the all-tenants scope still see it.
    assert_eq!(s.file_get(&alice(), &file.id).await.unwrap().id, file.id);
    let alices = s.file_list(list_params(alice(), None, 10, false)).await;
    assert_eq!(ids(&alices.unwrap()), vec![file.id.clone()]);
    let all = s.file_list(list_params(Scope::All, None, 10, false)).await;
    assert_eq!(ids(&all.unwrap()), vec![file.id.clone()]);
    let unknown = FileId::from_string("file-doesnotexist");
    not_found(s.file_get(&Scope::All, &unknown).await.map(drop), "unknown");
}

/// Newest first and oldest first, continued with `after`, with an exact `has_more`.
pub async fn file_list_pages_both_directions_with_cursor(s: Arc<dyn Storage>) {
    let mut files = Vec::new();
    for i in 0..5 {
        let f = upload_ok(s.as_ref(), ALICE, &(line("a", "m") + "\n"), t(i)).await;
        files.push(f.id);
    }
    upload_ok(s.as_ref(), BOB, &(line("a", "m") + "\n"), t(9)).await;
    let page = |after: Option<FileId>, asc: bool| {
        let s = s.clone();
        async move {
            s.file_list(list_params(alice(), after, 2, asc))
                .await
                .unwrap()
        }
    };
    let f = |i: usize| files[i].clone();

    let p1 = page(None, false).await;
    assert_eq!((ids(&p1), p1.has_more), (vec![f(4), f(3)], true));
    let p2 = page(Some(f(3)), false).await;
    assert_eq!((ids(&p2), p2.has_more), (vec![f(2), f(1)], true));
    let p3 = page(Some(f(1)), false).await;
    assert_eq!((ids(&p3), p3.has_more), (vec![f(0)], false));

    let a1 = page(None, true).await;
    assert_eq!((ids(&a1), a1.has_more), (vec![f(0), f(1)], true));
    let a2 = page(Some(f(1)), true).await;
    assert_eq!((ids(&a2), a2.has_more), (vec![f(2), f(3)], true));
    let a3 = page(Some(f(3)), true).await;
    assert_eq!((ids(&a3), a3.has_more), (vec![f(4)], false));

    // An exactly full last page says there is no more.
    let exact = s.file_list(list_params(alice(), None, 5, false)).await;
    assert!(!exact.unwrap().has_more);

    let unknown = Some(FileId::from_string("file-unknown"));
    let r = s.file_list(list_params(alice(), unknown, 2, false)).await;
    assert!(matches!(r, Err(StorageError::NotFound(_))), "{r:?}");
    let bobs = s.file_list(list_params(Scope::Tenant(BOB.into()), None, 1, false));
    let bob_file = bobs.await.unwrap().items[0].id.clone();
    let r = s
        .file_list(list_params(alice(), Some(bob_file), 2, false))
        .await;
    assert!(
        matches!(r, Err(StorageError::NotFound(_))),
        "another tenant's file as cursor: {r:?}"
    );
}

/// A batch's generated output and error files are listed under their own purposes.
pub async fn file_list_filters_by_purpose(s: Arc<dyn Storage>) {
    let batch = create_batch(&s, ALICE, &["m"], t(0), None).await;
    let by = |purpose: Option<FilePurpose>| {
        let s = s.clone();
        async move {
            let mut p = list_params(alice(), None, 10, true);
            p.purpose = purpose;
            s.file_list(p).await.unwrap().items
        }
    };
    let inputs = by(Some(FilePurpose::Batch)).await;
    assert_eq!(inputs.len(), 1);
    assert_eq!(inputs[0].id, batch.input_file_id);
    let outputs = by(Some(FilePurpose::BatchOutput)).await;
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].id, batch.output_file_id);
    assert_eq!(outputs[0].purpose, FilePurpose::BatchOutput);
    assert_eq!(outputs[0].batch_id.as_ref(), Some(&batch.id));
    let errors = by(Some(FilePurpose::BatchError)).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].id, batch.error_file_id);
    assert_eq!(errors[0].batch_id.as_ref(), Some(&batch.id));
    assert_eq!(by(None).await.len(), 3);

    let output = s.file_get(&alice(), &batch.output_file_id).await.unwrap();
    assert_eq!(output.purpose, FilePurpose::BatchOutput);
    assert_eq!(output.owner, ALICE);
}

/// Deleting an input file hides it, while a batch already created from it keeps running.
pub async fn file_delete_hides_file_but_its_batch_keeps_running(s: Arc<dyn Storage>) {
    let batch = create_batch(&s, ALICE, &["m", "m"], t(0), None).await;
    let file = batch.input_file_id.clone();
    s.file_delete(&alice(), &file, t(1)).await.unwrap();

    let gone = s.file_get(&alice(), &file).await;
    assert!(matches!(gone, Err(StorageError::NotFound(_))), "{gone:?}");
    let listed = s.file_list(list_params(alice(), None, 10, false)).await;
    assert!(listed.unwrap().items.iter().all(|f| f.id != file));
    let page = s.template_page(&alice(), &file, 0, 10).await;
    assert!(matches!(page, Err(StorageError::NotFound(_))), "{page:?}");
    let again = s.file_delete(&alice(), &file, t(2)).await;
    assert!(matches!(again, Err(StorageError::NotFound(_))), "{again:?}");

    let claimed = claim(&s, "m", 10, t(3)).await;
    assert_eq!(claimed.len(), 2);
    assert_eq!(claimed[0].body, body("req-1", "m"));
    assert_eq!(claimed[1].custom_id, "req-2");
    assert_counts_match_rows(&s, &batch.id).await;
}

/// Per-model request counts and body sizes in bytes (not characters).
pub async fn file_model_stats_count_requests_and_body_bytes_per_model(s: Arc<dyn Storage>) {
    let b1 = r#"{"model":"alpha","prompt":"héllo"}"#;
    let b2 = r#"{"model":"beta","prompt":"x"}"#;
    let b3 = r#"{"model":"alpha","prompt":"a longer prompt"}"#;
    let url = "/v1/completions";
    let content = [("1", b1), ("2", b2), ("3", b3)]
        .iter()
        .map(|(id, b)| line_raw(id, url, b) + "\n")
        .collect::<String>();
    let file = upload_ok(s.as_ref(), ALICE, &content, t(0)).await;
    let mut stats = s.file_model_stats(&alice(), &file.id).await.unwrap();
    stats.sort_by(|a, b| a.model.cmp(&b.model));
    let expected = vec![
        ModelStats {
            model: "alpha".into(),
            requests: 2,
            body_bytes: (b1.len() + b3.len()) as u64,
        },
        ModelStats {
            model: "beta".into(),
            requests: 1,
            body_bytes: b2.len() as u64,
        },
    ];
    assert_eq!(stats, expected);
}
