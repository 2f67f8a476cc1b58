//! Upstream faults beyond `outcomes`: `Retry-After` as an HTTP-date, connection resets, a
//! connect that never completes, and an upstream that is down for a while and comes back on
//! the same port.

use std::time::Duration;

use fusillade::model::{BatchStatus, RequestState};
use fusillade::output::ResultFile;
use fusillade::storage::ResultFilter;
use fusillade_mock::{Fault, MockConfig, MockServer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::daemon_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_as_an_http_date_is_honoured() {
    let limited = MockConfig {
        rate_limit_rate: 1.0,
        retry_after_secs: 2,
        retry_after_http_date: true,
        ..MockConfig::default()
    };
    // A date has whole seconds: "2 s from now" rounded down is still more than 1 s away.
    assert_429s_wait_for_retry_after(limited, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_resets_are_retried_then_fail_with_the_reason_kept() {
    let reset = MockConfig {
        fault: Some(Fault::Reset),
        ..MockConfig::default()
    };
    let done = run_to_end(reset, fast_config(), 3).await;
    // Each of the three attempts reached the upstream, which hung up without answering.
    let errors = assert_all_failed(&done, 3, "network_error").await;
    for id in &done.ids {
        assert_eq!(sends(&done.stats, id), 3, "{id}");
    }
    for line in &errors {
        let message = line["error"]["message"].as_str().expect("message");
        assert!(
            message.contains("connection closed before message completed"),
            "the reset is named: {message}"
        );
        assert!(message.contains("gave up after 3 attempts"), "{message}");
        assert!(line["response"].is_null(), "no answer, no response: {line}");
    }
}

/// A loopback listener whose accept queue is full and never drained: the kernel drops further
/// SYNs, so a connect to it neither succeeds nor fails. Returns the URL and what keeps it so.
async fn unanswered_connect_url() -> (String, TcpListener, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let addr = socket.local_addr().expect("address");
    let listener = socket.listen(0).expect("listen");
    // The smallest backlog still queues a connection or two: fill it, never accept.
    let mut held = Vec::new();
    while let Ok(Ok(stream)) =
        tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await
    {
        held.push(stream);
        assert!(held.len() < 64, "the accept queue never filled");
    }
    (format!("http://{addr}"), listener, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_never_completes_hits_the_connect_timeout() {
    let (url, _listener, _held) = unanswered_connect_url().await;
    let mut config = fast_config();
    config.http.connect_timeout = Duration::from_millis(200);
    config.retry.max_attempts = 2;
    let done = run_against(&url, config, 2).await;
    for line in assert_all_failed(&done, 2, "timeout").await {
        assert!(line["response"].is_null(), "no answer, no response: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_down_for_a_while_then_back_completes_the_batch() {
    let slow = MockConfig {
        latency: Duration::from_millis(20),
        ..MockConfig::default()
    };
    let first = start_mock(slow).await;
    let addr = first.addr();
    let store = Store::new().await;
    let reqs = requests(40, &["m1"]);
    let batch = store.batch(&reqs, None).await;
    let mut config = with_limits(fast_config(), &[("m1", 4)]);
    config.retry.max_attempts = 1_000;
    let daemon = Running::start(&store.storage, config, upstreams(&first.base_url()));
    wait_until("some requests to complete", PATIENCE, || async {
        store.get(&batch.id).await.counts.completed >= 8
    })
    .await;
    first.shutdown().await;

    // While it is down, requests keep failing to connect and wait for their next attempt.
    wait_until(
        "requests to retry a refused connection",
        PATIENCE,
        || async {
            let pending = store
                .rows(&batch.id, ResultFilter::State(RequestState::Pending))
                .await;
            pending
                .iter()
                .filter(|r| r.error_code.as_deref() == Some("connect_error") && r.attempts >= 3)
                .count()
                >= 4
        },
    )
    .await;
    let during = store.get(&batch.id).await;
    assert_eq!(during.status, BatchStatus::InProgress);
    assert_eq!(during.counts.failed, 0, "{:?}", during.counts);

    // Same port, a fresh process-like server: bind until the old socket is gone.
    let deadline = Instant::now() + PATIENCE;
    let second = loop {
        match MockServer::start(addr, MockConfig::default()).await {
            Ok(mock) => break mock,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "port {addr} never came free: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let done = store.wait_final(&batch.id, PATIENCE).await;
    daemon.stop().await;

    assert_eq!(done.status, BatchStatus::Completed);
    assert_eq!(done.counts.completed, 40);
    let rows = store.rows(&batch.id, ResultFilter::All).await;
    assert!(rows.iter().any(|r| r.attempts > 1), "some requests retried");
    for row in &rows {
        assert_eq!(row.state, RequestState::Completed, "{row:?}");
        assert_eq!(row.status_code, Some(200), "{row:?}");
        assert_eq!(
            row.error_code, None,
            "a success clears the last error: {row:?}"
        );
    }
    assert!(
        second.stats().requests_total > 0,
        "the second upstream served the rest"
    );
    let output = store.file(&batch.id, ResultFile::Output).await;
    assert_eq!(
        custom_ids(&output),
        ids(&reqs),
        "each custom_id exactly once"
    );
    second.shutdown().await;
}
