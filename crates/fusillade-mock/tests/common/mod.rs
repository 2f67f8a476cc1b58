//! Shared helpers for the integration tests: starting a mock on a loopback
//! port and sending OpenAI-style requests to it.

#![allow(dead_code)] // each test binary uses a different subset

use std::time::{Duration, Instant};

use fusillade_mock::{MockConfig, MockServer};
use serde_json::{Value, json};

pub async fn start(config: MockConfig) -> MockServer {
    let addr = "127.0.0.1:0".parse().expect("loopback address");
    MockServer::start(addr, config).await.expect("mock starts")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

pub fn client_with_timeout(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("client builds")
}

pub fn chat_body(model: &str) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello"}
        ]
    })
}

pub async fn post_json(server: &MockServer, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", server.base_url()))
        .json(body)
        .send()
        .await
        .expect("request is answered")
}

/// A chat request carrying an `x-mock-fault` header.
pub fn faulty_chat(
    client: &reqwest::Client,
    server: &MockServer,
    fault: &str,
) -> reqwest::RequestBuilder {
    client
        .post(format!("{}/v1/chat/completions", server.base_url()))
        .header("x-mock-fault", fault)
        .json(&chat_body("faulty"))
}

/// Asserts the OpenAI error envelope and returns its `type`.
pub async fn error_type(response: reqwest::Response) -> String {
    let body: Value = response.json().await.expect("error body is JSON");
    let error = &body["error"];
    assert!(error["message"].is_string(), "{body}");
    assert!(error["param"].is_null(), "{body}");
    assert!(error.get("code").is_some(), "{body}");
    error["type"].as_str().expect("error type").to_owned()
}

/// Polls `condition` until it holds, failing the test after a generous deadline
/// (the deadline only matters when something is broken).
pub async fn wait_until(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "condition not reached within 10s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await; // poll interval; the loop is bounded by a deadline
    }
}
