//! `/v1/batches` against a real SQLite store: creation and its validation, retrieval, listing
//! with pagination and search, cancellation, tenancy; and, with a daemon and the mock
//! upstream, the results view and retries.

mod common;

use std::time::Duration;

use common::{ACME, GLOBEX, TestApi, ids, lines, start_daemon};
use fusillade_mock::{Fault, MockConfig, MockServer};
use fusillade_server::ApiConfig;
use http::StatusCode;
use serde_json::{Value, json};

fn create_body(file: &Value) -> Value {
    json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"})
}

#[tokio::test]
async fn create_returns_the_batch_object() {
    let api = TestApi::new().await;
    let file = api.upload_ok(ACME, &lines(3)).await;
    let mut body = create_body(&file);
    body["metadata"] = json!({"project": "alpha"});
    let batch = api.post_json("/v1/batches", ACME, body).await.json();
    assert!(batch["id"].as_str().unwrap().starts_with("batch_"));
    assert_eq!(batch["object"], "batch");
    assert_eq!(batch["endpoint"], "/v1/chat/completions");
    assert_eq!(batch["input_file_id"], file["id"]);
    assert_eq!(batch["completion_window"], "24h");
    assert_eq!(batch["status"], "in_progress");
    assert_eq!(batch["metadata"], json!({"project": "alpha"}));
    assert_eq!(
        batch["request_counts"],
        json!({"total": 3, "completed": 0, "failed": 0})
    );
    let created = batch["created_at"].as_i64().unwrap();
    assert_eq!(batch["expires_at"].as_i64().unwrap(), created + 86_400);
    assert_eq!(batch["in_progress_at"].as_i64().unwrap(), created);
    for key in [
        "errors",
        "output_file_id",
        "error_file_id",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
    ] {
        assert!(
            batch.get(key).is_some_and(Value::is_null),
            "{key} should be an explicit null: {batch}"
        );
    }
    let id = batch["id"].as_str().unwrap();
    assert_eq!(
        api.get(&format!("/v1/batches/{id}"), ACME).await.json(),
        batch
    );
}

#[tokio::test]
async fn create_names_the_parameter_at_fault() {
    let api = TestApi::new().await;
    let file = api.upload_ok(ACME, &lines(2)).await;
    for missing in ["input_file_id", "endpoint", "completion_window"] {
        let mut body = create_body(&file);
        body.as_object_mut().unwrap().remove(missing);
        let reply = api.post_json("/v1/batches", ACME, body).await;
        reply.assert_error(400, "invalid_request_error", Some(missing));
    }
    let cases = [
        ("endpoint", json!("/v1/images/generations"), "endpoint"),
        ("completion_window", json!("1h"), "completion_window"),
        (
            "metadata",
            json!(
                (0..17)
                    .map(|i| (format!("k{i}"), json!("v")))
                    .collect::<serde_json::Map<_, _>>()
            ),
            "metadata",
        ),
        ("metadata", json!({"k".repeat(65): "v"}), "metadata"),
        ("metadata", json!({"k": "v".repeat(513)}), "metadata"),
        ("metadata", json!({"k": 1}), "metadata"),
        ("metadata", json!(["k"]), "metadata"),
        (
            "output_expires_after",
            json!({"anchor": "created_at", "seconds": 60}),
            "output_expires_after",
        ),
    ];
    for (key, value, param) in cases {
        let mut body = create_body(&file);
        body[key] = value;
        api.post_json("/v1/batches", ACME, body).await.assert_error(
            400,
            "invalid_request_error",
            Some(param),
        );
    }
    let reply = api
        .post_json("/v1/batches", ACME, json!("not an object"))
        .await;
    reply.assert_error(400, "invalid_request_error", None);
    // The largest valid metadata is accepted.
    let mut body = create_body(&file);
    body["metadata"] = json!(
        (0..16)
            .map(|i| (format!("{i:064}"), json!("v".repeat(512))))
            .collect::<serde_json::Map<_, _>>()
    );
    assert_eq!(
        api.post_json("/v1/batches", ACME, body).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn create_checks_the_input_file() {
    let api = TestApi::new().await;
    let reply = api
        .post_json(
            "/v1/batches",
            ACME,
            create_body(&json!({"id": "file-unknown"})),
        )
        .await;
    let message = reply.assert_error(404, "invalid_request_error", Some("input_file_id"));
    assert_eq!(message, "No such File object: file-unknown");
    let theirs = api.upload_ok(GLOBEX, &lines(1)).await;
    api.post_json("/v1/batches", ACME, create_body(&theirs))
        .await
        .assert_error(404, "invalid_request_error", Some("input_file_id"));
    let batch = api.batch(ACME, &lines(1)).await;
    let output = api.get("/v1/files?purpose=batch_output", ACME).await.json();
    let output_file = &output["data"][0];
    let reply = api
        .post_json("/v1/batches", ACME, create_body(output_file))
        .await;
    reply.assert_error(400, "invalid_request_error", Some("input_file_id"));
    // A line whose url is not the batch's endpoint.
    let file = api
        .upload_ok(
            ACME,
            &lines(2).replacen("/v1/chat/completions", "/v1/completions", 1),
        )
        .await;
    let reply = api.post_json("/v1/batches", ACME, create_body(&file)).await;
    let message = reply.assert_error(400, "invalid_request_error", Some("endpoint"));
    assert!(message.starts_with("Line 1: "), "{message}");
    assert_eq!(batch["status"], "in_progress");
}

#[tokio::test]
async fn configured_completion_windows_set_the_deadline() {
    let config = ApiConfig {
        completion_windows: vec!["1h".into(), "7d".into()],
        ..ApiConfig::default()
    };
    let api = TestApi::with_config(config).await;
    let file = api.upload_ok(ACME, &lines(1)).await;
    for (window, seconds) in [("1h", 3600), ("7d", 7 * 86_400)] {
        let mut body = create_body(&file);
        body["completion_window"] = json!(window);
        let batch = api.post_json("/v1/batches", ACME, body).await.json();
        assert_eq!(
            batch["expires_at"].as_i64().unwrap() - batch["created_at"].as_i64().unwrap(),
            seconds
        );
    }
    let reply = api.post_json("/v1/batches", ACME, create_body(&file)).await;
    reply.assert_error(400, "invalid_request_error", Some("completion_window"));
}

#[tokio::test]
async fn unknown_and_foreign_batches_are_not_found() {
    let api = TestApi::new().await;
    let reply = api.get("/v1/batches/batch_nope", ACME).await;
    let message = reply.assert_error(404, "invalid_request_error", Some("batch_id"));
    assert_eq!(message, "No such Batch object: batch_nope");
    api.get("/v1/batches/not-even-an-id", ACME)
        .await
        .assert_error(404, "invalid_request_error", Some("batch_id"));
    let batch = api.batch(ACME, &lines(1)).await;
    let id = batch["id"].as_str().unwrap();
    api.get(&format!("/v1/batches/{id}"), GLOBEX)
        .await
        .assert_error(404, "invalid_request_error", Some("batch_id"));
    api.post(&format!("/v1/batches/{id}/cancel"), GLOBEX)
        .await
        .assert_error(404, "invalid_request_error", Some("batch_id"));
    api.post(&format!("/v1/batches/{id}/retry"), GLOBEX)
        .await
        .assert_error(404, "invalid_request_error", Some("batch_id"));
    api.get(&format!("/v1/batches/{id}/results"), GLOBEX)
        .await
        .assert_error(404, "invalid_request_error", Some("batch_id"));
    assert_eq!(
        api.get("/v1/batches", GLOBEX).await.json()["data"],
        json!([])
    );
    let uri = format!("/v1/batches?after={id}");
    api.get(&uri, GLOBEX)
        .await
        .assert_error(400, "invalid_request_error", Some("after"));
}

#[tokio::test]
async fn list_is_newest_first_and_pages_with_after() {
    let api = TestApi::new().await;
    let file = api.upload_ok(ACME, &lines(1)).await;
    let mut created = Vec::new();
    for i in 0..25 {
        let mut body = create_body(&file);
        body["metadata"] = json!({"run": format!("nightly-{i}")});
        created.push(
            api.post_json("/v1/batches", ACME, body).await.json()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    created.reverse();
    let first = api.get("/v1/batches", ACME).await.json();
    assert_eq!(ids(&first), created[..20].to_vec(), "default page of 20");
    assert_eq!(first["has_more"], true);
    let rest = api
        .get(
            &format!("/v1/batches?after={}", first["last_id"].as_str().unwrap()),
            ACME,
        )
        .await
        .json();
    assert_eq!(ids(&rest), created[20..].to_vec());
    assert_eq!(rest["has_more"], false);
    for query in ["limit=0", "limit=101", "limit=ten"] {
        api.get(&format!("/v1/batches?{query}"), ACME)
            .await
            .assert_error(400, "invalid_request_error", Some("limit"));
    }
    api.get("/v1/batches?after=batch_unknown", ACME)
        .await
        .assert_error(400, "invalid_request_error", Some("after"));
    let found = api.get("/v1/batches?search=NIGHTLY-7", ACME).await.json();
    assert_eq!(found["data"].as_array().unwrap().len(), 1);
    assert_eq!(found["data"][0]["metadata"]["run"], "nightly-7");
}

#[tokio::test]
async fn cancel_is_idempotent_and_leaves_final_batches_unchanged() {
    let api = TestApi::new().await;
    let batch = api.batch(ACME, &lines(4)).await;
    let id = batch["id"].as_str().unwrap();
    // No daemon runs here, so nothing is in flight: the batch is cancelled at once.
    let cancelled = api
        .post(&format!("/v1/batches/{id}/cancel"), ACME)
        .await
        .json();
    assert_eq!(cancelled["status"], "cancelled");
    assert!(
        cancelled["cancelling_at"].as_i64().unwrap() <= cancelled["cancelled_at"].as_i64().unwrap()
    );
    assert_eq!(
        cancelled["request_counts"],
        json!({"total": 4, "completed": 0, "failed": 4})
    );
    assert!(cancelled["output_file_id"].is_null());
    let again = api
        .post(&format!("/v1/batches/{id}/cancel"), ACME)
        .await
        .json();
    assert_eq!(again, cancelled);
    let errors = api
        .get(
            &format!(
                "/v1/files/{}/content",
                cancelled["error_file_id"].as_str().unwrap()
            ),
            ACME,
        )
        .await;
    assert_eq!(errors.headers["x-incomplete"], "false");
    let codes: Vec<String> = errors
        .text()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["error"]["code"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(codes, vec!["batch_cancelled"; 4]);
    api.post("/v1/batches/batch_unknown/cancel", ACME)
        .await
        .assert_error(404, "invalid_request_error", Some("batch_id"));
}

async fn wait_for_status(api: &TestApi, id: &str, status: &str) -> Value {
    let uri = format!("/v1/batches/{id}");
    fusillade_testkit::wait_until(Duration::from_secs(20), status, || async {
        api.get(&uri, ACME).await.json()["status"] == status
    })
    .await;
    api.get(&uri, ACME).await.json()
}

#[tokio::test]
async fn results_show_each_line_and_retry_resends_the_failed_ones() {
    let api = TestApi::new().await;
    let failing = MockConfig {
        fault: Some(Fault::Status(400)),
        ..MockConfig::default()
    };
    let mock = MockServer::start(([127, 0, 0, 1], 0).into(), failing)
        .await
        .unwrap();
    let (stop, daemon) = start_daemon(&api.storage, &mock);
    let batch = api.batch(ACME, &lines(5)).await;
    let id = batch["id"].as_str().unwrap();
    let done = wait_for_status(&api, id, "completed").await;
    assert_eq!(
        done["request_counts"],
        json!({"total": 5, "completed": 0, "failed": 5})
    );
    assert!(done["output_file_id"].is_null());
    assert!(done["finalizing_at"].as_i64().unwrap() <= done["completed_at"].as_i64().unwrap());

    let failed = api
        .get(
            &format!("/v1/batches/{id}/results?status=failed&limit=2"),
            ACME,
        )
        .await
        .json();
    assert_eq!(failed["data"].as_array().unwrap().len(), 2);
    assert_eq!(failed["has_more"], true);
    let first = &failed["data"][0];
    assert_eq!(first["custom_id"], "r0");
    assert_eq!(first["status"], "failed");
    assert_eq!(first["input"]["model"], "m0");
    assert_eq!(first["response"]["status_code"], 400);
    let next = format!(
        "/v1/batches/{id}/results?status=failed&after={}",
        failed["last_id"].as_str().unwrap()
    );
    let rest = api.get(&next, ACME).await.json();
    let custom: Vec<&str> = rest["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(custom, ["r2", "r3", "r4"]);
    api.get(&format!("/v1/batches/{id}/results?status=weird"), ACME)
        .await
        .assert_error(400, "invalid_request_error", Some("status"));
    api.get(&format!("/v1/batches/{id}/results?after=batch_req_x"), ACME)
        .await
        .assert_error(400, "invalid_request_error", Some("after"));

    mock.set_config(MockConfig::default());
    let retried = api
        .post(&format!("/v1/batches/{id}/retry"), ACME)
        .await
        .json();
    assert_eq!(retried["retried"], 5);
    let done = wait_for_status(&api, id, "completed").await;
    assert_eq!(
        done["request_counts"],
        json!({"total": 5, "completed": 5, "failed": 0})
    );
    assert!(done["error_file_id"].is_null());
    let completed = api
        .get(&format!("/v1/batches/{id}/results"), ACME)
        .await
        .json();
    assert!(
        completed["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "completed" && r["error"].is_null())
    );

    // A request stuck in flight: cancelling aborts it, and a cancelled batch cannot retry.
    mock.set_config(MockConfig {
        fault: Some(Fault::Hang),
        ..MockConfig::default()
    });
    let cancelled = api.batch(ACME, &lines(1)).await;
    let cid = cancelled["id"].as_str().unwrap();
    let uri = format!("/v1/batches/{cid}");
    fusillade_testkit::wait_until(Duration::from_secs(20), "the request in flight", || async {
        api.get(&format!("{uri}/results?status=running"), ACME)
            .await
            .json()["data"]
            != json!([])
    })
    .await;
    let cancelling = api.post(&format!("{uri}/cancel"), ACME).await.json();
    assert_eq!(cancelling["status"], "cancelling");
    let done = wait_for_status(&api, cid, "cancelled").await;
    assert!(done["cancelling_at"].as_i64().unwrap() <= done["cancelled_at"].as_i64().unwrap());
    api.post(&format!("/v1/batches/{cid}/retry"), ACME)
        .await
        .assert_error(409, "invalid_request_error", None);
    stop.cancel();
    daemon.await.unwrap();
    mock.shutdown().await;
}

#[tokio::test]
async fn an_expired_batch_lists_its_unfinished_requests_as_batch_expired() {
    let config = ApiConfig {
        completion_windows: vec!["1h".into()],
        ..ApiConfig::default()
    };
    let api = TestApi::with_config(config).await;
    let file = api.upload_ok(ACME, &lines(3)).await;
    let mut body = create_body(&file);
    body["completion_window"] = json!("1h");
    let batch = api.post_json("/v1/batches", ACME, body).await.json();
    let id = batch["id"].as_str().unwrap();
    // Deleting the input file does not cascade: the batch keeps its requests and inputs.
    let file_id = file["id"].as_str().unwrap();
    assert_eq!(
        api.delete(&format!("/v1/files/{file_id}"), ACME)
            .await
            .status,
        StatusCode::OK
    );
    // The daemon's maintenance loop does this when the window ends; no daemon runs here.
    let after_window = chrono::Utc::now() + chrono::Duration::hours(2);
    api.storage.batch_expire_due(after_window).await.unwrap();
    let expired = api.get(&format!("/v1/batches/{id}"), ACME).await.json();
    assert_eq!(expired["status"], "expired");
    assert!(expired["expired_at"].as_i64().unwrap() >= expired["in_progress_at"].as_i64().unwrap());
    assert_eq!(
        expired["request_counts"],
        json!({"total": 3, "completed": 0, "failed": 3})
    );
    let uri = format!(
        "/v1/files/{}/content",
        expired["error_file_id"].as_str().unwrap()
    );
    let errors = api.get(&uri, ACME).await.text();
    let first: Value = serde_json::from_str(errors.lines().next().unwrap()).unwrap();
    assert_eq!(first["response"], Value::Null);
    assert_eq!(
        first["error"],
        json!({"code": "batch_expired",
            "message": "This request could not be executed before the completion window expired."})
    );
    assert_eq!(errors.lines().count(), 3);
    let results = api
        .get(&format!("/v1/batches/{id}/results"), ACME)
        .await
        .json();
    assert_eq!(results["data"][0]["input"]["model"], "m0");
    assert_eq!(results["data"][0]["status"], "expired");
}
