//! The whole server over a socket: `serve` on port 0 with the daemon and the mock upstream, a
//! batch uploaded, created, polled to completion and downloaded, every custom_id exactly once.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{ACME, lines, multipart};
use fusillade::upstream::{Upstream, Upstreams};
use fusillade::{Daemon, DaemonConfig};
use fusillade_mock::{Fault, MockConfig, MockServer};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct Server {
    base: String,
    client: reqwest::Client,
}

impl Server {
    async fn json(&self, request: reqwest::RequestBuilder) -> Value {
        let response = request.bearer_auth(ACME).send().await.unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        response.json().await.unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        self.json(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    async fn download(&self, file_id: &str) -> (String, bool) {
        let response = self
            .client
            .get(format!("{}/v1/files/{file_id}/content", self.base))
            .bearer_auth(ACME)
            .header("accept", "application/binary")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let incomplete = response.headers()["x-incomplete"] == "true";
        (response.text().await.unwrap(), incomplete)
    }

    async fn create(&self, content: &str) -> Value {
        let (content_type, body) = multipart(&[("purpose", "batch")], Some(content.as_bytes()));
        let upload = self
            .client
            .post(format!("{}/v1/files", self.base))
            .header("content-type", content_type)
            .body(body);
        let file = self.json(upload).await;
        let create = self.client.post(format!("{}/v1/batches", self.base)).json(&json!({
            "input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h",
        }));
        self.json(create).await
    }

    async fn wait_final(&self, id: &str) -> Value {
        let path = format!("/v1/batches/{id}");
        fusillade_testkit::wait_until(Duration::from_secs(60), "a final batch", || async {
            let status = self.get(&path).await["status"]
                .as_str()
                .unwrap()
                .to_string();
            ["completed", "failed", "expired", "cancelled"].contains(&status.as_str())
        })
        .await;
        self.get(&path).await
    }
}

fn custom_ids(jsonl: &str) -> Vec<String> {
    jsonl
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["custom_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_run_and_download_over_http() {
    let api = common::TestApi::new().await;
    let flaky = MockConfig {
        error_rate: 0.2,
        seed: Some(7),
        ..MockConfig::default()
    };
    let mock = MockServer::start(([127, 0, 0, 1], 0).into(), flaky)
        .await
        .unwrap();
    let mut config = DaemonConfig::default();
    config.retry.max_attempts = 1;
    let daemon = Daemon::new(
        api.storage.clone(),
        config,
        Upstreams::new(Upstream::new(&mock.base_url()).unwrap()),
    )
    .unwrap();
    let stop_daemon = CancellationToken::new();
    let daemon_task = tokio::spawn(daemon.run(stop_daemon.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop_http = CancellationToken::new();
    let http_task = tokio::spawn(fusillade_server::serve(
        listener,
        api.state.clone(),
        stop_http.clone().cancelled_owned(),
    ));
    let server = Server {
        base,
        client: reqwest::Client::new(),
    };

    let n = 500;
    let batch = server.create(&lines(n)).await;
    let done = server.wait_final(batch["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed");
    let counts = &done["request_counts"];
    assert_eq!(counts["total"], n);
    let (completed, failed) = (
        counts["completed"].as_u64().unwrap(),
        counts["failed"].as_u64().unwrap(),
    );
    assert_eq!(completed + failed, n as u64);
    assert!(
        completed > 0 && failed > 0,
        "the mock fails about one in five: {counts}"
    );
    let (output, incomplete) = server
        .download(done["output_file_id"].as_str().unwrap())
        .await;
    assert!(!incomplete);
    let (errors, _) = server
        .download(done["error_file_id"].as_str().unwrap())
        .await;
    let (out_ids, err_ids) = (custom_ids(&output), custom_ids(&errors));
    assert_eq!(out_ids.len() as u64, completed);
    assert_eq!(err_ids.len() as u64, failed);
    let all: HashSet<String> = out_ids.iter().chain(&err_ids).cloned().collect();
    assert_eq!(
        all.len(),
        n,
        "every custom_id exactly once across the two files"
    );
    for line in errors.lines() {
        let line: Value = serde_json::from_str(line).unwrap();
        assert_eq!(line["response"]["status_code"], 500, "{line}");
        assert!(line["id"].as_str().unwrap().starts_with("batch_req_"));
    }
    for line in output.lines().take(5) {
        let line: Value = serde_json::from_str(line).unwrap();
        assert_eq!(line["response"]["status_code"], 200);
        assert!(line["error"].is_null());
        assert_eq!(line["response"]["body"]["object"], "chat.completion");
    }

    // A batch whose requests hang: its (empty) output is readable while it runs, and a
    // cancel aborts the calls in flight.
    mock.set_config(MockConfig {
        fault: Some(Fault::Hang),
        ..MockConfig::default()
    });
    let stuck = server.create(&lines(3)).await;
    let id = stuck["id"].as_str().unwrap();
    // Newest first: the new batch's error file, then its output file.
    let output_file = server.get("/v1/files?purpose=batch_output").await["data"][1]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (text, incomplete) = server.download(&output_file).await;
    assert!(text.is_empty() && incomplete);
    let cancel = server
        .client
        .post(format!("{}/v1/batches/{id}/cancel", server.base));
    server.json(cancel).await;
    assert_eq!(server.wait_final(id).await["status"], "cancelled");

    stop_http.cancel();
    http_task.await.unwrap().unwrap();
    stop_daemon.cancel();
    daemon_task.await.unwrap().unwrap();
    mock.shutdown().await;
}
