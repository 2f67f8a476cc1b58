//! Integration tests for the fault modes, selected per request with the
//! `x-mock-fault` header or globally through `MockConfig::fault`.

mod common;

use std::time::Duration;

use common::{client, client_with_timeout, error_type, faulty_chat, post_json, start, wait_until};
use fusillade_mock::{Fault, MockConfig};
use serde_json::Value;

#[tokio::test]
async fn status_fault_returns_that_status_with_error_body() {
    let server = start(MockConfig::default()).await;
    let response = faulty_chat(&client(), &server, "status:503")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(error_type(response).await, "server_error");

    let limited = faulty_chat(&client(), &server, "status:429")
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));

    let stats = server.stats();
    assert_eq!(
        (stats.responses_error, stats.responses_rate_limited),
        (1, 1)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_json_fault_sends_garbage_with_200() {
    let server = start(MockConfig::default()).await;
    let response = faulty_chat(&client(), &server, "invalid-json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "not json{");
    server.shutdown().await;
}

#[tokio::test]
async fn huge_fault_sends_valid_json_of_requested_size() {
    let server = start(MockConfig::default()).await;
    let target = 3_000_000;
    let response = faulty_chat(&client(), &server, &format!("huge:{target}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), Some(target as u64));
    let bytes = response.bytes().await.unwrap();
    assert_eq!(bytes.len(), target);
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    server.shutdown().await;
}

#[tokio::test]
async fn hang_fault_never_answers_and_does_not_block_shutdown() {
    let server = start(MockConfig::default()).await;
    let impatient = client_with_timeout(Duration::from_millis(300));
    let error = faulty_chat(&impatient, &server, "hang")
        .send()
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    // The client hung up, so the dropped handler must release its in-flight slot.
    wait_until(|| server.stats().per_model["faulty"].in_flight == 0).await;

    // A patient client is still waiting when the server shuts down.
    let waiting = tokio::spawn(faulty_chat(&client(), &server, "hang").send());
    wait_until(|| server.stats().per_model["faulty"].in_flight == 1).await;
    server.shutdown().await;
    assert!(waiting.await.unwrap().is_err());
}

#[tokio::test]
async fn reset_fault_closes_connection_without_response() {
    let server = start(MockConfig::default()).await;
    let error = faulty_chat(&client(), &server, "reset")
        .send()
        .await
        .unwrap_err();
    // hyper reports the early close as an incomplete message: no status, no timeout.
    assert!(error.is_request() && !error.is_timeout(), "{error:?}");
    assert!(error.status().is_none());
    // The server keeps serving other connections.
    let response = post_json(&server, "/v1/chat/completions", &common::chat_body("m")).await;
    assert_eq!(response.status(), 200);
    server.shutdown().await;
}

#[tokio::test]
async fn endless_fault_streams_past_any_reasonable_size() {
    let server = start(MockConfig::default()).await;
    let mut response = faulty_chat(&client(), &server, "endless")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut received = 0;
    while received < 1_000_000 {
        received += response
            .chunk()
            .await
            .unwrap()
            .expect("body never ends")
            .len();
    }
    drop(response);
    server.shutdown().await;
}

#[tokio::test]
async fn slow_first_byte_fault_delays_a_normal_answer() {
    let server = start(MockConfig::default()).await;
    let impatient = client_with_timeout(Duration::from_millis(100));
    let error = faulty_chat(&impatient, &server, "slow:1000")
        .send()
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error:?}");

    let response = faulty_chat(&client(), &server, "slow:50")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    server.shutdown().await;
}

#[tokio::test]
async fn configured_fault_applies_unless_header_overrides_it() {
    let server = start(MockConfig {
        fault: Some(Fault::Status(418)),
        ..MockConfig::default()
    })
    .await;
    let configured = post_json(&server, "/v1/chat/completions", &common::chat_body("m")).await;
    assert_eq!(configured.status(), 418);
    let overridden = faulty_chat(&client(), &server, &Fault::Status(502).header_value())
        .send()
        .await
        .unwrap();
    assert_eq!(overridden.status(), 502);
    server.shutdown().await;
}
