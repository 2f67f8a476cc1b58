//! What requests end as: success, retries, `Retry-After`, exhausted retries, non-retryable
//! statuses, timeouts, oversized and non-JSON bodies, refused connections, concurrency limits.

use std::collections::HashSet;
use std::time::Duration;

use fusillade::model::{BatchStatus, RequestState};
use fusillade::output::ResultFile;
use fusillade::storage::ResultFilter;
use fusillade_mock::{Fault, MockConfig};
use serde_json::Value;

use crate::daemon_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_completes_every_request_exactly_once() {
    let mock = start_mock(MockConfig::default()).await;
    let store = Store::new().await;
    let reqs = requests(200, &["m1", "m2"]);
    let batch = store.batch(&reqs, None).await;
    let daemon = Running::start(&store.storage, fast_config(), upstreams(&mock.base_url()));
    let done = store.wait_final(&batch.id, PATIENCE).await;
    daemon.stop().await;

    assert_eq!(done.status, BatchStatus::Completed);
    assert_eq!(done.counts.completed, 200);
    let stats = mock.stats();
    assert_eq!(stats.requests_total, 200);
    for id in ids(&reqs) {
        assert_eq!(sends(&stats, &id), 1, "{id} sent exactly once");
    }
    assert!(store.file(&batch.id, ResultFile::Errors).await.is_empty());
    let output = store.file(&batch.id, ResultFile::Output).await;
    assert_eq!(
        custom_ids(&output),
        ids(&reqs),
        "each custom_id once, in input order"
    );
    let mut line_ids = HashSet::new();
    for (line, (_, model)) in output.iter().zip(&reqs) {
        let id = line["id"].as_str().expect("id");
        assert!(id.starts_with("batch_req_"), "{line}");
        assert!(line_ids.insert(id.to_string()), "duplicate id {id}");
        assert_eq!(line["response"]["status_code"], 200, "{line}");
        let request_id = line["response"]["request_id"].as_str().expect("request_id");
        assert!(
            request_id.starts_with("req-mock"),
            "upstream id kept: {line}"
        );
        let body = &line["response"]["body"];
        assert_eq!(body["object"], "chat.completion", "{line}");
        assert_eq!(body["model"], model.as_str(), "{line}");
        assert!(line["error"].is_null(), "{line}");
    }
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_model_concurrency_limits_hold_and_are_used() {
    let slow = MockConfig {
        latency: Duration::from_millis(50),
        ..MockConfig::default()
    };
    let mock = start_mock(slow).await;
    let store = Store::new().await;
    let batch = store.batch(&requests(60, &["m1", "m2"]), None).await;
    let config = with_limits(fast_config(), &[("m1", 3), ("m2", 5)]);
    let daemon = Running::start(&store.storage, config, upstreams(&mock.base_url()));
    let done = store.wait_final(&batch.id, PATIENCE).await;
    daemon.stop().await;

    assert_eq!(done.counts.completed, 60);
    let stats = mock.stats();
    for (model, limit) in [("m1", 3), ("m2", 5)] {
        let seen = &stats.per_model[model];
        assert_eq!(seen.requests, 30, "{model}");
        assert!(
            seen.peak_in_flight <= limit,
            "{model}: {seen:?} over {limit}"
        );
        assert_eq!(
            seen.peak_in_flight, limit,
            "{model}: the limit is used in full"
        );
    }
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_they_succeed() {
    let failing = MockConfig {
        error_rate: 1.0,
        ..MockConfig::default()
    };
    let mock = start_mock(failing).await;
    let store = Store::new().await;
    let reqs = requests(10, &["m1"]);
    let batch = store.batch(&reqs, None).await;
    let mut config = fast_config();
    config.retry.max_attempts = 1_000;
    let daemon = Running::start(&store.storage, config, upstreams(&mock.base_url()));
    // Once every request was seen twice, each one's first attempt surely got a 500.
    wait_until("every request to be sent twice", PATIENCE, || async {
        let stats = mock.stats();
        reqs.iter().all(|(id, _)| sends(&stats, id) >= 2)
    })
    .await;
    mock.set_config(MockConfig::default());
    let done = store.wait_final(&batch.id, PATIENCE).await;
    daemon.stop().await;

    assert_eq!(done.status, BatchStatus::Completed);
    assert_eq!(done.counts.completed, 10);
    let stats = mock.stats();
    assert!(stats.responses_error >= 10, "{stats:?}");
    for row in store.rows(&batch.id, ResultFilter::All).await {
        assert_eq!(row.state, RequestState::Completed, "{row:?}");
        assert!(row.attempts > 1, "{row:?}");
        assert_eq!(
            u64::from(row.attempts),
            sends(&stats, &row.custom_id),
            "{row:?}"
        );
        assert_eq!(row.status_code, Some(200), "{row:?}");
    }
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_of_a_429_is_honoured() {
    let limited = MockConfig {
        rate_limit_rate: 1.0,
        retry_after_secs: 1,
        ..MockConfig::default()
    };
    // (The backoff without Retry-After would be at most 10 ms.)
    assert_429s_wait_for_retry_after(limited, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_fail_with_the_last_upstream_answer() {
    let failing = MockConfig {
        error_rate: 1.0,
        ..MockConfig::default()
    };
    let done = run_to_end(failing, fast_config(), 5).await;
    let errors = assert_all_failed(&done, 3, "upstream_status").await;
    for line in &errors {
        assert_eq!(line["response"]["status_code"], 500, "{line}");
        assert!(line["response"]["body"]["error"].is_object(), "{line}");
    }
    for id in &done.ids {
        assert_eq!(sends(&done.stats, id), 3, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_fails_at_once() {
    let bad_request = MockConfig {
        fault: Some(Fault::Status(400)),
        ..MockConfig::default()
    };
    let done = run_to_end(bad_request, fast_config(), 3).await;
    let errors = assert_all_failed(&done, 1, "upstream_status").await;
    for line in &errors {
        assert_eq!(line["response"]["status_code"], 400, "{line}");
        assert!(line["response"]["body"]["error"].is_object(), "{line}");
    }
    for id in &done.ids {
        assert_eq!(sends(&done.stats, id), 1, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_response_headers_times_out_and_is_retried() {
    let hang = MockConfig {
        fault: Some(Fault::Hang),
        ..MockConfig::default()
    };
    let mut config = fast_config();
    config.http.first_byte_timeout = Duration::from_millis(200);
    config.retry.max_attempts = 2;
    let done = run_to_end(hang, config, 2).await;
    let errors = assert_all_failed(&done, 2, "timeout").await;
    for line in &errors {
        assert!(line["response"].is_null(), "no answer, no response: {line}");
    }
    for id in &done.ids {
        assert_eq!(sends(&done.stats, id), 2, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_hits_the_total_timeout() {
    let endless = MockConfig {
        fault: Some(Fault::EndlessBody),
        ..MockConfig::default()
    };
    let mut config = fast_config();
    config.http.total_timeout = Duration::from_millis(300);
    // The cap must not be what stops the body: loopback moves gigabytes per second.
    config.http.max_response_bytes = 4 * 1024 * 1024 * 1024;
    config.retry.max_attempts = 1;
    let done = run_to_end(endless, config, 1).await;
    assert_all_failed(&done, 1, "timeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_cap_fails_without_retry() {
    let huge = MockConfig {
        fault: Some(Fault::HugeBody(2 * 1024 * 1024)),
        ..MockConfig::default()
    };
    let done = run_to_end(huge, fast_config(), 2).await;
    assert_all_failed(&done, 1, "response_too_large").await;
    for id in &done.ids {
        assert_eq!(sends(&done.stats, id), 1, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_json_200_completes_with_the_body_as_a_string() {
    let garbage = MockConfig {
        fault: Some(Fault::InvalidJson),
        ..MockConfig::default()
    };
    let done = run_to_end(garbage, fast_config(), 2).await;
    assert_eq!(done.batch.counts.completed, 2);
    let output = done.store.file(&done.batch.id, ResultFile::Output).await;
    assert_eq!(custom_ids(&output), done.ids);
    for line in &output {
        assert_eq!(line["response"]["status_code"], 200, "{line}");
        assert_eq!(line["response"]["body"], Value::from("not json{"), "{line}");
    }
}

/// OpenAI's own API pretty-prints its answers: a body over many lines must still give one
/// output line per request, with the same JSON value as the upstream sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pretty_printed_body_stays_on_one_output_line() {
    let pretty = MockConfig {
        fault: Some(Fault::PrettyJson),
        ..MockConfig::default()
    };
    let done = run_to_end(pretty, fast_config(), 3).await;
    assert_eq!(done.batch.counts.completed, 3);
    // `file` parses every line on its own, so a body split over lines fails there.
    let output = done.store.file(&done.batch.id, ResultFile::Output).await;
    assert_eq!(custom_ids(&output), done.ids);
    for line in &output {
        let body = &line["response"]["body"];
        assert_eq!(body["object"], "chat.completion", "{line}");
        let content = body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default();
        assert!(content.starts_with("mock reply to "), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_then_fails() {
    let store = Store::new().await;
    let reqs = requests(2, &["m1"]);
    let batch = store.batch(&reqs, None).await;
    let url = closed_port_url().await;
    let daemon = Running::start(&store.storage, fast_config(), upstreams(&url));
    let done = store.wait_final(&batch.id, PATIENCE).await;
    daemon.stop().await;

    assert_eq!(done.counts.failed, 2);
    for row in store.rows(&batch.id, ResultFilter::All).await {
        assert_eq!(row.state, RequestState::Failed, "{row:?}");
        assert_eq!(row.attempts, 3, "{row:?}");
        assert_eq!(row.error_code.as_deref(), Some("connect_error"), "{row:?}");
        assert_eq!(row.status_code, None, "{row:?}");
    }
    let errors = store.file(&batch.id, ResultFile::Errors).await;
    assert_eq!(custom_ids(&errors), ids(&reqs));
}
