//! Integration tests for the mock's endpoints, error injection and counters,
//! over a real loopback socket.

mod common;

use std::time::Duration;

use common::{chat_body, client, error_type, post_json, start};
use fusillade_mock::{MockConfig, Stats};
use serde_json::{Value, json};

#[tokio::test]
async fn chat_completion_has_openai_shape() {
    let server = start(MockConfig::default()).await;
    let response = post_json(&server, "/v1/chat/completions", &chat_body("gpt-test")).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.unwrap();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(body["model"], "gpt-test");
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "mock reply to 2 messages");
    assert_eq!(choice["finish_reason"], "stop");
    let usage = &body["usage"];
    let (prompt, completion) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(prompt > 0 && completion > 0);
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt + completion);

    let stats = server.stats();
    assert_eq!((stats.requests_total, stats.responses_ok), (1, 1));
    assert_eq!(stats.per_model["gpt-test"].requests, 1);
    assert_eq!(stats.per_model["gpt-test"].in_flight, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn completions_answer_every_prompt() {
    let server = start(MockConfig::default()).await;
    let request = json!({"model": "davinci-test", "prompt": ["one", "two"]});
    let response = post_json(&server, "/v1/completions", &request).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "davinci-test");
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[1]["index"], 1);
    assert!(choices[0]["text"].is_string());
    assert_eq!(choices[0]["finish_reason"], "stop");
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);
    server.shutdown().await;
}

#[tokio::test]
async fn embeddings_return_one_vector_per_input() {
    let server = start(MockConfig::default()).await;
    let cases = [
        (json!("one"), 1),
        (json!(["a", "b", "c"]), 3),
        (json!([1, 2, 3]), 1),
    ];
    for (input, expected) in cases {
        let request = json!({"model": "embed-test", "input": input});
        let response = post_json(&server, "/v1/embeddings", &request).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["object"], "list");
        assert_eq!(body["model"], "embed-test");
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), expected, "input {input}");
        for (i, entry) in data.iter().enumerate() {
            assert_eq!(entry["object"], "embedding");
            assert_eq!(entry["index"], i);
            assert_eq!(entry["embedding"].as_array().unwrap().len(), 8);
        }
        assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn bad_bodies_get_400_invalid_request_error() {
    let server = start(MockConfig::default()).await;
    let url = format!("{}/v1/chat/completions", server.base_url());
    let bad_json = client().post(&url).body("{not json").send().await.unwrap();
    assert_eq!(bad_json.status(), 400);
    assert_eq!(error_type(bad_json).await, "invalid_request_error");

    let no_model = post_json(&server, "/v1/embeddings", &json!({"input": "x"})).await;
    assert_eq!(no_model.status(), 400);
    assert_eq!(error_type(no_model).await, "invalid_request_error");

    let bad_fault = common::faulty_chat(&client(), &server, "explode")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_fault.status(), 400);

    let stats = server.stats();
    assert_eq!(stats.requests_total, 3);
    assert_eq!(stats.responses_ok + stats.responses_error, 0);
    assert!(stats.per_model.is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn error_rate_one_gives_500s_until_config_changes() {
    let server = start(MockConfig {
        error_rate: 1.0,
        ..MockConfig::default()
    })
    .await;
    for _ in 0..3 {
        let response = post_json(&server, "/v1/chat/completions", &chat_body("m")).await;
        assert_eq!(response.status(), 500);
        assert_eq!(error_type(response).await, "server_error");
    }
    assert_eq!(server.stats().responses_error, 3);

    server.set_config(MockConfig::default());
    let recovered = post_json(&server, "/v1/chat/completions", &chat_body("m")).await;
    assert_eq!(recovered.status(), 200);
    server.shutdown().await;
}

#[tokio::test]
async fn rate_limit_rate_one_gives_429_with_retry_after() {
    let server = start(MockConfig {
        rate_limit_rate: 1.0,
        retry_after_secs: 7,
        ..MockConfig::default()
    })
    .await;
    let response = post_json(
        &server,
        "/v1/completions",
        &json!({"model": "m", "prompt": "p"}),
    )
    .await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(error_type(response).await, "rate_limit_error");
    assert_eq!(server.stats().responses_rate_limited, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn retry_after_can_be_an_http_date() {
    let server = start(MockConfig {
        rate_limit_rate: 1.0,
        retry_after_secs: 30,
        retry_after_http_date: true,
        ..MockConfig::default()
    })
    .await;
    let before = chrono::Utc::now();
    let response = post_json(
        &server,
        "/v1/completions",
        &json!({"model": "m", "prompt": "p"}),
    )
    .await;
    assert_eq!(response.status(), 429);
    let value = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(value.ends_with(" GMT"), "IMF-fixdate: {value}");
    let when = chrono::DateTime::parse_from_rfc2822(&value).expect("an HTTP-date");
    let ahead = when.with_timezone(&chrono::Utc) - before;
    assert!(
        (29..=30).contains(&ahead.num_seconds()),
        "{value} is {ahead:?} ahead"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn seeded_error_pattern_is_reproducible() {
    let config = MockConfig {
        error_rate: 0.5,
        seed: Some(42),
        ..MockConfig::default()
    };
    let server = start(config.clone()).await;
    let mut runs = Vec::new();
    for _ in 0..2 {
        server.set_config(config.clone());
        let mut statuses = Vec::new();
        for _ in 0..20 {
            let response = post_json(&server, "/v1/chat/completions", &chat_body("m")).await;
            statuses.push(response.status().as_u16());
        }
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1]);
    assert!(
        runs[0].contains(&200) && runs[0].contains(&500),
        "{:?}",
        runs[0]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn latency_keeps_concurrent_requests_in_flight() {
    let server = start(MockConfig {
        latency: Duration::from_millis(200),
        ..MockConfig::default()
    })
    .await;
    let body = chat_body("busy-model");
    let requests = (0..5).map(|_| post_json(&server, "/v1/chat/completions", &body));
    let responses = futures::future::join_all(requests).await;
    assert!(responses.iter().all(|r| r.status() == 200));

    let model = &server.stats().per_model["busy-model"];
    assert_eq!(model.requests, 5);
    assert_eq!(model.peak_in_flight, 5);
    assert_eq!(model.in_flight, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn custom_ids_are_counted_per_value() {
    let server = start(MockConfig::default()).await;
    let url = format!("{}/v1/chat/completions", server.base_url());
    for id in [Some("job-a"), Some("job-b"), Some("job-a"), None] {
        let mut request = client().post(&url).json(&chat_body("m"));
        if let Some(id) = id {
            request = request.header("X-Fusillade-Custom-Id", id);
        }
        assert_eq!(request.send().await.unwrap().status(), 200);
    }
    let counts = server.stats().per_custom_id;
    assert_eq!(counts.len(), 2);
    assert_eq!((counts["job-a"], counts["job-b"]), (2, 1));
    server.shutdown().await;
}

#[tokio::test]
async fn stats_endpoints_report_and_reset() {
    let server = start(MockConfig::default()).await;
    let health = client()
        .get(format!("{}/healthz", server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");

    let request = client()
        .post(format!("{}/v1/embeddings", server.base_url()))
        .header("x-fusillade-custom-id", "row-1")
        .json(&json!({"model": "e", "input": "x"}));
    assert_eq!(request.send().await.unwrap().status(), 200);

    let stats_url = format!("{}/stats", server.base_url());
    let over_http: Stats = client()
        .get(&stats_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(over_http, server.stats());
    assert_eq!(over_http.requests_total, 1);
    assert_eq!(over_http.per_custom_id["row-1"], 1);

    let reset = client()
        .post(format!("{stats_url}/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 200);
    assert_eq!(server.stats(), Stats::default());
    server.shutdown().await;
}

#[tokio::test]
async fn serve_runs_until_its_shutdown_future_resolves() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let task = tokio::spawn(fusillade_mock::serve(
        listener,
        MockConfig::default(),
        shutdown,
    ));

    let url = format!("http://{addr}/v1/chat/completions");
    let response = client()
        .post(url)
        .json(&chat_body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
