//! What the upstream receives (key, ids, extra headers, body, path), that the key is never
//! stored, that every form of base URL works, and `Retry-After` parsing.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::TimeZone;
use fusillade::model::BatchStatus;
use fusillade::output::ResultFile;
use fusillade::upstream::{ApiKey, Upstream, Upstreams, parse_retry_after};
use fusillade_mock::MockConfig;
use http::{HeaderMap, HeaderValue};
use serde_json::Value;

use crate::daemon_support::*;

const KEY: &str = "sk-test-0123456789secret";

/// Body text of each line of the input, by custom id.
fn bodies(requests: &[(String, String)]) -> BTreeMap<String, String> {
    jsonl(requests)
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("JSON line");
            let id = v["custom_id"].as_str().expect("custom_id").to_string();
            (id, v["body"].to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_gets_the_key_the_ids_and_the_body_unchanged() {
    let recorder = Recorder::start().await;
    let store = Store::new().await;
    let reqs = requests(3, &["m1"]);
    let batch = store.batch(&reqs, None).await;
    let upstream = Upstream::new(&recorder.base_url)
        .expect("URL")
        .with_api_key(Some(ApiKey::new(KEY)))
        .with_header("x-extra", "yes");
    let daemon = Running::start(&store.storage, fast_config(), Upstreams::new(upstream));
    let done = store.wait_final(&batch.id, PATIENCE).await;
    daemon.stop().await;
    assert_eq!(done.counts.completed, 3);

    let output = store.file(&batch.id, ResultFile::Output).await;
    let line_ids: BTreeMap<String, String> = output
        .iter()
        .map(|l| {
            (
                l["custom_id"].as_str().unwrap().into(),
                l["id"].as_str().unwrap().into(),
            )
        })
        .collect();
    let bodies = bodies(&reqs);
    let seen = recorder.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(s.path, "/v1/chat/completions");
        assert_eq!(
            s.header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
        assert_eq!(s.header("x-extra"), Some("yes"));
        assert_eq!(s.header("content-type"), Some("application/json"));
        assert_eq!(s.header("x-fusillade-batch-id"), Some(batch.id.as_str()));
        let custom_id = s.header("x-fusillade-custom-id").expect("custom id header");
        let request_id = s
            .header("x-fusillade-request-id")
            .expect("request id header");
        assert_eq!(
            Some(request_id),
            line_ids.get(custom_id).map(String::as_str)
        );
        assert_eq!(Some(&s.body), bodies.get(custom_id), "body sent unchanged");
    }
    for line in &output {
        let upstream_id = line["response"]["request_id"].as_str().expect("request_id");
        assert!(upstream_id.starts_with("up-"), "{line}");
        assert_eq!(line["response"]["body"], serde_json::json!({"ok": true}));
    }
    let everything = format!("{output:?}{:?}", store.raw_bytes());
    assert!(
        !everything.contains(KEY),
        "the API key leaked into storage or output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_form_of_base_url_works() {
    let mock = start_mock(MockConfig::default()).await;
    let base = mock.base_url();
    let forms = [
        base.clone(),
        format!("{base}/"),
        format!("{base}/v1"),
        format!("{base}/v1/"),
    ];
    for form in &forms {
        assert_eq!(Upstream::new(form).expect("URL").base_url(), base, "{form}");
        let store = Store::new().await;
        let batch = store.batch(&requests(2, &["m1"]), None).await;
        let daemon = Running::start(&store.storage, fast_config(), upstreams(form));
        let done = store.wait_final(&batch.id, PATIENCE).await;
        daemon.stop().await;
        assert_eq!(done.status, BatchStatus::Completed, "{form}");
        assert_eq!(done.counts.completed, 2, "{form}: {:?}", done.counts);
    }
    assert_eq!(mock.stats().requests_total, 8);
    assert!(
        Upstream::new("127.0.0.1:8000").is_err(),
        "a scheme is required"
    );
    mock.shutdown().await;
}

fn retry_after(value: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static(value));
    headers
}

#[test]
fn retry_after_accepts_seconds_and_http_dates() {
    let now = chrono::Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    let parse = |v| parse_retry_after(&retry_after(v), now);
    assert_eq!(parse("120"), Some(Duration::from_secs(120)));
    assert_eq!(parse("0"), Some(Duration::ZERO));
    assert_eq!(
        parse("Mon, 01 Jan 2024 00:00:30 GMT"),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        parse("Sun, 31 Dec 2023 23:59:00 GMT"),
        Some(Duration::ZERO),
        "past date"
    );
    assert_eq!(parse("soon"), None);
    assert_eq!(parse("-5"), None);
    assert_eq!(parse_retry_after(&HeaderMap::new(), now), None);
}
