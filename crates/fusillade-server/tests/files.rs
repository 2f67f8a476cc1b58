//! `/v1/files` against a real SQLite store: uploads and their validation, retrieval, content,
//! deletion, listing with pagination, statistics, tenancy and authentication.

mod common;

use axum::body::Body;
use chrono::Utc;
use common::{ACME, GLOBEX, TestApi, ids, lines, request};
use fusillade::ingest::upload_stream;
use fusillade::storage::FileCreate;
use fusillade_server::{ApiConfig, Tenants};
use http::StatusCode;

#[tokio::test]
async fn upload_returns_a_processed_file_object() {
    let api = TestApi::new().await;
    let content = lines(3);
    let file = api.upload_ok(ACME, &content).await;
    assert!(file["id"].as_str().unwrap().starts_with("file-"));
    assert_eq!(file["object"], "file");
    assert_eq!(file["bytes"], content.len());
    assert_eq!(file["filename"], "in.jsonl");
    assert_eq!(file["purpose"], "batch");
    assert_eq!(file["status"], "processed");
    assert!(file["expires_at"].is_null());
    let now = Utc::now().timestamp();
    assert!((now - file["created_at"].as_i64().unwrap()).abs() < 5);
    let fetched = api
        .get(&format!("/v1/files/{}", file["id"].as_str().unwrap()), ACME)
        .await;
    assert_eq!(fetched.json(), file);
}

#[tokio::test]
async fn a_bad_line_rejects_the_upload_and_stores_nothing() {
    let api = TestApi::new().await;
    let content = format!("{}{{\"custom_id\":\"x\"}}\n", lines(2));
    let reply = api
        .upload(ACME, &[("purpose", "batch")], Some(content.as_bytes()))
        .await;
    let message = reply.assert_error(400, "invalid_request_error", Some("file"));
    assert!(message.starts_with("Line 3: "), "{message}");
    let list = api.get("/v1/files", ACME).await.json();
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn upload_validation_names_each_problem() {
    let api = TestApi::new().await;
    let long_id = "x".repeat(65);
    let cases = [
        ("not json\n".to_string(), "Line 1: "),
        (
            format!("{}{}", lines(1), lines(1)),
            "Line 2: custom_id \"r0\" is already used",
        ),
        (
            lines(1).replace("\"r0\"", &format!("\"{long_id}\"")),
            "Line 1: custom_id is 65 characters",
        ),
        (lines(1).replace("POST", "GET"), "Line 1: method"),
        (
            lines(1).replace("/v1/chat/completions", "/v1/nope"),
            "Line 1: url",
        ),
        (
            lines(1).replace("\"messages\"", "\"stream\":true,\"messages\""),
            "Line 1: body.stream",
        ),
        ("\n\n".to_string(), "the file contains no requests"),
    ];
    for (content, expected) in cases {
        let reply = api
            .upload(ACME, &[("purpose", "batch")], Some(content.as_bytes()))
            .await;
        let message = reply.assert_error(400, "invalid_request_error", Some("file"));
        assert!(
            message.starts_with(expected),
            "{message:?} should start with {expected:?}"
        );
    }
}

#[tokio::test]
async fn the_request_and_size_limits_apply_while_streaming() {
    let config = ApiConfig {
        max_upload_bytes: 2_000,
        max_requests_per_file: 3,
        ..ApiConfig::default()
    };
    let api = TestApi::with_config(config).await;
    let reply = api
        .upload(ACME, &[("purpose", "batch")], Some(lines(4).as_bytes()))
        .await;
    let message = reply.assert_error(400, "invalid_request_error", Some("file"));
    assert!(
        message.starts_with("Line 4: the file has more than 3 requests"),
        "{message}"
    );

    // Larger than the limit by bytes, though within the line limit: 413 while streaming.
    let big = lines(3).replace("hi ", &"y".repeat(700));
    let reply = api
        .upload(ACME, &[("purpose", "batch")], Some(big.as_bytes()))
        .await;
    let message = reply.assert_error(413, "invalid_request_error", Some("file"));
    assert!(message.contains("2000 bytes"), "{message}");
    assert_eq!(
        api.get("/v1/files", ACME).await.json()["data"],
        serde_json::json!([])
    );
}

#[tokio::test]
async fn a_declared_oversized_body_is_refused_before_reading() {
    let config = ApiConfig {
        max_upload_bytes: 1_000,
        ..ApiConfig::default()
    };
    let api = TestApi::with_config(config).await;
    let request = request("POST", "/v1/files", ACME)
        .header("content-type", "multipart/form-data; boundary=x")
        .header("content-length", "10000000")
        .body(Body::empty())
        .unwrap();
    api.send(request)
        .await
        .assert_error(413, "invalid_request_error", Some("file"));
}

#[tokio::test]
async fn upload_form_errors() {
    let api = TestApi::new().await;
    let content = lines(1);
    let file = Some(content.as_bytes());
    let reply = api.upload(ACME, &[("purpose", "fine-tune")], file).await;
    let message = reply.assert_error(400, "invalid_request_error", Some("purpose"));
    assert_eq!(
        message,
        "Invalid purpose 'fine-tune'. Only 'batch' is supported."
    );
    api.upload(ACME, &[], file)
        .await
        .assert_error(400, "invalid_request_error", Some("purpose"));
    api.upload(ACME, &[("purpose", "batch")], None)
        .await
        .assert_error(400, "invalid_request_error", Some("file"));
    let not_multipart = request("POST", "/v1/files", ACME)
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    api.send(not_multipart)
        .await
        .assert_error(400, "invalid_request_error", None);
    assert_eq!(
        api.get("/v1/files", ACME).await.json()["data"],
        serde_json::json!([])
    );
}

#[tokio::test]
async fn expires_after_sets_expires_at_within_openai_range() {
    let api = TestApi::new().await;
    let content = lines(1);
    let fields = [
        ("purpose", "batch"),
        ("expires_after[anchor]", "created_at"),
        ("expires_after[seconds]", "3600"),
    ];
    let reply = api.upload(ACME, &fields, Some(content.as_bytes())).await;
    let file = reply.json();
    assert_eq!(
        file["expires_at"].as_i64().unwrap(),
        file["created_at"].as_i64().unwrap() + 3600
    );
    for (anchor, seconds, param) in [
        ("created_at", "3599", "expires_after[seconds]"),
        ("created_at", "2592001", "expires_after[seconds]"),
        ("last_active_at", "3600", "expires_after[anchor]"),
    ] {
        let fields = [
            ("purpose", "batch"),
            ("expires_after[anchor]", anchor),
            ("expires_after[seconds]", seconds),
        ];
        let reply = api.upload(ACME, &fields, Some(content.as_bytes())).await;
        reply.assert_error(400, "invalid_request_error", Some(param));
    }
}

#[tokio::test]
async fn an_expired_file_is_gone() {
    let api = TestApi::new().await;
    let past = Utc::now() - chrono::Duration::seconds(1);
    let params = FileCreate {
        owner: "acme".into(),
        filename: "old.jsonl".into(),
        expires_at: Some(past),
        now: past - chrono::Duration::hours(2),
    };
    let content = lines(1);
    let upload = upload_stream(content.as_bytes(), Default::default());
    let file = api.storage.file_create(params, upload).await.unwrap();
    api.get(&format!("/v1/files/{}", file.id), ACME)
        .await
        .assert_error(404, "invalid_request_error", Some("id"));
    assert_eq!(
        api.get("/v1/files", ACME).await.json()["data"],
        serde_json::json!([])
    );
}

#[tokio::test]
async fn unknown_and_foreign_files_are_not_found() {
    let api = TestApi::new().await;
    let reply = api.get("/v1/files/file-nope", ACME).await;
    assert_eq!(
        reply.json(),
        serde_json::json!({"error": {"message": "No such File object: file-nope",
            "type": "invalid_request_error", "param": "id", "code": null}})
    );
    let file = api.upload_ok(ACME, &lines(2)).await;
    let id = file["id"].as_str().unwrap();
    for uri in [
        format!("/v1/files/{id}"),
        format!("/v1/files/{id}/content"),
        format!("/v1/files/{id}/stats"),
    ] {
        api.get(&uri, GLOBEX)
            .await
            .assert_error(404, "invalid_request_error", Some("id"));
    }
    api.delete(&format!("/v1/files/{id}"), GLOBEX)
        .await
        .assert_error(404, "invalid_request_error", Some("id"));
    assert_eq!(
        api.get("/v1/files", GLOBEX).await.json()["data"],
        serde_json::json!([])
    );
    assert_eq!(
        api.get(&format!("/v1/files/{id}"), ACME).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn content_of_an_input_file_is_its_lines_in_order() {
    let api = TestApi::new().await;
    let content = format!("\n{}", lines(3));
    let file = api.upload_ok(ACME, &content).await;
    let uri = format!("/v1/files/{}/content", file["id"].as_str().unwrap());
    // The SDK asks for application/binary; that must not be refused.
    let req = request("GET", &uri, ACME)
        .header("accept", "application/binary")
        .body(Body::empty())
        .unwrap();
    let reply = api.send(req).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/jsonl")
    );
    let got: Vec<serde_json::Value> = reply
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sent: Vec<serde_json::Value> = lines(3)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got, sent);
}

#[tokio::test]
async fn delete_returns_the_deletion_object_and_the_file_is_gone() {
    let api = TestApi::new().await;
    let file = api.upload_ok(ACME, &lines(1)).await;
    let id = file["id"].as_str().unwrap();
    let reply = api.delete(&format!("/v1/files/{id}"), ACME).await;
    assert_eq!(
        reply.json(),
        serde_json::json!({"id": id, "object": "file", "deleted": true})
    );
    api.get(&format!("/v1/files/{id}"), ACME)
        .await
        .assert_error(404, "invalid_request_error", Some("id"));
    api.delete(&format!("/v1/files/{id}"), ACME)
        .await
        .assert_error(404, "invalid_request_error", Some("id"));
}

#[tokio::test]
async fn list_pages_with_after_in_either_order() {
    let api = TestApi::new().await;
    let mut uploaded = Vec::new();
    for _ in 0..5 {
        uploaded.push(
            api.upload_ok(ACME, &lines(1)).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let all = api.get("/v1/files", ACME).await.json();
    assert_eq!(all["object"], "list");
    let newest_first: Vec<String> = uploaded.iter().rev().cloned().collect();
    assert_eq!(ids(&all), newest_first);
    assert_eq!(all["has_more"], false);
    let asc = api.get("/v1/files?order=asc", ACME).await.json();
    assert_eq!(ids(&asc), uploaded);

    let mut seen = Vec::new();
    let mut uri = "/v1/files?limit=2".to_string();
    loop {
        let page = api.get(&uri, ACME).await.json();
        seen.extend(ids(&page));
        assert_eq!(page["first_id"], page["data"][0]["id"]);
        if page["has_more"] == false {
            break;
        }
        uri = format!(
            "/v1/files?limit=2&after={}",
            page["last_id"].as_str().unwrap()
        );
    }
    assert_eq!(seen, newest_first);
}

#[tokio::test]
async fn list_filters_by_purpose_and_rejects_bad_parameters() {
    let api = TestApi::new().await;
    let batch = api.batch(ACME, &lines(1)).await;
    let inputs = api.get("/v1/files?purpose=batch", ACME).await.json();
    assert_eq!(
        ids(&inputs),
        vec![batch["input_file_id"].as_str().unwrap().to_string()]
    );
    let outputs = api.get("/v1/files?purpose=batch_output", ACME).await.json();
    assert_eq!(
        outputs["data"].as_array().unwrap().len(),
        2,
        "output and error files"
    );
    for f in outputs["data"].as_array().unwrap() {
        assert_eq!(f["purpose"], "batch_output");
    }
    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("limit=x", "limit"),
        ("order=up", "order"),
    ] {
        api.get(&format!("/v1/files?{query}"), ACME)
            .await
            .assert_error(400, "invalid_request_error", Some(param));
    }
    let reply = api.get("/v1/files?after=file-unknown", ACME).await;
    reply.assert_error(400, "invalid_request_error", Some("after"));
    // Another tenant's file is an unknown cursor too.
    let theirs = api.upload_ok(GLOBEX, &lines(1)).await;
    let uri = format!("/v1/files?after={}", theirs["id"].as_str().unwrap());
    api.get(&uri, ACME)
        .await
        .assert_error(400, "invalid_request_error", Some("after"));
}

#[tokio::test]
async fn stats_count_requests_and_body_bytes_per_model() {
    let api = TestApi::new().await;
    let content = lines(5);
    let file = api.upload_ok(ACME, &content).await;
    let stats = api
        .get(
            &format!("/v1/files/{}/stats", file["id"].as_str().unwrap()),
            ACME,
        )
        .await
        .json();
    assert_eq!(stats["total_requests"], 5);
    let models = stats["models"].as_array().unwrap();
    assert_eq!(models[0]["model"], "m0");
    assert_eq!(models[0]["requests"], 3);
    assert_eq!(models[1]["requests"], 2);
    let bodies: usize = content
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["body"]
                .to_string()
                .len()
        })
        .sum();
    assert_eq!(stats["total_body_bytes"], bodies);
}

#[tokio::test]
async fn a_missing_or_unknown_key_is_401() {
    let api = TestApi::new().await;
    let missing = api.get("/v1/files", "").await;
    missing.assert_error(401, "authentication_error", None);
    assert_eq!(missing.json()["error"]["code"], "missing_api_key");
    let wrong = api.get("/v1/batches", "sk-wrong-0123456789").await;
    wrong.assert_error(401, "authentication_error", None);
    assert_eq!(wrong.json()["error"]["code"], "invalid_api_key");
    let basic = request("GET", "/v1/files", "")
        .header("authorization", format!("Basic {ACME}"))
        .body(Body::empty())
        .unwrap();
    api.send(basic)
        .await
        .assert_error(401, "authentication_error", None);
}

#[tokio::test]
async fn an_open_server_acts_for_the_default_tenant() {
    let api = TestApi::with(ApiConfig::default(), Tenants::open()).await;
    let file = api.upload_ok("", &lines(1)).await;
    let reply = api
        .get(
            &format!("/v1/files/{}", file["id"].as_str().unwrap()),
            "anything",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let owner = api
        .storage
        .file_get(
            &fusillade::storage::Scope::All,
            &fusillade::model::FileId::from_string(file["id"].as_str().unwrap()),
        )
        .await
        .unwrap()
        .owner;
    assert_eq!(owner, "default");
}
