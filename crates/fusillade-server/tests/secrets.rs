//! Tenant keys and the upstream key never leave memory. The real `fusillade serve` runs with
//! `FUSILLADE_LOG=trace`, keys from the environment, and a mock upstream that fails half the
//! requests; a batch runs through every endpoint, with wrong and malformed keys sent too. No
//! key (nor the wrong one sent) appears in any byte of stderr or stdout, of any answer (status
//! line, headers, body; 401s included), of `/metrics`, of the output and error files, or of the
//! SQLite database with its WAL and shared-memory files, read while serving and after.

mod common;

use std::path::Path;
use std::time::Duration;

use common::binary::ServeProcess;
use common::{lines, multipart};
use fusillade_mock::{MockConfig, MockServer};
use fusillade_testkit::wait_until;
use serde_json::{Value, json};

const ACME_KEY: &str = "sk-acme-TENANTCANARY-4b9e2d71";
const GLOBEX_KEY: &str = "sk-globex-TENANTCANARY-8c1f3a05";
const UPSTREAM_KEY: &str = "sk-UPSTREAMCANARY-71d0e5c2";
const WRONG_KEY: &str = "sk-WRONGCANARY-0f9a6c3d";

/// Where a key, or the marker all of them share, shows up in `bytes`.
fn leaks(what: &str, bytes: &[u8]) -> Vec<String> {
    ["CANARY", ACME_KEY, GLOBEX_KEY, UPSTREAM_KEY, WRONG_KEY]
        .iter()
        .filter(|needle| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .map(|needle| format!("{needle:?} in {what}"))
        .collect()
}

/// Every file in `dir`, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let path = e.ok()?.path();
            let bytes = std::fs::read(&path).ok()?;
            Some((path.file_name()?.to_string_lossy().into_owned(), bytes))
        })
        .collect()
}

/// A client that keeps every answer it got, whole, for the leak check.
struct Recorder {
    base: String,
    client: reqwest::Client,
    answers: Vec<(String, Vec<u8>)>,
}

impl Recorder {
    /// Sends `method path` with this `Authorization` value (if any) and body; returns the
    /// answer's JSON (`Null` when it is not JSON).
    async fn call(&mut self, method: &str, path: &str, auth: Option<&str>, body: Body) -> Value {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request = match body {
            Body::None => request,
            Body::Json(json) => request.json(&json),
            Body::Upload(content) => {
                let (content_type, body) =
                    multipart(&[("purpose", "batch")], Some(content.as_bytes()));
                request.header("content-type", content_type).body(body)
            }
        };
        let response = request.send().await.unwrap();
        let head = format!("{:?} {:?}", response.status(), response.headers());
        let bytes = response.bytes().await.unwrap().to_vec();
        let mut all = head.into_bytes();
        all.extend_from_slice(&bytes);
        self.answers
            .push((format!("the answer to {method} {path}"), all));
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }

    async fn acme(&mut self, method: &str, path: &str, body: Body) -> Value {
        self.call(method, path, Some(&format!("Bearer {ACME_KEY}")), body)
            .await
    }
}

enum Body {
    None,
    Json(Value),
    Upload(String),
}

/// Polls the batch (unrecorded: the last answer is recorded after) until it completes.
async fn wait_completed(api: &Recorder, path: &str) {
    let url = format!("{}{path}", api.base);
    wait_until(Duration::from_secs(60), "the batch to complete", || async {
        let response = api.client.get(&url).bearer_auth(ACME_KEY).send().await;
        let batch: Value = response.unwrap().json().await.unwrap();
        batch["status"] == "completed"
    })
    .await;
}

/// Uploads, runs and reads a batch through every endpoint, as acme; returns the final batch.
async fn run_a_batch(api: &mut Recorder) -> Value {
    let file = api.acme("POST", "/v1/files", Body::Upload(lines(40))).await;
    let file_id = file["id"].as_str().expect("uploaded").to_string();
    let create = json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions",
        "completion_window": "24h", "metadata": {"run": "secrets"}});
    let batch = api.acme("POST", "/v1/batches", Body::Json(create)).await;
    let path = format!("/v1/batches/{}", batch["id"].as_str().expect("created"));
    wait_completed(api, &path).await;
    let batch = api.acme("GET", &path, Body::None).await;
    for read in ["/v1/files", "/v1/batches", "/v1/batches?search=secrets"] {
        api.acme("GET", read, Body::None).await;
    }
    api.acme("GET", &format!("{path}/results"), Body::None)
        .await;
    api.acme("GET", &format!("/v1/files/{file_id}/stats"), Body::None)
        .await;
    api.acme("GET", &format!("/v1/files/{file_id}/content"), Body::None)
        .await;
    api.acme("POST", &format!("{path}/retry"), Body::None).await;
    wait_completed(api, &path).await;
    api.acme("POST", &format!("{path}/cancel"), Body::None)
        .await;
    batch
}

/// Requests that fail: wrong, malformed and foreign keys, unknown ids and paths, bad bodies.
async fn fail_in_every_way(api: &mut Recorder, batch_id: &str) {
    let wrong = [
        format!("Bearer {WRONG_KEY}"),
        format!("Basic {ACME_KEY}"),
        ACME_KEY.to_string(),
        format!("Bearer {ACME_KEY}x"),
    ];
    for auth in &wrong {
        api.call("GET", "/v1/files", Some(auth), Body::None).await;
        let path = format!("/v1/batches/{batch_id}");
        api.call("GET", &path, Some(auth), Body::None).await;
    }
    api.call("GET", "/v1/files", None, Body::None).await;
    let globex = format!("Bearer {GLOBEX_KEY}");
    let path = format!("/v1/batches/{batch_id}/results");
    api.call("GET", &path, Some(&globex), Body::None).await;
    api.acme("GET", "/v1/files/file-nope/content", Body::None)
        .await;
    api.acme("GET", "/v1/nothing", Body::None).await;
    api.acme("POST", "/v1/batches", Body::Json(json!({"endpoint": 7})))
        .await;
    let bad_line = format!("{}{{\"custom_id\": 1}}\n", lines(1));
    api.acme("POST", "/v1/files", Body::Upload(bad_line)).await;
    for open in ["/metrics", "/healthz", "/readyz", "/openapi.json"] {
        api.call("GET", open, None, Body::None).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_is_in_any_log_answer_metric_result_file_or_database_byte() {
    let flaky = MockConfig {
        error_rate: 0.5,
        seed: Some(5),
        ..MockConfig::default()
    };
    let mock = MockServer::start(([127, 0, 0, 1], 0).into(), flaky)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("api.db");
    let keys = format!("acme:{ACME_KEY},globex:{GLOBEX_KEY}");
    let args = [
        "--database",
        database.to_str().unwrap(),
        "--upstream",
        &mock.base_url(),
    ];
    let extra = ["--max-attempts", "1", "--concurrency", "4"];
    let env = [
        ("FUSILLADE_LOG", "trace"),
        ("FUSILLADE_API_KEYS", keys.as_str()),
        ("FUSILLADE_API_KEY", UPSTREAM_KEY),
    ];
    let server = ServeProcess::start(&[&args[..], &extra[..]].concat(), &env);
    let mut api = Recorder {
        base: server.base.clone(),
        client: reqwest::Client::new(),
        answers: Vec::new(),
    };
    let batch = run_a_batch(&mut api).await;
    let counts = &batch["request_counts"];
    assert!(
        counts["completed"] != 0 && counts["failed"] != 0,
        "{counts}"
    );
    for file in ["output_file_id", "error_file_id"] {
        let id = batch[file].as_str().unwrap();
        api.acme("GET", &format!("/v1/files/{id}/content"), Body::None)
            .await;
    }
    fail_in_every_way(&mut api, batch["id"].as_str().unwrap()).await;

    let mut found = Vec::new();
    for (what, bytes) in &api.answers {
        found.extend(leaks(what, bytes));
    }
    for (name, bytes) in files(dir.path()) {
        found.extend(leaks(&format!("{name} (while serving)"), &bytes));
    }
    let output = server.stop();
    assert!(output.success, "serve exited cleanly");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("TRACE"), "trace logging was on");
    assert!(
        stderr.contains("request rejected"),
        "the API's error logs are in"
    );
    found.extend(leaks("stderr", &output.stderr));
    found.extend(leaks("stdout", &output.stdout));
    let after = files(dir.path());
    for (name, bytes) in &after {
        found.extend(leaks(name, bytes));
    }
    assert!(found.is_empty(), "a key leaked: {found:?}");
    checked_enough(&api, &after);
    mock.shutdown().await;
}

/// The places searched really hold what they should: the output and error files with lines,
/// /metrics with the API's counters, the 401s, the database.
fn checked_enough(api: &Recorder, files: &[(String, Vec<u8>)]) {
    let answer = |what: &str| {
        let found = api.answers.iter().find(|(w, _)| w.contains(what));
        String::from_utf8_lossy(&found.expect(what).1).into_owned()
    };
    assert!(answer("GET /metrics").contains("fusillade_http_requests_total"));
    let text = |(_, b): &(String, Vec<u8>)| String::from_utf8_lossy(b).into_owned();
    let refused = api
        .answers
        .iter()
        .map(text)
        .filter(|t| t.contains("401"))
        .count();
    assert!(refused >= 9, "the 401s were checked");
    let contents: Vec<&(String, Vec<u8>)> = api
        .answers
        .iter()
        .filter(|(w, _)| w.ends_with("/content"))
        .collect();
    assert!(
        contents.iter().filter(|(_, b)| b.ends_with(b"}\n")).count() >= 3,
        "input, output and error files read"
    );
    assert!(
        files.iter().any(|(n, b)| n == "api.db" && !b.is_empty()),
        "the database was read"
    );
}
